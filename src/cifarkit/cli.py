"""Command line: ``python -m cifarkit {train,summary,evaluate} ...``.

Every bad option or input ends in one line on stderr and a non-zero exit code, never a traceback:
2 for bad options / input, 1 for a diverged run, 130 for Ctrl-C.
"""
from __future__ import annotations

import argparse
import os
import sys

from .config import (FLIP_MODES, PAD_MODES, PRECISIONS, RECIPES, SCHEDULES, TTA_MODES, CifarkitError,
                     TrainConfig)
from .models import MODELS


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is a single line (no usage dump)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(kind, low: float, inclusive: bool = True, high: float | None = None, what: str = ""):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        if (v < low if inclusive else v <= low) or (high is not None and v >= high):
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {what}")
        return v
    return parse


POS_INT = _number(int, 1, what=">= 1")
NONNEG_INT = _number(int, 0, what=">= 0")
POS_FLOAT = _number(float, 0, inclusive=False, what="> 0")
NONNEG_FLOAT = _number(float, 0, what=">= 0")
FRACTION = _number(float, 0, high=1, what="in [0, 1)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cifarkit", description="Train and inspect compact CIFAR-10 networks.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    data_default = os.environ.get("CIFARKIT_DATA")  # the notebook and CI point this at a local copy

    t = sub.add_parser("train", help="train a network; writes a run folder")
    t.add_argument("--recipe", choices=list(RECIPES), default="default",
                   help="preset to start from: 'default' (recommended) or 'seed' (the original recipe)")
    t.add_argument("--model", choices=sorted(MODELS))
    t.add_argument("--epochs", type=POS_INT)
    t.add_argument("--batch-size", type=POS_INT)
    t.add_argument("--lr", type=POS_FLOAT, help="peak learning rate")
    t.add_argument("--momentum", type=FRACTION)
    t.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    t.add_argument("--weight-decay", type=NONNEG_FLOAT)
    t.add_argument("--dropout", type=FRACTION)
    t.add_argument("--schedule", choices=SCHEDULES)
    t.add_argument("--warmup", type=FRACTION, help="fraction of steps spent warming up")
    t.add_argument("--label-smoothing", type=FRACTION)
    t.add_argument("--ema", type=FRACTION, help="weight-EMA decay per step, 0 = off")
    t.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation for evaluation")
    t.add_argument("--crop-padding", type=NONNEG_INT)
    t.add_argument("--pad-mode", choices=PAD_MODES, help="crop padding: zeros (torchvision) or reflect")
    t.add_argument("--cutout", type=_number(int, 0, what="in [0, 32]", high=33),
                   help="side of a random square painted with the mean colour (0 = off)")
    t.add_argument("--flip", choices=FLIP_MODES, help="random (per image), alternate (airbench) or none")
    t.add_argument("--lr-start", type=_number(float, 0, what="in [0, 1]", high=1.0000001),
                   help="'linear' schedule: first LR as a fraction of the peak")
    t.add_argument("--lr-end", type=_number(float, 0, what="in [0, 1]", high=1.0000001),
                   help="'linear' schedule: last LR as a fraction of the peak")
    t.add_argument("--bias-lr-scale", type=POS_FLOAT, help="LR multiplier for BatchNorm parameters")
    t.add_argument("--lookahead", action=argparse.BooleanOptionalAction, default=None,
                   help="airbench's lookahead weight averaging")
    t.add_argument("--val-split", type=NONNEG_INT, help="hold out N training images for validation")
    t.add_argument("--limit-train", type=_number(int, 10, what=">= 10"), help="train on a balanced subset of N")
    t.add_argument("--limit-test", type=_number(int, 10, what=">= 10"), help="test on a balanced subset of N")
    t.add_argument("--seed", type=NONNEG_INT)
    t.add_argument("--out", help="run folder (default runs/default)")
    t.add_argument("--resume", metavar="CHECKPOINT", help="continue a run from its last.pt")
    t.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    t.add_argument("--dry-run", action="store_true", help="1 epoch on 512 / 256 images: checks the whole path")
    _runtime_options(t, data_default)
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    t.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    t.add_argument("--eval-batch-size", type=POS_INT)
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)

    s = sub.add_parser("summary", help="torchsummary table, receptive field and course-rule checks")
    s.add_argument("--model", choices=sorted(MODELS), default="seed")

    e = sub.add_parser("evaluate", help="test accuracy and per-class accuracy of a checkpoint")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--tta", choices=TTA_MODES, help="default: what the run used")
    e.add_argument("--batch-size", type=POS_INT, help="default: the run's eval batch size")
    e.add_argument("--val-split", type=POS_INT,
                   help="evaluate on the validation split of N training images that `train --val-split N` holds out")
    _runtime_options(e, data_default)

    x = sub.add_parser("export", help="slim copy of a checkpoint (weights, config, history) for sharing")
    x.add_argument("--checkpoint", required=True, help="a run's last.pt or best.pt")
    x.add_argument("--out", required=True, help="where to write the slim .pt")
    x.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p


