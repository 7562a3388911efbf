"""from_torch: one small module per op family, converted and run on the interpreter
against torch on seeded inputs; the model forms (nn.Module, ExportedProgram,
fx.GraphModule), dict inputs, dynamic dims, names, source locations, cleanup of no-ops,
and the errors for unsupported ops and wrong example inputs."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from requant import RequantError, UnsupportedOpError  # noqa: E402
from requant.frontends import from_torch  # noqa: E402
from requant.ir import dtypes, run  # noqa: E402
from requant.ir.graph import Graph  # noqa: E402

# fp32: max|ir - torch| <= FP32_TOLERANCE * max(1, max|torch|), per output
FP32_TOLERANCE = 1e-4
# bf16 rounds every op's result to 8 significant bits, torch and the interpreter at
# slightly different points
BF16_TOLERANCE = 3e-2


# -- helpers --------------------------------------------------------------------------------


def _numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(dtypes.bfloat16.np)
    return t.detach().numpy()


def _torch_outputs(module: Any, inputs: Any) -> list[torch.Tensor]:
    with torch.no_grad():
        out = module(**inputs) if isinstance(inputs, dict) else module(*inputs)
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return list(out.values())
    return list(out)


def assert_close(actual: np.ndarray, expected: torch.Tensor, tolerance: float = FP32_TOLERANCE) -> None:
    ref = expected.detach()
    assert actual.shape == tuple(ref.shape)
    if not ref.is_floating_point():
        np.testing.assert_array_equal(actual, ref.numpy())  # integer and bool results are exact
        return
    a = np.asarray(actual, dtype=np.float64)
    r = ref.double().numpy()
    # infinities and NaNs (masks, -inf fills) must sit in the same places with the same sign
    np.testing.assert_array_equal(np.isnan(a), np.isnan(r))
    np.testing.assert_array_equal(np.where(np.isinf(r), r, 0), np.where(np.isinf(a), a, 0))
    finite = np.isfinite(r)
    a, r = a[finite], r[finite]
    scale = max(1.0, float(np.max(np.abs(r), initial=0.0)))
    err = float(np.max(np.abs(a - r), initial=0.0))
    assert err <= tolerance * scale, f"max abs error {err:.3g} > {tolerance:g} * {scale:.3g}"


def check_against_torch(graph: Graph, module: Any, inputs: Any, tolerance: float = FP32_TOLERANCE) -> None:
    graph.verify()
    # non-tensor inputs (None, Python numbers) are baked into the graph by torch.export
    if isinstance(inputs, dict):
        feed = {k: _numpy(v) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    else:
        feed = [_numpy(v) for v in inputs if isinstance(v, torch.Tensor)]
    outs = run(graph, feed)
    refs = _torch_outputs(module, inputs)
    assert len(outs) == len(refs)
    for out, ref in zip(outs, refs):
        assert_close(out, ref, tolerance)


def check_meta(graph: Graph) -> None:
    """Every node says where in the model it comes from and which torch op made it."""
    for node in graph:
        assert isinstance(node.meta.get("source"), str), node
        assert isinstance(node.meta.get("torch_op"), str) and node.meta["torch_op"], node


def sources(graph: Graph) -> set[str]:
    return {n.meta["source"] for n in graph}


def convert(module: nn.Module, inputs: Any, **options: Any) -> Graph:
    module.eval()
    graph = from_torch(module, inputs, **options)
    check_meta(graph)
    check_against_torch(graph, module, inputs)
    return graph


def ops(graph: Graph) -> dict[str, int]:
    return graph.op_histogram()


def _seed() -> torch.Generator:
    torch.manual_seed(0)
    return torch.Generator().manual_seed(0)


class _Lambda(nn.Module):
    """A module whose forward is `fn`, for one-line op tests."""

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


# -- linear algebra --------------------------------------------------------------------------


def test_linear_stack_names_and_sources() -> None:
    _seed()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4, bias=False))
    graph = convert(model, (randn(3, 8),))
    assert [v.name for v in graph.inputs] == ["input"]
    assert [v.name for v in graph.outputs] == ["output_0"]
    assert {c.name for c in graph.constants} >= {"0.weight", "0.bias", "2.weight"}
    assert {"0", "1", "2"} <= sources(graph)
    matmuls = [n for n in graph if n.op == "MatMul"]
    assert [n.meta["source"] for n in matmuls] == ["0", "2"]
    assert all(n.meta["torch_op"] == "aten.linear.default" for n in matmuls)


def test_linear_on_3d_input_and_matmul_family() -> None:
    _seed()

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(6, 5)
            self.w = nn.Parameter(torch.randn(5, 7))

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            h = self.proj(x) @ self.w  # (2, 4, 7)
            h = torch.bmm(h, y)  # (2, 4, 3)
            return torch.addmm(torch.ones(3) * 0.5, h[0], torch.ones(3, 3), beta=2.0) + h.sum()

    convert(Block(), (randn(2, 4, 6), randn(2, 7, 3)))


# -- convolution, batch norm, pooling --------------------------------------------------------


def _bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return bn


def test_conv2d_batchnorm_pooling() -> None:
    _seed()
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), _bn(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=4, bias=False), _bn(8), nn.ReLU6(),
        nn.MaxPool2d(2, ceil_mode=True), nn.AvgPool2d(2, stride=1, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )
    graph = convert(model, (randn(2, 3, 17, 17),))
    assert {"Conv", "BatchNormalization", "MaxPool", "AveragePool"} <= set(ops(graph))


def test_conv1d_conv_transpose_and_adaptive_pool() -> None:
    _seed()

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv1d(4, 6, 5, padding=2)
            self.up = nn.ConvTranspose2d(6, 3, 2, stride=2)
            self.pool = nn.AdaptiveAvgPool2d((2, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.c1(x)  # (1, 6, 12)
            h = self.up(h.view(1, 6, 3, 4))  # (1, 3, 6, 8) -> needs a divisible adaptive pool
            return self.pool(h[:, :, :, :6]), F.adaptive_max_pool2d(h, 1)

    convert(Net(), (randn(1, 4, 12),))


# -- normalisation and activations ----------------------------------------------------------


def test_layer_norm_group_norm_rms_norm() -> None:
    _seed()

    class Norms(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln = nn.LayerNorm(16)
            self.ln2 = nn.LayerNorm([4, 16], elementwise_affine=False, eps=1e-3)
            self.gn = nn.GroupNorm(2, 4)
            self.rms = nn.RMSNorm(16, eps=1e-6)
            with torch.no_grad():
                self.ln.weight.uniform_(0.5, 1.5)
                self.gn.weight.uniform_(0.5, 1.5)
                self.rms.weight.uniform_(0.5, 1.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.ln(x) + self.ln2(x) + self.gn(x) + self.rms(x)

    graph = convert(Norms(), (randn(2, 4, 16) * 3 + 1,))
    assert ops(graph)["LayerNormalization"] == 2
    assert {"GroupNormalization", "RMSNormalization"} <= set(ops(graph))
    assert {"ln", "ln2", "gn", "rms"} <= sources(graph)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_both_approximations(approximate: str) -> None:
    _seed()
    graph = convert(nn.GELU(approximate=approximate), (randn(4, 32) * 3,))
    gelu = [n for n in graph if n.op == "Gelu"]
    assert len(gelu) == 1 and gelu[0].attrs["approximate"] == approximate


def test_other_activations() -> None:
    _seed()

    def acts(x: torch.Tensor) -> torch.Tensor:
        return (F.silu(x) + torch.tanh(x) + torch.sigmoid(x) + F.hardswish(x) + F.leaky_relu(x, 0.2)
                + F.elu(x) + F.softplus(x) + F.softplus(x, beta=2.0) + torch.erf(x) + F.hardsigmoid(x)
                + torch.exp(-x.abs()) + torch.rsqrt(x.abs() + 1) + torch.log1p(x.abs()) + F.mish(x)
                + x.clamp(-0.5, 0.7) + x.clamp(min=0.1) + torch.sin(x) * torch.cos(x) + x.sign() + x.round()
                + x.floor() + x.ceil() + x.trunc() + torch.sqrt(x.abs()) + x.reciprocal().clamp(-5, 5))

    convert(_Lambda(acts), (randn(4, 33) * 2,))


@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_softmax_and_log_softmax(dim: int) -> None:
    _seed()
    graph = convert(_Lambda(lambda x: (F.softmax(x, dim=dim), F.log_softmax(x, dim=dim))), (randn(3, 5, 7) * 4,))
    assert {"Softmax", "LogSoftmax"} <= set(ops(graph))


# -- attention -------------------------------------------------------------------------------


class _Attention(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, kv_heads: int = 4) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * kv_heads * self.head_dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).view(b, s, 2 * self.kv_heads, self.head_dim).transpose(1, 2).chunk(2, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           enable_gqa=self.kv_heads != self.heads)
        return self.out(y.transpose(1, 2).reshape(b, s, -1))


def test_attention_bool_mask() -> None:
    _seed()
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    mask[0, :, :, 4:] = False
    graph = convert(_Attention(), (randn(2, 6, 32), mask))
    (attn,) = [n for n in graph if n.meta["torch_op"] == "aten.scaled_dot_product_attention.default"]
    assert attn.op == "ScaledDotProductAttention" and attn.inputs[3] is graph.inputs[1]
    assert attn.meta["source"] == ""  # F.scaled_dot_product_attention is called in the root module


@pytest.mark.parametrize("masked", [False, True])
def test_attention_on_3d_tensors_is_decomposed(masked: bool) -> None:
    _seed()

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        mask = m if masked else None
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=not masked, enable_gqa=True)

    mask = torch.rand(4, 5, 5) > 0.3
    mask[:, 1] = False  # a fully masked row: zeros, as in torch
    graph = convert(_Lambda(attend), (randn(4, 5, 8), randn(2, 5, 8), randn(2, 5, 8), mask))
    assert "ScaledDotProductAttention" not in ops(graph)
    assert {"MatMul", "Softmax", "Where"} <= set(ops(graph))


def test_attention_fully_masked_rows_give_zeros_like_torch() -> None:
    _seed()
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 0, :] = False  # a query that may attend to nothing (left padding)
    float_mask = torch.zeros(1, 1, 4, 4).masked_fill(~mask, float("-inf"))
    x = randn(1, 4, 32)
    for m in (mask, float_mask):
        convert(_Attention(), (x, m))  # torch gives finite outputs there; NaN would fail the check
    safe = _Lambda(lambda s, m: torch.ops.aten._safe_softmax(s.masked_fill(m, float("-inf")), -1))
    convert(safe, (randn(3, 5), torch.tensor([True, False, False]).unsqueeze(1).expand(3, 5)))


def test_attention_float_mask_causal_and_gqa() -> None:
    _seed()
    float_mask = torch.randn(1, 1, 5, 5)
    convert(_Attention(), (randn(2, 5, 32), float_mask))

    class Causal(_Attention):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x, None, True)

    convert(Causal(heads=4, kv_heads=2), (randn(2, 5, 32),))


# -- shapes, slicing, indexing ---------------------------------------------------------------


def test_reshape_permute_slice_index_cat_split() -> None:
    _seed()

    def shapes(x: torch.Tensor, idx: torch.Tensor) -> tuple:
        a = x.view(2, 3, 4, 5).permute(0, 2, 3, 1)  # (2, 4, 5, 3)
        b = a[:, 1:3, ::2, -1]  # (2, 2, 3)
        c = a[1, :, 2]  # (4, 3)
        d = x.reshape(6, 20)[idx]  # (4, 20)
        e = x.view(6, 20)[:, idx]  # (6, 4)
        f = torch.cat([c, c * 2], dim=-1)  # (4, 6)
        g1, g2, g3 = torch.split(x.view(6, 20), [5, 10, 5], dim=1)
        h = torch.stack([g1, g3], dim=0).flatten(1)  # (2, 30)
        i = x.view(2, 60).unsqueeze(1).squeeze(1).t()  # (60, 2)
        j = x.view(6, 20)[1:4].transpose(0, 1).contiguous().chunk(2, dim=0)[1]  # (10, 3)
        k = b.flip(-1).expand(3, 2, 2, 3)
        m = F.pad(c, (1, 2, 0, 1), value=-1.0)
        n = torch.tril(x.view(6, 20)[:, :6], diagonal=1) + torch.triu(x.view(6, 20)[:, :6])
        o = x.view(6, 20)[idx.view(2, 2), 3:6]  # (2, 2, 3)
        p = x.view(2, 3, 20)[idx[2:], idx[:2]]  # advanced indexing on two axes -> (2, 20)
        q = x.view(2, 3, 20)[:, idx[:2], idx[1:3]]  # adjacent non-leading axes -> (2, 2)
        r = x.view(6, 20).repeat(2, 1)[:, ::7].unbind(1)[0]
        u = x.view(2, 3, 20)[idx[2:], :, idx[:2]]  # indexed axes apart -> their dims go first: (2, 3)
        return a, b, c, d, e, f, g2, h, i, j, k, m, n, o, p, q, r, u

    idx = torch.tensor([0, 2, 1, -1])
    convert(_Lambda(shapes), (randn(120), idx))


def test_embedding_and_gather() -> None:
    _seed()

    class Emb(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(50, 8, padding_idx=0)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            e = self.tok(ids)
            return torch.gather(e, 2, (ids % 8).unsqueeze(-1)) + torch.index_select(e, 1, ids[0, :2] % 7).sum()

    graph = convert(Emb(), (torch.randint(0, 50, (3, 7)),))
    assert any(n.op == "Gather" and n.meta["source"] == "tok" for n in graph)
    assert "tok.weight" in {c.name for c in graph.constants}


def test_masked_fill_and_where() -> None:
    _seed()

    def masked(x: torch.Tensor, mask: torch.Tensor) -> tuple:
        a = x.masked_fill(mask, float("-inf")).softmax(-1)
        b = torch.where(mask, x, torch.zeros_like(x))
        c = torch.where(x > 0, x, 0.5)
        d = x.masked_fill(~mask, 3)
        return a, b, c, d, mask & (x < 1), mask | (x > 1), torch.logical_xor(mask, x > 0)

    mask = torch.rand(3, 8) > 0.3
    mask[:, 0] = False
    convert(_Lambda(masked), (randn(3, 8), mask))


def test_reductions() -> None:
    _seed()

    def reduce(x: torch.Tensor) -> tuple:
        values, indices = x.max(dim=1)
        mn = x.min(dim=-1, keepdim=True).values
        return (x.mean(), x.mean(dim=(0, 2)), x.sum(1, keepdim=True), x.sum(), values, indices, mn,
                x.amax(dim=(1, 2)), x.argmax(dim=2), x.argmin(), x.max(), x.var(dim=1), x.std(),
                x.prod(dim=0), torch.logsumexp(x, dim=-1), x.norm(dim=-1), (x > 0).any(dim=1), (x > -3).all(),
                x.cumsum(dim=1), torch.topk(x, 2, dim=-1).values)

    convert(_Lambda(reduce), (randn(3, 4, 5),))


def test_integer_index_arithmetic_is_exact() -> None:
    _seed()

    def int_math(ids: torch.Tensor, offset: torch.Tensor) -> tuple:
        pos = torch.arange(ids.shape[1]) + offset  # int64 all the way
        a = (ids * 3 + 7) // 2
        b = ids % 5 - torch.div(ids, 4, rounding_mode="trunc")
        c = torch.div(-ids, 3, rounding_mode="floor")
        d = ids.cumsum(1) * (ids != 0)
        e = (ids >= 10).to(torch.int64).sum(-1)
        f = torch.maximum(ids, pos) - torch.minimum(ids, pos)
        g = ids.float() / 7  # int -> float promotion
        h = torch.remainder(-ids, 6) + torch.fmod(-ids, 6)
        return a, b, c, d, e, f, g, h, ids.to(torch.int32) * 2, ids.bool()

    graph = convert(_Lambda(int_math), (torch.randint(0, 40, (3, 9)), torch.tensor(5)))
    assert graph.inputs[0].dtype == dtypes.int64


def test_arange_full_and_creation_ops() -> None:
    _seed()

    def create(x: torch.Tensor) -> tuple:
        n = x.shape[-1]
        causal = torch.full((n, n), float("-inf")).triu(1)
        return (x @ torch.ones(n, 2), x + causal[:2], torch.arange(0, n, 2, dtype=torch.float32),
                torch.zeros_like(x) + torch.ones(1), x.new_full((2,), 7.0), torch.arange(3.0) * 0.1)

    convert(_Lambda(create), (randn(2, 5),))


# -- no-ops, names, dtypes ----------------------------------------------------------------------


def test_no_op_torch_ops_leave_no_nodes() -> None:
    _seed()

    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = nn.Dropout(0.5)
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.drop(self.lin(x)).clone().detach().contiguous()
            return y.to(torch.float32).view(2, 4)[:, :].expand(2, 4) + 0

    graph = convert(Noisy(), (randn(2, 4),))
    assert ops(graph) == {"Add": 1, "MatMul": 1, "Transpose": 1}
    assert all(n.meta["source"] == "lin" for n in graph)


def test_dict_inputs_kwargs_names_and_dict_outputs() -> None:
    _seed()

    class TwoIn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)
            self.register_buffer("shift", torch.arange(3.0))

        def forward(self, features: torch.Tensor, scale: torch.Tensor) -> dict:
            y = self.lin(features) * scale + self.shift
            return {"logits": y, "probs": y.softmax(-1)}

    inputs = {"scale": torch.tensor(2.0), "features": randn(5, 4)}
    graph = convert(TwoIn(), inputs)
    assert sorted(v.name for v in graph.inputs) == ["features", "scale"]
    assert [v.name for v in graph.outputs] == ["logits", "probs"]
    assert "shift" in {c.name for c in graph.constants}


def test_parameters_buffers_and_lifted_constants_become_named_constants() -> None:
    _seed()

    class Consts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.rand(4) + 0.5)
            self.register_buffer("table", torch.arange(12.0).view(3, 4))
            self.register_buffer("scratch", torch.ones(4), persistent=False)
            self.unused = nn.Linear(100, 100)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            bias = torch.tensor([1.0, -2.0, 3.0, -4.0])  # lifted by torch.export
            return x * self.scale + self.table[1] + self.scratch + bias

    graph = convert(Consts(), (randn(2, 4),))
    names = {c.name for c in graph.constants}
    assert {"scale", "table", "scratch", "lifted_tensor_0"} <= names
    assert not any(n.startswith("unused") for n in names)  # weights nothing reads are dropped
    table = next(c for c in graph.constants if c.name == "table")
    assert table.meta["torch_fqn"] == "table" and table.type.shape == (3, 4)


def test_bf16_model_keeps_bf16() -> None:
    _seed()
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 8)).to(torch.bfloat16).eval()
    x = randn(4, 16).to(torch.bfloat16)
    graph = from_torch(model, (x,))
    assert graph.inputs[0].dtype == dtypes.bfloat16 and graph.outputs[0].dtype == dtypes.bfloat16
    assert all(c.dtype == dtypes.bfloat16 for c in graph.constants if c.name.endswith("weight"))
    check_against_torch(graph, model, (x,), tolerance=BF16_TOLERANCE)


def test_import_requant_frontends_does_not_import_torch() -> None:
    code = "import sys, requant, requant.frontends; print('torch' in sys.modules, 'onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# -- model forms --------------------------------------------------------------------------------


class _Tower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 12), nn.GELU())
        self.norm = nn.LayerNorm(12)
        self.head = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.encoder(x))
        h = torch.relu(h).mean(dim=1, keepdim=True).transpose(1, 2).flatten(1)  # call_method/call_function
        return self.head(h.view(h.size(0), -1))


def test_fx_graph_module_input_keeps_sources() -> None:
    _seed()
    gm = torch.fx.symbolic_trace(_Tower().eval())
    x = randn(3, 5, 6)
    graph = from_torch(gm, (x,))
    check_meta(graph)
    check_against_torch(graph, gm, (x,))
    assert {"encoder.0", "encoder.1", "norm", "head"} <= sources(graph)
    assert "encoder.0.weight" in {c.name for c in graph.constants}


def test_fx_graph_module_with_recorded_meta_rejects_wrong_dtype_and_rank() -> None:
    from torch.fx.passes.shape_prop import ShapeProp

    _seed()
    gm = torch.fx.symbolic_trace(_Tower().eval())
    ShapeProp(gm).propagate(randn(3, 5, 6))
    with pytest.raises(RequantError, match=r"input 'x'.*expected float32\[3, 5, 6\].*wrong rank"):
        from_torch(gm, (randn(3, 6),))
    with pytest.raises(RequantError, match=r"input 'x'.*wrong dtype"):
        from_torch(gm, (torch.zeros(3, 5, 6, dtype=torch.int64),))
    with pytest.raises(RequantError, match=r"do not fit"):
        from_torch(gm, (randn(3, 5, 6), randn(1)))
    graph = from_torch(gm, (randn(2, 7, 6),))  # another size with the same rank is fine
    check_against_torch(graph, gm, (randn(2, 7, 6),))


def test_exported_program_input() -> None:
    _seed()
    model = _Tower().eval()
    x = randn(3, 5, 6)
    ep = torch.export.export(model, (x,), strict=False)
    graph = from_torch(ep)
    check_meta(graph)
    check_against_torch(graph, model, (x,))
    assert "head" in sources(graph)
    graph = from_torch(ep, (x,), name="tower")
    assert graph.name == "tower"
    with pytest.raises(RequantError, match=r"input 'x' of the ExportedProgram: expected float32\[3, 5, 6\]"):
        from_torch(ep, (randn(3, 5, 7),))
    with pytest.raises(RequantError, match=r"takes 1 input"):
        from_torch(ep, (x, x))


def test_exported_program_with_dynamic_dims_keeps_them() -> None:
    _seed()
    model = _Tower().eval()
    batch = torch.export.Dim("batch")
    ep = torch.export.export(model, (randn(3, 5, 6),), dynamic_shapes=({0: batch},), strict=False)
    graph = from_torch(ep, dynamic_dims={"x": {0: "n"}})
    assert graph.inputs[0].type.shape == ("n", 5, 6)
    with pytest.raises(RequantError, match=r"dynamic_dims names input\(s\) y"):
        from_torch(ep, dynamic_dims={"y": {0: "n"}})
    check_against_torch(graph, model, (randn(7, 5, 6),))


# -- dynamic dims -------------------------------------------------------------------------------


def test_dynamic_dims_symbolic_types_and_other_sizes() -> None:
    _seed()
    model = _Attention().eval()

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = model

        def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            positions = torch.arange(x.shape[1])
            keep = positions[None, :] < lengths[:, None]  # (batch, seq) padding mask
            mask = keep[:, None, None, :]
            return self.attn(x, mask)[:, : x.shape[1] // 2]

    wrapper = Wrapper().eval()
    example = (randn(2, 6, 32), torch.tensor([6, 3]))
    graph = from_torch(wrapper, example, dynamic_dims={"x": {0: "batch", 1: "seq"}, "lengths": {0: "batch"}})
    check_meta(graph)
    assert graph.inputs[0].type.shape == ("batch", "seq", 32)
    assert graph.inputs[1].type.shape == ("batch",)
    assert graph.outputs[0].type.shape[0] == "batch"
    assert {"Shape", "Gather"} <= set(ops(graph))
    for batch, seq in [(2, 6), (3, 9), (1, 4)]:
        lengths = torch.randint(1, seq + 1, (batch,))
        check_against_torch(graph, wrapper, (randn(batch, seq, 32), lengths))


def test_dynamic_dims_errors() -> None:
    model = nn.Linear(4, 2).eval()
    with pytest.raises(RequantError, match=r"dynamic_dims names input\(s\) y"):
        from_torch(model, (randn(3, 4),), dynamic_dims={"y": {0: "batch"}})
    with pytest.raises(RequantError, match=r"names dim 2.*rank 2"):
        from_torch(model, (randn(3, 4),), dynamic_dims={"input": {2: "batch"}})
    with pytest.raises(RequantError, match=r"dim 1 of input 'input'.*specialised it to 4"):
        from_torch(model, (randn(3, 4),), dynamic_dims={"input": {1: "features"}})


# -- errors -----------------------------------------------------------------------------------


@torch.library.custom_op("requant_test::mystery", mutates_args=())
def _mystery(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_mystery.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class _Spectral(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft(x).abs()


class _Unsupported(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = _Spectral()
        self.second = _Spectral()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.first(x) + self.second(self.lin(x))
        return _mystery(y) + _mystery(x)


def test_unsupported_ops_are_listed_with_counts_and_locations() -> None:
    with pytest.raises(UnsupportedOpError) as info:
        from_torch(_Unsupported().eval(), (randn(2, 8),))
    message = str(info.value)
    assert "aten._fft_r2c.default x2" in message
    assert "requant_test.mystery.default x2" in message
    assert "first" in message and "second" in message and "<root>" in message
    assert info.value.ops == {"aten._fft_r2c.default": 2, "requant_test.mystery.default": 2}


def test_unsupported_variant_names_its_reason() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))  # left in training mode
    with pytest.raises(UnsupportedOpError, match=r"training mode.*\n?.*at 1"):
        from_torch(model, (randn(3, 4),))


def test_wrong_example_inputs_for_a_module() -> None:
    model = _Tower().eval()
    with pytest.raises(RequantError, match=r"do not fit _Tower.forward\(x") as info:
        from_torch(model, (randn(3, 5, 6), randn(2)))
    assert info.value.__cause__ is not None
    traced = r"could not trace _Tower with the example inputs \(x: float32\[3, 5, 7\]\)"
    with pytest.raises(RequantError, match=traced) as info:
        from_torch(model, (randn(3, 5, 7),))
    assert isinstance(info.value.__cause__, Exception) and "Traceback" not in str(info.value)
    with pytest.raises(RequantError, match=r"example_inputs must be"):
        from_torch(model, 3)
    with pytest.raises(RequantError, match=r"from_torch takes"):
        from_torch(object(), (randn(1),))


def test_wrong_dtype_for_embedding_module() -> None:
    emb = nn.Embedding(10, 4).eval()
    with pytest.raises(RequantError, match=r"input: float32\[2, 3\]"):
        from_torch(emb, (randn(2, 3),))


def test_results_match_on_other_seeds() -> None:
    """The comparison is not a lucky draw: a few seeds for a mixed block."""
    for seed in range(3):
        torch.manual_seed(seed)
        convert(_Attention(heads=2, kv_heads=2), (randn(2, 4, 32), None))


def test_dynamic_shape_computations_stay_correct_at_other_sizes() -> None:
    """Views, expands, creation ops and a causal mask computed from symbolic sizes."""
    _seed()

    class Shapes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = _Attention(dim=16, heads=2, kv_heads=2)

        def forward(self, x: torch.Tensor) -> tuple:
            b, s, d = x.shape
            flat = x.reshape(b * s, d)  # a SymInt product
            rows = x.flatten(0, 1)
            pos = torch.arange(s).unsqueeze(0).expand(b, s)  # expand to symbolic sizes
            zeros = x.new_zeros((b, s))
            causal = torch.full((s, s), float("-inf")).triu(1)
            scores = (x @ x.transpose(1, 2)) + causal
            doubled = torch.cat([x, x[:, : s // 2]], dim=1)
            y = self.attn.forward(x, None, True)  # is_causal with a symbolic length
            return flat.sum(-1), rows[-1], pos + zeros.long(), scores.softmax(-1), doubled.mean(1), y

    model = Shapes().eval()
    graph = from_torch(model, (randn(2, 6, 16),), dynamic_dims={"x": {0: "batch", 1: "seq"}})
    check_meta(graph)
    assert graph.inputs[0].type.shape == ("batch", "seq", 16)
    for b, s in [(2, 6), (3, 5), (1, 9)]:
        check_against_torch(graph, model, (randn(b, s, 16),))
