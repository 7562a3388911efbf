"""The torch frontend shares a model's weights with it instead of copying them
(`frontends/torch_lowering.to_numpy`, `frontends/torch_shared`): one copy of a large
model during compile, not two; runtimes keep the values compiled; a save after the model
changed in place is refused rather than mixing old and new weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import requant
from requant.frontends import from_torch
from requant.frontends.torch_shared import SharedWeights, torch_tensor_behind


class Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 4)
        # a strided buffer (a transposed view): not contiguous, so it cannot be shared
        self.register_buffer("mix", torch.randn(4, 4).t())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x))) @ self.mix


X = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))


def _constant_for(graph, fqn: str):
    return next(v for v in graph.constants if v.meta.get("torch_fqn") == fqn)


def test_contiguous_parameters_are_shared_read_only_and_strided_ones_copied() -> None:
    model = Mlp().eval()
    g = from_torch(model, (X,))
    w = _constant_for(g, "fc1.weight").const
    assert np.shares_memory(w, model.fc1.weight.detach().numpy())
    assert not w.flags.writeable
    assert torch_tensor_behind(w) is not None
    mix = _constant_for(g, "mix").const
    assert not np.shares_memory(mix, model.mix.numpy())  # copied: nothing of the caller's is held
    assert torch_tensor_behind(mix) is None or torch_tensor_behind(mix).data_ptr() != model.mix.data_ptr()
    np.testing.assert_array_equal(mix, model.mix.numpy())
    shared = SharedWeights(g.constants)
    assert len(shared) >= 4 and shared.changed() == []


def test_a_model_changed_after_compile_runs_as_compiled_and_refuses_to_save(tmp_path) -> None:
    model = Mlp().eval()
    cm = requant.compile(model, "cpu-fp32", example_inputs=(X,))
    with torch.no_grad():
        before = model(X).numpy().copy()
    np.testing.assert_allclose(cm(X)[0], before, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        model.fc1.weight.mul_(2.0)  # as an optimizer step or load_state_dict would
        after = model(X).numpy()
    assert not np.allclose(after, before)
    np.testing.assert_allclose(cm(X)[0], before, rtol=1e-5, atol=1e-6)  # the runtime kept its values
    with pytest.raises(requant.RequantError, match=r"fc1\.weight.*changed in place after compile"):
        cm.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_an_exported_program_names_its_changed_weights_too(tmp_path) -> None:
    model = Mlp().eval()
    cm = requant.compile(torch.export.export(model, (X,)), "cpu-fp32")
    with torch.no_grad():
        model.fc2.bias.add_(1.0)
    with pytest.raises(requant.RequantError, match=r"fc2\.bias"):
        cm.save(tmp_path / "m")


def test_an_unchanged_model_saves_and_reloads(tmp_path) -> None:
    model = Mlp().eval()
    cm = requant.compile(model, "cpu-fp32", example_inputs=(X,))
    with torch.no_grad():
        model(X)  # running the model writes nothing
    loaded = requant.load(cm.save(tmp_path / "m"))
    np.testing.assert_array_equal(loaded(X)[0], cm(X)[0])


def test_shared_weights_ignore_arrays_that_own_their_memory() -> None:
    g = requant.ir.Graph("g")
    g.add_constant(np.ones((2, 2), np.float32), name="c")
    assert len(SharedWeights(g.constants)) == 0
