"""Command line: ``python -m cifarkit {train,summary,evaluate,export,predict,runs,lr-find} ...``.

The training options are generated from TrainConfig's fields, with each field's comment as its help,
so the config is the one source of names, defaults and meanings. Every bad option or input ends in
one line on stderr and a non-zero exit code, never a traceback: 2 for bad options / input, 1 for a
diverged run or a failed write (disk full, read-only folder), 130 for Ctrl-C, 143 for SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile

from . import commands
from .base import PRECISIONS, TTA_MODES, CifarkitError
from .config import TrainConfig
from .options import add_config_options
from .recipes import RECIPES


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is a single line (no usage dump)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


LOSS_FN_HELP = (
    "loss_fn(out, y) -> loss instead of label-smoothed cross-entropy, for a network whose forward"
    " returns more than the logits in training mode (an auxiliary head); pass it again with"
    " --resume"
)


def _loss_fn(args):
    """The --loss-fn function (an import path, like --model's), or None."""
    if not getattr(args, "loss_fn", None):
        return None
    from .models.registry import load_attr

    if ":" not in args.loss_fn:
        raise CifarkitError(
            f"--loss-fn {args.loss_fn!r}: give an import path, file.py:function or"
            " package.module:function"
        )
    return load_attr(args.loss_fn, "--loss-fn")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cifarkit", description="Train and inspect compact CIFAR-10 networks.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a network; writes a run folder")
    t.add_argument(
        "--recipe",
        choices=list(RECIPES),
        default=None,
        help=(
            "preset to start from: 'default' (recommended), 'compact' or 'seed' (the original"
            " recipe)"
        ),
    )
    add_config_options(t)
    t.add_argument(
        "--resume", metavar="CHECKPOINT", help="continue a run from its last.pt (its own settings)"
    )
    t.add_argument("--loss-fn", metavar="FILE.py:FUNCTION", help=LOSS_FN_HELP)
    t.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    t.add_argument(
        "--dry-run",
        action="store_true",
        help=(
            "1 epoch on 512 / 256 images in a throwaway folder (or an empty --out): checks the path"
        ),
    )

    s = sub.add_parser("summary", help="summary table, receptive field and course-rule checks")
    s.add_argument(
        "--model", default=None, help="registry name or import path file.py:Class (default: seed)"
    )
    s.add_argument("--checkpoint", help="summarise the network of this checkpoint instead")

    e = sub.add_parser(
        "evaluate", help="single-view and TTA test accuracy, per class, of a checkpoint"
    )
    e.add_argument("--checkpoint", required=True)
    e.add_argument(
        "--tta", choices=TTA_MODES, help="TTA of the second line (default: what the run used)"
    )
    e.add_argument("--batch-size", type=int, help="default: the run's eval batch size")
    e.add_argument(
        "--val-split",
        type=int,
        help=(
            "evaluate on the validation split of N training images that `train --val-split N`"
            " holds out"
        ),
    )
    e.add_argument(
        "--model", help="import path to rebuild a network the run was given as an object"
    )
    _runtime_options(e)

    x = sub.add_parser(
        "export", help="slim copy of a checkpoint (weights, config, history) for sharing"
    )
    x.add_argument("--checkpoint", required=True, help="a run's last.pt or best.pt")
    x.add_argument("--out", required=True, help="where to write the slim .pt")
    x.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    q = sub.add_parser(
        "predict", help="classify your own images (any size; resized to 32x32) with a checkpoint"
    )
    q.add_argument("--checkpoint", required=True)
    q.add_argument("images", nargs="+", metavar="IMAGE")
    q.add_argument(
        "--top", type=int, default=3, help="how many classes to list per image (default 3)"
    )
    q.add_argument(
        "--model", help="import path to rebuild a network the run was given as an object"
    )
    q.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")

    r = sub.add_parser(
        "runs", help="compare run folders: network, rules, accuracy, time; overlay their curves"
    )
    r.add_argument(
        "folders",
        nargs="*",
        metavar="FOLDER",
        help="run folders (default: every folder in ./runs that holds a config.json)",
    )
    r.add_argument(
        "--plot", help="also save the accuracy curves of all runs in one figure here (PNG)"
    )

    n = sub.add_parser(
        "check-notebook", help="the hand-in check of an executed notebook and its run folder"
    )
    n.add_argument(
        "notebook", metavar="NOTEBOOK", help="the executed .ipynb, e.g. Assignment7.ipynb"
    )
    n.add_argument(
        "--run", help="its run folder (default: the out folder the notebook's fit printed)"
    )
    n.add_argument(
        "--verify",
        action="store_true",
        help="also evaluate the run's checkpoint on the test set again and compare with"
        " results.json, and trace its network to re-check the printed rules (needs torch, the data"
        " and the network's code: a network a notebook cell defines is rebuilt from the notebook's"
        " imports and definitions, nothing else in it runs, and must be the one that trained the"
        " checkpoint)",
    )
    n.add_argument(
        "--data", help="with --verify: the CIFAR-10 copy (default: the run's, or $CIFARKIT_DATA)"
    )

    f = sub.add_parser(
        "lr-find", help="learning-rate range test for the configured network and recipe"
    )
    f.add_argument("--recipe", choices=list(RECIPES), default=None)
    add_config_options(f)
    f.add_argument("--loss-fn", metavar="FILE.py:FUNCTION", help=LOSS_FN_HELP)
    f.add_argument(
        "--num-iter", type=int, default=100, help="optimiser steps of the range test (default 100)"
    )
    f.add_argument(
        "--start-lr", type=float, default=1e-5, help="first learning rate (default 1e-5)"
    )
    f.add_argument("--end-lr", type=float, default=10.0, help="last learning rate (default 10)")
    f.add_argument(
        "--plot",
        default="lr_find.png",
        help="where to save the loss-vs-LR plot (default lr_find.png)",
    )
    return p


def _runtime_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default=os.environ.get("CIFARKIT_DATA"),
        help=(
            "CIFAR-10 folder or archive (default: $CIFARKIT_DATA, else the run's data /"
            " torchvision)"
        ),
    )
    p.add_argument("--data-root", help="torchvision download folder when --data is not given")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", choices=PRECISIONS)


