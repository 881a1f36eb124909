"""The opt-in Prometheus endpoint: the collector reads ``Pipeline.stats()`` at scrape time, the
config section is strict and off by default, and a real daemon serves ``/metrics`` over HTTP
from start to shutdown."""

from __future__ import annotations

import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from edge_asd.config import ConfigError, validate_config
from edge_asd.config.schema import MetricsConfig
from edge_asd.daemon.metrics import MetricsServer, PipelineCollector, create_metrics

pytestmark = [pytest.mark.device, pytest.mark.timeout(300)]

STATS: dict[str, Any] = {
    "service": {"version": "0.1.0", "uptime_s": 12.5, "last_updated": 0.0},
    "detector": {
        "backend": "onnxruntime", "engine": "onnxruntime model_cpu.onnx", "batches": 40,
        "inference_ms": 25.0, "inference_ms_max": 60.0, "tick_ms": 30.0, "overhead_percent": 5.0, "own_cpu_s": 7.25,
    },
    "window_s": 10.0,
    "hop_s": 1.0,
    "streams": {
        "press1": {
            "status": "online", "enabled": True, "windows": 37, "skipped": 2, "gapped": 1, "faults": 0, "events": 1,
            "anomaly": True, "score": 17.5, "threshold": 15.0, "overflows": 0, "gaps": 1, "restarts": 0,
            "last_window_s": 46.0, "queue_s": 0.25, "dbfs": -23.0, "peak_dbfs": -6.0,
        },
        "fan2": {
            "status": "fault", "enabled": True, "windows": 0, "skipped": 0, "gapped": 0, "faults": 1, "events": 0,
            "anomaly": False, "score": None, "threshold": None, "overflows": 0, "gaps": 0, "restarts": 3,
            "last_window_s": None, "queue_s": 0.0, "dbfs": None, "peak_dbfs": None,
        },
    },
    "delivery": {"outbox_depth": 3, "oldest_undelivered_s": 41.5, "memory_queue": 2, "refused": 1, "dead_letter": 1},
}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _scrape_collector(stats) -> dict:
    registry = CollectorRegistry()
    registry.register(PipelineCollector(stats))
    return _samples(generate_latest(registry).decode())


def test_collector_turns_the_stats_into_metrics() -> None:
    s = _scrape_collector(lambda: STATS)
    press, fan = (("stream", "press1"),), (("stream", "fan2"),)
    assert s[("edge_asd_stats_up", ())] == 1.0
    assert s[("edge_asd_stream_windows_total", press)] == 37
    assert s[("edge_asd_stream_skipped_windows_total", press)] == 2
    assert s[("edge_asd_stream_gapped_windows_total", press)] == 1
    assert s[("edge_asd_stream_faults_total", fan)] == 1
    assert s[("edge_asd_stream_events_total", press)] == 1
    assert s[("edge_asd_stream_capture_restarts_total", fan)] == 3
    assert s[("edge_asd_stream_score", press)] == 17.5 and s[("edge_asd_stream_threshold", press)] == 15.0
    assert ("edge_asd_stream_score", fan) not in s  # not scored yet: no sample rather than a made-up 0
    assert s[("edge_asd_stream_anomaly", press)] == 1.0 and s[("edge_asd_stream_anomaly", fan)] == 0.0
    assert s[("edge_asd_stream_status", (("status", "fault"), ("stream", "fan2")))] == 1.0
    assert s[("edge_asd_stream_status", (("status", "online"), ("stream", "fan2")))] == 0.0
    assert s[("edge_asd_stream_level_dbfs", press)] == -23.0
    assert s[("edge_asd_outbox_depth", ())] == 3
    assert s[("edge_asd_oldest_undelivered_event_age_seconds", ())] == 41.5
    assert s[("edge_asd_memory_queued_events", ())] == 2
    assert s[("edge_asd_refused_events", ())] == 1
    assert s[("edge_asd_dead_letter_events", ())] == 1
    assert s[("edge_asd_inference_latency_seconds", ())] == pytest.approx(0.025)
    assert s[("edge_asd_inference_latency_max_seconds", ())] == pytest.approx(0.06)
    assert s[("edge_asd_inference_batches_total", ())] == 40
    assert s[("edge_asd_overhead_ratio", ())] == pytest.approx(0.05)
    assert s[("edge_asd_own_cpu_seconds_total", ())] == pytest.approx(7.25)
    info = (("backend", "onnxruntime"), ("engine", "onnxruntime model_cpu.onnx"), ("version", "0.1.0"))
    assert s[("edge_asd_info", info)] == 1.0


def test_collector_without_delivery_figures_and_with_failing_stats(caplog) -> None:
    """Before the communicator reports delivery figures they read 0; a stats() that raises gives
    ``stats_up 0`` and a warning, never a failed scrape."""
    s = _scrape_collector(lambda: {k: v for k, v in STATS.items() if k != "delivery"})
    assert s[("edge_asd_outbox_depth", ())] == 0 and s[("edge_asd_oldest_undelivered_event_age_seconds", ())] == 0

    def broken() -> dict:
        raise RuntimeError("deque mutated during iteration")

    with caplog.at_level(logging.WARNING, logger="edge_asd.daemon.metrics"):
        s = _scrape_collector(broken)
    assert s == {("edge_asd_stats_up", ()): 0.0}
    assert "reading the pipeline stats failed" in caplog.text


def _one_stream() -> dict[str, Any]:
    return {
        "sources": [{"name": "s", "type": "synth"}],
        "streams": [{"name": "m", "source": "s", "classes": ["fan/id_00"]}],
    }


