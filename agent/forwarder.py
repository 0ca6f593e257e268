"""Upload sealed spool files to the store, record each upload, then delete the spool file.

A crash between the upload and the delete uploads the file again under the same name, which
replaces the object, so the store never contains two copies of a batch.

forward_pending serves `clicktrail-agent once`: one pass, the first error is raised. Forwarder
serves the daemon loop. On a transient error it backs off and retries forever. On a permanent
error it stops forwarding until reset() (SIGHUP) or a restart. In both, a spool file is deleted
only after its upload succeeded and was recorded, so an outage drops nothing.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import spool
from .checkpoint import CheckpointStore
from .metrics import AgentMetrics
from .store import Store, StoreError, upload_file

log = logging.getLogger(__name__)

# While the store stays unreachable, one WARNING per this many seconds sums up the attempts.
RETRY_LOG_INTERVAL_S = 60.0

# Doubling stops here, because 2**30 times any sensible min_backoff_s exceeds max_backoff_s.
_MAX_BACKOFF_EXPONENT = 30


def forward_pending(state_dir: str, store: Store, checkpoints: CheckpointStore) -> int:
    """Upload every sealed spool file once; return how many were uploaded.

    Raises StoreError on the first failure, leaving that file and the rest in the spool.
    """
    uploaded = 0
    for relative in spool.pending(state_dir):
        try:
            size = _forward_one(state_dir, store, checkpoints, relative)
        except StoreError as exc:
            checkpoints.set_status("last_error", str(exc))
            raise
        uploaded += size is not None
    return uploaded


def _forward_one(state_dir: str, store: Store, checkpoints: CheckpointStore,
                 relative: str) -> int | None:
    """Upload one spool file, record it, delete it; return its size, None if it vanished."""
    local = os.path.join(spool.spool_root(state_dir), relative)
    try:
        size = upload_file(store, local, relative)
    except FileNotFoundError:
        # Another process (a `once` run beside the daemon) forwarded and deleted it.
        log.debug("spool file %s vanished before its upload to %s", relative, store.url)
        return None

    checkpoints.record_upload(relative, size)
    os.unlink(local)
    log.info("uploaded %s (%d bytes) to %s", relative, size, store.url)
    return size


@dataclass(frozen=True)
class ForwardStatus:
    """The outcome of one Forwarder.step and the spool left behind it.

    next_attempt_at is a time on the forwarder's clock (time.monotonic by default). It is None
    when the next step will try at once or when forwarding is stopped. permanent_error is the
    error text once forwarding stopped, else None.
    """

    uploaded: int
    pending_files: int
    pending_bytes: int
    next_attempt_at: float | None
    permanent_error: str | None
    consecutive_failures: int = 0


class Forwarder:
    """Forward the spool from the daemon loop, one bounded step per loop iteration."""

    def __init__(self, state_dir: str, store: Store, checkpoints: CheckpointStore, *,
                 min_backoff_s: float = 1.0, max_backoff_s: float = 300.0,
                 max_step_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random,
                 metrics: AgentMetrics | None = None):
        if not 0 < min_backoff_s <= max_backoff_s:
            raise ValueError(f"invalid backoff: expected 0 < min_backoff_s <= max_backoff_s, "
                             f"got {min_backoff_s} and {max_backoff_s}")
        self.state_dir = state_dir
        self.store = store
        self.checkpoints = checkpoints
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_step_s = max_step_s
        self.clock = clock
        self.rng = rng
        self.metrics = metrics
        self._failures = 0
        self._next_attempt_at: float | None = None
        self._permanent_error: str | None = None
        self._last_warning_at: float | None = None
        self._failures_since_warning = 0
        # A restart clears a stop recorded by the previous process.
        checkpoints.set_status("forwarding", "running")

    def step(self) -> ForwardStatus:
        """Upload pending spool files unless stopped or waiting out a backoff.

        Stops starting new uploads after max_step_s, so that the daemon loop keeps its
        watchdog pings going while a large backlog drains; the next step continues.
        """
        if self._permanent_error is not None:
            return self.status(uploaded=0)

        started = self.clock()
        if self._next_attempt_at is not None and started < self._next_attempt_at:
            return self.status(uploaded=0)

        uploaded = 0
        if self._failures and self.metrics is not None:
            self.metrics.record_upload_retry()
        try:
            for relative in spool.pending(self.state_dir):
                if self.clock() - started >= self.max_step_s:
                    break
                size = _forward_one(self.state_dir, self.store, self.checkpoints, relative)
                if size is not None:
                    uploaded += 1
                    if self.metrics is not None:
                        self.metrics.record_upload(size)
        except StoreError as exc:
            if self.metrics is not None:
                self.metrics.record_upload_failure(transient=exc.transient)
            if exc.transient:
                self._back_off(exc)
            else:
                self._stop(exc)
            return self.status(uploaded)

        self._recover()
        return self.status(uploaded)

    def reset(self) -> None:
        """Forget a permanent error and any backoff, so that the next step tries at once."""
        if self._permanent_error is not None:
            log.info("forwarding to %s resumed after reset", self.store.url)
            self.checkpoints.set_status("forwarding", "running")
        self._permanent_error = None
        self._failures = 0
        self._next_attempt_at = None
        self._last_warning_at = None
        self._failures_since_warning = 0

    def status(self, uploaded: int = 0) -> ForwardStatus:
        """Return the forwarding state and the spool's pending files and bytes."""
        files, total = _pending_size(self.state_dir)
        return ForwardStatus(uploaded=uploaded, pending_files=files, pending_bytes=total,
                             next_attempt_at=self._next_attempt_at,
                             permanent_error=self._permanent_error,
                             consecutive_failures=self._failures)

    def backoff_s(self, failures: int) -> float:
        """Return the wait after the given count of consecutive failures (1 or more).

        Full jitter (a uniform draw up to the exponential cap) spreads the retries of many
        agents after a shared outage. The floor min_backoff_s keeps the loop from spinning.
        """
        exponent = min(failures - 1, _MAX_BACKOFF_EXPONENT)
        cap = min(self.max_backoff_s, self.min_backoff_s * 2 ** exponent)
        return max(self.min_backoff_s, self.rng() * cap)

    def _back_off(self, exc: StoreError) -> None:
        now = self.clock()
        self._failures += 1
        delay = self.backoff_s(self._failures)
        self._next_attempt_at = now + delay
        self.checkpoints.set_status("last_error", str(exc))
        self.checkpoints.set_status("forwarding", f"retrying: {self._failures} failed attempt(s)")
        log.debug("upload to %s failed (attempt %d), next in %.1f s: %s", self.store.url,
                  self._failures, delay, exc)
        self._warn_rate_limited(now, delay, exc)

    def _warn_rate_limited(self, now: float, delay: float, exc: StoreError) -> None:
        self._failures_since_warning += 1
        if self._last_warning_at is None:
            log.warning("upload of %s to %s failed, retrying in %.1f s; the spool keeps "
                        "every batch: %s", exc.object_name, self.store.url, delay, exc)
        elif now - self._last_warning_at >= RETRY_LOG_INTERVAL_S:
            log.warning("store %s still failing: %d failed attempt(s) in the last %.0f s, "
                        "%d in a row, retrying in %.1f s; last error: %s", self.store.url,
                        self._failures_since_warning, now - self._last_warning_at,
                        self._failures, delay, exc)
        else:
            return
        self._last_warning_at = now
        self._failures_since_warning = 0

    def _stop(self, exc: StoreError) -> None:
        files, total = _pending_size(self.state_dir)
        self._permanent_error = str(exc)
        self._next_attempt_at = None
        self.checkpoints.set_status("last_error", str(exc))
        self.checkpoints.set_status("forwarding", f"stopped: {exc}")
        log.error("forwarding to %s stopped, %d spool file(s) (%d bytes) kept: %s. Fix the "
                  "store, bucket or credentials, then send SIGHUP or restart the agent",
                  self.store.url, files, total, exc)

    def _recover(self) -> None:
        if self._failures:
            log.info("store %s reachable again after %d failed attempt(s)", self.store.url,
                     self._failures)
            self.checkpoints.set_status("forwarding", "running")
        self._failures = 0
        self._next_attempt_at = None
        self._last_warning_at = None
        self._failures_since_warning = 0


def _pending_size(state_dir: str) -> tuple[int, int]:
    files = 0
    total = 0
    root = spool.spool_root(state_dir)
    for relative in spool.pending(state_dir):
        try:
            total += os.path.getsize(os.path.join(root, relative))
        except FileNotFoundError:
            continue
        files += 1
    return files, total
