"""Prometheus metrics of the agent, served on a loopback port when [agent] metrics_port is set.

Every metric lives in the AgentMetrics' own CollectorRegistry, not in prometheus_client's
global one, so that several agents (or tests) in one process do not collide. Labels take only
bounded values: source names from the config, event types from the schema, and the fixed words
"current" and "rotated" in place of file paths, whose rotated names would grow without end.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, ProcessCollector
from prometheus_client.exposition import start_http_server

from .schema import EVENT_TYPES

NAMESPACE = "clicktrail_agent"
FILE_KINDS = ("current", "rotated")
UPLOAD_ERROR_KINDS = ("transient", "permanent")
# Label value for an event type the schema does not list, so a parser bug cannot add labels.
OTHER_EVENT_TYPE = "other"


class AgentMetrics:
    """The agent's counters and gauges, updated by the daemon loop and the forwarder.

    All methods are thread-safe, because prometheus_client's metrics are.
    """

    def __init__(self, host_id: str = "", registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self._spool_oldest_mtime: float | None = None
        self._define_counters()
        self._define_gauges()
        ProcessCollector(registry=self.registry)
        Info("build", "Version and host id of this agent.", namespace=NAMESPACE,
             registry=self.registry).info({"version": _package_version(), "host_id": host_id})

    def _define_counters(self) -> None:
        def counter(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, documentation, labels, namespace=NAMESPACE, registry=self.registry)

        self.lines_read = counter("lines_read", "Complete lines read from log files.", ("source",))
        self.lines_parsed = counter("lines_parsed", "Lines parsed without error (events or not).",
                                    ("source",))
        self.lines_rejected = counter("lines_rejected", "Lines that did not parse, written to "
                                      "rejects/.", ("source",))
        self.events_written = counter("events_written", "Events sealed into the spool.",
                                      ("source", "event_type"))
        self.events_opted_out = counter("events_opted_out", "Events of recipients on the opt-out "
                                        "list, dropped before the spool.", ("source",))
        self.compressed_files_stopped = counter(
            "compressed_files_stopped", "Rotated .gz or .zst files given up at "
            "max_decompressed_bytes or max_compression_ratio (decompression bombs).", ("source",))
        self.uploads = counter("uploads", "Spool files uploaded to the store.")
        self.upload_bytes = counter("upload_bytes", "Bytes of spool files uploaded to the store.")
        self.upload_retries = counter("upload_retries", "Upload attempts that repeat a failed one.")
        self.upload_failures = counter("upload_failures", "Failed upload attempts, by whether a "
                                       "retry can help.", ("error",))
        for kind in UPLOAD_ERROR_KINDS:
            self.upload_failures.labels(error=kind)

    def _define_gauges(self) -> None:
        def gauge(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, documentation, labels, namespace=NAMESPACE, registry=self.registry)

        self.lag_bytes = gauge("lag_bytes", "Bytes written to log files and not read yet; file is "
                               "current (the live file) or rotated (older copies).",
                               ("source", "file"))
        self.spool_bytes = gauge("spool_bytes", "Bytes of sealed batches waiting for upload.")
        self.spool_max_bytes = gauge("spool_max_bytes", "max_spool_bytes of the config: at this "
                                     "spool size the agent stops reading.")
        self.spool_oldest_age_seconds = gauge("spool_oldest_age_seconds", "Age of the oldest "
                                              "spool file, 0 when the spool is empty.")
        self.spool_oldest_age_seconds.set_function(self._spool_oldest_age)
        self.last_upload_timestamp_seconds = gauge("last_upload_timestamp_seconds", "Unix time "
                                                   "of the last successful upload, 0 before it.")
        self.forwarding_stopped = gauge("forwarding_stopped", "1 while a permanent store error "
                                        "stops uploads, else 0.")

    def add_source(self, source: str) -> None:
        """Create a source's series at 0, so that rate() and alerts see them before any line."""
        self.lines_read.labels(source=source)
        self.lines_parsed.labels(source=source)
        self.lines_rejected.labels(source=source)
        self.events_opted_out.labels(source=source)
        self.compressed_files_stopped.labels(source=source)
        for kind in FILE_KINDS:
            self.lag_bytes.labels(source=source, file=kind)

    def remove_source(self, source: str) -> None:
        """Drop every series of a source that a config reload removed."""
        for metric in (self.lines_read, self.lines_parsed, self.lines_rejected,
                       self.events_opted_out, self.compressed_files_stopped):
            _remove(metric, source)
        for kind in FILE_KINDS:
            _remove(self.lag_bytes, source, kind)
        for event_type in (*EVENT_TYPES, OTHER_EVENT_TYPE):
            _remove(self.events_written, source, event_type)

    def count_lines(self, source: str, read: int = 0, parsed: int = 0, rejected: int = 0) -> None:
        """Add the lines of one read or batch to the source's counters."""
        if read:
            self.lines_read.labels(source=source).inc(read)
        if parsed:
            self.lines_parsed.labels(source=source).inc(parsed)
        if rejected:
            self.lines_rejected.labels(source=source).inc(rejected)

    def count_guarded(self, source: str, counters: dict[str, int]) -> None:
        """Add what a turn's defences caught: opted-out events and compressed files given up."""
        if counters.get("opted_out"):
            self.events_opted_out.labels(source=source).inc(counters["opted_out"])
        if counters.get("compressed_files_stopped"):
            self.compressed_files_stopped.labels(source=source).inc(
                counters["compressed_files_stopped"])

    def count_events(self, source: str, event_type: str, count: int = 1) -> None:
        """Add events of one type that a sealed batch holds."""
        if event_type not in EVENT_TYPES:
            event_type = OTHER_EVENT_TYPE
        self.events_written.labels(source=source, event_type=event_type).inc(count)

    def set_lag(self, source: str, current_bytes: int, rotated_bytes: int) -> None:
        """Set the unread bytes of the live file and the sum over the source's rotated copies."""
        self.lag_bytes.labels(source=source, file="current").set(current_bytes)
        self.lag_bytes.labels(source=source, file="rotated").set(rotated_bytes)

    def set_spool_limit(self, max_bytes: int) -> None:
        """Publish [agent] max_spool_bytes, at start and after each reload."""
        self.spool_max_bytes.set(max_bytes)

    def set_spool(self, total_bytes: int, oldest_mtime: float | None) -> None:
        """Set the spool size and the modification time (Unix time) of its oldest file.

        The age is computed at each scrape, so it keeps growing while uploads are stuck even
        if this method is not called again.
        """
        self.spool_bytes.set(total_bytes)
        self._spool_oldest_mtime = oldest_mtime

    def _spool_oldest_age(self) -> float:
        oldest = self._spool_oldest_mtime
        return max(time.time() - oldest, 0.0) if oldest is not None else 0.0

    def record_upload(self, size_bytes: int, at: float | None = None) -> None:
        """Count one successful upload; at is its Unix time (default: now)."""
        self.uploads.inc()
        self.upload_bytes.inc(size_bytes)
        self.last_upload_timestamp_seconds.set(time.time() if at is None else at)
        self.forwarding_stopped.set(0)

    def record_upload_failure(self, transient: bool) -> None:
        """Count one failed upload attempt; a permanent one marks forwarding as stopped."""
        self.upload_failures.labels(error="transient" if transient else "permanent").inc()
        if not transient:
            self.forwarding_stopped.set(1)

    def record_upload_retry(self) -> None:
        """Count one attempt that repeats a failed upload."""
        self.upload_retries.inc()


