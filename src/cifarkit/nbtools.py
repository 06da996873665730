"""Notebooks: cifarkit's refusals in one line in a Jupyter kernel, and executing a notebook for
real, saved the way Jupyter shows it.

    python -m cifarkit.nbtools Assignment7.ipynb [--timeout SECONDS]

Runs every cell with nbclient (the same machinery as nbval), then collapses carriage returns in
stream outputs: a tqdm bar redraws itself with '\\r', and a saved notebook should hold what the
screen showed (the last state of each bar), not every intermediate redraw.
"""

from __future__ import annotations

import argparse
import os
import re
import sys


def show_refusals_in_one_line() -> bool:
    """In a Jupyter kernel (the notebook, Colab): a cifarkit refusal (any `CifarkitError`: a bad
    setting, a missing file, a network that cannot train) and a stopped run (`RunStopped`) show as
    their one line, e.g.
    "ConfigError: epochs must be ...", not as a traceback through cifarkit's files. Any other
    exception (a bug in your own code) keeps its full traceback. The cell still fails, so Run all
    stops there. Called when cifarkit is imported; True where it applied."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or getattr(shell, "kernel", None) is None:
        return False
    from .base import CifarkitError
    from .runfolder.signals import RunStopped

    def one_line(shell, etype, value, tb, tb_offset=None):
        text = " ".join(str(value).split())  # one line, whatever the message holds
        shell._showtraceback(etype, value, [f"{etype.__name__}: {text}"])

    # RunStopped: a run stopped by the stop button says what was saved and how to resume
    shell.set_custom_exc((CifarkitError, RunStopped), one_line)
    return True


def collapse_carriage_returns(text: str) -> str:
    """What a terminal shows: on each line, only the text after the last carriage return
    survives."""
    lines = []
    for line in text.split("\n"):
        parts = [p for p in re.split(r"\r", line) if p]
        lines.append(parts[-1] if parts else "")
    return "\n".join(lines)


def clean_outputs(nb) -> None:
    """Merge consecutive stream outputs of a cell and collapse their carriage returns, in place."""
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        merged = []
        for out in cell.get("outputs", []):
            if (
                out.get("output_type") == "stream"
                and merged
                and merged[-1].get("output_type") == "stream"
                and merged[-1]["name"] == out["name"]
            ):
                merged[-1]["text"] += out["text"]
            else:
                merged.append(out)
        for out in merged:
            if out.get("output_type") == "stream":
                out["text"] = collapse_carriage_returns(out["text"])
        cell["outputs"] = merged


def main(argv: list[str] | None = None) -> int:
    import nbformat
    from nbclient import NotebookClient

    ap = argparse.ArgumentParser(
        description="Execute a notebook in place and tidy its stream outputs."
    )
    ap.add_argument("notebook")
    ap.add_argument("--timeout", type=int, default=7200, help="seconds allowed per cell")
    args = ap.parse_args(argv)
    nb = nbformat.read(args.notebook, as_version=4)
    NotebookClient(
        nb,
        timeout=args.timeout,
        kernel_name="python3",
        resources={"metadata": {"path": os.path.dirname(os.path.abspath(args.notebook))}},
    ).execute()
    clean_outputs(nb)
    nbformat.write(nb, args.notebook)
    return 0


if __name__ == "__main__":
    sys.exit(main())
