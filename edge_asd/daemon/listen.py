"""``edge-asd listen``: build the pipeline from a validated config and run it until stopped.

Start-up order matters for systemd: the config is validated (by the caller), the bundle and
the engine are loaded (an engine build extends the start timeout), the communicator starts
(an unreachable broker is not fatal: it retries and queues), the audio inputs open, and
READY is sent only once the first windows have been scored. SIGTERM and SIGINT let the
current windows finish, end open events, flush the outbox for a few seconds, publish the
final state and return 0.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_asd.audio.capture import Capture
from edge_asd.audio.sources import AudioSource, FileSource, SoundDeviceSource, SyntheticSource
from edge_asd.comms.base import Communicator, StreamInfo
from edge_asd.comms.factory import create_communicator
from edge_asd.config import AppConfig, ConfigError, SourceConfig
from edge_asd.core.constants import SAMPLE_RATE, WINDOW_SAMPLES
from edge_asd.daemon.pipeline import Pipeline
from edge_asd.daemon.streams import Stream
from edge_asd.decisions import DecisionConfig, DecisionEngine
from edge_asd.evidence import EvidenceStore
from edge_asd.levels import LevelMonitor, LevelThresholds
from edge_asd.sdnotify import SystemdIntegration
from engines.bundle import Bundle, load_bundle
from engines.runtime import open_runtime, resolve_backend
from engines.runtime.base import Runtime
from engines.scorer import Scorer

logger = logging.getLogger(__name__)

STOP_FLUSH_S = 5.0


@dataclass
class Daemon:
    """Everything ``listen`` holds open; ``close()`` releases it in reverse order."""

    pipeline: Pipeline
    captures: list[Capture]
    runtime: Runtime
    comms: Communicator
    systemd: SystemdIntegration

    def close(self) -> None:
        for capture in self.captures:
            try:
                capture.stop()
            except Exception:  # one stuck input must not keep the others or the outbox
                logger.exception("stopping capture %s failed", capture.source.name)
        try:
            self.pipeline.publish_stats()
        finally:
            self.comms.stop(STOP_FLUSH_S)
            self.runtime.close()


def make_source(cfg: SourceConfig, channels_needed: int) -> AudioSource:
    """The audio source a config entry describes (devices open in ``Capture.start``)."""
    if cfg.type == "device":
        return SoundDeviceSource(cfg.device, channels=cfg.channels, sample_rate=cfg.samplerate)
    if cfg.type == "file":
        return FileSource(cfg.path, realtime=cfg.realtime, loop=cfg.loop)
    source = SyntheticSource(cfg.machine_type, cfg.machine_id, seed=cfg.seed, channels=max(cfg.channels, channels_needed))
    for anomaly in cfg.anomalies:
        for generator in source.generators:
            generator.schedule_anomaly(anomaly.kind, anomaly.start_s, anomaly.duration_s)
    return source


def resolve_classes(bundle: Bundle, names: list[str], where: str) -> list[int]:
    indices = []
    for name in names:
        if name not in bundle.classes:
            shown = ", ".join(bundle.classes[:20]) + (" ..." if len(bundle.classes) > 20 else "")
            raise ConfigError(f"{where}: class {name!r} is not in the bundle {bundle.path} (its classes: {shown})")
        indices.append(bundle.classes.index(name))
    return indices


def build_daemon(
    cfg: AppConfig,
    *,
    comms: Communicator | None = None,
    systemd: SystemdIntegration | None = None,
    runtime: Runtime | None = None,
    require_thresholds: bool = True,
) -> Daemon:
    """Open the bundle, engine, communicator and inputs a config describes (not started)."""
    if cfg.bundle is None:
        raise ConfigError("no model bundle: pass --bundle DIR or set `bundle:` in the config (make one with `edge-asd export`)")
    systemd = systemd or SystemdIntegration.from_env()
    bundle = load_bundle(cfg.bundle)
    scorer = Scorer(bundle)
    model = {"name": bundle.path.name, "sha": bundle.sha256("model.onnx")[:12]}

    sources = {s.name: s for s in cfg.sources}
    channels_by_source: dict[str, list[int]] = {}
    for stream in cfg.streams:
        channels_by_source.setdefault(stream.source, [])
        if stream.channel not in channels_by_source[stream.source]:
            channels_by_source[stream.source].append(stream.channel)
    captures: dict[str, Capture] = {}
    for name, channels in channels_by_source.items():
        source = make_source(sources[name], max(channels) + 1)
        if max(channels) >= source.channels:
            raise ConfigError(
                f"source {name!r} ({source.name}) has {source.channels} channel(s) but a stream asks for channel "
                f"{max(channels)} (channels count from 0): fix `streams[].channel` or the source's `channels`"
            )
        captures[name] = Capture(source, channels=channels)

    streams = []
    hop_samples = int(round(cfg.hop_s * SAMPLE_RATE))
    for i, sc in enumerate(cfg.streams):
        where = f"streams[{i}] ({sc.name})"
        indices = resolve_classes(bundle, sc.classes, where)
        if sc.threshold is None and require_thresholds:
            missing = [bundle.classes[c] for c in indices if scorer.threshold(c) is None]
            if missing:
                raise ConfigError(
                    f"{where}: the bundle has no calibrated threshold for {missing}; set `threshold:` for the stream, "
                    "run `edge-asd calibrate` on site, or export a run that was calibrated"
                )
        capture = captures[sc.source]
        decision = DecisionConfig(
            warmup_windows=sc.decision.warmup_windows,
            patience=sc.decision.patience,
            off_ratio=sc.decision.off_ratio,
            max_quiet=sc.decision.max_quiet,
            cooldown_s=sc.decision.cooldown_s,
        )
        levels = LevelMonitor(LevelThresholds(silent_dbfs=sc.levels.silent_dbfs, clip_level=10 ** (sc.levels.clip_dbfs / 20)))
        streams.append(
            Stream(
                name=sc.name,
                capture=capture,
                buffer=capture.streams[capture.channels.index(sc.channel)],
                class_indices=indices,
                class_names=list(sc.classes),
                threshold_override=sc.threshold,
                decisions=DecisionEngine(
                    sc.name, list(sc.classes), decision, model=model,
                    window_s=WINDOW_SAMPLES / SAMPLE_RATE, hop_s=cfg.hop_s,
                ),
                levels=levels,
                hop_samples=hop_samples,
                enabled=sc.enabled,
            )
        )

    if runtime is None:
        # All due windows go through the engine together, in chunks of at most max_batch: on a
        # CPU batch 8 is the fastest (docs/performance.md) and larger batches only cost memory;
        # a TensorRT engine is built for 1..16.
        backend = resolve_backend(cfg.backend)
        limit = 16 if backend == "tensorrt" else 8
        with systemd.extending_timeout(status="loading the inference engine"):
            runtime = open_runtime(bundle, backend=backend, max_batch=max(1, min(limit, len(streams))))
    comms = comms or create_communicator(cfg, model=f"{model['name']}@{model['sha']}")
    evidence = None
    if cfg.evidence.enabled:
        evidence = EvidenceStore(
            Path(cfg.state_dir) / "evidence", max_count=cfg.evidence.max_files, max_bytes=int(cfg.evidence.max_mb * 2**20)
        )
    realtime = all(getattr(c.source, "realtime", True) for c in captures.values())
    pipeline = Pipeline(
        streams, runtime, scorer, comms, evidence,
        hop_s=cfg.hop_s,
        stats_interval_s=cfg.mqtt.stats_interval_s if cfg.mqtt is not None else 60.0,
        systemd=systemd,
        realtime=realtime,
    )
    comms.announce([
        StreamInfo(
            name=s.name,
            threshold=s.threshold_override if s.threshold_override is not None else scorer.threshold(s.class_indices[0]),
            classes=tuple(s.class_names),
            source=s.capture.source.name,
            enabled=s.enabled,
        )
        for s in streams
    ])
    return Daemon(pipeline, list(captures.values()), runtime, comms, systemd)


def run_daemon(daemon: Daemon, *, install_signals: bool = True, on_started: Callable[[Daemon], None] | None = None) -> int:
    """Start inputs and communicator, run the pipeline, shut down cleanly; returns the exit code."""
    pipeline = daemon.pipeline

    def _stop(signum: int, _frame: object) -> None:
        logger.warning("received %s: finishing the current windows", signal.Signals(signum).name)
        daemon.systemd.stopping("stopping")
        pipeline.stop()

    previous = {}
    if install_signals and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _stop)
    try:
        daemon.comms.start()
        for capture in daemon.captures:
            capture.start()
        if on_started is not None:
            on_started(daemon)
        pipeline.run()
        return 0
    finally:
        daemon.systemd.stopping("stopping")
        daemon.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
