"""The daemon through a store outage: the spool fills, reading pauses, nothing is dropped, and
every line reaches the S3-compatible store exactly once when it comes back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.fs as pafs
from clicktrail.agent.checkpoint import CheckpointStore

from . import s3_server
from .notify_socket import NotifySocket
from .numbered import append, write_config
from .s3_server import REGION, free_port

moto_factory = s3_server.moto_factory
s3_env = s3_server.s3_env
BUCKET = "clicktrail-outage"


def s3_numbers(endpoint: str) -> list[int]:
    filesystem = pafs.S3FileSystem(endpoint_override=endpoint.split("://", 1)[1],
                                   scheme="http", region=REGION)
    try:
        dataset = ds.dataset(f"{BUCKET}/store/events", filesystem=filesystem, format="parquet",
                             partitioning="hive")
    except (FileNotFoundError, OSError):
        return []
    table = dataset.to_table(columns=["recipient_id", "event_id"])
    assert len(set(table.column("event_id").to_pylist())) == table.num_rows, "duplicate event_id"
    return sorted(int(n) for n in table.column("recipient_id").to_pylist())


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def committed_offset(state_dir: Path) -> int:
    checkpoints = CheckpointStore(str(state_dir))
    try:
        return sum(cp.offset for cp in checkpoints.files())
    finally:
        checkpoints.close()


def test_outage_pauses_reading_and_loses_nothing(tmp_path, moto_factory, s3_env):
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    config = write_config(tmp_path, flush_interval_s=0.2, rescan_interval_s=0.2,
                          max_batch_bytes=65536, max_spool_bytes=65536)
    text = config.read_text().replace(f'url = "{tmp_path / "store"}"',
                                      f'url = "s3://{BUCKET}/store"\n'
                                      f'endpoint_override = "{endpoint}"')
    config.write_text(text)
    log = tmp_path / "logs" / "t.log"
    append(log, range(0, 6000))

    notify = NotifySocket(tmp_path / "notify.sock")
    agent_log = tmp_path / "agent.log"
    command = [sys.executable, "-m", "clicktrail.agent.cli", "-v", "run", "--config", str(config)]
    with agent_log.open("ab") as output:
        agent = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                 env=dict(os.environ, NOTIFY_SOCKET=str(notify.path)))
    try:
        notify.wait_for("READY=1", timeout=60)
        wait_until(lambda: "reading paused" in agent_log.read_text(), 60, "reading to pause")
        paused_at = committed_offset(tmp_path / "state")
        time.sleep(1.5)
        assert committed_offset(tmp_path / "state") == paused_at
        assert paused_at < log.stat().st_size

        server = moto_factory(port)
        server.create_bucket(BUCKET)
        agent.send_signal(signal.SIGHUP)  # a reload also retries the store at once
        wait_until(lambda: len(s3_numbers(endpoint)) >= 6000, 90, "all lines in the store")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
    finally:
        notify.close()
        if agent.poll() is None:
            agent.kill()
            agent.wait()

    output = agent_log.read_text()
    assert "upload of events/event_date=2026-12-04/" in output
    assert "reading resumed" in output
    assert s3_numbers(endpoint) == list(range(6000))
