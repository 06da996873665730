"""README.md and docs/ as artifacts: links and images resolve, the results table is read from the
committed results.json files it names, and the commands shown parse (the cheap ones run)."""

import json
import re
import shlex
import statistics
from pathlib import Path

import pytest

from cifarkit.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_and_image_resolves(doc):
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        assert file.exists(), f"{doc.name}: {target} does not exist"
        if anchor and file.suffix == ".md":
            headings = [slug(h) for h in re.findall(r"^#+ (.*)$", file.read_text(), re.M)]
            assert anchor in headings, f"{doc.name}: no heading #{anchor} in {file.name}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_docs_file_says_what_it_is_for(doc):
    if doc.name != "README.md":
        assert "What this file is for:" in doc.read_text().split("\n\n")[1]


def group(name: str) -> list[dict]:
    runs = [
        json.loads(f.read_text())
        for f in sorted((ROOT / "checkpoints").glob(f"{name}-s[0-9]/results.json"))
    ]
    assert len(runs) == 3, name
    return runs


@pytest.mark.parametrize(
    "name, row_start",
    [
        ("seed-net", "| Assignment 7 (467,098 parameters) |"),
        ("compact", "| compact (586,328 parameters) |"),
    ],
)
def test_results_table_rows_are_the_committed_runs(name, row_start):
    (row,) = [
        line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(row_start)
    ]
    runs = group(name)
    for key in ("single_view_accuracy", "tta_accuracy"):
        accs = [r[key] for r in runs]
        assert f"**{statistics.mean(accs):.2f}% +- {statistics.stdev(accs):.2f}**" in row, (
            key,
            row,
        )
    minutes = [r["wall_seconds"] / 60 for r in runs]
    assert f"{min(minutes):.1f}-{max(minutes):.1f} min" in row
    assert f"| {runs[0]['epochs']} |" in row and f"{runs[0]['parameters']:,} parameters" in row
    assert all("AMD EPYC" in r["hardware"] and r["precision"] == "bf16" for r in runs)


def commands() -> list[list[str]]:
    """Every `python -m cifarkit ...` line in a bash block of README.md and docs/*.md, as argv."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("#")[0].strip()
                if (
                    line.startswith(("python -m cifarkit ", "CIFARKIT_DATA="))
                    and " cifarkit " in line
                ):
                    argv = shlex.split(
                        line[line.index("python -m cifarkit") + len("python -m cifarkit") :]
                    )
                    found.append(
                        [
                            a.replace("$D", "data.tar.gz").replace("$V1", "")
                            for a in argv
                            if a != "$V1"
                        ]
                    )
    return found


def test_every_command_shown_parses():
    cmds = commands()
    assert len(cmds) >= 15
    parser = build_parser()
    for argv in cmds:
        parser.parse_args(argv)  # an unknown option or subcommand exits with code 2


def test_the_cheap_commands_shown_run(capsys):
    assert main(["summary", "--model", "compact"]) == 0
    assert "[PASS] receptive field > 44" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0 and "--dry-run" in capsys.readouterr().out


def test_the_notebook_run_quoted_in_the_readme_is_the_committed_one():
    r = json.loads((ROOT / "checkpoints" / "notebook" / "results.json").read_text())
    readme = " ".join((ROOT / "README.md").read_text().split())
    # the machine in the words the README uses, from what results.json recorded
    machine = next(
        words
        for kind, words in (
            ("AMX-BF16", "2-core Intel Xeon (Sapphire Rapids, AMX)"),
            ("AVX-512-BF16", "2-core AMD EPYC (AVX-512-BF16)"),
            ("AVX2", "2-core AMD EPYC Zen 3 (AVX2)"),
        )
        if kind in r["hardware"]
    )
    precision = {"bfloat16": "bf16", "float16": "fp16"}.get(r["precision"], r["precision"])
    assert (
        f"{r['single_view_accuracy']:.2f}% single view, {r['tta_accuracy']:.2f}% TTA, "
        f"{r['wall_seconds'] / 60:.1f} min on a {machine}, {precision}" in readme
    )
    results_row = [
        line
        for line in (ROOT / "docs" / "results.md").read_text().splitlines()
        if line.startswith("| `notebook` |")
    ]
    assert (
        results_row
        and f"| {r['single_view_accuracy']:.2f} | {r['tta_accuracy']:.2f} | "
        f"{r['wall_seconds'] / 60:.1f} |"
        in results_row[0]
    )


def test_the_test_facts_are_the_line_pytest_prints():
    """docs/testing.md's test facts are `test facts:` lines as the root conftest.py prints them at
    the end of `python -m pytest` (counts, minutes, the CPU, torch), quoted whole; the README's Test
    section says where the data must be and points there."""
    import re

    section = (ROOT / "docs" / "testing.md").read_text().split("## Test facts", 1)[1]
    quoted = re.findall(r"`(test facts: [^`]+)`", section)
    line = (
        r"test facts: \d+ passed(, \d+ skipped)? in \d+\.\d min on a \d+-core .+ \(.+\), "
        r"torch \d+\.\d+(\.\d+)?"
    )
    assert quoted and all(re.fullmatch(line, q) for q in quoted), quoted
    readme = (ROOT / "README.md").read_text().split("## Test", 1)[1].split("\n## ", 1)[0]
    assert "../shared/data/cifar10-jpg.tar.gz" in readme and "CIFARKIT_DATA" in readme
    assert "docs/testing.md" in readme


def test_the_readme_stays_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("python3 -m venv"))
    assert len(lines) <= 160 and first < 60, (len(lines), first)


def test_every_committed_run_spells_its_precision_one_way():
    from cifarkit.base import PRECISIONS

    for f in sorted((ROOT / "checkpoints").glob("*/*.json")):
        data = json.loads(f.read_text())
        if isinstance(data, dict) and "precision" in data:
            assert data["precision"] in PRECISIONS, (f, data["precision"])
