"""Fault suite, bad inputs: corrupt WAVs (``edge-asd score`` and a file source), a corrupt bundle
(one flipped byte in ``model.onnx``, a pickled ``.npy``, a NaN threshold), ``threshold: .nan``
in the config, a garbage ``outbox.sqlite3`` and a WAV with NaN samples. Each is a one-line
error (exit 2, one ``error:``, no traceback) or a stream/node fault status, and no event is
lost. Each test prints its figure (``pytest -s``). Harness: ``tests/fixtures/faults.py``."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.faults import (
    STREAM,
    TONE_S,
    EventLedger,
    EventPlan,
    ListenProcess,
    copy_bundle,
    listen_config,
    noise,
    outbox_path,
    rewrite_manifest_entry,
    run_clis,
    running,
    tone,
    topic,
    user_error,
    wait_delivered,
    write_wav,
)
from tests.fixtures.mosquitto import Broker, Recorder

pytestmark = [pytest.mark.timeout(300)]
pytest.importorskip("onnxruntime")


def _good(path: Path) -> Path:
    return write_wav(path, noise(12.0))


def _truncated(path: Path) -> Path:
    good = _good(path.with_name("whole.wav"))
    path.write_bytes(good.read_bytes()[:50000])  # a copy interrupted half-way
    return path


def _empty_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _no_frames(path: Path) -> Path:
    return write_wav(path, np.zeros(0, np.float32))


def _garbage(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 60000, dtype=np.uint8).tobytes())
    return path


def _nan(path: Path) -> Path:
    audio = noise(12.0)
    audio[::97] = np.nan
    return write_wav(path, audio, subtype="FLOAT")


def _rate_999983(path: Path) -> Path:
    return write_wav(path, noise(2.0), rate=999983)


WAVS: dict[str, Callable[[Path], Path]] = {
    "truncated": _truncated,
    "empty file": _empty_file,
    "WAV without samples": _no_frames,
    "garbage": _garbage,
    "NaN samples": _nan,
    "999983 Hz": _rate_999983,
}


@pytest.mark.parametrize("case", list(WAVS))
def test_corrupt_wav_is_one_line_error(case: str, event_plan: EventPlan, tmp_path: Path) -> None:
    wav = WAVS[case](tmp_path / "bad.wav")
    bundle = str(event_plan.bundle)
    commands = [["score", bundle, str(wav), "--backend", "onnxruntime"]]
    # the NaN WAV as a *file source* is a stream fault, not an error: test_nan_wav_source_is_a_stream_fault
    if case != "NaN samples":
        commands.append(["listen", "--bundle", bundle, "--source", f"file:{wav}", "--class", event_plan.cls,
                         "--state-dir", str(tmp_path / "state"), "--node-id", "faults", "--fast"])  # fmt: skip
    score, *rest = run_clis(commands)
    listen = rest[0] if rest else None
    print(f"\n{case} WAV: score -> rc {score.returncode} {_said(score, tmp_path)!r}"
          + (f"; listen file source -> rc {listen.returncode} {_said(listen, tmp_path)!r}" if listen else ""))  # fmt: skip
    problems = {"score": user_error(score, names=wav.name)}
    if listen is not None:
        problems["listen"] = user_error(listen, names=wav.name)
    assert not any(problems.values()), problems


def _flip_a_byte(bundle: Path, tmp: Path) -> tuple[Path, str]:
    copy = copy_bundle(bundle, tmp / "flipped", copy=("model.onnx",))
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "model.onnx").write_bytes(bytes(data))
    return copy, "model.onnx"


def _pickled_npy(bundle: Path, tmp: Path) -> tuple[Path, str]:
    """A hostile bundle whose manifest agrees with a pickled (object) array: only the loader's
    ``allow_pickle=False`` stands between it and running code from the file."""
    rel = "embeddings/class_000.npy"
    copy = copy_bundle(bundle, tmp / "pickled", copy=(rel,))
    objects = np.empty(2, dtype=object)
    objects[:] = [{"not": "embeddings"}, "x"]
    np.save(copy / rel, objects, allow_pickle=True)
    rewrite_manifest_entry(copy, rel)
    return copy, "class_000.npy"


def _nan_threshold(bundle: Path, tmp: Path) -> tuple[Path, str]:
    copy = copy_bundle(bundle, tmp / "nan-threshold")
    manifest = json.loads((copy / "model.json").read_text())
    for entry in manifest["thresholds"]["classes"].values():
        entry["threshold"] = float("nan")  # json writes NaN: what a hand edit or a bad export leaves
    (copy / "model.json").write_text(json.dumps(manifest, indent=2))
    return copy, "threshold"


BUNDLES: dict[str, Callable[[Path, Path], tuple[Path, str]]] = {
    "one flipped byte in model.onnx": _flip_a_byte,
    "pickled .npy": _pickled_npy,
    "NaN threshold in model.json": _nan_threshold,
}


@pytest.mark.parametrize("case", list(BUNDLES))
def test_corrupt_bundle_is_one_line_error(case: str, event_plan: EventPlan, tmp_path: Path) -> None:
    bundle, named = BUNDLES[case](event_plan.bundle, tmp_path)
    wav = _good(tmp_path / "good.wav")
    score, listen = run_clis([
        ["score", str(bundle), str(wav), "--backend", "onnxruntime"],
        ["listen", "--bundle", str(bundle), "--source", f"file:{wav}", "--class", event_plan.cls,
         "--state-dir", str(tmp_path / "state"), "--node-id", "faults", "--fast"],
    ])  # fmt: skip
    print(f"\n{case}: score -> rc {score.returncode} {_said(score, tmp_path)!r}; listen -> rc {listen.returncode} "
          f"{_said(listen, tmp_path)!r}")  # fmt: skip
    problems = {"score": user_error(score, names=named), "listen": user_error(listen, names=named)}
    assert not any(problems.values()), problems


@pytest.mark.parametrize("value", [".nan", "-1.5"])
def test_non_finite_or_negative_threshold_in_the_config_is_one_line_error(
    value: str, event_plan: EventPlan, tmp_path: Path
) -> None:
    wav = _good(tmp_path / "good.wav")
    config = listen_config(tmp_path / "listen.yaml", event_plan, state=tmp_path / "state", wav=wav, threshold=12345.5)
    config.write_text(config.read_text().replace("threshold: 12345.5", f"threshold: {value}"))
    assert f"threshold: {value}" in config.read_text()
    listen, check = run_clis([["listen", "--config", str(config)], ["config", "check", str(config)]])
    print(f"\nthreshold: {value} in the config: listen -> rc {listen.returncode} {_said(listen, tmp_path)!r}; config check -> "
          f"rc {check.returncode}")  # fmt: skip
    problems = {"listen": user_error(listen, names="threshold"), "check": user_error(check, names="threshold")}
    assert not any(problems.values()), problems


def test_garbage_outbox_is_moved_aside_and_nothing_is_lost(event_plan: EventPlan, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    garbage = np.random.default_rng(3).integers(0, 256, 40000, dtype=np.uint8).tobytes()
    outbox_path(state).write_bytes(garbage)
    broker = Broker(tmp_path / "broker").start()
    rec = Recorder(broker.port, [topic("#")])
    wav = event_plan.wav(tmp_path / "cycles.wav", cycles=3)
    config = listen_config(tmp_path / "listen.yaml", event_plan, state=state, wav=wav, broker=broker)
    try:
        with running(ListenProcess(config, tmp_path / "listen.log")) as daemon:
            rc = daemon.wait(180)
        opened = daemon.opened()
        assert wait_delivered(rec, opened, 20)
        ledger = EventLedger.from_recorder(rec)
    finally:
        rec.close()
        broker.stop()
    aside = [p for p in state.iterdir() if p.name.startswith("outbox.sqlite3") and p.read_bytes() == garbage]
    text = daemon.text()
    named = bool(aside) and aside[0].name in text
    missing = ledger.missing(opened)
    print(f"\ngarbage outbox.sqlite3: rc {rc}, moved aside to {aside[0].name if aside else None} "
          f"(named in the log: {named}), {len(ledger.ids('new'))} new / {len(ledger.ids('end'))} end delivered of "
          f"{len(opened)} raised")  # fmt: skip
    assert rc == 0 and "Traceback" not in text, text[-3000:]
    assert aside and named, f"the corrupt outbox was not kept aside and named: {sorted(p.name for p in state.iterdir())}"
    assert len(opened) >= 3 and not any(missing.values()), missing
    assert not ledger.order_problems(), ledger.order_problems()


def test_nan_wav_source_is_a_stream_fault_and_nothing_is_lost(event_plan: EventPlan, tmp_path: Path) -> None:
    """Tone/noise events, then noise with NaN samples (a broken driver), then events again."""
    poisoned = noise(TONE_S)
    poisoned[::50] = np.nan
    cycle = [tone(TONE_S), noise(16)]
    wav = write_wav(tmp_path / "nan.wav", np.concatenate([*cycle, poisoned, *cycle, tone(TONE_S)]), subtype="FLOAT")
    broker = Broker(tmp_path / "broker").start()
    rec = Recorder(broker.port, [topic("#")])
    config = listen_config(tmp_path / "listen.yaml", event_plan, state=tmp_path / "state", wav=wav, broker=broker)
    try:
        with running(ListenProcess(config, tmp_path / "listen.log")) as daemon:
            rc = daemon.wait(180)
        opened = daemon.opened()
        assert wait_delivered(rec, opened, 20)
        ledger = EventLedger.from_recorder(rec)
        statuses = [m["payload"] for m in rec.on(topic(STREAM, "status"))]
        messages = [m["payload"] for m in rec.on(topic(STREAM, "status", "message")) if m["payload"]]
        scores = [m["payload"] for m in rec.on(topic(STREAM, "score"))]
    finally:
        rec.close()
        broker.stop()
    text = daemon.text()
    missing = ledger.missing(opened)
    fault_then_online = "fault" in statuses and "online" in statuses[statuses.index("fault") :]
    print(f"\nNaN samples in a file source: rc {rc}, statuses {_runs(statuses)}, fault message "
          f"{messages[0] if messages else None!r}, {len(ledger.ids('new'))} new / {len(ledger.ids('end'))} end "
          f"delivered of {len(opened)} raised, non-finite scores published: "
          f"{sum(1 for s in scores if s.lower() in ('nan', 'inf', '-inf'))}")  # fmt: skip
    assert rc == 0 and "Traceback" not in text, text[-3000:]
    assert fault_then_online, statuses
    assert messages and "NaN" in " ".join(messages), messages
    assert len(opened) >= 2 and not any(missing.values()), missing
    assert not any(s.lower() in ("nan", "inf", "-inf") for s in scores)


def _said(proc: subprocess.CompletedProcess, tmp: Path) -> str:
    """The error message as one line, without the test's temporary folder."""
    text = " ".join(proc.stderr.replace(f"{tmp}/", "").split())
    return text[text.find("error:") :][:240] if "error:" in text else text[-240:]


def _runs(values: list[str]) -> list[str]:
    """Consecutive duplicates folded: ['online', 'fault', 'online']."""
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]
