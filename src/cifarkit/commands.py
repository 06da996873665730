"""The command line's inspection commands, one function each: ``summary``, ``evaluate``, ``export``,
``predict`` and ``runs`` (``train`` and ``lr-find``, which build a config from the options, live in
`cli`). Each takes the parsed arguments and returns the exit code; bad input raises a CifarkitError,
which `cli.main` prints as one line. Every import is inside the function that needs it: `cli` stays
torch-free until a command runs.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys

from .base import CifarkitError, show_path


def summary(args) -> int:
    from .analysis.rules import check_rules, format_rf_table, format_rules, receptive_field
    from .analysis.summary import summary_text
    from .models import build_model, normalize_spec

    if args.checkpoint:
        from .runfolder.checkpoint import model_from_checkpoint

        model, cfg, _ = model_from_checkpoint(args.checkpoint, "cpu", model=args.model)
        name, (accuracy, tested) = cfg.model, reported_accuracy(args.checkpoint)
    else:
        name, accuracy, tested = normalize_spec(args.model or "seed"), None, None
        model = build_model(name)
    print(f"network: {name}")
    print(summary_text(model))
    print(
        "Receptive field (k kernel, s stride, p padding, d dilation; jump and RF in input pixels)"
    )
    print(format_rf_table(receptive_field(model)))
    print("\nCourse rules")
    print(format_rules(check_rules(model, accuracy=accuracy, test_images=tested)))
    return 0


def reported_accuracy(checkpoint: str) -> tuple[float | None, int | None]:
    """(single-view test accuracy, test images it was measured on) from the results.json next to a
    checkpoint, if there is one."""
    import json
    from pathlib import Path

    from .runfolder.files import RESULTS

    for f in (Path(checkpoint).parent / RESULTS, Path(checkpoint).with_suffix("") / RESULTS):
        try:
            r = json.loads(f.read_text())
            return float(r["single_view_accuracy"]), int(r.get("test_total", 10_000))
        except (OSError, KeyError, ValueError, TypeError):
            continue
    return None, None


def evaluate(args) -> int:
    from .analysis.metrics import confusion_matrix, per_class_accuracy
    from .data.sources import load_cifar10
    from .data.splits import make_splits
    from .hardware import choose_precision, resolve_device
    from .report import result_line
    from .runfolder.checkpoint import model_from_checkpoint, recorded_precision
    from .training.evaluate import predict_images, score

    device = resolve_device(args.device or "auto")
    model, cfg, ckpt = model_from_checkpoint(args.checkpoint, device, model=args.model)
    # the run's own precision (its runtime record), unless --precision names another
    precision = args.precision or recorded_precision(ckpt) or cfg.precision
    _, reason = choose_precision(precision, device)
    tta = args.tta or cfg.tta
    data = load_cifar10(
        args.data if args.data is not None else cfg.data, args.data_root or cfg.data_root
    )
    # The run's own split definition (its limit_train, then the validation images), and the full
    # test set.
    splits = make_splits(
        dataclasses.replace(cfg, limit_test=None, val_split=args.val_split or 0), data
    )
    (images, labels), label = (splits.eval if args.val_split else splits.test), splits.eval_name
    if not args.val_split:
        label = "Test"
    print(
        f"checkpoint {args.checkpoint}: model {cfg.model}, epoch {ckpt['epoch']}/{cfg.epochs}, "
        f"{'EMA' if ckpt.get('ema') else 'final'} weights, precision {reason}, device {device}"
    )
    batch = args.batch_size or cfg.eval_batch_size
    probs, labels = predict_images(
        model, images, labels, precision=precision, tta="none", batch_size=batch
    )
    score(probs, labels, label=label)  # the seed-style line, single view like every per-epoch line
    if tta != "none":
        tprobs, _ = predict_images(
            model, images, labels, precision=precision, tta=tta, batch_size=batch
        )
        print(result_line(label.lower(), tta, score(tprobs, labels, verbose=False)) + "\n")
        probs = tprobs
    acc = per_class_accuracy(confusion_matrix(probs.argmax(1), labels))
    print(f"per-class accuracy ({'single view' if tta == 'none' else tta + ' TTA'}):")
    for name, a in zip(data.classes, acc.tolist()):
        print(f"  {name:<11}{a:6.2f}%")
    return 0


def export(args) -> int:
    from .runfolder.checkpoint import CheckpointError, export_checkpoint

    if os.path.isdir(args.out):  # --overwrite replaces a file, never a folder
        raise CheckpointError(
            f"--out {show_path(args.out)} is a folder; give the path of the .pt file to write, "
            f"e.g. {show_path(os.path.join(args.out, 'model.pt'))}"
        )
    if os.path.lexists(args.out) and not args.overwrite:
        raise CheckpointError(f"{show_path(args.out)} exists; pass --overwrite to replace it")
    slim = export_checkpoint(args.checkpoint, args.out)
    size = os.path.getsize(args.out) / 2**20
    print(
        f"wrote {args.out} ({size:.1f} MiB): {slim['config']['model']} weights after epoch"
        f" {slim['epoch']}; evaluate with: python -m cifarkit evaluate --checkpoint"
        f" {shlex.quote(os.path.abspath(args.out))}"
    )
    return 0


def predict(args) -> int:
    from .hardware import resolve_device
    from .inference import format_prediction, predict_image
    from .runfolder.checkpoint import model_from_checkpoint, recorded_precision

    if args.top < 1:
        raise CifarkitError(f"--top must be >= 1, got {args.top}")
    model, cfg, ckpt = model_from_checkpoint(
        args.checkpoint, resolve_device(args.device or "auto"), model=args.model
    )
    precision = recorded_precision(ckpt)  # the run's own, not "auto" decided again
    for path in args.images:
        print(
            format_prediction(
                predict_image(model, path, cfg=cfg, top=args.top, precision=precision)
            )
        )
    return 0


def runs(args) -> int:
    from pathlib import Path

    from .analysis.compare import compare_runs

    folders = args.folders or sorted(str(p.parent) for p in Path("runs").glob("*/config.json"))
    if not folders:
        raise CifarkitError(
            "no run folders given and none in ./runs: python -m cifarkit runs FOLDER [FOLDER ...]"
        )
    table = compare_runs(*folders)
    print(table)
    print(
        "rules: parameters, RF > 44, depthwise-separable, dilated, GAP, accuracy >= 80% (P pass, F"
        " fail, ? undecided)"
    )
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        table.plot(path=args.plot)
        print(f"plot: {args.plot}")
    return 0


def check_notebook(args) -> int:
    """The hand-in check (`handin.check_notebook`): one line per check; exit 0 only when all
    hold."""
    from .handin import EXIT
    from .handin import check_notebook as check

    report = check(args.notebook, args.run, verify=args.verify, data=args.data)
    try:
        print(report, flush=True)
    except BrokenPipeError:  # `check-notebook ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT[report.state]
