#!/usr/bin/env bash
# The GPU half of tools/bench/tvm_cuda_gpu.py, for a GPU machine that has python3 with
# numpy (torch + transformers for the torch rows) but neither TVM nor requant installed:
#
#     bash tools/bench/gpu_check.sh [run options, e.g. --repeat 50]     # from anywhere
#
# It prints nvidia-smi's first lines, installs the bundle's TVM runtime (.gpu/runtime: the
# apache-tvm-ffi wheel and the runtime-only `tvm` package) into a scratch directory, makes
# this checkout importable as the package `requant` (a symlink named requant -> the repo
# root; the repo root IS the package), and runs
#     python3 -m requant.tools.bench.tvm_cuda_gpu run --bundle .gpu
# with TVM in runtime-only mode. The whole log goes to $OUT/gpu_check.log (and stdout),
# the table to $OUT/gpu_check.txt. Environment: BUNDLE (default <repo>/.gpu), PYTHON
# (default python3), OUT (default a scratch directory).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUNDLE=${BUNDLE:-$REPO/.gpu}
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/requant-gpu.XXXXXX")
export OUT=${OUT:-$WORK/out}
mkdir -p "$OUT"
trap 'rm -rf "$WORK/site" "$WORK/pkg"' EXIT

setup_and_run() {
    echo "== nvidia-smi"
    if command -v nvidia-smi >/dev/null; then nvidia-smi 2>&1 | head -n 15; else echo "(no nvidia-smi)"; fi
    echo "== $PY: $("$PY" -c 'import sys; print(sys.version.split()[0], sys.executable)')"
    [ -f "$BUNDLE/manifest.json" ] || { echo "no bundle at $BUNDLE: run tvm_cuda_gpu prepare first" >&2; return 2; }

    local site="$WORK/site" pkg="$WORK/pkg"
    mkdir -p "$site" "$pkg"
    # a wheel is a zip; unpacking it is what pip does for this one (no .data, no scripts needed)
    for wheel in "$BUNDLE"/runtime/*.whl; do
        "$PY" -m pip install --quiet --no-index --no-deps --target "$site" "$wheel" 2>/dev/null \
            || "$PY" -m zipfile -e "$wheel" "$site" || return 2
    done
    tar -xzf "$BUNDLE/runtime/tvm-runtime.tar.gz" -C "$site" || return 2
    # tvm-ffi needs typing_extensions (torch brings it); the bundle's copy only if it is missing
    "$PY" -c 'import typing_extensions' 2>/dev/null || cp "$BUNDLE/runtime/typing_extensions.py" "$site/"
    ln -s "$REPO" "$pkg/requant"
    echo "== runtime in $site: $(ls "$site" | tr '\n' ' ')"

    # run from the scratch directory: the repo root on sys.path would expose its
    # subpackages (ir, tools, ...) as top-level modules
    cd "$WORK" || return 2
    PYTHONPATH="$pkg:$site${PYTHONPATH:+:$PYTHONPATH}" \
    TVM_USE_RUNTIME_LIB=1 \
    TVM_FFI_DISABLE_TORCH_C_DLPACK=1 \
    PYTHONUNBUFFERED=1 \
        "$PY" -m requant.tools.bench.tvm_cuda_gpu run --bundle "$BUNDLE" "$@"
}

setup_and_run "$@" 2>&1 | tee "$OUT/gpu_check.log"
status=${PIPESTATUS[0]}
echo "== exit status $status; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$status"
