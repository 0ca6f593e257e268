"""The forwarder: one-pass uploads, and the daemon's backoff through store outages.

Outages are real: a port where nothing listens, a moto server stopped and started again on
the same port, a missing bucket, a wrong secret key. An injected clock replaces sleeping.
"""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from clicktrail.agent import spool
from clicktrail.agent.checkpoint import CheckpointStore
from clicktrail.agent.forwarder import RETRY_LOG_INTERVAL_S, Forwarder, forward_pending
from clicktrail.agent.store import StoreError, open_store

from . import s3_server
from .s3_server import REGION, free_port

# Fixtures from s3_server, bound here so that pytest finds them in this module.
auth_server = s3_server.auth_server
moto_factory = s3_server.moto_factory
moto_server = s3_server.moto_server
s3_bucket = s3_server.s3_bucket
s3_env = s3_server.s3_env


class FakeClock:
    """A monotonic clock that moves only when the test sets now."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def spool_batches(state_dir, count: int, first_day: str = "2026-12-04") -> list[str]:
    """Write count sealed spool files, one per UTC day; return their relative paths."""
    start = datetime.fromisoformat(first_day).replace(tzinfo=UTC)
    written = []
    for index in range(count):
        moment = start + timedelta(days=index, hours=1)
        table = pa.table({
            "event_time": pa.array([moment] * 3, pa.timestamp("us", tz="UTC")),
            "line": pa.array([f"batch {index} line {n}" for n in range(3)]),
        })
        written += spool.write_batch(str(state_dir), "events", table, "event_time",
                                     f"mx1-tracking-g1-{index * 100}.parquet")
    return written


def spool_contents(state_dir) -> dict[str, bytes]:
    root = Path(spool.spool_root(str(state_dir)))
    return {relative: (root / relative).read_bytes() for relative in spool.pending(str(state_dir))}


def store_objects(store) -> list[str]:
    listing = store.filesystem.get_file_info(pafs.FileSelector(store.root, recursive=True,
                                                               allow_not_found=True))
    return sorted(info.path[len(store.root) + 1:] for info in listing
                  if info.type == pafs.FileType.File)


def uploads(checkpoints) -> list[str]:
    return [row[0] for row in checkpoints.db.execute("SELECT name FROM uploads ORDER BY name")]


@pytest.fixture
def checkpoints(tmp_path):
    store = CheckpointStore(str(tmp_path / "state"))
    yield store
    store.close()


def test_forward_pending_local_store(tmp_path, checkpoints):
    state = tmp_path / "state"
    names = spool_batches(state, 2)
    store = open_store(str(tmp_path / "store"))

    assert forward_pending(str(state), store, checkpoints) == 2

    assert store_objects(store) == sorted(names)
    assert uploads(checkpoints) == sorted(names)
    assert spool_contents(state) == {}


def test_forward_pending_raises_and_keeps_spool(tmp_path, s3_env, checkpoints):
    state = tmp_path / "state"
    spool_batches(state, 2)
    before = spool_contents(state)
    store = open_store("s3://bucket/prefix", f"http://127.0.0.1:{free_port()}", REGION,
                       max_attempts=1)

    with pytest.raises(StoreError) as raised:
        forward_pending(str(state), store, checkpoints)

    assert raised.value.transient is True
    assert spool_contents(state) == before
    assert uploads(checkpoints) == []
    assert "NETWORK_CONNECTION" in checkpoints.status()["last_error"]


def test_step_uploads_to_s3(tmp_path, moto_server, s3_bucket, checkpoints):
    state = tmp_path / "state"
    names = spool_batches(state, 3)
    store = open_store(f"s3://{s3_bucket}/p", moto_server.endpoint, REGION)
    forwarder = Forwarder(str(state), store, checkpoints, clock=FakeClock())

    status = forwarder.step()

    assert status.uploaded == 3
    assert status.pending_files == 0
    assert status.pending_bytes == 0
    assert status.next_attempt_at is None
    assert status.permanent_error is None
    assert store_objects(store) == sorted(names)


@pytest.mark.parametrize(("failures", "draw", "expected"), [
    pytest.param(1, 0.0, 1.0, id="first-floor"),
    pytest.param(1, 0.99, 1.0, id="first-cap"),
    pytest.param(4, 0.5, 4.0, id="fourth-half"),
    pytest.param(4, 0.0, 1.0, id="fourth-floor"),
    pytest.param(9, 1.0, 256.0, id="ninth-cap"),
    pytest.param(10, 1.0, 300.0, id="max-backoff"),
    pytest.param(10_000, 0.5, 150.0, id="huge-count"),
])
def test_backoff_values(tmp_path, checkpoints, failures, draw, expected):
    store = open_store(str(tmp_path / "store"))
    forwarder = Forwarder(str(tmp_path / "state"), store, checkpoints, rng=lambda: draw)

    assert forwarder.backoff_s(failures) == expected


def test_backoff_rejects_invalid_bounds(tmp_path, checkpoints):
    store = open_store(str(tmp_path / "store"))

    with pytest.raises(ValueError, match="min_backoff_s <= max_backoff_s"):
        Forwarder(str(tmp_path / "state"), store, checkpoints, min_backoff_s=5, max_backoff_s=1)


def test_outage_unreachable_store(tmp_path, s3_env, moto_factory, checkpoints):
    state = tmp_path / "state"
    names = spool_batches(state, 4)
    before = spool_contents(state)
    port = free_port()
    store = open_store("s3://outage/p", f"http://127.0.0.1:{port}", REGION, max_attempts=1)
    clock = FakeClock()
    draws = random.Random(7)
    forwarder = Forwarder(str(state), store, checkpoints, min_backoff_s=1.0,
                          max_backoff_s=60.0, clock=clock, rng=draws.random)

    # Nothing listens: every attempt fails, each wait stays within its jitter bounds.
    for failures in range(1, 13):
        status = forwarder.step()
        assert status.consecutive_failures == failures
        assert status.permanent_error is None
        assert status.pending_files == 4
        delay = status.next_attempt_at - clock.now
        assert 1.0 <= delay <= min(60.0, 2.0 ** (failures - 1))

        clock.now += delay / 2
        assert forwarder.step().consecutive_failures == failures, "retried during backoff"
        clock.now = status.next_attempt_at

    assert spool_contents(state) == before
    assert uploads(checkpoints) == []
    assert checkpoints.status()["forwarding"] == "retrying: 12 failed attempt(s)"

    # The store comes back on the same port.
    server = moto_factory(port)
    server.create_bucket("outage")
    status = forwarder.step()

    assert status.uploaded == 4
    assert status.pending_files == 0
    assert status.consecutive_failures == 0
    assert store_objects(store) == sorted(names)
    assert uploads(checkpoints) == sorted(names)
    puts = [line for line in server.request_log() if '"PUT /outage/p/' in line]
    assert len(puts) == 4
    assert checkpoints.status()["forwarding"] == "running"


def test_outage_server_stopped_and_restarted(tmp_path, s3_env, moto_factory, checkpoints):
    state = tmp_path / "state"
    first = moto_factory()
    first.create_bucket("restart")
    store = open_store("s3://restart/p", first.endpoint, REGION, max_attempts=1)
    clock = FakeClock()
    forwarder = Forwarder(str(state), store, checkpoints, clock=clock, rng=lambda: 1.0)
    early = spool_batches(state, 1, first_day="2026-12-01")
    assert forwarder.step().uploaded == 1

    first.stop()
    late = spool_batches(state, 3, first_day="2026-12-04")
    for _ in range(3):
        status = forwarder.step()
        assert status.uploaded == 0
        assert status.pending_files == 3
        clock.now = status.next_attempt_at

    # moto keeps its state in memory, so the restarted server needs the bucket again.
    second = moto_factory(first.port)
    second.create_bucket("restart")
    status = forwarder.step()

    assert status.uploaded == 3
    assert spool_contents(state) == {}
    assert store_objects(store) == sorted(late)
    assert uploads(checkpoints) == sorted(early + late)


def test_retry_warnings_are_rate_limited(tmp_path, s3_env, checkpoints, caplog):
    state = tmp_path / "state"
    spool_batches(state, 1)
    store = open_store("s3://bucket/p", f"http://127.0.0.1:{free_port()}", REGION,
                       max_attempts=1)
    clock = FakeClock()
    forwarder = Forwarder(str(state), store, checkpoints, min_backoff_s=1.0, max_backoff_s=4.0,
                          clock=clock, rng=lambda: 1.0)
    started = clock.now

    with caplog.at_level(logging.DEBUG, logger="clicktrail.agent.forwarder"):
        for _ in range(200):
            status = forwarder.step()
            clock.now = status.next_attempt_at

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    elapsed = clock.now - started
    assert 2 <= len(warnings) <= 1 + elapsed / RETRY_LOG_INTERVAL_S
    assert "s3://bucket/p" in warnings[0].getMessage()
    assert "still failing: 17 failed attempt(s)" in warnings[1].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_missing_bucket_stops_forwarding(tmp_path, moto_server, s3_env, checkpoints, caplog):
    state = tmp_path / "state"
    names = spool_batches(state, 2)
    before = spool_contents(state)
    bucket = "ct-missing-bucket"
    store = open_store(f"s3://{bucket}/p", moto_server.endpoint, REGION)
    clock = FakeClock()
    forwarder = Forwarder(str(state), store, checkpoints, clock=clock)

    with caplog.at_level(logging.INFO, logger="clicktrail.agent.forwarder"):
        status = forwarder.step()
        requests = len(moto_server.request_log())
        for _ in range(5):
            clock.now += 3600
            later = forwarder.step()

    assert "NO_SUCH_BUCKET" in status.permanent_error
    assert later.permanent_error == status.permanent_error
    assert later.next_attempt_at is None
    assert later.pending_files == 2
    assert len(moto_server.request_log()) == requests, "stopped forwarder sent requests"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert f"s3://{bucket}/p" in errors[0].getMessage()
    assert spool_contents(state) == before
    assert uploads(checkpoints) == []
    assert checkpoints.status()["forwarding"].startswith("stopped: ")
    assert "NO_SUCH_BUCKET" in checkpoints.status()["last_error"]

    # The operator creates the bucket and sends SIGHUP.
    moto_server.create_bucket(bucket)
    forwarder.reset()
    resumed = forwarder.step()

    assert resumed.uploaded == 2
    assert resumed.permanent_error is None
    assert store_objects(store) == sorted(names)
    assert checkpoints.status()["forwarding"] == "running"


def test_wrong_secret_stops_forwarding(tmp_path, auth_server, monkeypatch, checkpoints, caplog):
    server, bucket, users = auth_server
    secret = "wrong-secret-key-7c1e5a9b3d"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", users["writer"][0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    state = tmp_path / "state"
    spool_batches(state, 2)
    before = spool_contents(state)
    store = open_store(f"s3://{bucket}/p", server.endpoint, REGION, max_attempts=1)
    forwarder = Forwarder(str(state), store, checkpoints, clock=FakeClock())

    with caplog.at_level(logging.DEBUG):
        status = forwarder.step()

    assert "SIGNATURE_DOES_NOT_MATCH" in status.permanent_error
    assert spool_contents(state) == before
    assert uploads(checkpoints) == []
    assert secret not in caplog.text
    assert users["writer"][1] not in caplog.text
    assert secret not in status.permanent_error
    for value in checkpoints.status().values():
        assert secret not in value


def test_step_stops_after_max_step_s(tmp_path, checkpoints):
    state = tmp_path / "state"
    spool_batches(state, 5)
    store = open_store(str(tmp_path / "store"))
    clock = FakeClock()

    def ticking() -> float:
        clock.now += 4.0
        return clock.now

    forwarder = Forwarder(str(state), store, checkpoints, max_step_s=10.0, clock=ticking)

    first = forwarder.step()
    second = forwarder.step()

    assert first.uploaded == 2
    assert first.pending_files == 3
    assert second.uploaded == 2
    assert second.pending_files == 1
