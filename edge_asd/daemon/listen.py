"""``edge-asd listen``: build the pipeline from a validated config and run it until stopped.

Start-up order matters for systemd: the config is validated (by the caller), the state
directory is locked (a second ``listen`` on it exits 2 naming the first one's pid), the bundle
and the runtime of the config's ``runtime:`` section are loaded (an engine build extends the
start timeout while it reports progress, up to a cap), the communicator starts (an
unreachable broker is not fatal: it retries and queues), the audio inputs open (a missing
device is not fatal either: its streams are ``fault`` and it is retried with backoff), and
READY is sent once the monitoring loop runs, whatever the streams' state.
SIGTERM and SIGINT let the current windows finish, end open events, flush the outbox for a
few seconds, publish the final state and return 0.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge_asd.audio.capture import Capture, CaptureWorker
from edge_asd.audio.sources import AudioSource, FileSource, SoundDeviceSource, SyntheticSource
from edge_asd.comms.base import Communicator, StreamInfo
from edge_asd.comms.factory import create_communicator
from edge_asd.config import AppConfig, ConfigError, MqttConfig, SourceConfig
from edge_asd.core.constants import SAMPLE_RATE, WINDOW_SECONDS
from edge_asd.daemon.installation import StateDirLock, installation_client_id
from edge_asd.daemon.metrics import MetricsServer, create_metrics
from edge_asd.daemon.pipeline import Pipeline
from edge_asd.daemon.site import StreamSite
from edge_asd.daemon.streams import EnabledStates, Stream
from edge_asd.decisions import DecisionEngine
from edge_asd.evidence import EvidenceStore
from edge_asd.levels import LevelMonitor
from edge_asd.sdnotify import SystemdIntegration
from edge_asd.site.storage import bundle_sha
from engines.bundle import Bundle, load_bundle
from engines.runtime import Runtime, get_entry, open_runtime, resolve_config
from engines.scorer import Scorer

logger = logging.getLogger(__name__)

STOP_FLUSH_S = 5.0

@dataclass
class Daemon:
    """Everything ``listen`` holds open; ``close()`` releases it, what must not be lost first."""

    pipeline: Pipeline
    captures: list[Capture]
    runtime: Runtime
    comms: Communicator
    systemd: SystemdIntegration
    lock: StateDirLock | None = None
    metrics: MetricsServer | None = None  # the Prometheus endpoint (metrics.enabled)
    inputs: CaptureWorker = field(init=False, repr=False)
    """The one thread that moves every capture's audio into its stream buffers."""

    def __post_init__(self) -> None:
        self.inputs = CaptureWorker(self.captures)

    def start_inputs(self) -> None:
        """Open every input and start moving its audio (an input that cannot open raises:
        ``close`` stops the ones already open)."""
        self.inputs.start()

    def close(self) -> None:
        """Release everything, what must not be lost first: the last statistics and the
        outbox's flush go out before the audio inputs close, because closing a sound device
        runs native driver code that can hang or crash the process (PortAudio on JACK did,
        ``JACK_CLOSE_SETTLE_S``), and then nothing would be left unsent. The pipeline has
        stopped by now, so audio still arriving meanwhile is only dropped."""
        if self.metrics is not None:
            self.metrics.stop()
        try:
            try:
                self.pipeline.publish_stats()
            finally:
                self.comms.stop(STOP_FLUSH_S)
        finally:
            try:
                self.inputs.stop()  # one stuck input must not keep the others, the engine or the lock
            except Exception:
                logger.exception("stopping the inputs failed")
            try:
                self.runtime.close()
            finally:
                if self.lock is not None:
                    self.lock.release()


def make_source(cfg: SourceConfig, channels_needed: int, *, wait_for_device: bool = False) -> AudioSource:
    """The audio source a config entry describes (devices open in ``Capture.start``).

    ``wait_for_device``: a device that is missing is not an error (the daemon): the source is
    sized for ``channels_needed`` and retried until it is there."""
    if cfg.type == "device":
        return SoundDeviceSource(cfg.device, channels=cfg.channels, sample_rate=cfg.samplerate,
                                 wait_for_device=wait_for_device, min_channels=channels_needed)  # fmt: skip
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


