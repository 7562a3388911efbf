"""A small pre-norm decoder language model trained here, for the rotation benchmark's
perplexities (tools/bench/rotate.py): a Llama (RMSNorm, rotary positions, SwiGLU) over
bytes, trained with torch on the source files of Python's standard library, which ship
with every Python, so nothing is downloaded.

- Text: the standard library's top-level `.py` files in name order; every eleventh file
  is held out for evaluation, the rest is training text (`corpus()`).
- Model: `CONFIG` (256 byte tokens, width 128, 4 layers of 4 heads, FFN 384 = 12 x 32, a
  Paley Hadamard order), AdamW with a one-cycle schedule over `STEPS` steps of 16 x 128
  bytes; a few CPU minutes on two cores.
- Cache: the trained weights go to ~/.cache/requant/tiny_lm/ (REQUANT_CACHE overrides
  the root), named after the configuration and the training settings, and are loaded from
  there on later runs (`load()`).

`python -m requant.tools.bench.tiny_lm` trains (or loads) the model and prints its
held-out perplexity; `perplexity(logits, ids)` scores next-byte predictions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CONFIG", "STEPS", "SEQ", "corpus", "batches", "load", "perplexity", "cache_dir", "main"]

logger = logging.getLogger(__name__)

CONFIG: dict[str, Any] = {
    "vocab_size": 256, "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
SEQ = 128
BATCH = 16
STEPS = 400
LEARNING_RATE = 3e-3
SEED = 0
_HELD_OUT_EVERY = 11


def cache_dir() -> Path:
    root = Path(os.environ.get("REQUANT_CACHE", Path.home() / ".cache" / "requant"))
    return root / "tiny_lm"


def corpus() -> tuple[bytes, bytes]:
    """(training text, held-out text): the standard library's top-level .py files."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    train, held = [], []
    for i, f in enumerate(files):
        (held if i % _HELD_OUT_EVERY == _HELD_OUT_EVERY - 1 else train).append(f.read_bytes())
    return b"\n".join(train), b"\n".join(held)


def batches(text: bytes, n: int, seq: int = SEQ, seed: int = 0, batch: int = 8) -> list[np.ndarray]:
    """`n` sequences of `seq` bytes from seeded offsets, as int64 [batch, seq] arrays."""
    data = np.frombuffer(text, np.uint8)
    starts = np.random.default_rng(seed).integers(0, len(data) - seq - 1, n)
    rows = np.stack([data[s:s + seq] for s in starts]).astype(np.int64)
    return [rows[i:i + batch] for i in range(0, n, batch)]


def perplexity(logits: np.ndarray, ids: np.ndarray) -> float:
    """exp(mean cross-entropy) of predicting byte t + 1 from logits at t."""
    z = np.asarray(logits, np.float64)[:, :-1]
    target = np.asarray(ids)[:, 1:]
    z = z - z.max(axis=-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, target[..., None], axis=-1)
    return float(np.exp(nll.mean()))


def _settings() -> dict[str, Any]:
    return {"config": CONFIG, "seq": SEQ, "batch": BATCH, "steps": STEPS, "lr": LEARNING_RATE, "seed": SEED,
            "python": sys.version.split()[0]}


def _cache_file() -> Path:
    digest = hashlib.sha256(json.dumps(_settings(), sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / f"llama_bytes_{digest}.pt"


class _Logits:
    """Made lazily (torch is imported only here): a module returning the logits tensor."""

    @staticmethod
    def wrap(model: Any) -> Any:
        import torch

        class Logits(torch.nn.Module):
            def __init__(self, inner: torch.nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids):
                return self.inner(input_ids=input_ids, use_cache=False).logits

        return Logits(model).eval()


def _model() -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    return LlamaForCausalLM(LlamaConfig(**CONFIG, use_cache=False))


def _train(progress: bool) -> Any:
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model = _model().train()
    text, _ = corpus()
    data = torch.from_numpy(np.frombuffer(text, np.uint8).astype(np.int64))
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, LEARNING_RATE, total_steps=STEPS, pct_start=0.1)
    start = time.perf_counter()
    for step in range(STEPS):
        offsets = torch.randint(0, len(data) - SEQ - 1, (BATCH,), generator=gen)
        ids = torch.stack([data[o:o + SEQ] for o in offsets])
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if progress and (step % 50 == 0 or step == STEPS - 1):
            print(f"  step {step:4d}  loss {loss.item():.3f}  {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return model.eval()


def load(progress: bool = True) -> Any:
    """The trained model as a torch module `input_ids [B, T] -> logits [B, T, 256]`,
    trained now (a few CPU minutes) unless the cache holds it."""
    import torch

    path = _cache_file()
    model = _model()
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        if progress:
            print(f"training the tiny LM ({STEPS} steps; cached in {path.parent})", file=sys.stderr)
        model = _train(progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    return _Logits.wrap(model.eval())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.parse_args(argv)
    import torch

    model = load()
    _, held = corpus()
    evaluation = batches(held, 32, seed=1)
    with torch.no_grad():
        logits = np.concatenate([model(torch.from_numpy(ids)).numpy() for ids in evaluation])
    ppl = perplexity(logits, np.concatenate(evaluation))
    print(f"tiny LM ({_cache_file().name}): held-out perplexity {ppl:.3f} per byte")
    return 0


if __name__ == "__main__":
    sys.exit(main())
