"""The daemon's Prometheus endpoint: ``Pipeline.stats()`` as metrics, read at scrape time.

Why a custom collector and not counters updated by the pipeline: the listen loop already
keeps every figure (it publishes them on the MQTT ``stats`` topic), so the collector reads
that same dict when Prometheus scrapes, and the hot path pays nothing: no metric objects, no
locks, no label lookups per window. One source for both outputs also means the stats topic
and the metrics never disagree.

Opt-in (``metrics: {enabled: true}``) and bound to 127.0.0.1 by default: the endpoint has no
authentication, and what it shows (stream names, scores, states) is the plant's business.
A port that cannot be bound is logged and the daemon goes on monitoring: observability must
never cost alerting. The HTTP server is prometheus_client's own, in daemon threads.

Metric names (all ``edge_asd_``; per-stream ones carry the label ``stream``):

=============================================  ======================================================
``stream_windows_total``                        windows scored
``stream_skipped_windows_total``                windows not scored in time (the engine fell behind)
``stream_gapped_windows_total``                 windows not scored because their audio had a gap
``stream_faults_total`` / ``stream_events_total``  fault entries / anomaly events opened
``stream_capture_{overflows,gaps,restarts}_total``  capture problems
``stream_score`` / ``stream_threshold``         last score and the threshold it is compared with
``stream_anomaly`` / ``stream_enabled``         1 while an event is open / while the stream is on
``stream_status{status=...}``                   1 for the published status, 0 for the others
``stream_level_dbfs`` / ``stream_peak_dbfs``    input level of the last window
``stream_queue_seconds``                        audio buffered but not yet scored
``outbox_depth``                                events not yet acknowledged by the broker
``oldest_undelivered_event_age_seconds``        age of the oldest of them (0 when none)
``memory_queued_events``                        events held in memory because the outbox failed
``refused_events``                              events the broker refused (kept and retried)
``dead_letter_events``                          events set aside in the outbox's dead_letter table
``inference_latency_seconds`` (``_max_``)       mean (max) engine time per batch, recent batches
``tick_seconds`` / ``overhead_ratio``           time per scoring tick / share of it the pipeline thread
                                                spent on its own work, not on the model (copying the
                                                windows out, front end, engine, waiting for parallel runs)
``own_cpu_seconds_total``                       CPU time of that own work in scoring ticks (its rate over
                                                ``process_cpu_seconds_total``'s: its share of the CPU)
``inference_batches_total``                     batches run
``uptime_seconds``, ``info{version,backend,engine}``, ``stats_up`` (0 when the stats could not be read)
=============================================  ======================================================

plus prometheus_client's ``process_*`` metrics (memory, CPU, open files).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import CollectorRegistry

from edge_asd.config.schema import MetricsConfig
from edge_asd.core.constants import STREAM_STATES
from edge_asd.core.hosts import is_loopback_host

logger = logging.getLogger(__name__)

PREFIX = "edge_asd"
StatsFn = Callable[[], Mapping[str, Any]]

# (stats key, metric name, help) for the per-stream counters and gauges.
_STREAM_COUNTERS = (
    ("windows", "stream_windows", "Windows scored."),
    ("skipped", "stream_skipped_windows", "Windows not scored in time (the engine fell behind)."),
    ("gapped", "stream_gapped_windows", "Windows not scored because their audio had a gap."),
    ("faults", "stream_faults", "Times the stream entered the fault state."),
    ("events", "stream_events", "Anomaly events opened."),
    ("overflows", "stream_capture_overflows", "Capture buffer overflows (audio lost before the ring)."),
    ("gaps", "stream_capture_gaps", "Gaps in the captured audio."),
    ("restarts", "stream_capture_restarts", "Restarts of the audio input."),
)
_STREAM_GAUGES = (
    ("score", "stream_score", "Score of the last scored window."),
    ("threshold", "stream_threshold", "Threshold the score is compared with."),
    ("dbfs", "stream_level_dbfs", "RMS level of the last window, dBFS."),
    ("peak_dbfs", "stream_peak_dbfs", "Peak level of the last window, dBFS."),
    ("queue_s", "stream_queue_seconds", "Audio buffered but not yet scored, seconds."),
)


def _number(value: Any) -> float | None:
    """A stats value as a sample value; None (not known yet) and non-numbers are left out."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


