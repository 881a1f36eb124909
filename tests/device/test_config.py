"""Config loading: messages that name the key path, CLI flags over a file, masking, the runtime
section, `config check`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edge_asd.cli import app
from edge_asd.config import (
    AppConfig,
    AutoRuntimeConfig,
    ConfigError,
    DeviceSourceConfig,
    FileSourceConfig,
    OnnxRuntimeConfig,
    SynthSourceConfig,
    TensorRTRuntimeConfig,
    config_from_cli,
    effective_config_dict,
    load_config,
    validate_config,
)

pytestmark = pytest.mark.device

GOOD = """\
bundle: bundles/fan
backend: onnxruntime
hop_s: 0.5
state_dir: state
node_id: line1
mqtt:
  url: mqtt://edge@broker.local:1884
  password: hunter2-secret
sources:
  - {name: card, type: device, device: "USB Audio", channels: 2}
  - {name: rec, type: file, path: clips/normal.wav, loop: true}
  - {name: fake, type: synth, machine_type: pump, anomalies: [{start_s: 60, duration_s: 20}]}
streams:
  - name: fan-a
    source: card
    channel: 1
    classes: [fan/id_00, fan/id_02]
    decision: {patience: 5}
  - {name: pump, source: fake, classes: [pump/id_00], threshold: 1.5}