def _remove(metric: Counter | Gauge, *label_values: str) -> None:
    try:
        metric.remove(*label_values)
    except KeyError:
        pass


def _package_version() -> str:
    try:
        return version("clicktrail")
    except PackageNotFoundError:
        return "unknown"


@dataclass
class MetricsServer:
    """A running /metrics HTTP server; close() stops it."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def address(self) -> str:
        return str(self.server.server_address[0])

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self, timeout_s: float = 5.0) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout_s)


def start_metrics_server(port: int, address: str = "127.0.0.1",
                         registry: CollectorRegistry | None = None) -> MetricsServer:
    """Serve registry's metrics at http://address:port/metrics in a daemon thread.

    address must be a loopback IP literal (127.0.0.0/8 or ::1), because the server has no
    authentication and the metrics name sources and hosts. A scraper on another machine goes
    through a reverse proxy or an SSH tunnel. Port 0 picks a free port (for tests; the config
    value 0 means no server at all). Raises ValueError for a non-loopback address and OSError
    when the port cannot be bound.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"metrics address: expected a loopback IP address such as 127.0.0.1 "
                         f"or ::1, got {address!r}") from None
    if not ip.is_loopback:
        raise ValueError(f"metrics address: {address} is not a loopback address; the metrics "
                         "server listens on 127.0.0.1 or ::1 only")
    if not 0 <= port <= 65535:
        raise ValueError(f"metrics port: expected 0 to 65535, got {port}")

    if registry is None:
        registry = CollectorRegistry()
    server, thread = start_http_server(port, addr=address, registry=registry)
    return MetricsServer(server=server, thread=thread)
