"""`make demo` for now: capture a small PyTorch model into requant's IR, clean it up with
the pass manager, check it against torch with the reference interpreter, and print the
IR and the per-pass table. (The full demo, all-MiniLM-L6-v2 compiled for cpu-int8 next to
ONNX Runtime's quantizers, replaces this once compilation targets exist.)"""

from __future__ import annotations

import numpy as np

__all__ = ["main"]


def _small_model():
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Block(nn.Module):
        """A pre-norm transformer MLP block: the shape requant's passes work on."""

        def __init__(self, width: int = 16) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(width)
            self.up = nn.Linear(width, 4 * width)
            self.down = nn.Linear(4 * width, width)

        def forward(self, x):
            return x + self.down(nn.functional.gelu(self.up(self.norm(x))))

    return Block().eval(), (torch.randn(2, 4, 16),)


def main() -> int:
    import requant.ir as ir
    from requant.frontends import from_torch
    from requant.passes import PassManager

    model, example = _small_model()
    graph = from_torch(model, example)
    result = PassManager(["fold_constants", "cse", "dce"], verify=True).run(graph)
    want = model(*example).detach().numpy()
    (got,) = ir.run(graph, [t.numpy() for t in example])
    err = float(np.max(np.abs(got - want)))

    print("requant IR of a pre-norm transformer MLP block (captured with torch.export):\n")
    print(graph.to_text(elide_constants=True))
    print(result.table())
    print(f"\nop histogram: {graph.op_histogram()}")
    print(f"reference interpreter vs torch: max abs error {err:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