def given_fields(args: argparse.Namespace) -> dict:
    """The TrainConfig fields given on the command line (argparse leaves the others None); with the
    recipe's fields, what `config.explicit_fields` counts as set on purpose."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def _out_folder(args: argparse.Namespace) -> str:
    """The run folder a fresh `train` command line writes (the --dry-run folder is made here,
    once)."""
    if getattr(args, "dry_run", False) and args.out is None:
        args.out = tempfile.mkdtemp(prefix="cifarkit-dry-run-")
        args.throwaway = True  # removed when the dry run ends
    if args.out is not None:
        return args.out
    recipe = RECIPES[args.recipe or "default"]
    return recipe.get(
        "out", next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "out")
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig a parsed `train` command line asks for: its recipe, then the options given on
    top (--dry-run: 1 epoch on 512 / 256 images unless limits are given, in a fresh temporary folder
    unless --out is given)."""
    fields = given_fields(args)
    if getattr(args, "dry_run", False):
        fields = {"limit_train": 512, "limit_test": 256, **fields, "epochs": 1}
        fields.setdefault("out", _out_folder(args))
    return TrainConfig.from_recipe(args.recipe or "default", **fields)


def _train(args) -> int:
    # the dry run's limits would not apply: it would train or rewrite the run
    if args.dry_run and args.resume:
        raise CifarkitError(
            "--dry-run checks a fresh run in a throwaway folder; it cannot be combined with "
            "--resume"
        )
    lock = None
    if not args.resume:  # a fresh run: own --out before torch is imported (seconds on a slow CPU)
        from .runfolder.lock import RunLock

        lock = RunLock(_out_folder(args)).acquire()
    try:
        cfg = config_from_args(args)
        explicit = set(given_fields(args))
        if args.recipe:
            explicit |= set(RECIPES[args.recipe])
        from .report import final_line
        from .training.trainer import Caller, fit

        if not args.dry_run and cfg.limit_train is None:  # what the run will take, as measured
            from .hardware import resolve_device
            from .speed import epoch_estimate

            path = "cuda_graphs" if cfg.cuda_graphs else "eager"
            print(
                epoch_estimate(resolve_device(cfg.device), cfg.epochs, model=cfg.model, path=path)
            )
        caller = Caller("cli", explicit=explicit if args.resume else None, lock=lock)
        result = fit(
            cfg, resume=args.resume, overwrite=args.overwrite, loss_fn=_loss_fn(args), caller=caller
        )
    finally:
        if lock is not None:
            lock.release()  # fit released it already unless it failed before taking it over
        if getattr(args, "throwaway", False):  # the dry run's own temp folder: nothing to keep
            import shutil

            shutil.rmtree(args.out, ignore_errors=True)
            print(f"(the dry run's throwaway folder {args.out} was removed)")
    if result.interrupted:
        return result.exit_code
    print(
        f"{final_line(result.final)}, {result.final['wall_seconds']:.0f} s on"
        f" {result.final['hardware']}; run folder: {result.run_dir}"
    )
    return 0


def _lr_find(args) -> int:
    from .analysis.lrplot import describe
    from .training.lrfind import lr_find

    cfg = config_from_args(args)
    result = lr_find(
        cfg,
        loss_fn=_loss_fn(args),
        num_iter=args.num_iter,
        start_lr=args.start_lr,
        end_lr=args.end_lr,
        path=args.plot,
    )
    print(describe(result, cfg.lr))
    print(f"plot: {args.plot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = {
        "train": _train,
        "summary": commands.summary,
        "evaluate": commands.evaluate,
        "export": commands.export,
        "predict": commands.predict,
        "runs": commands.runs,
        "check-notebook": commands.check_notebook,
        "lr-find": _lr_find,
    }[args.command]
    try:
        if args.command == "train":
            return command(args)  # fit handles its own stop signals, saving first
        from .runfolder.signals import StopSignals

        # SIGTERM / SIGHUP stop any other command as Ctrl-C does: one line, not a silent exit
        with StopSignals(exiting=True):
            return command(args)
    except CifarkitError as e:
        from .atomic import WriteError
        from .training.step import DivergenceError

        # one line whatever a path in it holds (a file name may contain a newline)
        print(
            f"cifarkit: error: {str(e).replace(chr(10), '[newline]').replace(chr(13), '[return]')}",
            file=sys.stderr,
        )
        # 1: the run failed; 2: bad input
        return 1 if isinstance(e, (DivergenceError, WriteError)) else 2
    # outside fit's own handling, or during its setup (then fit said what was saved)
    except KeyboardInterrupt as e:
        if not getattr(e, "reported", False):
            from .runfolder.signals import SIGNAL_NAMES

            by = SIGNAL_NAMES.get(getattr(e, "signum", None), "Ctrl-C")
            print(
                f"cifarkit: {args.command} stopped by {by}; files it writes are written whole or"
                " not at all",
                file=sys.stderr,
            )
        return getattr(e, "exit_code", 130)