def open_configured_runtime(
    cfg: AppConfig, bundle: Bundle, streams: int, progress: Callable[..., None] | None = None
) -> Runtime:
    """The runtime of the config's ``runtime:`` section (``auto`` resolved on this device).

    All due windows go through the engine together, in chunks of at most ``max_batch``; the
    daemon never has more windows per tick than streams, so it asks for no larger batch (a
    smaller TensorRT profile, smaller buffers). ``progress(message)`` goes to a backend that
    reports build progress (TensorRT): each report extends systemd's start timeout.
    """
    chosen = resolve_config(cfg.runtime)
    max_batch = max(1, min(chosen.max_batch, streams))
    extras = {}
    if progress is not None and "progress" in getattr(get_entry(chosen.type), "extras", ()):
        extras["progress"] = progress
    return open_runtime(bundle, chosen.model_copy(update={"max_batch": max_batch}), **extras)


def build_daemon(
    cfg: AppConfig,
    *,
    comms: Communicator | None = None,
    systemd: SystemdIntegration | None = None,
    runtime: Runtime | None = None,
    require_thresholds: bool = True,
    service: bool = True,
) -> Daemon:
    """Open the bundle, engine, communicator and inputs a config describes (not started).

    ``service``: the long-running daemon (``listen``): the state directory is locked, a
    missing audio device is a stream fault that is retried instead of an error, and the
    operators' ``enabled/set`` switches kept in the state directory win over the config.
    False for a one-off run that someone watches (``calibrate``).
    """
    if cfg.bundle is None:
        raise ConfigError("no model bundle: pass --bundle DIR or set `bundle:` in the config (make one with `edge-asd export`)")
    lock = StateDirLock(cfg.state_dir).acquire() if service else None
    try:
        return _build(cfg, comms, systemd, runtime, require_thresholds, service, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _build(
    cfg: AppConfig,
    comms: Communicator | None,
    systemd: SystemdIntegration | None,
    runtime: Runtime | None,
    require_thresholds: bool,
    service: bool,
    lock: StateDirLock | None,
) -> Daemon:
    assert cfg.bundle is not None
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
        source = make_source(sources[name], max(channels) + 1, wait_for_device=service)
        if max(channels) >= source.channels:
            raise ConfigError(
                f"source {name!r} ({source.name}) has {source.channels} channel(s) but a stream asks for channel "
                f"{max(channels)} (channels count from 0): fix `streams[].channel` or the source's `channels`"
            )
        captures[name] = Capture(source, channels=channels)

    streams = []
    hop_samples = int(round(cfg.hop_s * SAMPLE_RATE))
    enabled_store = EnabledStates(cfg.state_dir) if service else None
    kept = enabled_store.load([sc.name for sc in cfg.streams]) if enabled_store is not None else {}
    for i, sc in enumerate(cfg.streams):
        where = f"streams[{i}] ({sc.name})"
        indices = resolve_classes(bundle, sc.classes, where)
        site = None
        if cfg.site.enabled:
            site = StreamSite(
                sc.name, state_dir=cfg.state_dir, bundle=bundle, bundle_sha=bundle_sha(bundle),
                class_names=list(sc.classes), hop_s=cfg.hop_s, false_alarms_per_day=cfg.site.false_alarms_per_day,
            )  # fmt: skip
        if not indices and (site is None or not site.enrolled):
            why = site.status.message if site is not None else "site learning is off (site.enabled: false)"
            raise ConfigError(
                f"{where}: no `classes:` and no usable enrolment ({why}); enrol the stream with "
                f"`edge-asd enrol --config CONFIG --stream {sc.name}`, or name the bundle classes it is"
            )
        if site is not None and site.enrolled and sc.threshold is not None:
            logger.warning(
                "%s: `threshold: %g` is for the bundle's score and is not used while the stream is enrolled "
                "(the enrolment's fused threshold is %.3f; change it by enrolling with --false-alarms-per-day)",
                where, sc.threshold, site.threshold,
            )  # fmt: skip
        if sc.threshold is None and require_thresholds and not (site is not None and site.enrolled):
            missing = [bundle.classes[c] for c in indices if scorer.threshold(c) is None]
            if missing:
                raise ConfigError(
                    f"{where}: the bundle has no calibrated threshold for {missing}; set `threshold:` for the stream, "
                    "run `edge-asd calibrate` on site, or export a run that was calibrated"
                )
        capture = captures[sc.source]
        streams.append(
            Stream(
                name=sc.name,
                capture=capture,
                buffer=capture.streams[capture.channels.index(sc.channel)],
                class_indices=indices,
                class_names=list(sc.classes),
                threshold_override=sc.threshold,
                decisions=DecisionEngine(
                    sc.name, list(sc.classes), sc.decision, model=model, window_s=WINDOW_SECONDS, hop_s=cfg.hop_s
                ),
                levels=LevelMonitor(sc.levels),
                hop_samples=hop_samples,
                enabled=_initial_enabled(sc.name, sc.enabled, kept),
                site=site,
            )
        )

    if runtime is None:
        with systemd.extending_timeout(status="loading the inference engine") as progress:
            runtime = open_configured_runtime(cfg, bundle, len(streams), progress=progress)
    if comms is None:
        if cfg.mqtt is not None and cfg.mqtt.client_id is None:
            client_id = installation_client_id(cfg.state_dir, cfg.node_id)
            cfg = cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={"client_id": client_id})})
        comms = create_communicator(cfg, model=f"{model['name']}@{model['sha']}")
    if lock is not None and lock.error is not None:
        _node_fault(comms, "lock", lock.error)
    evidence = None
    if cfg.evidence.enabled:
        evidence = EvidenceStore(
            Path(cfg.state_dir) / "evidence", max_count=cfg.evidence.max_files, max_bytes=int(cfg.evidence.max_mb * 2**20)
        )
    realtime = all(getattr(c.source, "realtime", True) for c in captures.values())
    pipeline = Pipeline(
        streams, runtime, scorer, comms, evidence,
        hop_s=cfg.hop_s,
        stats_interval_s=(cfg.mqtt or MqttConfig()).stats_interval_s,
        systemd=systemd,
        realtime=realtime,
        enabled_store=enabled_store,
    )
    comms.announce([
        StreamInfo(
            name=s.name,
            threshold=_initial_threshold(s, scorer),
            classes=tuple(s.class_names),
            source=s.capture.source.name,
            enabled=s.enabled,
        )
        for s in streams
    ])
    metrics = create_metrics(getattr(cfg, "metrics", None), pipeline.stats)  # read at scrape time
    return Daemon(pipeline, list(captures.values()), runtime, comms, systemd, lock, metrics=metrics)


