"""`check-notebook --verify`: the run's checkpoint evaluated again on the test set, so a
results.json edited by hand (or from another run) cannot pass for this run's. Needs torch, the
network's code and the data. The code is a registered name, an import path, or a class (or
function) a notebook cell defines: that one is rebuilt from the notebook's own cells
(`network_from_notebook`: their imports, definitions and literal constants; no other code runs),
and must be the network that trained the checkpoint (`models.identity`)."""

from __future__ import annotations

import ast
import builtins
import dataclasses
import linecache
import os
from pathlib import Path
from typing import Any, Callable

from .base import CifarkitError, first_line, format_call, parse_call
from .records import Check, cell_name, cell_text

WHAT = "results re-evaluated"


def checkpoint_of(run_dir: Path) -> Path | None:
    """The run's checkpoint: RUN/last.pt, or RUN.pt beside the folder (how checkpoints/ keeps the
    committed runs)."""
    for path in (run_dir / "last.pt", run_dir.with_suffix(".pt")):
        if path.is_file():
            return path
    return None


def _kept(node: ast.stmt) -> bool:
    """What rebuilding a notebook's network runs of a cell: imports, class and function
    definitions, and names bound to literal constants (WIDTH = 32); never a call at top level."""
    if isinstance(node, (ast.Import, ast.ImportFrom, ast.ClassDef, ast.FunctionDef)):
        return True
    if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
        try:
            ast.literal_eval(node.value)
            return True
        except ValueError:
            return False
    return False


def network_from_notebook(
    cells: list[dict], name: str
) -> tuple[str, Callable[[], Any]] | tuple[None, None]:
    """(the cell's name, the class or function `name`) as the notebook's code cells define it,
    rebuilt without running the notebook: the `_kept` statements of each code cell in order, up to
    the last cell that defines `name`; an import that fails here is left out. Each cell's source is
    registered as Jupyter registers it, so the methods' source, and with it the network's code
    identity, is found. (None, None) when no cell defines `name`."""
    parsed = []
    for i, c in enumerate(cells):
        if c.get("cell_type") != "code":
            continue
        lines = "".join(c.get("source", "")).split("\n")
        # IPython's %magic and !shell lines are not Python: blank, so line numbers stay
        text = "\n".join("" if s.lstrip().startswith(("%", "!")) else s for s in lines)
        try:
            body = [n for n in ast.parse(text).body if _kept(n)]
        except SyntaxError:
            continue
        defines = any(getattr(n, "name", None) == name for n in body)
        parsed.append((i, text, body, defines))
    last = max((k for k, p in enumerate(parsed) if p[3]), default=None)
    if last is None:
        return None, None
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    for i, text, body, defines in parsed[: last + 1]:
        filename = f"<notebook cell {i}>"
        linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
        for node in body:
            try:
                exec(compile(ast.Module(body=[node], type_ignores=[]), filename, "exec"), ns)
            except Exception as e:  # noqa: BLE001 - the student's code: said in one line
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue  # a package of the student's machine; the network may not need it
                if getattr(node, "name", None) == name or defines:
                    raise CifarkitError(
                        f"{cell_name(cells, i)} does not run here: {type(e).__name__}:"
                        f" {first_line(e)}"
                    ) from None
    return cell_name(cells, parsed[last][0]), ns[name]


