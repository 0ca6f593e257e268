"""The agent's Prometheus metrics, fetched from a real /metrics server on 127.0.0.1."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator

import pytest
from clicktrail.agent.metrics import AgentMetrics, MetricsServer, start_metrics_server
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families


class CurrentRegistry:
    """A collector that serves the registry of the running test's AgentMetrics.

    One server for the module saves the half second that each server's shutdown waits.
    """

    registry: CollectorRegistry | None = None

    def collect(self):
        if self.registry is not None:
            yield from self.registry.collect()


@pytest.fixture(scope="module")
def current() -> CurrentRegistry:
    return CurrentRegistry()


@pytest.fixture(scope="module")
def module_server(current: CurrentRegistry) -> Iterator[MetricsServer]:
    registry = CollectorRegistry()
    registry.register(current)
    running = start_metrics_server(0, "127.0.0.1", registry=registry)
    yield running
    running.close()


@pytest.fixture
def metrics(current: CurrentRegistry) -> Iterator[AgentMetrics]:
    fresh = AgentMetrics(host_id="mx1")
    current.registry = fresh.registry
    yield fresh
    current.registry = None


@pytest.fixture
def server(module_server: MetricsServer, metrics: AgentMetrics) -> MetricsServer:
    return module_server


def scrape(server: MetricsServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Fetch /metrics and return {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_server_listens_on_loopback(server: MetricsServer) -> None:
    assert server.address == "127.0.0.1"
    assert server.port > 0


def test_counters_per_source_and_type(metrics: AgentMetrics, server: MetricsServer) -> None:
    metrics.add_source("tracking")
    metrics.count_lines("tracking", read=120, parsed=117, rejected=3)
    metrics.count_lines("tracking", read=5, parsed=5)
    metrics.count_events("tracking", "open", 40)
    metrics.count_events("tracking", "click", 7)
    metrics.count_events("tracking", "click")

    samples = scrape(server)

    source = (("source", "tracking"),)
    assert samples[("clicktrail_agent_lines_read_total", source)] == 125
    assert samples[("clicktrail_agent_lines_parsed_total", source)] == 122
    assert samples[("clicktrail_agent_lines_rejected_total", source)] == 3
    assert samples[("clicktrail_agent_events_written_total",
                    (("event_type", "open"), ("source", "tracking")))] == 40
    assert samples[("clicktrail_agent_events_written_total",
                    (("event_type", "click"), ("source", "tracking")))] == 8


def test_added_source_starts_at_zero(metrics: AgentMetrics, server: MetricsServer) -> None:
    metrics.add_source("mta")
    samples = scrape(server)

    assert samples[("clicktrail_agent_lines_read_total", (("source", "mta"),))] == 0
    assert samples[("clicktrail_agent_lines_rejected_total", (("source", "mta"),))] == 0
    assert samples[("clicktrail_agent_lag_bytes", (("file", "current"), ("source", "mta")))] == 0
    assert samples[("clicktrail_agent_lag_bytes", (("file", "rotated"), ("source", "mta")))] == 0


def test_removed_source_disappears(metrics: AgentMetrics, server: MetricsServer) -> None:
    metrics.add_source("old")
    metrics.count_events("old", "sent", 2)
    metrics.remove_source("old")

    names = {(name, labels) for name, labels in scrape(server)}
    assert not [key for key in names if ("source", "old") in key[1]]


def test_unknown_event_type_counts_as_other(metrics: AgentMetrics, server: MetricsServer) -> None:
    metrics.count_events("tracking", "pageview?id=123", 2)
    samples = scrape(server)

    assert samples[("clicktrail_agent_events_written_total",
                    (("event_type", "other"), ("source", "tracking")))] == 2
    assert not [key for key in samples if ("event_type", "pageview?id=123") in key[1]]


def test_lag_gauges_per_file_kind(metrics: AgentMetrics, server: MetricsServer) -> None:
    metrics.set_lag("tracking", current_bytes=4096, rotated_bytes=100)
    metrics.set_lag("tracking", current_bytes=512, rotated_bytes=0)
    samples = scrape(server)

    lag = "clicktrail_agent_lag_bytes"
    assert samples[(lag, (("file", "current"), ("source", "tracking")))] == 512
    assert samples[(lag, (("file", "rotated"), ("source", "tracking")))] == 0


def test_spool_age_grows_between_updates(metrics: AgentMetrics, server: MetricsServer) -> None:
    assert scrape(server)[("clicktrail_agent_spool_oldest_age_seconds", ())] == 0

    metrics.set_spool_limit(1 << 30)
    metrics.set_spool(total_bytes=2_000_000, oldest_mtime=time.time() - 300)
    samples = scrape(server)

    assert samples[("clicktrail_agent_spool_bytes", ())] == 2_000_000
    assert samples[("clicktrail_agent_spool_max_bytes", ())] == 1 << 30
    assert 300 <= samples[("clicktrail_agent_spool_oldest_age_seconds", ())] < 360


def test_upload_counters_and_timestamp(metrics: AgentMetrics, server: MetricsServer) -> None:
    metrics.record_upload_failure(transient=True)
    metrics.record_upload_retry()
    metrics.record_upload(size_bytes=1500, at=1_796_000_000.0)
    metrics.record_upload(size_bytes=500, at=1_796_000_060.0)
    samples = scrape(server)

    assert samples[("clicktrail_agent_uploads_total", ())] == 2
    assert samples[("clicktrail_agent_upload_bytes_total", ())] == 2000
    assert samples[("clicktrail_agent_upload_retries_total", ())] == 1
    assert samples[("clicktrail_agent_upload_failures_total", (("error", "transient"),))] == 1
    assert samples[("clicktrail_agent_upload_failures_total", (("error", "permanent"),))] == 0
    assert samples[("clicktrail_agent_last_upload_timestamp_seconds", ())] == 1_796_000_060.0
    assert samples[("clicktrail_agent_forwarding_stopped", ())] == 0


def test_permanent_failure_stops_forwarding(metrics: AgentMetrics, server: MetricsServer) -> None:
    metrics.record_upload_failure(transient=False)
    samples = scrape(server)
    assert samples[("clicktrail_agent_upload_failures_total", (("error", "permanent"),))] == 1
    assert samples[("clicktrail_agent_forwarding_stopped", ())] == 1

    metrics.record_upload(size_bytes=10)
    assert scrape(server)[("clicktrail_agent_forwarding_stopped", ())] == 0


def test_build_info_names_host(server: MetricsServer) -> None:
    samples = scrape(server)
    info = [labels for name, labels in samples if name == "clicktrail_agent_build_info"]
    assert len(info) == 1
    assert ("host_id", "mx1") in info[0]


def test_registries_are_independent(server: MetricsServer) -> None:
    other = AgentMetrics(host_id="mx2")
    other.count_lines("tracking", read=9)

    samples = scrape(server)
    assert ("clicktrail_agent_lines_read_total", (("source", "tracking"),)) not in samples


def test_server_on_ipv6_loopback() -> None:
    metrics = AgentMetrics()
    try:
        running = start_metrics_server(0, "::1", registry=metrics.registry)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback on this machine: {exc}")
    try:
        with urllib.request.urlopen(f"http://[::1]:{running.port}/metrics", timeout=5) as response:
            assert b"clicktrail_agent_uploads_total" in response.read()
    finally:
        running.close()


@pytest.mark.parametrize(
    ("address", "message"),
    [
        pytest.param("0.0.0.0", "is not a loopback address", id="any-ipv4"),
        pytest.param("::", "is not a loopback address", id="any-ipv6"),
        pytest.param("192.0.2.10", "is not a loopback address", id="public"),
        pytest.param("localhost", "expected a loopback IP address", id="host-name"),
    ],
)
def test_server_rejects_other_addresses(address: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        start_metrics_server(0, address)


def test_server_rejects_port_out_of_range() -> None:
    with pytest.raises(ValueError, match="expected 0 to 65535, got 70000"):
        start_metrics_server(70000)
