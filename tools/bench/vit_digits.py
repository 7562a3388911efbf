"""A small vision transformer trained on scikit-learn's digits, for integer-only accuracy.

The image set ships with scikit-learn (1,797 grey 8 x 8 images of the digits 0-9), so
nothing is downloaded. `load_vit_digits()` returns the trained model (a transformers
`ViTForImageClassification`: 2 x 2 patches, hidden size 64, 4 layers, 4 heads, GELU,
pre-LayerNorm, a CLS token; wrapped to return plain logits) and the data split: a fixed
70/30 stratified split (seed 0), the held-out 30% for top-1, and calibration images taken
from the training part. The first call trains it (a few CPU minutes on one thread: AdamW
with a one-cycle schedule, 60 epochs) and caches the weights under `~/.cache/requant/vit_digits/` (or
`$REQUANT_CACHE`); later calls load them.

    python -m requant.tools.bench.vit_digits [--retrain]   # trains (if needed), prints top-1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DigitsSplit", "load_vit_digits", "digits_split", "cache_dir", "top1", "CONFIG"]

logger = logging.getLogger(__name__)

CONFIG = {"image_size": 8, "patch_size": 2, "num_channels": 1, "hidden_size": 64, "num_hidden_layers": 4,
          "num_attention_heads": 4, "intermediate_size": 128, "num_labels": 10, "hidden_dropout_prob": 0.1,
          "attention_probs_dropout_prob": 0.0}
_SEED = 0
_EPOCHS = 60
_BATCH = 64
_LR = 2e-3
_TRAINING = {"config": CONFIG, "epochs": _EPOCHS, "batch": _BATCH, "lr": _LR, "seed": _SEED}
"""What the cached weights were trained with (a change retrains)."""


@dataclass
class DigitsSplit:
    """Images as float32 [N, 1, 8, 8] scaled to [-1, 1], labels int64 [N]."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    def calibration(self, count: int = 256, batch: int = 64) -> list[dict[str, np.ndarray]]:
        """`count` training images in batches, as feeds of the input `pixel_values`."""
        x = self.train_x[:count]
        return [{"pixel_values": x[i:i + batch]} for i in range(0, len(x), batch)]


def cache_dir() -> Path:
    root = Path(os.environ.get("REQUANT_CACHE", Path.home() / ".cache" / "requant"))
    return root / "vit_digits"


def digits_split() -> DigitsSplit:
    """The fixed stratified 70/30 split of scikit-learn's digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images.astype(np.float32) / 8.0 - 1.0)[:, None, :, :]
    y = data.target.astype(np.int64)
    tx, vx, ty, vy = train_test_split(x, y, test_size=0.3, random_state=_SEED, stratify=y)
    return DigitsSplit(np.ascontiguousarray(tx), ty, np.ascontiguousarray(vx), vy)


class _Logits:
    """Wraps the transformers model so that forward(pixel_values) gives a tensor."""

    @staticmethod
    def wrap(inner):
        import torch

        class Logits(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, pixel_values):
                return self.inner(pixel_values=pixel_values).logits

        return Logits().eval()


def _build():
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(**CONFIG))


def _train(split: DigitsSplit):
    import torch

    torch.manual_seed(_SEED)
    torch.set_num_threads(1)  # a 64 x 17-token batch is too small to share: threads only contend
    rng = np.random.default_rng(_SEED)
    model = _build()
    opt = torch.optim.AdamW(model.parameters(), lr=_LR, weight_decay=0.05)
    steps = _EPOCHS * -(-len(split.train_x) // _BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=_LR, total_steps=steps)
    model.train()
    for epoch in range(_EPOCHS):
        order = rng.permutation(len(split.train_x))
        for i in range(0, len(order), _BATCH):
            idx = order[i:i + _BATCH]
            x = torch.from_numpy(split.train_x[idx])
            loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, torch.from_numpy(split.train_y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        logger.info("vit_digits: epoch %d loss %.4f", epoch, float(loss))
    return model.eval()


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(axis=-1) == labels).mean())


def load_vit_digits(retrain: bool = False):
    """(model returning logits, DigitsSplit): trained once, then read from the cache."""
    import torch

    split = digits_split()
    path = cache_dir() / "model.pt"
    meta = cache_dir() / "config.json"
    if not retrain and path.exists() and meta.exists() and json.loads(meta.read_text()) == _TRAINING:
        model = _build()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return _Logits.wrap(model.eval()), split
    start = time.perf_counter()
    model = _train(split)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    meta.write_text(json.dumps(_TRAINING))
    logger.info("vit_digits: trained in %.0f s, cached at %s", time.perf_counter() - start, path)
    return _Logits.wrap(model), split


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--retrain", action="store_true", help="train again even when cached weights exist")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    model, split = load_vit_digits(retrain=args.retrain)
    with torch.no_grad():
        logits = model(torch.from_numpy(split.test_x)).numpy()
    print(f"ViT on scikit-learn digits: held-out top-1 {top1(logits, split.test_y):.4f} "
          f"({len(split.test_y)} images); {time.perf_counter() - start:.0f} s; weights in {cache_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
