"""A model past protobuf's 2 GB limit through requant, and the memory it takes.

What it runs
    A random-weight Llama (transformers' LlamaConfig; default hidden 2048, 12 layers,
    intermediate 5632, vocabulary 32000, untied head: 748 M parameters, 2.99 GB in float32), built in
    the benchmark from a seed (nothing is downloaded), goes through
    `requant.compile(model, target, example_inputs=..., calibration=...)` for each
    `--targets` entry (default cpu-fp32 and cpu-int8; two calibration batches for a
    static target), is saved, loaded back and run. Each target runs in its own child
    process, which builds its own copy of the model, so no build disturbs another's
    memory figures; the anchor is the float model itself: its parameters' bytes, and
    the torch forward pass on the same input (the reference for the outputs).

What it prints
    One markdown table, a row per target: float model GB, the process's RSS with its
    libraries loaded (torch, transformers, onnx, ONNX Runtime) before the model is
    built, the peak RSS of the whole process (torch model included), the peak above
    the libraries as a multiple of the float model, the peak in each stage (build the
    torch model, compile, save, load, run; `RssSampler`), the saved directory's GB,
    seconds to compile and to load, and the cosine of the logits after reload against
    torch's. The goal of issue 16: peak <= 2.5x the float
    model. Exit status 1 when a target fails (its row says where).

How to run
    python -m requant.tools.bench.large_model                         # 748 M, fp32 + int8
    python -m requant.tools.bench.large_model --layers 2 --hidden 512 --intermediate 1408 \
        --vocab 8000                                                  # a quick look (small)
    python -m requant.tools.bench.large_model --targets cpu-fp32
It needs transformers and about 2.5x the float model in free memory per target (the
targets run one after the other), and disk for the save and for the temporary file ONNX
Runtime's session reads the weights from (each about the size of the compiled weights).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "RssSampler", "build_llama"]

logger = logging.getLogger(__name__)

_GB = 1e9


class RssSampler:
    """The peak resident set size of this process, overall and per named stage. Linux
    keeps the peak itself (VmHWM in /proc/self/status), and writing 5 to
    /proc/self/clear_refs restarts it: each stage's peak is read and reset as the next
    stage begins, so a spike between two samples is not missed. A thread also reads
    /proc/self/statm every `interval` seconds (where clear_refs cannot be written it is
    the only measure, a lower bound) and enforces `limit`."""

    def __init__(self, interval: float = 0.01, limit: int | None = None, on_limit: Any = None) -> None:
        self.interval = interval
        self.limit = limit  # bytes: past it, `on_limit(stage, rss)` runs (the worker stops itself)
        self.on_limit = on_limit
        self.stage = "start"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._exact = self._reset_peak()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        now = self.rss()
        self.peaks[self.stage] = max(self.peaks.get(self.stage, 0), now)
        if self.limit is not None and now > self.limit and self.on_limit is not None:
            self.on_limit(self.stage, now)

    @staticmethod
    def _reset_peak() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return True
        except OSError:
            return False

    def _close_stage(self) -> None:
        self.sample()
        if self._exact:
            with open("/proc/self/status") as fh:
                hwm = next((int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:")), 0)
            self.peaks[self.stage] = max(self.peaks.get(self.stage, 0), hwm)
            self._reset_peak()

    def enter(self, stage: str) -> None:
        self._close_stage()
        self.stage = stage
        self.sample()

    def stop(self) -> dict[str, int]:
        self._close_stage()
        self._stop.set()
        self._thread.join()
        # clear_refs also lowers what ru_maxrss reports: the stages' peaks bound it too
        self.peaks["process"] = max([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, *self.peaks.values()])
        return self.peaks


def build_llama(args: argparse.Namespace) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.heads, max_position_embeddings=max(64, args.seq), use_cache=False,
                      tie_word_embeddings=False)
    with torch.no_grad():
        model = LlamaForCausalLM(cfg).eval()

    class Logits(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, use_cache=False).logits

    return Logits(model).eval()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _worker(args: argparse.Namespace) -> int:
    """One target, this process: prints one JSON line with the row's figures."""
    import torch

    import requant

    logging.disable(logging.WARNING)
    row: dict[str, Any] = {"target": args.worker}

    def stop(stage: str, rss: int) -> None:  # a shared machine: leave the others their memory
        row.update(ok=False, error=f"{stage}: stopped at {rss / _GB:.1f} GB RSS (--max-rss-gb {args.max_rss_gb})",
                   peaks={"process": rss})
        print(json.dumps(row), flush=True)
        os._exit(3)

    sampler = RssSampler(limit=None if args.max_rss_gb is None else int(args.max_rss_gb * _GB), on_limit=stop)
    out = Path(tempfile.mkdtemp(prefix="requant-large-", dir=args.tmp))
    try:
        import onnx  # noqa: F401  (the libraries every target loads, before the baseline is read)
        import onnxruntime  # noqa: F401
        import transformers  # noqa: F401

        row["baseline_bytes"] = sampler.rss()
        sampler.enter("build torch model")
        model = build_llama(args)
        row["float_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
        row["params"] = sum(p.numel() for p in model.parameters())
        gen = torch.Generator().manual_seed(args.seed + 1)
        ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen)
        calib = [(torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen),) for _ in range(args.calib)]
        with torch.no_grad():
            reference = model(ids).numpy()
        sampler.enter("compile")
        started = time.perf_counter()
        cm = requant.compile(model, args.worker, example_inputs=(ids,),
                             calibration=calib if args.worker != "cpu-fp32" else None)
        row["compile_s"] = time.perf_counter() - started
        sampler.enter("save")
        saved = cm.save(out / "model")
        row["saved_bytes"] = _dir_bytes(saved)
        del cm
        gc.collect()
        sampler.enter("load")
        started = time.perf_counter()
        loaded = requant.load(saved)
        row["load_s"] = time.perf_counter() - started
        sampler.enter("run")
        (logits,) = loaded(ids.numpy())
        row["cosine"] = _cosine(logits, reference)
        row["ok"] = True
    except Exception as exc:  # noqa: BLE001 (the row says what failed, at which stage)
        row["ok"] = False
        row["error"] = f"{sampler.stage}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    finally:
        row["peaks"] = sampler.stop()
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(row), flush=True)
    return 0