class PipelineCollector:
    """A prometheus_client collector over a ``stats()`` callable (``Pipeline.stats``)."""

    def __init__(self, stats: StatsFn) -> None:
        self._stats = stats
        self._failures = 0

    def _read(self) -> Mapping[str, Any] | None:
        # stats() runs in the scrape thread while the listen loop updates the same counters;
        # a container changing size mid-copy raises RuntimeError: read again once.
        for attempt in (1, 2):
            try:
                return self._stats()
            except Exception:
                if attempt == 2:
                    self._failures += 1
                    # the first failure with its traceback, later ones briefly (every scrape would repeat it)
                    logger.warning("metrics: reading the pipeline stats failed", exc_info=self._failures == 1)
        return None

    def collect(self) -> Iterable[Metric]:
        stats = self._read()
        up = GaugeMetricFamily(f"{PREFIX}_stats_up", "1 when the pipeline stats could be read for this scrape.")
        up.add_metric([], 0.0 if stats is None else 1.0)
        yield up
        if stats is None:
            return
        yield from self._service(stats)
        yield from self._streams(stats.get("streams") or {})
        yield from self._delivery(stats.get("delivery") or {})
        yield from self._detector(stats.get("detector") or {})

    @staticmethod
    def _service(stats: Mapping[str, Any]) -> Iterable[Metric]:
        service = stats.get("service") or {}
        detector = stats.get("detector") or {}
        info = InfoMetricFamily(PREFIX, "The daemon's version and inference engine.")
        info.add_metric(
            [],
            {
                "version": str(service.get("version", "")),
                "backend": str(detector.get("backend", "")),
                "engine": str(detector.get("engine", "")),
            },
        )
        yield info
        uptime = _number(service.get("uptime_s"))
        if uptime is not None:
            yield GaugeMetricFamily(f"{PREFIX}_uptime_seconds", "Seconds since the daemon started.", value=uptime)

    @staticmethod
    def _streams(streams: Mapping[str, Mapping[str, Any]]) -> Iterable[Metric]:
        families: list[Metric] = []
        kinds = [(CounterMetricFamily, spec) for spec in _STREAM_COUNTERS]
        kinds += [(GaugeMetricFamily, spec) for spec in _STREAM_GAUGES]
        for kind, (key, name, doc) in kinds:
            family = kind(f"{PREFIX}_{name}", doc, labels=["stream"])
            for stream, values in streams.items():
                value = _number(values.get(key))
                if value is not None:
                    family.add_metric([stream], value)
            families.append(family)
        anomaly = GaugeMetricFamily(f"{PREFIX}_stream_anomaly", "1 while an anomaly event is open.", labels=["stream"])
        enabled = GaugeMetricFamily(f"{PREFIX}_stream_enabled", "1 while the stream is enabled.", labels=["stream"])
        status = GaugeMetricFamily(
            f"{PREFIX}_stream_status", "1 for the stream's published status, 0 for the others.", labels=["stream", "status"]
        )
        for stream, values in streams.items():
            anomaly.add_metric([stream], 1.0 if values.get("anomaly") else 0.0)
            enabled.add_metric([stream], 1.0 if values.get("enabled", True) else 0.0)
            current = str(values.get("status", ""))
            for state in (*STREAM_STATES, *([current] if current and current not in STREAM_STATES else [])):
                status.add_metric([stream, state], 1.0 if state == current else 0.0)
        yield from (*families, anomaly, enabled, status)

    @staticmethod
    def _delivery(delivery: Mapping[str, Any]) -> Iterable[Metric]:
        figures = (
            ("outbox_depth", "outbox_depth", "Events not yet acknowledged by the broker."),
            ("oldest_undelivered_s", "oldest_undelivered_event_age_seconds",
             "Age of the oldest event not yet acknowledged (0 when none)."),
            ("memory_queue", "memory_queued_events", "Events held in memory because the outbox failed."),
            ("refused", "refused_events", "Events the broker refused (kept and retried)."),
            ("dead_letter", "dead_letter_events", "Events set aside after a refusal that retrying cannot fix (kept)."),
        )  # fmt: skip
        for key, name, doc in figures:
            yield GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=_number(delivery.get(key)) or 0.0)

    @staticmethod
    def _detector(detector: Mapping[str, Any]) -> Iterable[Metric]:
        millis = (
            ("inference_ms", "inference_latency_seconds", "Mean engine time per batch over recent batches."),
            ("inference_ms_max", "inference_latency_max_seconds", "Longest engine time per batch, recent batches."),
            ("tick_ms", "tick_seconds", "Mean time per scoring tick (all streams)."),
        )
        for key, name, doc in millis:
            value = _number(detector.get(key))
            if value is not None:
                yield GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value / 1000.0)
        overhead = _number(detector.get("overhead_percent"))
        if overhead is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_overhead_ratio", "Share of scoring time the pipeline spent on its own work, not on the model.", value=overhead / 100.0
            )
        own_cpu = _number(detector.get("own_cpu_s"))
        if own_cpu is not None:
            yield CounterMetricFamily(
                f"{PREFIX}_own_cpu_seconds",
                "CPU time the pipeline thread spent on its own work while scoring, not on the model (over process_cpu_seconds: its share).",
                value=own_cpu,
            )
        batches = _number(detector.get("batches"))
        if batches is not None:
            yield CounterMetricFamily(f"{PREFIX}_inference_batches", "Batches run through the engine.", value=batches)


