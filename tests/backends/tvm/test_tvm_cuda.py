"""CUDA builds (requant.backends.tvm.cuda) without a GPU: CUDA C and a TVM library for
sm_80 + sm_90, integer dp4a matmul kernels, export, the missing-nvcc and no-GPU errors;
and, on a GPU machine only, the built module against the same module on TVM's CPU."""

from __future__ import annotations

import re

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from requant.backends.tvm import cuda as tcuda  # noqa: E402
from requant.errors import RequantError  # noqa: E402

pytestmark = pytest.mark.skipif(tcuda.nvcc_status() is not None, reason="nvcc (CUDA toolkit) not installed")

HIDDEN, HEADS, FFN, SEQ = 128, 2, 256, 16


def _int8_linear(bb, x, w_q, w_scale, bias, x_scale, x_zp):
    """QuantizeLinear(x) to uint8 -> int8 @ int8 weights with int32 accumulation ->
    zero-point correction -> float rescale + bias (the 8-bit form; requant's emitter
    writes the widened form, test_the_emitters_widened_matmul_integer_form_is_rewritten)."""
    from tvm import relax

    q = bb.emit(relax.op.astype(relax.op.clip(
        relax.op.add(relax.op.round(relax.op.divide(x, relax.const(x_scale, "float32"))),
                     relax.const(float(x_zp), "float32")), 0, 255), "uint8"))
    acc = bb.emit(relax.op.matmul(q, relax.const(w_q), out_dtype="int32"))
    colsum = w_q.astype(np.int32).sum(axis=0)
    acc = bb.emit(relax.op.subtract(acc, relax.const((x_zp * colsum).astype(np.int32))))
    y = relax.op.multiply(relax.op.astype(acc, "float32"), relax.const((x_scale * w_scale).astype(np.float32)))
    return bb.emit(relax.op.add(y, relax.const(bias)))


