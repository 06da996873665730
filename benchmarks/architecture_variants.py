"""Train a variant of the compact network with the "compact" recipe, to separate the recipe from the
data.

    python benchmarks/architecture_variants.py VARIANT OUT_DIR [train options...]
    python benchmarks/architecture_variants.py airbench93 runs/ab93-val --val-split 5000 --data PATH

Variants (all built from cifarkit's own blocks):
  airbench93  airbench93's layout as we read it: widths 64/128/128, plain second convs, max pool 3
  at the end
              (no dilated or separable conv, no GAP: it breaks the course rules; a reference point
              only)
  plain224    our widths 64/128/224 with plain convs and GAP
  nodil       the compact network without its dilated conv
  maxpool     the compact network with global max pooling instead of GAP

The measured results are in README.md ("What each trick buys").
"""

import sys

from torch import nn

import cifarkit.models as M
from cifarkit.cli import main
from cifarkit.models.compact import CompactNet, PoolBlock

VARIANTS = ("airbench93", "plain224", "nodil", "maxpool")


def make_variant(variant: str):
    class Variant(CompactNet):
        def __init__(self, dropout: float = 0.0, num_classes: int = 10):
            w = (64, 128, 128) if variant == "airbench93" else (64, 128, 224)
            super().__init__(widths=w)
            if variant == "airbench93":
                self.block2 = PoolBlock(w[0], w[1])
                self.block3 = PoolBlock(w[1], w[2])
                self.gap = nn.MaxPool2d(3)
            elif variant == "plain224":
                self.block2 = PoolBlock(w[0], w[1])
                self.block3 = PoolBlock(w[1], w[2])
            elif variant == "nodil":
                self.block2 = PoolBlock(w[0], w[1])
            elif variant == "maxpool":
                self.gap = nn.AdaptiveMaxPool2d(1)

    return Variant


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in VARIANTS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(VARIANTS)}}} OUT_DIR [train options]")
    M.MODELS["variant"] = make_variant(sys.argv[1])  # registered for this process only
    sys.exit(
        main(
            [
                "train",
                "--recipe",
                "compact",
                "--model",
                "variant",
                "--out",
                sys.argv[2],
                *sys.argv[3:],
            ]
        )
    )