class MetricsServer:
    """``/metrics`` over HTTP for one daemon: started after the pipeline exists, stopped at shutdown."""

    def __init__(self, cfg: MetricsConfig, stats: StatsFn) -> None:
        self.cfg = cfg
        self.registry = CollectorRegistry()
        self.registry.register(PipelineCollector(stats))
        ProcessCollector(registry=self.registry)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) being served, None when not running."""
        if self._server is None:
            return None
        return self.cfg.host, int(self._server.server_port)

    @property
    def url(self) -> str | None:
        if self.address is None:
            return None
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def start(self) -> bool:
        """Serve; False (logged) when the address cannot be bound: monitoring goes on without it."""
        try:
            self._server, self._thread = start_http_server(self.cfg.port, addr=self.cfg.host, registry=self.registry)
        except OSError as err:
            logger.error(
                "metrics: cannot listen on %s:%d (%s); the daemon goes on without the Prometheus endpoint. "
                "Choose a free `metrics.port` (or stop what holds it) and restart",
                self.cfg.host, self.cfg.port, err.strerror or err,
            )  # fmt: skip
            return False
        logger.info("metrics: Prometheus endpoint at %s", self.url)
        if not is_loopback_host(self.cfg.host):
            logger.warning(
                "metrics: %s is reachable from the network without authentication (stream names, scores, states); "
                "bind `metrics.host: 127.0.0.1` and scrape through a local agent or an SSH tunnel unless that is meant",
                self.url,
            )
        return True

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is None:
            return
        try:
            server.shutdown()
            server.server_close()
        except Exception:  # shutting down must never block the outbox flush after it
            logger.exception("metrics: stopping the HTTP server failed")
        if thread is not None:
            thread.join(timeout=5.0)


def create_metrics(cfg: MetricsConfig | None, stats: StatsFn) -> MetricsServer | None:
    """The endpoint a config asks for (None when ``metrics.enabled`` is false or absent)."""
    if cfg is None or not cfg.enabled:
        return None
    return MetricsServer(cfg, stats)


__all__ = ["MetricsServer", "PipelineCollector", "create_metrics"]