def _row(r: dict[str, Any]) -> str:
    f = r.get("float_bytes") or 0
    base = r.get("baseline_bytes") or 0
    peaks = r.get("peaks", {})
    peak = peaks.get("process", 0)
    stages = ", ".join(f"{k} {v / _GB:.1f}" for k, v in peaks.items() if k not in ("start", "process"))
    ratio = f"{(peak - base) / f:.2f}x" if f else "-"
    head = f"| {r['target']} | {f / _GB:.2f} | {base / _GB:.1f} | {peak / _GB:.1f} | {ratio} | {stages} |"
    if not r.get("ok"):
        return head + f" - | - | - | FAILED: {r.get('error')} |"
    return head + f" {r['saved_bytes'] / _GB:.2f} | {r['compile_s']:.0f} | {r['load_s']:.1f} | {r['cosine']:.6f} |"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m requant.tools.bench.large_model", description=__doc__.split("\n")[0])
    p.add_argument("--targets", nargs="+", default=["cpu-fp32", "cpu-int8"])
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--calib", type=int, default=2, help="calibration batches for static targets")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", default=None, help="where the saves go (default: the system's temporary directory)")
    p.add_argument("--max-rss-gb", type=float, default=None,
                   help="stop a target whose process grows past this many GB (its row says where)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        return _worker(args)
    rows = []
    for target in args.targets:
        cmd = [sys.executable, "-m", "requant.tools.bench.large_model", "--worker", target]
        for key in ("hidden", "layers", "intermediate", "vocab", "heads", "seq", "batch", "calib", "seed", "tmp",
                    "max_rss_gb"):
            if getattr(args, key) is not None:
                cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if not lines:
            rows.append({"target": target, "ok": False,
                         "error": f"worker exit status {proc.returncode}: {proc.stderr.strip()[-300:]}"})
        else:
            rows.append(json.loads(lines[-1]))
    first = next((r for r in rows if r.get("params")), {})
    print(f"random-weight Llama: hidden {args.hidden}, {args.layers} layers, intermediate {args.intermediate}, "
          f"vocabulary {args.vocab}, {first.get('params', 0) / 1e6:.0f} M parameters; input {args.batch} x "
          f"{args.seq} tokens; each target in its own process")
    print()
    print("| target | float model GB | libraries GB | peak RSS GB | (peak - libraries) / float | peak per stage GB "
          "| saved GB | compile s | load s | cosine vs torch |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(_row(r))
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
