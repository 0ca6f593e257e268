"""The agent as a service: `clicktrail-agent run`.

One loop in the main thread: wait for a file change (watchdog) or a timeout, read every source,
seal batches that reached max_batch_bytes or flush_interval_s, let the forwarder upload, tell
systemd the loop is alive. When the spool holds max_spool_bytes the loop stops reading until
uploads drain it: the log files are the buffer meanwhile.

Signals only set flags and wake the loop: SIGTERM and SIGINT seal every open batch, commit and
exit; SIGHUP reloads the config (a bad new config is logged and the old one kept).
"""

from __future__ import annotations

import os

# pyarrow 26 picks its C++ default memory pool when it is imported, so this must come before
# the imports below. Its own default, mimalloc, keeps the freed memory of earlier batches: see
# use_memory_pool. An operator's choice in the environment wins.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")

import logging  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from types import FrameType  # noqa: E402

import pyarrow as pa  # noqa: E402
from watchdog.events import FileSystemEvent, FileSystemEventHandler  # noqa: E402
from watchdog.observers import Observer  # noqa: E402

from . import notify, spool, tailer  # noqa: E402
from .checkpoint import CheckpointStore  # noqa: E402
from .config import Config, ConfigError, load_config  # noqa: E402
from .forwarder import Forwarder, ForwardStatus  # noqa: E402
from .metrics import AgentMetrics, MetricsServer, start_metrics_server  # noqa: E402
from .pipeline import PassResult, SourceTail, discard_uncommitted  # noqa: E402
from .store import open_store  # noqa: E402

log = logging.getLogger(__name__)

# Upper bound of one wait, so that the watchdog keep-alive and age-based flushes stay on time
# even when no file changes.
MAX_WAIT_S = 5.0
# Time the stop sequence may spend uploading after the last commit; the rest waits in the spool.
STOP_UPLOAD_BUDGET_S = 5.0


# Arrow memory pools by the names ARROW_DEFAULT_MEMORY_POOL takes.
MEMORY_POOLS = {"jemalloc": pa.jemalloc_memory_pool, "mimalloc": pa.mimalloc_memory_pool,
                "system": pa.system_memory_pool}


def use_memory_pool() -> None:
    """Move pyarrow's Python-level calls to the pool that ARROW_DEFAULT_MEMORY_POOL names.

    The variable works alone when it is set before pyarrow's import, as `clicktrail-agent run`
    does. If something imported pyarrow first, this moves most allocations to that pool. Tailing
    a log at 20,000 lines/s peaked at 165 MiB RSS with mimalloc (pyarrow's default), 145 to 148
    MiB with this call alone and 128 to 135 MiB with jemalloc from the start
    (bench/agent_memory.py).
    """
    requested = os.environ.get("ARROW_DEFAULT_MEMORY_POOL", "")
    if pa.default_memory_pool().backend_name == requested:
        return
    if requested not in MEMORY_POOLS:
        log.warning("unknown ARROW_DEFAULT_MEMORY_POOL %r (expected one of %s); keeping the %s "
                    "memory pool", requested, ", ".join(MEMORY_POOLS),
                    pa.default_memory_pool().backend_name)
        return
    try:
        pool = MEMORY_POOLS[requested]()
    except NotImplementedError:
        log.info("pyarrow was built without %s; keeping the %s memory pool", requested,
                 pa.default_memory_pool().backend_name)
        return
    pa.set_memory_pool(pool)


class _Wake(FileSystemEventHandler):
    def __init__(self, event: threading.Event):
        self.event = event

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.event.set()