def _rebuilt(path: Path, cells: list[dict] | None, device) -> tuple[Any, list[Check]]:
    """The checkpoint's network, rebuilt from its config, or, for a network a notebook cell
    defined, from the notebook (`network_from_notebook`), with a check that it is the network that
    trained the checkpoint. (None, [a check saying why not]) where it cannot be rebuilt."""
    from .models.identity import (
        comparable,
        describe_changes,
        identity_changes,
        network_identity,
        uncompared,
    )
    from .runfolder.checkpoint import config_from_checkpoint, load_checkpoint, model_from_checkpoint

    try:
        ckpt = load_checkpoint(path)
        spec = config_from_checkpoint(ckpt, path).model
        if not (spec.startswith("object:") and cells):
            return model_from_checkpoint(path, device, ckpt=ckpt), []
        name, kwargs = parse_call(spec.removeprefix("object:"), "model")  # a partial's keywords
        # the definition the run trained: none after the cell whose fit printed this model (a
        # class of the same name written later, for another experiment, is not the trained one)
        fit_at = next((i for i, c in enumerate(cells) if f"= '{spec}'" in cell_text(c)), None)
        where, maker = network_from_notebook(cells if fit_at is None else cells[: fit_at + 1], name)
        if maker is None:
            return None, [
                Check(None, WHAT, f"cannot re-evaluate: no code cell defines {name}", decides=True)
            ]
        try:
            net = maker(**kwargs)
        except Exception as e:  # noqa: BLE001 - the student's constructor
            call = format_call(name, kwargs) if kwargs else f"{name}()"
            raise CifarkitError(f"{call} fails: {type(e).__name__}: {first_line(e)}") from None
        saved, now = ckpt.get("network"), network_identity(net, spec)
        if not comparable(saved):
            return model_from_checkpoint(path, device, model=net, ckpt=ckpt), [
                Check(
                    None,
                    "network rebuilt",
                    f"{name} as {where} defines it cannot be compared with the network that trained"
                    f" {path.name}: an older cifarkit recorded that one differently or not at all",
                    decides=True,
                )
            ]
        changed = identity_changes(saved, now)
        if changed and "code" not in changed:
            # the same code built otherwise: the run's network was made with arguments (an
            # object, a functools.partial) or constants other than those the cells now hold
            return None, [
                Check(
                    None,
                    "network rebuilt",
                    f"{name}() as {where} defines it builds another network than the one that"
                    f" trained {path.name} (its {describe_changes(changed)} differ, its code does"
                    " not: it was built with other arguments or constants), so it cannot be"
                    " re-evaluated",
                    decides=True,
                )
            ]
        if changed:
            return None, [
                Check(
                    False,
                    "network rebuilt",
                    f"{name} as {where} defines it is not the network that trained {path.name}:"
                    f" its {describe_changes(changed)} differ",
                    decides=True,
                )
            ]
        compared = (
            "its code and parameter shapes"  # another torch release names layers differently
            if uncompared(saved, now)
            else "its code, layers, forward and parameter shapes"
        )
        return model_from_checkpoint(path, device, model=net, ckpt=ckpt), [
            Check(
                True,
                "network rebuilt",
                f"{name} as {where} defines it is the network that trained {path.name}"
                f" ({compared})",
                decides=True,
            )
        ]
    except CifarkitError as e:
        return None, [Check(None, WHAT, f"cannot re-evaluate: {e}", decides=True)]


def reevaluate(
    run_dir: Path,
    results: dict,
    data: str | None = None,
    printed: tuple[str, list] | None = None,
    cells: list[dict] | None = None,
) -> list[Check]:
    """Evaluate the run's reported weights single view on its test images, in its recorded
    precision, and compare the count with results.json. Another machine's kernels differ by a few
    images (13-21 of 10,000 measured between a CPU's bf16 and another's fp32), so up to 1% may
    differ; a claim beyond that fails. `printed` (cell name, [(verdict, rule, evidence)]): the rule
    block the check judged, compared with the rules of the checkpoint's network (`rules_again`).
    `cells`: the notebook's, to rebuild a network one of its cells defines (`_rebuilt`)."""
    import torch

    from .data.sources import load_cifar10
    from .data.splits import make_splits
    from .hardware import resolve_device
    from .runfolder.checkpoint import recorded_precision
    from .training.evaluate import predict_images

    path = checkpoint_of(run_dir)
    if path is None:
        return [Check(None, WHAT, f"no checkpoint (last.pt) in {run_dir}", decides=True)]
    rebuilt, said = _rebuilt(path, cells, resolve_device("auto"))
    if rebuilt is None:
        return said
    model, cfg, ckpt = rebuilt
    rules = [*said, *([] if printed is None else [rules_again(model, printed)])]
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
