"""Is int8 worth it on the CPU? Static int8 quantisation of the log-mel CPU graph against fp32.

Issue 13's rule for a reduced-precision CPU graph: keep it only if its scores keep a Spearman
rank correlation >= 0.999 with fp32 and it loses no AUC on synthetic data. This script applies
it. It quantises ``model_cpu_logmel.onnx`` of a bundle with onnxruntime's static quantiser
(QDQ, per-channel int8 weights, uint8 activations, MinMax calibration on normal training
clips), then on the same clips for both graphs: the knn score (cosine distance to the k
nearest training embeddings, as the bundle scores) of every test clip, the Spearman
correlation and AUC of those scores, and windows/s of the engine alone at batch 1 and 8 with
the backend's own session settings.

``--variant pointwise`` quantises only dense (group 1) convolutions and matrix products: the
depthwise convolutions of MobileFaceNet have no fast int8 kernel and cost quantise/dequantise
pairs around them.

    python bench/cpu_int8.py --bundle /tmp/synth-bundle \\
        --data .cache/test-artifacts/synth-data/dev_data --out bench/results/cpu_int8.json

Needs the ``onnx`` extra (onnx, onnxruntime with its quantisation tools).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import cpu_description
from edge_asd.core.audio_io import fit_length, read_audio
from edge_asd.core.logmel import LogMelFrontEnd
from engines.bundle import LOGMEL_INPUT_NAME, load_bundle

logger = logging.getLogger("bench.cpu_int8")


def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), for Spearman's rho without scipy."""
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x), dtype=np.float64)
    r[order] = np.arange(len(x), dtype=np.float64)
    for value in np.unique(x):
        tied = x == value
        if tied.sum() > 1:
            r[tied] = r[tied].mean()
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U over average ranks)."""
    r = ranks(scores)
    pos = labels.astype(bool)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    return float((r[pos].sum() + n1 - n1 * (n1 + 1) / 2) / (n1 * n0))


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_mem_pattern = False
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def clips(paths: list[Path], window: int) -> np.ndarray:
    return np.stack([fit_length(read_audio(p), window) for p in paths]).astype(np.float32)


def embeddings(sess, audio: np.ndarray, fe: LogMelFrontEnd) -> np.ndarray:
    rows = [sess.run(["embedding"], {"audio": a[None], LOGMEL_INPUT_NAME: fe.window(a[None])})[0][0] for a in audio]
    e = np.asarray(rows, np.float64)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def knn_scores(bank: np.ndarray, test: np.ndarray, k: int) -> np.ndarray:
    return np.sort(1.0 - test @ bank.T, axis=1)[:, :k].mean(axis=1)


def windows_per_s(sess, fe: LogMelFrontEnd, batch: int, seconds: float) -> float:
    audio = (0.05 * np.random.default_rng(1).standard_normal((batch, fe.window_samples))).astype(np.float32)
    feed = {"audio": audio, LOGMEL_INPUT_NAME: fe.window(audio)}
    for _ in range(3):
        sess.run(None, feed)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sess.run(None, feed)
        n += 1
    return n * batch / (time.perf_counter() - start)


def quantise(src: Path, dst: Path, calibration: np.ndarray, fe: LogMelFrontEnd, variant: str) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre))
    exclude = []
    if variant == "pointwise":
        for node in onnx.load(str(pre)).graph.node:
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            if node.op_type not in ("Conv", "MatMul", "Gemm") or group > 1:
                exclude.append(node.name)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self):
            a = next(self.items, None)
            return None if a is None else {"audio": a[None], LOGMEL_INPUT_NAME: fe.window(a[None])}

    quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True, help="an exported bundle with model_cpu_logmel.onnx")
    parser.add_argument("--data", type=Path, required=True, help="DCASE layout: <machine>/train/*.wav, <machine>/test/*.wav")
    parser.add_argument("--variant", choices=["all", "pointwise"], nargs="+", default=["all", "pointwise"])
    parser.add_argument("--calibration", type=int, default=48, help="normal training clips to calibrate on")
    parser.add_argument("--knn-k", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--out", type=Path, default=Path("bench-results/cpu_int8.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    bundle = load_bundle(args.bundle)
    src = bundle.logmel_onnx_path
    if src is None:
        raise SystemExit(f"{args.bundle} has no model_cpu_logmel.onnx: export it again with this edge-asd")
    train = sorted(args.data.glob("*/train/*.wav"))
    test = sorted(args.data.glob("*/test/*.wav"))
    if not train or not test:
        raise SystemExit(f"{args.data}: expected <machine>/train/*.wav and <machine>/test/*.wav")
    fe = LogMelFrontEnd(bundle.manifest.window_samples)
    train_audio, test_audio = clips(train, fe.window_samples), clips(test, fe.window_samples)
    labels = np.array(["anomaly" in p.name for p in test])
    rng = np.random.default_rng(0)
    calibration = train_audio[rng.choice(len(train_audio), min(args.calibration, len(train_audio)), replace=False)]

    fp32 = session(src, args.threads)
    bank32, test32 = embeddings(fp32, train_audio, fe), embeddings(fp32, test_audio, fe)
    scores32 = knn_scores(bank32, test32, args.knn_k)
    rows = [{"graph": "fp32", "auc": auc(labels, scores32), "spearman_vs_fp32": 1.0,
             **{f"windows_per_s_batch{b}": windows_per_s(fp32, fe, b, args.seconds) for b in (1, 8)}}]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variant:
            path = Path(tmp) / f"int8-{variant}.onnx"
            quantise(src, path, calibration, fe, variant)
            q = session(path, args.threads)
            bank8, test8 = embeddings(q, train_audio, fe), embeddings(q, test_audio, fe)
            scores8 = knn_scores(bank8, test8, args.knn_k)
            rows.append({
                "graph": f"int8 ({variant})", "auc": auc(labels, scores8), "spearman_vs_fp32": spearman(scores32, scores8),
                "embedding_cosine_min": float((test32 * test8).sum(axis=1).min()),
                **{f"windows_per_s_batch{b}": windows_per_s(q, fe, b, args.seconds) for b in (1, 8)},
            })  # fmt: skip
    keep = [r["graph"] for r in rows[1:] if r["spearman_vs_fp32"] >= 0.999 and r["auc"] >= rows[0]["auc"]
            and r["windows_per_s_batch1"] > rows[0]["windows_per_s_batch1"]]  # fmt: skip
    result = {"machine": {**cpu_description(), "threads": args.threads, "load_average": os.getloadavg()},
              "bundle": str(args.bundle), "train_clips": len(train), "test_clips": len(test), "rows": rows,
              "kept": keep}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| graph | AUC | Spearman vs fp32 | windows/s batch 1 | windows/s batch 8 |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['graph']} | {r['auc']:.4f} | {r['spearman_vs_fp32']:.4f} | "
              f"{r['windows_per_s_batch1']:.1f} | {r['windows_per_s_batch8']:.1f} |")  # fmt: skip
    print(f"\nkept (Spearman >= 0.999, no AUC loss, faster): {keep or 'none'}; JSON written to {args.out}")


if __name__ == "__main__":
    main()