def _node_fault(comms: Communicator, key: str, message: str | None) -> None:
    """Raise (or clear) a node-level fault where the communicator reports them."""
    publish = getattr(comms, "publish_node_fault", None)
    if publish is None:
        return
    try:
        publish(key, message)
    except Exception:  # reporting a fault must never be one
        logger.exception("publishing the node fault %s failed", key)


def _initial_enabled(name: str, configured: bool, kept: dict[str, bool]) -> bool:
    """The operator's last switch of a stream (kept in the state directory), else the config's."""
    if name not in kept:
        return configured
    if kept[name] != configured:
        logger.warning("stream %s starts %s as an operator switched it (the config says %s; switch it with "
                       "<stream>/enabled/set)", name, "enabled" if kept[name] else "disabled",
                       "enabled" if configured else "disabled")  # fmt: skip
    return kept[name]


def _initial_threshold(stream: Stream, scorer: Scorer) -> float | None:
    """The threshold a stream starts with: the enrolment's, else the config's, else the bundle's."""
    if stream.site is not None and stream.site.threshold is not None:
        return stream.site.threshold
    if stream.threshold_override is not None:
        return stream.threshold_override
    return scorer.threshold(stream.class_indices[0]) if stream.class_indices else None


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
        daemon.start_inputs()
        if daemon.metrics is not None:
            daemon.metrics.start()  # a port it cannot bind is logged, not fatal
        if on_started is not None:
            on_started(daemon)
        pipeline.run()
        return pipeline.exit_code
    finally:
        daemon.systemd.stopping("stopping")
        daemon.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