def test_metrics_config_is_off_by_default_strict_and_documented() -> None:
    cfg = validate_config(_one_stream())
    assert cfg.metrics.enabled is False and cfg.metrics.host == "127.0.0.1"
    assert create_metrics(cfg.metrics, lambda: STATS) is None
    on = validate_config({**_one_stream(), "metrics": {"enabled": True, "port": 9999}})
    assert on.metrics.enabled and on.metrics.port == 9999
    with pytest.raises(ConfigError, match="metrics"):
        validate_config({**_one_stream(), "metrics": {"enabled": True, "bind": "0.0.0.0"}})
    with pytest.raises(ConfigError, match="metrics"):
        validate_config({**_one_stream(), "metrics": {"port": 70000}})
    for name, field in MetricsConfig.model_fields.items():
        assert field.title and field.description, name


def test_a_port_in_use_is_logged_not_fatal(caplog) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        port = holder.getsockname()[1]
        server = MetricsServer(MetricsConfig(enabled=True, port=port), lambda: STATS)
        with caplog.at_level(logging.ERROR, logger="edge_asd.daemon.metrics"):
            assert server.start() is False
        assert f"cannot listen on 127.0.0.1:{port}" in caplog.text and "metrics.port" in caplog.text
        server.stop()  # nothing to stop: no error
    finally:
        holder.close()


def test_a_non_loopback_address_gets_a_warning(monkeypatch, caplog) -> None:
    """Nothing is bound here: the HTTP server is replaced; only the warning is checked."""

    class FakeServer:
        server_port = 9464

        def shutdown(self) -> None:
            pass

        def server_close(self) -> None:
            pass

    monkeypatch.setattr("edge_asd.daemon.metrics.start_http_server", lambda *a, **k: (FakeServer(), None))
    server = MetricsServer(MetricsConfig(enabled=True, host="192.0.2.10", port=9464), lambda: STATS)
    with caplog.at_level(logging.WARNING, logger="edge_asd.daemon.metrics"):
        assert server.start()
    assert "reachable from the network without authentication" in caplog.text
    server.stop()
    caplog.clear()
    loopback = MetricsServer(MetricsConfig(enabled=True), lambda: STATS)
    with caplog.at_level(logging.WARNING, logger="edge_asd.daemon.metrics"):
        assert loopback.start()
    assert "without authentication" not in caplog.text
    loopback.stop()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # loopback only
        assert response.status == 200
        return response.read().decode()


def test_a_running_daemon_serves_metrics_over_http_until_it_stops(artifacts_dir: Path, tmp_path: Path) -> None:
    from edge_asd.config import load_config
    from edge_asd.core.audio_io import write_wav
    from edge_asd.daemon.listen import build_daemon, run_daemon
    from engines.bundle import load_bundle
    from tests.fixtures.bundles import recording_with_anomaly, synth_bundle

    bundle = synth_bundle(artifacts_dir)
    cls = load_bundle(bundle).classes[0]
    machine_type, machine_id = cls.split("/")
    audio, _ = recording_with_anomaly(machine_type, int(machine_id[-2:]), 12.0, None, 1.0, "rattle", seed=5)
    wav = tmp_path / "line.wav"
    write_wav(wav, audio)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "bundle": str(bundle),
        "backend": "onnxruntime",
        "state_dir": str(tmp_path / "state"),
        "metrics": {"enabled": True, "port": 0},
        "sources": [{"name": "line", "type": "file", "path": str(wav), "realtime": False, "loop": True}],
        "streams": [{"name": "press1", "source": "line", "classes": [cls]}],
    }))  # fmt: skip
    daemon = build_daemon(load_config(config))
    assert daemon.metrics is not None and daemon.metrics.address is None  # not serving before the run
    seen: dict[str, Any] = {}

    def scrape_then_stop() -> None:
        try:
            deadline = time.monotonic() + 120
            while daemon.metrics.url is None and time.monotonic() < deadline:
                time.sleep(0.05)
            seen["url"] = url = daemon.metrics.url
            while time.monotonic() < deadline:
                samples = _samples(_get(url))
                if samples.get(("edge_asd_stream_windows_total", (("stream", "press1"),)), 0) >= 2:
                    seen["samples"] = samples
                    break
                time.sleep(0.2)
        finally:
            daemon.pipeline.stop()

    thread = threading.Thread(target=scrape_then_stop, daemon=True)
    thread.start()
    rc = run_daemon(daemon, install_signals=False)
    thread.join(10)
    assert rc == 0
    samples = seen.get("samples")
    assert samples is not None, f"no scored windows seen at {seen.get('url')}"
    press = (("stream", "press1"),)
    print(f"scraped {seen['url']}: {samples[('edge_asd_stream_windows_total', press)]:.0f} windows")
    assert seen["url"].startswith("http://127.0.0.1:")
    assert samples[("edge_asd_stats_up", ())] == 1.0
    assert ("edge_asd_stream_score", press) in samples and ("edge_asd_stream_threshold", press) in samples
    assert samples[("edge_asd_stream_status", (("status", "online"), ("stream", "press1")))] == 1.0
    assert samples[("edge_asd_inference_latency_seconds", ())] > 0
    for name in ("edge_asd_outbox_depth", "edge_asd_oldest_undelivered_event_age_seconds",
                 "edge_asd_memory_queued_events", "edge_asd_refused_events", "edge_asd_uptime_seconds"):
        assert (name, ()) in samples, name
    assert any(name == "process_resident_memory_bytes" for name, _ in samples)
    # stopped with the daemon: the port is closed
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        _get(seen["url"])
    assert daemon.metrics.address is None