def minilm_like_layer():
    """One BERT encoder layer (MiniLM-shaped, smaller) with int8 linears; batch dynamic."""
    from tvm import relax, tirx

    rng = np.random.default_rng(0)
    batch = tirx.Var("batch", "int64")
    x = relax.Var("x", relax.TensorType((batch, SEQ, HIDDEN), "float32"))
    bb = relax.BlockBuilder()

    def weights(k, n):
        w = rng.normal(0, 0.05, size=(k, n)).astype(np.float32)
        scale = np.abs(w).max(axis=0) / 127
        return np.round(w / scale).astype(np.int8), scale.astype(np.float32), rng.normal(0, 0.01, n).astype(np.float32)

    def ln(h):
        return bb.emit(relax.op.nn.layer_norm(h, relax.const(np.ones(HIDDEN, np.float32)),
                                              relax.const(np.zeros(HIDDEN, np.float32)), axes=[-1]))

    with bb.function("main", [x]):
        with bb.dataflow():
            qkv = _int8_linear(bb, x, *weights(HIDDEN, 3 * HIDDEN), 0.03, 128)
            q, k, v = (bb.emit(relax.op.permute_dims(relax.op.reshape(
                relax.op.strided_slice(qkv, [2], [i * HIDDEN], [(i + 1) * HIDDEN]),
                (batch, SEQ, HEADS, HIDDEN // HEADS)), [0, 2, 1, 3])) for i in range(3))
            scores = bb.emit(relax.op.divide(relax.op.matmul(q, relax.op.permute_dims(k, [0, 1, 3, 2])),
                                             relax.const(np.sqrt(HIDDEN // HEADS), "float32")))
            ctx = bb.emit(relax.op.matmul(relax.op.nn.softmax(scores, axis=-1), v))
            ctx = bb.emit(relax.op.reshape(relax.op.permute_dims(ctx, [0, 2, 1, 3]), (batch, SEQ, HIDDEN)))
            h = ln(bb.emit(relax.op.add(x, _int8_linear(bb, ctx, *weights(HIDDEN, HIDDEN), 0.02, 128))))
            f = bb.emit(relax.op.nn.gelu(_int8_linear(bb, h, *weights(HIDDEN, FFN), 0.03, 120)))
            out = ln(bb.emit(relax.op.add(h, _int8_linear(bb, f, *weights(FFN, HIDDEN), 0.02, 10))))
            gv = bb.emit_output(out)
        bb.emit_func_output(gv)
    return bb.get()


@pytest.fixture(scope="module")
def built():
    return tcuda.build_cuda(minilm_like_layer())


def test_builds_source_and_fatbin_for_sm80_and_sm90(built):
    assert built.archs == ("sm_80", "sm_90")
    assert built.codegen_arch == "sm_80"
    assert "__global__" in built.cuda_source
    assert built.fatbin[:4] == bytes.fromhex("50ed55ba")  # fatbin magic
    kinds = []
    stack = [built.executable.mod]
    while stack:
        m = stack.pop()
        kinds.append(m.kind)
        stack.extend(m.imports)
    assert kinds.count("cuda") == 1 and "llvm" in kinds
    assert built.times["tvm"] > 0 and built.times["nvcc"] > 0


def _kernel_body(source: str, name: str) -> str:
    # the definition, not the forward declaration TVM emits first
    start = re.search(rf"__global__\s+void\s+(?:__launch_bounds__\(\d+\)\s+)?{name}\([^)]*\)\s*\{{", source).start()
    depth, i = 0, source.index("{", start)
    for j in range(i, len(source)):
        depth += {"{": 1, "}": -1}.get(source[j], 0)
        if depth == 0:
            return source[start:j + 1]
    raise AssertionError(name)


def test_int8_matmuls_are_dp4a_kernels_with_int32_accumulators(built):
    assert built.dp4a_matmuls == 4  # qkv, out-proj, ffn up, ffn down
    names = [n for n in built.kernel_names if "dp4a_matmul" in n]
    assert sorted(n.removesuffix("_kernel") for n in names) == sorted({
        "requant_dp4a_matmul_uint8_int8_k128_n384", "requant_dp4a_matmul_uint8_int8_k128_n128",
        "requant_dp4a_matmul_uint8_int8_k128_n256", "requant_dp4a_matmul_uint8_int8_k256_n128"})
    for name in names:
        body = _kernel_body(built.cuda_source, name)
        assert "__dp4a(" in body
        assert len(re.findall(r"__shared__ alignas\(\d+\) signed char \w+\[", body)) == 2  # int8 A and W tiles
        assert "(int)A_ptr[" in body and "- 128)" in body  # uint8 activations staged as int8
        assert "__dp4a(16843009, " in body  # 128 * colsum(W) correction, also on dp4a
        assert re.search(r"\bint \w+\[16\];", body)  # 4x4 int32 accumulators per thread
        assert "*(int*)(" in body  # four 8-bit values packed into one 32-bit load
        assert "float" not in body and "half" not in body
        assert "__syncthreads()" in body


def test_float_ops_still_scheduled(built):
    # softmax / layer norm / gelu kernels exist and the module has no unscheduled loops
    src = built.cuda_source
    assert len(built.kernel_names) >= 8
    assert "erff" in src or "erf(" in src  # GELU


def test_single_arch_build():
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((8, 64), "int8"))
    w = np.arange(64 * 32, dtype=np.int64).reshape(64, 32).astype(np.int8)
    with bb.function("main", [x]):
        out = bb.emit(relax.op.matmul(x, relax.const(w), out_dtype="int32"))
        bb.emit_func_output(out)
    b = tcuda.build_cuda(bb.get(), archs="sm_90")
    assert b.archs == ("sm_90",) and b.dp4a_matmuls == 1 and "__dp4a(" in b.cuda_source


def test_export_writes_library_and_source(built, tmp_path):
    paths = built.export(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.cu", "model.fatbin", "model.so"]
    assert paths["so"].read_bytes()[:4] == b"\x7fELF"
    assert paths["cu"].read_text() == built.cuda_source
    assert paths["fatbin"].read_bytes() == built.fatbin


def test_missing_nvcc_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    for var in ("TVM_NVCC", "CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(tcuda, "_nvcc_candidates", lambda orig=tcuda._nvcc_candidates: [
        c for c in orig() if c[0] != "default location"] + [("default location", str(tmp_path / "cuda/bin/nvcc"))])
    status = tcuda.nvcc_status()
    assert status is not None and "install the cuda toolkit" in status.lower() and "TVM_NVCC" in status
    with pytest.raises(tcuda.CudaToolkitError, match="put its bin/ directory on PATH"):
        tcuda.build_cuda(minilm_like_layer())
    assert issubclass(tcuda.CudaToolkitError, RequantError)


def test_nvcc_from_env(monkeypatch):
    nvcc = tcuda.find_nvcc()
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("TVM_NVCC", nvcc)
    assert tcuda.nvcc_status() is None and tcuda.find_nvcc() == nvcc


def test_bad_arch_is_an_error():
    with pytest.raises(RequantError, match="sm_80"):
        tcuda.build_cuda(minilm_like_layer(), archs=("compute_80",))


@pytest.mark.skipif(tcuda.gpu_present(), reason="a GPU is present")
def test_load_without_gpu_is_a_clear_error(built, tmp_path):
    paths = built.export(tmp_path)
    with pytest.raises(tcuda.NoGpuError, match=r"no CUDA GPU is present on this machine; the library at .*model\.so"):
        tcuda.load_cuda_library(paths["so"])


@pytest.mark.gpu
@pytest.mark.skipif(not tcuda.gpu_present(), reason="needs an NVIDIA GPU")
def test_runs_on_gpu_like_cpu(built, tmp_path):
    mod = minilm_like_layer()
    x = np.random.default_rng(1).normal(size=(3, SEQ, HIDDEN)).astype(np.float32)
    cpu = tvm.relax.VirtualMachine(tvm.compile(mod, tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    want = cpu["main"](tvm.runtime.tensor(x)).numpy()
    vm = tcuda.load_cuda_library(built.export(tmp_path)["so"])
    got = vm["main"](tvm.runtime.tensor(x, tvm.cuda(0))).numpy()
    # integer matmuls are exact; the float parts differ by fast-math rounding only
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


def test_the_emitters_widened_matmul_integer_form_is_rewritten() -> None:
    """MatMulInteger(u8 x, s8 W, zp) as the Relax emitter writes it, (astype(x, i32) - zp)
    @ astype(W, i32), becomes the dp4a kernel minus zp * colsum(W) (exact in int32)."""
    from requant.backends.tvm.emit import to_relax
    from requant.ir.builder import Builder
    from requant.ir.graph import Graph
    from requant.ir.types import TensorType
    from requant.ir import dtypes

    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (64, 32), dtype=np.int8)
    g = Graph()
    b = Builder(g)
    x = b.input("x", TensorType((8, 64), dtypes.uint8))
    y = b.MatMulInteger(x, b.const(w), b.const(np.uint8(131)))
    g.outputs.append(y)
    mod, count = tcuda.rewrite_int8_matmuls(to_relax(g))
    assert count == 1
    text = mod.script()  # (show_meta=True crashes TVM 0.27 on this module)
    assert "requant_dp4a_matmul_uint8_int8_k64_n32" in text and "R.matmul" not in text
    subtracted = [c.args[1].value.numpy() for c in _calls(mod["main"], "relax.subtract")
                  if isinstance(c.args[1], tvm.ir.expr.Constant)]
    assert len(subtracted) == 1
    np.testing.assert_array_equal(subtracted[0], 131 * w.astype(np.int64).sum(axis=0))


def _calls(func, op_name: str) -> list:
    from tvm import relax

    found = []
    relax.analysis.post_order_visit(
        func, lambda e: found.append(e) if isinstance(e, relax.Call) and getattr(e.op, "name", None) == op_name
        else None)
    return found


def _masked_attention():
    """requant's ScaledDotProductAttention with a bool key mask, lowered to Relax."""
    from requant.backends.tvm.emit import to_relax
    from requant.ir import Builder, Graph, tensor_type

    g = Graph("masked_attention")
    b = Builder(g)
    q, k, v = (b.input(n, tensor_type("float32", [2, HEADS, SEQ, HIDDEN // HEADS])) for n in "qkv")
    mask = b.input("mask", tensor_type("bool", [2, 1, SEQ, SEQ]))
    g.outputs = [b.ScaledDotProductAttention(q, k, v, mask)]
    return to_relax(g)


_VECTOR_BOOL_LOAD = re.compile(r"\*\((?:u?short|u?char|u?int)\d\*\)\(mask_ptr")


def test_bool_masks_are_read_one_element_at_a_time():
    """TVM 0.27 reads a 2-lane bool vector as `ushort2` (two bools per lane): the mask in
    dlight's matmul epilogue must be read with scalar loads (serialize_bool_kernels)."""
    source = tcuda.build_cuda(_masked_attention(), archs=("sm_90",)).cuda_source
    assert "bool* __restrict__ mask_ptr" in source
    assert re.search(r"\(\(int\)mask_ptr\[", source)  # scalar reads of the mask
    assert not _VECTOR_BOOL_LOAD.search(source)


def test_without_the_bool_fix_tvm_packs_two_bools_per_vector_lane(monkeypatch):
    # the case that must not match: the codegen bug the fix exists for
    monkeypatch.setattr(tcuda, "serialize_bool_kernels", lambda mod: mod)
    source = tcuda.build_cuda(_masked_attention(), archs=("sm_90",)).cuda_source
    assert re.search(r"\*\(ushort2\*\)\(mask_ptr", source)
