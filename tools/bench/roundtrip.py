"""ONNX Runtime latency of requant's exported fp32 all-MiniLM-L6-v2 next to torch.onnx's
own export of the same model, on the same inputs, in the same run.

requant's path: `from_torch` (torch.export) -> canonicalize -> `to_onnx`; torch's path:
`torch.onnx.export(dynamo=True, optimize=True)`. Both files get symbolic batch and
sequence dims and run in `OnnxRuntimeSession` with the same settings. The two sessions
are timed interleaved (one run of each, repeated), after warm-up, and medians reported;
outputs are checked against torch before timing. Also prints frontend, canonicalize and
export times.

    python -m requant.tools.bench.roundtrip [--batch 64 --seq 64 --runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]


def _export_requant(model, example, path: Path) -> dict[str, float]:
    from requant.backends.onnx import save_onnx, to_onnx
    from requant.frontends import from_torch
    from requant.passes import get_pass

    times = {}
    t0 = time.perf_counter()
    graph = from_torch(model, example, dynamic_dims={"input_ids": {0: "batch", 1: "seq"},
                                                     "attention_mask": {0: "batch", 1: "seq"}})
    times["frontend (from_torch)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    get_pass("canonicalize")(graph)
    times["canonicalize"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    save_onnx(to_onnx(graph), path)
    times["export (to_onnx + save)"] = time.perf_counter() - t0
    return times


def _export_torch(model, example, path: Path) -> float:
    import torch

    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", min=2, max=512)
    t0 = time.perf_counter()
    torch.onnx.export(model, example, str(path), dynamo=True, optimize=True, external_data=False,
                      input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                      dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                      verbose=False)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--runs", type=int, default=20, help="timed runs per model (interleaved)")
    args = ap.parse_args(argv)

    import torch

    from requant.backends.onnx import OnnxRuntimeSession
    from requant.tools.bench.minilm import load_minilm, tokenize
    from requant.tools.bench.sentences import real_sentences

    model = load_minilm()
    ids, mask = tokenize(real_sentences(args.batch), args.seq)
    example = (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2]))
    with torch.no_grad():
        want = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

    with tempfile.TemporaryDirectory() as tmp:
        rq_path, th_path = Path(tmp) / "requant.onnx", Path(tmp) / "torch.onnx"
        times = _export_requant(model, example, rq_path)
        times["torch.onnx.export"] = _export_torch(model, example, th_path)
        sessions = {"requant": OnnxRuntimeSession(str(rq_path)), "torch.onnx": OnnxRuntimeSession(str(th_path))}
        errors = {}
        for name, sess in sessions.items():
            (got,) = sess(ids, mask)[:1]
            errors[name] = float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))
        for sess in sessions.values():  # warm-up
            for _ in range(3):
                sess(ids, mask)
        samples: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(args.runs):
            for name, sess in sessions.items():
                t0 = time.perf_counter()
                sess(ids, mask)
                samples[name].append(time.perf_counter() - t0)
        sizes = {name: p.stat().st_size + sum(f.stat().st_size for f in p.parent.glob(p.name + ".data"))
                 for name, p in (("requant", rq_path), ("torch.onnx", th_path))}

    med = {name: statistics.median(s) * 1e3 for name, s in samples.items()}
    ratio = med["requant"] / med["torch.onnx"]
    print(f"all-MiniLM-L6-v2 fp32, batch {args.batch} x {args.seq} tokens, ONNX Runtime, {args.runs} interleaved runs\n")
    print("| export | ORT median ms | vs torch.onnx | max rel. error vs torch | file MB |")
    print("|---|---:|---:|---:|---:|")
    for name in sessions:
        print(f"| {name} | {med[name]:.1f} | {med[name] / med['torch.onnx']:.3f}x | {errors[name]:.1e} | {sizes[name] / 1e6:.1f} |")
    print()
    for step, seconds in times.items():
        print(f"- {step}: {seconds:.2f} s")
    print(f"- latency ratio requant / torch.onnx: {ratio:.3f} (bar <= 1.05): {'PASS' if ratio <= 1.05 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
