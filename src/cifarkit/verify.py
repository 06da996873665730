"""`check-notebook --verify`: the run's checkpoint evaluated again on the test set, so a
results.json edited by hand (or from another run) cannot pass for this run's. Needs torch, the
network's code (a registered name or an import path: a class defined in a notebook cell cannot be
rebuilt without executing the notebook) and the data."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .base import CifarkitError
from .records import Check

WHAT = "results re-evaluated"


def checkpoint_of(run_dir: Path) -> Path | None:
    """The run's checkpoint: RUN/last.pt, or RUN.pt beside the folder (how checkpoints/ keeps the
    committed runs)."""
    for path in (run_dir / "last.pt", run_dir.with_suffix(".pt")):
        if path.is_file():
            return path
    return None


def reevaluate(
    run_dir: Path, results: dict, data: str | None = None, printed: tuple[str, list] | None = None
) -> list[Check]:
    """Evaluate the run's reported weights single view on its test images, in its recorded
    precision, and compare the count with results.json. Another machine's kernels differ by a few
    images (13-21 of 10,000 measured between a CPU's bf16 and another's fp32), so up to 1% may
    differ; a claim beyond that fails. `printed` (cell name, [(verdict, rule, evidence)]): the rule
    block the check judged, compared with the rules of the checkpoint's network (`rules_again`)."""
    import torch

    from .data.sources import load_cifar10
    from .data.splits import make_splits
    from .hardware import resolve_device
    from .runfolder.checkpoint import model_from_checkpoint, recorded_precision
    from .training.evaluate import predict_images

    path = checkpoint_of(run_dir)
    if path is None:
        return [Check(None, WHAT, f"no checkpoint (last.pt) in {run_dir}", decides=True)]
    try:
        model, cfg, ckpt = model_from_checkpoint(path, resolve_device("auto"))
    except CifarkitError as e:
        return [Check(None, WHAT, f"cannot re-evaluate: {e}", decides=True)]
    rules = [] if printed is None else [rules_again(model, printed)]
    try:
        source = data or (cfg.data if cfg.data and os.path.exists(cfg.data) else None)
        source = source or os.environ.get("CIFARKIT_DATA") or cfg.data
        dataset = load_cifar10(source, cfg.data_root)
    except CifarkitError as e:
        return [*rules, Check(None, WHAT, f"cannot re-evaluate: {e}", decides=True)]
    images, labels = make_splits(dataclasses.replace(cfg, val_split=0), dataset).test
    probs, labels = predict_images(
        model,
        images,
        labels,
        precision=recorded_precision(ckpt) or cfg.precision,
        tta="none",
        batch_size=cfg.eval_batch_size,
    )
    correct, total = int((probs.argmax(1) == labels).sum()), len(labels)
    claimed = results["single_view_correct"]
    ok = total == results["test_total"] and abs(correct - claimed) <= max(1, total // 100)
    del torch
    return [
        *rules,
        Check(
            ok,
            WHAT,
            f"{path.name} scores {correct}/{total} single view now; results.json says"
            f" {claimed}/{results['test_total']}"
            + ("" if ok else ": the results were not made by this checkpoint"),
            decides=True,
        ),
    ]


def rules_again(model, printed: tuple[str, list]) -> Check:
    """The course rules (all but accuracy, which the evaluation checks) of the checkpoint's network
    traced again, against the block the notebook printed: an edited verdict or evidence (a
    receptive field, a parameter count) fails, naming the rule and both values."""
    from .analysis.rules import check_rules

    name, lines = printed
    shown = {rule: (verdict, evidence) for verdict, rule, evidence in lines}
    differ = []
    for c in check_rules(model):
        if "accuracy" in c.rule:
            continue
        verdict, evidence = shown.get(c.rule, ("missing", "nothing"))
        if verdict != c.verdict.strip() or " ".join(evidence.split()) != " ".join(c.value.split()):
            differ.append(
                f"{c.rule}: {name} shows [{verdict}] {evidence}, the network [{c.verdict.strip()}]"
                f" {c.value}"
            )
    if differ:
        return Check(False, "rules re-checked", "; ".join(differ), decides=True)
    return Check(
        True,
        "rules re-checked",
        f"the checkpoint's network traced again gives the rules {name} shows",
        decides=True,
    )
