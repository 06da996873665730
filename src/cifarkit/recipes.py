"""Named presets of TrainConfig settings (`TrainConfig.from_recipe`, `--recipe`): plain data."""

from __future__ import annotations

from typing import Any

# Named presets. "seed" reconstructs the original assignment's recipe: the write-up gives the
# network, batch size (391 steps/epoch = 128) and 20 epochs but not the optimiser settings, so plain
# SGD at a constant 0.01 with momentum 0.9 and dropout 0.1 (the usual course template) is our
# reconstruction.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    # airbench93's recipe (KellerJordan/cifar10-airbench), in mean-loss units: lr 11.5 per 1024
    # examples with momentum 0.85 is 1.5 at batch 1024; its decay of 0.0153 per 1024 examples is
    # 1.33e-3 x lr.
    "compact": dict(
        model="compact",
        epochs=12,
        batch_size=1024,
        lr=1.5,
        momentum=0.85,
        nesterov=True,
        weight_decay=1.33e-3,
        schedule="linear",
        warmup=0.23,
        lr_start=0.2,
        lr_end=0.07,
        bias_lr_scale=64.0,
        label_smoothing=0.2,
        lookahead=True,
        tta="flip-translate",
        flip="alternate",
        crop_padding=2,
        pad_mode="reflect",
    ),
    "seed": dict(
        dropout=0.1,
        lr=0.01,
        momentum=0.9,
        nesterov=False,
        weight_decay=0.0,
        schedule="constant",
        label_smoothing=0.0,
        ema=0.0,
        lookahead=False,
        tta="none",
        flip="random",
        pad_mode="zeros",
        epochs=20,
        batch_size=128,
    ),
}
