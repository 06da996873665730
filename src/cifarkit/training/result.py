"""What a run leaves behind, read back: `FitResult` (what `fit` returns) and a finished run loaded
from its folder without training (built as `fit` builds it: `build.build_run`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import TrainConfig
from ..data.dataset import Cifar10
from ..data.splits import make_splits
from ..models.registry import display_name
from ..report import epoch_line, final_line
from ..runfolder.checkpoint import (
    config_from_checkpoint,
    load_checkpoint,
    load_weights,
    reported_weights,
)
from ..runfolder.files import LAST, RESULTS
from ..runfolder.lock import RunDirError, advice
from ..runtime import Runtime
from .build import build_run
from .evaluate import predict_images


@dataclass
class FitResult:
    """What `fit` returns: the history it wrote, the evaluated model and the final test numbers."""

    config: TrainConfig
    history: list[dict]
    model: nn.Module
    run_dir: Path
    final: dict = field(default_factory=dict)  # results.json (empty if interrupted)
    interrupted: bool = False
    data: Cifar10 | None = None
    exit_code: int = 0  # 130 after Ctrl-C, 143 after SIGTERM
    loaded: bool = False  # resume="auto" found this run finished and loaded it instead of training
    # how the run computed (device, precision, layout, determinism): what its readers use
    runtime: Runtime | None = None

    @property
    def network(self) -> str:
        """The trained network's name, for titles: "seed", or your class's name ("StudentNet")."""
        return display_name(self.config.model)

    @property
    def precision(self) -> str:
        """The precision the run trained and was evaluated in ("bf16", "fp16", "fp32"): the
        runtime's decision, never the config's "auto" decided again."""
        return self.runtime.precision if self.runtime is not None else self.config.precision

    def test_predictions(
        self, tta: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(test images uint8, labels, probabilities) of the evaluated model on the run's test
        split, with the run's device and precision, and test-time augmentation `tta` (default: the
        run's final TTA).
        """
        images, labels = make_splits(self.config, self.data).test
        probs, labels = predict_images(
            self.model,
            images,
            labels,
            precision=self.precision,
            tta=tta or self.config.tta,
            batch_size=self.config.eval_batch_size,
        )
        return images, labels, probs


def load_finished(cfg: TrainConfig, data: Cifar10 | None, model) -> FitResult:
    """A finished run of `cfg` loaded from its folder (into `model`, an object or factory, when
    given), reported as `fit` reported it, with no training."""
    run_dir = Path(cfg.out)
    ckpt = load_checkpoint(run_dir / LAST)
    saved = config_from_checkpoint(ckpt, run_dir / LAST)
    try:
        final = json.loads((run_dir / RESULTS).read_text())
        if not isinstance(final, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RunDirError(
            f"{run_dir / RESULTS} cannot be read ({type(e).__name__}: truncated or corrupt?); the "
            f"run's checkpoints are intact: {advice('python', 'overwrite')} to train again, or "
            f"{advice('python', 'out')}"
        ) from None
    history = list(ckpt.get("history", []))
    run_cfg = dataclasses.replace(
        saved,
        out=cfg.out,
        progress=cfg.progress,
        device=cfg.device,
        data=cfg.data if cfg.data is not None else saved.data,
    )
    # refuses other images
    run = build_run(run_cfg, data, model=model, ckpt=ckpt, upto="network", verbose=False)
    model, data = run.model, run.data
    load_weights(model, reported_weights(ckpt), run_dir / LAST, run_cfg.model)
    print(run_cfg)  # the settings, as fit printed them when it trained (its run folder included)
    print(
        f"{run_dir} holds a finished run with these settings: loaded, not trained again "
        f"({advice('python', 'overwrite')} to train it again)"
    )
    print(
        f"trained on {final.get('hardware')}, {final.get('precision')}, torch {final.get('torch')};"
        f" {final.get('wall_seconds', 0) / 60:.1f} min"
    )
    for h in history:
        print(
            epoch_line(h, len(history), "test" if final.get("eval_set") == "test" else "validation")
        )
    print(final_line(final))
    return FitResult(
        run_cfg,
        history,
        model.eval(),
        run_dir,
        final=final,
        data=data,
        loaded=True,
        runtime=run.runtime,
    )