class Daemon:
    def __init__(self, config_path: str, config: Config):
        self.config_path = config_path
        self.config = config
        self.wake = threading.Event()
        self.stop_requested = False
        self.reload_requested = False
        self.observer: Observer | None = None
        self.checkpoints = CheckpointStore(config.agent.state_dir)
        self.tails: list[SourceTail] = []
        self.forwarder: Forwarder | None = None
        self.forward_status: ForwardStatus | None = None
        self.reading_paused = False
        self.metrics = AgentMetrics(host_id=config.agent.host_id)
        self.metrics_server: MetricsServer | None = None

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit status."""
        use_memory_pool()
        self._install_signal_handlers()
        discard_uncommitted(self.config.agent.state_dir, self.checkpoints)
        self._start(self.config)
        self._serve_metrics(self.config.agent.metrics_port)
        notify.ready()
        log.info("agent %s started: %d source(s), store %s", self.config.agent.host_id,
                 len(self.config.sources), self.config.store.url)

        last_scan = 0.0
        while not self.stop_requested:
            timeout = self._wait_timeout(last_scan)
            self.wake.wait(timeout)
            self.wake.clear()
            if self.reload_requested:
                self._reload()
            last_scan = time.monotonic()
            self.step()
            tailer.warnings.flush()
            notify.watchdog()

        self._shutdown()
        return 0

    def step(self) -> PassResult:
        """Read, seal what is due, upload: one turn of the loop."""
        result = PassResult()
        agent = self.config.agent
        now = time.monotonic()
        for tail in self.tails:
            while not self._spool_full():
                if not tail.poll(result):
                    break
                tail.flush(result)
            if tail.pending_bytes >= agent.max_batch_bytes or (
                    tail.unflushed_age(now) >= agent.flush_interval_s):
                tail.flush(result)
            elif tail.oldest_unflushed is None and any(b.changed for b in tail.batches.values()):
                tail.flush(result)

        if self.forwarder is not None:
            self.forward_status = self.forwarder.step()
            notify.status(_status_line(result, self.forward_status, self.reading_paused))
        self._publish(result)
        return result

    def _spool_full(self) -> bool:
        """Tell whether the spool reached max_spool_bytes; log when reading pauses or resumes."""
        agent = self.config.agent
        spool_bytes = spool.spool_bytes(agent.state_dir)
        full = spool_bytes >= agent.max_spool_bytes
        if full != self.reading_paused:
            self.reading_paused = full
            if full:
                log.warning("spool contains %d bytes (max_spool_bytes %d): reading paused until "
                            "uploads drain it; the log files keep the lines meanwhile",
                            spool_bytes, agent.max_spool_bytes)
            else:
                log.info("spool below max_spool_bytes again: reading resumed")
        return full

    def _publish(self, result: PassResult) -> None:
        """Update the Prometheus metrics after one turn of the loop."""
        for source, counters in result.counters.items():
            rejected = counters.get("rejected", 0)
            lines = counters.get("lines", 0)
            self.metrics.count_lines(source, read=lines, parsed=max(lines - rejected, 0),
                                     rejected=rejected)
            self.metrics.count_guarded(source, counters)
        for source, by_type in result.events_by_type.items():
            for event_type, count in by_type.items():
                self.metrics.count_events(source, event_type, count)
        for tail in self.tails:
            self.metrics.set_lag(tail.source.name, *tail.lag_bytes())
        total, oldest = spool.spool_usage(self.config.agent.state_dir)
        self.metrics.set_spool(total, oldest)

    def _serve_metrics(self, port: int) -> None:
        if not port:
            return
        try:
            self.metrics_server = start_metrics_server(port, registry=self.metrics.registry)
        except OSError as exc:
            log.error("cannot serve metrics on 127.0.0.1:%d, running without them: %s", port, exc)
            return
        log.info("metrics on http://127.0.0.1:%d/metrics", port)

    def _wait_timeout(self, last_scan: float) -> float:
        agent = self.config.agent
        now = time.monotonic()
        timeout = min(MAX_WAIT_S, max(0.0, last_scan + agent.rescan_interval_s - now))
        for tail in self.tails:
            if tail.oldest_unflushed is not None:
                timeout = min(timeout, max(0.0, agent.flush_interval_s - tail.unflushed_age(now)))
        interval = notify.watchdog_interval_s()
        if interval:
            timeout = min(timeout, interval / 2)
        status = self.forward_status
        if status is not None and status.next_attempt_at is not None:
            timeout = min(timeout, max(0.05, status.next_attempt_at - now))
        elif status is not None and status.pending_files and not status.permanent_error:
            timeout = 0.05  # the last step stopped at max_step_s: go on uploading
        return max(timeout, 0.05)

    def _start(self, config: Config) -> None:
        self.tails = [SourceTail(config, source, self.checkpoints) for source in config.sources]
        for source in config.sources:
            self.metrics.add_source(source.name)
        self.metrics.set_spool_limit(config.agent.max_spool_bytes)
        # One attempt per request: the forwarder's backoff does the retrying, and a request that
        # retries inside the SDK would hold up the loop and its watchdog pings.
        store = open_store(config.store.url, config.store.endpoint_override, config.store.region,
                           max_attempts=1)
        self.forwarder = Forwarder(config.agent.state_dir, store, self.checkpoints,
                                   metrics=self.metrics)
        self._watch(config)

    def _watch(self, config: Config) -> None:
        """Watch the folders of every source glob; a periodic rescan backs the watches up."""
        observer = Observer()
        handler = _Wake(self.wake)
        folders = {os.path.dirname(pattern) or "." for source in config.sources
                   for pattern in source.paths}
        for folder in sorted(folders):
            if os.path.isdir(folder):
                observer.schedule(handler, folder, recursive=False)
            else:
                log.warning("folder %s of a source glob does not exist; the rescan every %.0f s "
                            "will find files once it does", folder, config.agent.rescan_interval_s)
        observer.daemon = True
        observer.start()
        self.observer = observer

    def _stop_watching(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
            self.observer = None

    def _reload(self) -> None:
        self.reload_requested = False
        notify.reloading()
        try:
            self._apply_new_config()
        finally:
            notify.ready()

    def _apply_new_config(self) -> None:
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload failed, keeping the running config: %s", exc)
            return
        if config.agent.state_dir != self.config.agent.state_dir:
            log.error("reload failed, keeping the running config: %s: agent.state_dir cannot "
                      "change while running; restart the service instead", self.config_path)
            return

        log.info("reloading config %s", self.config_path)
        result = PassResult()
        for tail in self.tails:
            tail.flush(result)
            tail.close()
        self._stop_watching()
        for source in self.config.sources:
            if source.name not in {s.name for s in config.sources}:
                self.metrics.remove_source(source.name)
        self.config = config
        self._start(config)
        log.info("config reloaded: %d source(s), store %s", len(config.sources), config.store.url)

    def _shutdown(self) -> None:
        notify.stopping()
        # Sealing and the last uploads may outlast a short TimeoutStopSec; ask for room.
        notify.extend_timeout(int((STOP_UPLOAD_BUDGET_S + 20) * 1_000_000))
        log.info("stopping: sealing open batches")
        result = PassResult()
        for tail in self.tails:
            tail.flush(result)
            tail.close()
        self._stop_watching()

        deadline = time.monotonic() + STOP_UPLOAD_BUDGET_S
        while self.forwarder is not None and time.monotonic() < deadline:
            status = self.forwarder.step()
            if (status.pending_files == 0 or status.permanent_error
                    or status.next_attempt_at is not None):
                break
        self.checkpoints.close()
        tailer.warnings.flush(force=True)
        if self.metrics_server is not None:
            self.metrics_server.close()
        log.info("stopped: %d events sealed at stop", result.events)

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True
        self.wake.set()

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested = True
        self.wake.set()


def _status_line(result: PassResult, status: ForwardStatus, paused: bool) -> str:
    text = f"{result.events} events sealed, {status.pending_files} spool files pending"
    if paused:
        text += ", reading paused (spool full)"
    if status.permanent_error:
        text += f", forwarding stopped: {status.permanent_error}"
    return text


def run(config_path: str) -> int:
    """Load the config and run the daemon; ConfigError reaches the caller (exit status 78)."""
    config = load_config(config_path)
    return Daemon(config_path, config).run()