def _runtime_options(p: argparse.ArgumentParser, data_default: str | None) -> None:
    p.add_argument("--data", default=data_default,
                   help="CIFAR-10 folder or archive (default: $CIFARKIT_DATA, else torchvision download)")
    p.add_argument("--data-root", help="torchvision download folder when --data is not given (./data)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", choices=PRECISIONS)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig a parsed `train` command line asks for: its recipe, then the options given on top
    (--dry-run: 1 epoch on 512 / 256 images unless limits are given)."""
    fields = {k: getattr(args, k) for k in TrainConfig.__dataclass_fields__ if k in vars(args)}
    if args.dry_run:
        fields.update(epochs=1, limit_train=fields["limit_train"] or 512, limit_test=fields["limit_test"] or 256,
                      out=fields["out"] or "runs/dry-run")
    return TrainConfig.from_recipe(args.recipe, **fields)


def _train(args) -> int:
    from .trainer import fit

    cfg = config_from_args(args)
    result = fit(cfg, resume=args.resume, overwrite=args.overwrite or args.dry_run)
    if result.interrupted:
        return 130
    r = result.final
    print(f"final test accuracy: {r['final_test_correct']}/{r['final_test_total']} ({r['final_test_accuracy']:.2f}%),"
          f" {r['epochs']} epochs, {r['wall_seconds']:.0f} s on {r['hardware']}; run folder: {result.run_dir}")
    return 0


def _summary(args) -> int:
    from .analysis import check_rules, format_rf_table, format_rules, receptive_field, summary_text
    from .models import create_model

    model = create_model(args.model)
    print(summary_text(model))
    print("Receptive field (k kernel, s stride, p padding, d dilation; jump and RF in input pixels)")
    print(format_rf_table(receptive_field(model)))
    print("\nCourse rules")
    print(format_rules(check_rules(model)))
    return 0


def _evaluate(args) -> int:
    from .analysis import confusion_matrix, per_class_accuracy
    from .checkpoint import model_from_checkpoint
    from .data import load_cifar10
    from .engine import resolve_device, resolve_precision, score
    from .trainer import predict_with_config

    device = resolve_device(args.device or "auto")
    model, cfg, ckpt = model_from_checkpoint(args.checkpoint, device)
    amp = resolve_precision(args.precision or cfg.precision, device)
    tta = args.tta or cfg.tta
    data = load_cifar10(args.data, args.data_root or cfg.data_root)
    images, labels, label = data.test_images, data.test_labels, "Test"
    if args.val_split:
        from .data import split_train_val
        from .trainer import VAL_SEED
        *_, images, labels = split_train_val(data.train_images, data.train_labels, args.val_split, VAL_SEED)
        label = "Validation"
    print(f"checkpoint {args.checkpoint}: model {cfg.model}, epoch {ckpt['epoch']}/{cfg.epochs}, "
          f"{'EMA' if ckpt.get('ema') else 'final'} weights, tta {tta}, "
          f"precision {str(amp).replace('torch.', '') if amp else 'fp32'}, device {device}")
    probs, labels = predict_with_config(model, cfg, images, labels, precision=args.precision, tta=tta,
                                        batch_size=args.batch_size)
    score(probs, labels, label=label)
    acc = per_class_accuracy(confusion_matrix(probs.argmax(1), labels))
    print("per-class accuracy:")
    for name, a in zip(data.classes, acc.tolist()):
        print(f"  {name:<11}{a:6.2f}%")
    return 0


def _export(args) -> int:
    from .checkpoint import CheckpointError, export_checkpoint

    if os.path.exists(args.out) and not args.overwrite:
        raise CheckpointError(f"{args.out} exists; pass --overwrite to replace it")
    slim = export_checkpoint(args.checkpoint, args.out)
    size = os.path.getsize(args.out) / 2**20
    print(f"wrote {args.out} ({size:.1f} MiB): {slim['config']['model']} weights after epoch {slim['epoch']}; "
          f"evaluate with: python -m cifarkit evaluate --checkpoint {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"train": _train, "summary": _summary, "evaluate": _evaluate,
                "export": _export}[args.command](args)
    except CifarkitError as e:
        from .engine import DivergenceError
        print(f"cifarkit: error: {e}", file=sys.stderr)
        return 1 if isinstance(e, DivergenceError) else 2
    except KeyboardInterrupt:
        print("\ncifarkit: interrupted", file=sys.stderr)
        return 130