"""


def write(tmp_path: Path, text: str, name: str = "edge.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def errors_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value)


def test_good_config_with_defaults_and_relative_paths(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert isinstance(cfg, AppConfig)
    assert cfg.bundle == tmp_path / "bundles" / "fan"
    assert cfg.state_dir == tmp_path / "state"
    assert [type(s) for s in cfg.sources] == [DeviceSourceConfig, FileSourceConfig, SynthSourceConfig]
    assert cfg.sources[1].path == tmp_path / "clips" / "normal.wav"
    assert cfg.sources[2].anomalies[0].duration_s == 20
    fan = cfg.streams[0]
    assert (fan.decision.patience, fan.decision.warmup_windows, fan.decision.off_ratio) == (5, 3, 0.9)
    assert (fan.decision.max_quiet, fan.decision.cooldown_s) == (3, 30.0)
    assert (fan.levels.silent_dbfs, fan.levels.clip_dbfs) == (-70.0, -0.1)
    assert (cfg.evidence.max_files, cfg.evidence.max_mb) == (200, 500.0)
    assert cfg.mqtt is not None
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.username) == ("broker.local", 1884, "edge")
    assert (cfg.mqtt.prefix, cfg.mqtt.stats_interval_s, cfg.mqtt.discovery.prefix) == ("edge-asd", 60, "homeassistant")


def test_mqtts_url_enables_tls_and_default_port(tmp_path: Path) -> None:
    cfg = validate_config({"mqtt": {"url": "mqtts://b.example"}, **_one_stream()})
    assert cfg.mqtt is not None and cfg.mqtt.tls.enabled and cfg.mqtt.effective_port == 8883


def _one_stream() -> dict:
    return {"sources": [{"name": "s", "type": "synth"}], "streams": [{"name": "x", "source": "s", "classes": ["c"]}]}


def test_state_dir_defaults_to_systemd_state_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/edge-asd-test:/other")
    assert validate_config(_one_stream()).state_dir == Path("/var/lib/edge-asd-test")
    monkeypatch.delenv("STATE_DIRECTORY")
    assert validate_config(_one_stream()).state_dir == Path("/var/lib/edge-asd")


def test_unknown_key_names_the_key_path_line_and_allowed_keys(tmp_path: Path) -> None:
    msg = errors_of(tmp_path, GOOD.replace("decision: {patience: 5}", "decision: {patiense: 5}"))
    assert "streams[0].decision.patiense (line 18)" in msg
    assert "allowed keys: warmup_windows, patience, off_ratio, max_quiet, cooldown_s" in msg
    msg = errors_of(tmp_path, GOOD.replace("loop: true", "looping: true"))
    assert "sources[1].looping" in msg and "allowed keys: name, type, path, realtime, loop" in msg


def test_bad_enum_lists_allowed_values(tmp_path: Path) -> None:
    msg = errors_of(tmp_path, GOOD.replace("backend: onnxruntime", "backend: cuda"))
    assert "backend (line 2)" in msg and "allowed values: auto, tensorrt, onnxruntime" in msg
    msg = errors_of(tmp_path, GOOD.replace("type: synth", "type: noise"))
    assert "sources[2].type" in msg and "allowed values: device, file, synth" in msg


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    msg = errors_of(tmp_path, GOOD.replace("hop_s: 0.5", "hop_s: [0.5"))
    assert "YAML syntax error" in msg and "line " in msg
    with pytest.raises(ConfigError, match="line 3"):
        load_config(write(tmp_path, "a: 1\nb: 2\nc: d: e\n"))


def test_cross_field_checks(tmp_path: Path) -> None:
    msg = errors_of(tmp_path, GOOD.replace("source: fake", "source: nope"))
    assert "streams[1].source" in msg and "unknown source 'nope'" in msg and "card, rec, fake" in msg
    msg = errors_of(tmp_path, GOOD.replace("channel: 1", "channel: 2"))
    assert "streams[0].channel" in msg and "has 2 channel(s)" in msg
    msg = errors_of(tmp_path, GOOD.replace("name: pump", "name: fan-a"))
    assert "streams[1].name" in msg and "duplicate" in msg
    msg = errors_of(tmp_path, GOOD.replace("name: fan-a", "name: fan/a"))
    assert "streams[0].name" in msg and "MQTT topic level" in msg
    # No classes is valid (a machine the bundle never saw, scored after `edge-asd enrol`); listen
    # refuses such a stream only while it has no enrolment (tests/device/test_site_listen.py).
    assert load_config(write(tmp_path, GOOD.replace("classes: [pump/id_00]", "classes: []"))).streams[1].classes == []
    for bad in (".nan", "-1.0", "0", ".inf"):
        msg = errors_of(tmp_path, GOOD.replace("threshold: 1.5}", f"threshold: {bad}}}"))
        assert "streams[1].threshold" in msg, (bad, msg)
    assert "no stream configured" in errors_of(tmp_path, "bundle: x\n")


def test_discovery_prefix_must_be_a_topic_to_publish_to(tmp_path: Path) -> None:
    """``ha/#`` (or ``+``, or an empty level) would make every discovery publish fail and the node
    would never say online: a config error naming the field instead."""
    for bad, why in (("ha/#", "'#'"), ("ha/+/x", "'+'"), ("/ha", "empty topic level"), ("ha//x", "empty topic level"),
                     ("ha/", "empty topic level"), ("''", "must not be empty")):  # fmt: skip
        msg = errors_of(tmp_path, GOOD.replace("  password: hunter2-secret\n",
                                               f"  password: hunter2-secret\n  discovery: {{prefix: {bad}}}\n"))
        assert "mqtt.discovery.prefix" in msg and why in msg, (bad, msg)
    ok = GOOD.replace("  password: hunter2-secret\n", "  password: hunter2-secret\n  discovery: {prefix: site/ha}\n")
    assert load_config(write(tmp_path, ok)).mqtt.discovery.prefix == "site/ha"


def test_device_unset_and_capture_rate_bounds(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD.replace('device: "USB Audio", ', "")))
    assert cfg.sources[0].device is None  # the default input (edge_asd.audio.devices.resolve_device)
    for bad in (999983, 4000):
        msg = errors_of(tmp_path, GOOD.replace("channels: 2}", f"channels: 2, samplerate: {bad}}}"))
        assert "sources[0]" in msg and "samplerate" in msg, (bad, msg)
    assert load_config(write(tmp_path, GOOD.replace("channels: 2}", "channels: 2, samplerate: 44100}"))).sources[0].samplerate == 44100


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_password_is_masked(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    data = effective_config_dict(cfg)
    assert data["mqtt"]["password"] == "***"
    assert "hunter2-secret" not in repr(cfg) and "hunter2-secret" not in yaml.safe_dump(data)
    cfg = validate_config({"mqtt": {"url": "mqtt://u:pw-in-url@h"}, **_one_stream()})
    data = effective_config_dict(cfg)
    assert "pw-in-url" not in str(data) and data["mqtt"]["password"] == "***"


def test_config_from_cli_builds_a_one_stream_config(tmp_path: Path) -> None:
    cfg = config_from_cli(
        source=f"file:{tmp_path / 'a.wav'}", bundle=tmp_path / "b", classes=["fan/id_00"],
        broker="mqtt://127.0.0.1:1999", hop=0.25, backend="onnxruntime",
    )
    assert isinstance(cfg.sources[0], FileSourceConfig) and cfg.sources[0].path == tmp_path / "a.wav"
    assert cfg.streams[0].name == "a" and cfg.streams[0].classes == ["fan/id_00"]
    assert cfg.mqtt is not None and cfg.mqtt.effective_port == 1999
    assert (cfg.hop_s, cfg.backend, cfg.bundle) == (0.25, "onnxruntime", tmp_path / "b")
    cfg = config_from_cli(device="3", classes=["fan/id_00"])
    assert isinstance(cfg.sources[0], DeviceSourceConfig) and cfg.sources[0].device == 3
    assert cfg.streams[0].name == "mic" and cfg.mqtt is None
    cfg = config_from_cli(source="synth:pump/id_02", classes=["pump/id_02"])
    assert isinstance(cfg.sources[0], SynthSourceConfig) and cfg.sources[0].machine_id == "id_02"
    with pytest.raises(ConfigError, match="--class"):
        config_from_cli(device="0")
    with pytest.raises(ConfigError, match="either --device or --source"):
        config_from_cli(device="0", source="synth", classes=["x"])
    with pytest.raises(ConfigError, match="--source"):
        config_from_cli(source="http://x", classes=["x"])


def test_cli_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    cfg = config_from_cli(path, broker="mqtt://other:1885", hop=2.0, backend="tensorrt")
    assert cfg.mqtt is not None and (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.username) == ("other", 1885, None)
    assert cfg.mqtt.password is None  # the file's credentials belonged to the file's broker
    assert (cfg.hop_s, cfg.backend, cfg.node_id) == (2.0, "tensorrt", "line1")
    assert len(cfg.streams) == 2
    single = write(tmp_path, GOOD.split("  - {name: pump")[0], "single.yaml")
    cfg = config_from_cli(single, source="synth", classes=["fan/id_04"])
    stream = cfg.streams[0]
    assert stream.name == "fan-a" and stream.classes == ["fan/id_04"] and stream.decision.patience == 5
    assert stream.source == cfg.sources[0].name and len(cfg.sources) == 1
    with pytest.raises(ConfigError, match="single stream"):
        config_from_cli(path, classes=["x"])


def test_config_check_command(tmp_path: Path) -> None:
    runner = CliRunner()
    good = write(tmp_path, GOOD)
    result = runner.invoke(app, ["config", "check", str(good)])
    assert result.exit_code == 0, result.output
    out = yaml.safe_load(result.stdout)
    assert out["streams"][0]["decision"]["warmup_windows"] == 3
    assert out["mqtt"]["password"] == "***"
    assert "hunter2-secret" not in result.output
    bad = write(tmp_path, GOOD.replace("patience: 5", "patiense: 5"), "bad.yaml")
    result = runner.invoke(app, ["config", "check", str(bad)])
    assert result.exit_code == 2
    assert "streams[0].decision.patiense" in result.output
    result = runner.invoke(app, ["config", "check", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and "not found" in result.output


def test_runtime_section_defaults_to_auto_and_takes_per_backend_settings(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD.replace("backend: onnxruntime\n", "")))
    assert isinstance(cfg.runtime, AutoRuntimeConfig) and cfg.backend == "auto"
    text = GOOD.replace("backend: onnxruntime", "runtime: {type: tensorrt, workspace_mib: 512, device: 1}")
    cfg = load_config(write(tmp_path, text))
    assert isinstance(cfg.runtime, TensorRTRuntimeConfig) and cfg.backend == "tensorrt"
    assert (cfg.runtime.workspace_mib, cfg.runtime.device, cfg.runtime.max_batch) == (512, 1, 16)
    cfg = load_config(write(tmp_path, GOOD.replace("backend: onnxruntime", "runtime: {threads: 2}")))
    assert isinstance(cfg.runtime, AutoRuntimeConfig) and cfg.runtime.threads == 2  # no type: auto
    # `backend:` is shorthand for the runtime's type
    cfg = load_config(write(tmp_path, GOOD))
    assert isinstance(cfg.runtime, OnnxRuntimeConfig) and cfg.runtime.threads is None
    both = GOOD.replace("backend: onnxruntime", "backend: onnxruntime\nruntime: {threads: 1}")
    cfg = load_config(write(tmp_path, both))
    assert isinstance(cfg.runtime, OnnxRuntimeConfig) and cfg.runtime.threads == 1


def test_runtime_typos_and_unknown_types_are_clear_errors(tmp_path: Path) -> None:
    msg = errors_of(tmp_path, GOOD.replace("backend: onnxruntime", "runtime: {type: onnxruntime, thread: 1}"))
    assert "runtime.thread (line 2): unknown key 'thread'" in msg
    assert "allowed keys: type, max_batch, threads, parallel_runs, onnx_file" in msg
    msg = errors_of(tmp_path, GOOD.replace("backend: onnxruntime", "runtime: {type: onnxruntime, workspace_mib: 64}"))
    assert "runtime.workspace_mib" in msg and "unknown key" in msg  # a TensorRT setting
    msg = errors_of(tmp_path, GOOD.replace("backend: onnxruntime", "runtime:\n  type: cuda"))
    assert "runtime.type (line 3): invalid value 'cuda'; allowed values: auto, tensorrt, onnxruntime, torch" in msg
    msg = errors_of(tmp_path, GOOD.replace("backend: onnxruntime", "runtime: {type: tensorrt, max_batch: 0}"))
    assert "runtime.max_batch (line 2)" in msg
    msg = errors_of(tmp_path, GOOD.replace("backend: onnxruntime", "backend: onnxruntime\nruntime: {type: tensorrt}"))
    assert "backend (line 2): backend 'onnxruntime' disagrees with runtime.type 'tensorrt'" in msg


def test_backend_flag_replaces_the_runtime_section_of_another_type(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("backend: onnxruntime", "runtime: {type: tensorrt, workspace_mib: 512}"))
    cfg = config_from_cli(path, backend="onnxruntime")
    assert isinstance(cfg.runtime, OnnxRuntimeConfig) and cfg.backend == "onnxruntime"
    cfg = config_from_cli(path, backend="tensorrt")
    assert isinstance(cfg.runtime, TensorRTRuntimeConfig) and cfg.runtime.workspace_mib == 512
    assert isinstance(config_from_cli(path).runtime, TensorRTRuntimeConfig)


def test_config_check_prints_the_runtime_section(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["config", "check", str(write(tmp_path, GOOD))])
    assert result.exit_code == 0, result.output
    out = yaml.safe_load(result.stdout)
    assert out["runtime"] == {"type": "onnxruntime", "max_batch": 1, "threads": None, "parallel_runs": None, "onnx_file": None}
    assert "backend" not in out  # the shorthand is folded into runtime.type
    again = validate_config({**out, "mqtt": {"url": "mqtt://h"}}, base_dir=tmp_path)
    assert isinstance(again.runtime, OnnxRuntimeConfig)
