"""The package's shape, as README.md's layout table draws it: no import circles (function-level
imports count too), the ground floor and the torch-free modules stay so, and each wing imports only
from below.
"""

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cifarkit"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """The cifarkit modules `path` imports (relative imports resolved; "" is the package itself)."""
    tree = ast.parse(path.read_text())
    here = module_name(path).split(".") if module_name(path) else []
    package = here if path.name == "__init__.py" else here[:-1]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1] if node.level > 1 else package
            target = ".".join(base + (node.module.split(".") if node.module else []))
            found.add(target)
            if not node.module:  # "from . import seed": the names are modules
                found |= {".".join(base + [a.name]) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cifarkit"):
            found.add(node.module.removeprefix("cifarkit").lstrip("."))
    return found


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}
GRAPH = {m: {t for t in imports(p) if t in MODULES and t != m} for m, p in MODULES.items()}


def test_there_are_no_import_circles():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(t) :] + [t]))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])


def test_the_ground_floor_imports_nothing_of_the_package():
    assert GRAPH["base"] == set()
    assert GRAPH["atomic"] == {"base"}


@pytest.mark.parametrize(
    "module",
    [
        "base",
        "atomic",
        "config",
        "recipes",
        "report",
        "runfolder.lock",
        "runfolder.files",
        "cli",
        "options",
        "commands",
    ],
)
def test_what_the_command_line_needs_before_its_lock_imports_no_torch(module):
    # Module level only: the CLI parses options and takes the run lock before anything imports
    # torch.
    tree = ast.parse(MODULES[module].read_text())
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {
        (n.module or "").split(".")[0]
        for n in tree.body
        if isinstance(n, ast.ImportFrom) and not n.level
    }
    assert not top & {"torch", "torchvision", "numpy"}
    for t in imports(MODULES[module], top_level_only=True):
        assert t in (
            "",
            "base",
            "atomic",
            "config",
            "recipes",
            "report",
            "options",
            "commands",
            "runfolder",
            "runfolder.lock",
            "runfolder.files",
        ), (module, t)


# Each wing and what it may import from outside itself: only floors below it, never the top
# (inference, handin, cli, commands, speed) or another wing above it.
WINGS = {
    "models": {"base"},
    "data": {"base", "atomic", "config", "hardware"},
    "runfolder": {"base", "atomic", "config", "hardware", "runtime", "models"},
    "analysis": {
        "base",
        "atomic",
        "config",
        "hardware",
        "runtime",
        "models",
        "data",
        "report",
        "runfolder",
    },
    "training": {
        "base",
        "atomic",
        "config",
        "hardware",
        "runtime",
        "models",
        "data",
        "optim",
        "compiled",
        "report",
        "runfolder",
        "analysis",
    },
}


@pytest.mark.parametrize("wing", sorted(WINGS))
def test_each_wing_imports_only_from_below(wing):
    for m, targets in GRAPH.items():
        if m == wing or m.startswith(wing + "."):
            outside = {
                t.split(".")[0] for t in targets if not (t == wing or t.startswith(wing + "."))
            }
            assert outside <= WINGS[wing], (m, outside - WINGS[wing])


def test_every_module_says_what_it_is_for_and_reads_in_one_sitting():
    for m, p in MODULES.items():
        tree = ast.parse(p.read_text())
        assert ast.get_docstring(tree), f"{m} has no module docstring"
        lines = len(p.read_text().splitlines())
        # 400: the ~300 lines of one sitting, as `ruff format` lays them out (one argument per line
        # where a call does not fit: the same code grew from 7,259 to 9,898 lines)
        assert lines <= 400, f"{m}: {lines} lines"


def test_every_module_is_tracked_by_git():
    # A .gitignore pattern once swallowed src/cifarkit/data/ ("data/" meant the download folder):
    # the
    # package worked here and was missing from every clone.
    import shutil
    import subprocess

    root = SRC.parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(
        ["git", "check-ignore", *map(str, MODULES.values())],
        cwd=root,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert not ignored, f"ignored by .gitignore: {ignored}"


def readme_picture() -> list[list[str]]:
    """The floors of README.md's layout picture, ground floor first: each a list of module names."""
    text = (SRC.parents[1] / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    floors, folder = [], ""
    for line in block.splitlines()[1:]:  # the first line is src/cifarkit/ itself
        head = line[:32]  # the picture's left column (names); the right one says what they are for
        words = head.split() if line.startswith("  ") and not line.startswith("   ") else None
        if words is not None:  # a new floor: a folder and its files, or top-level files
            folder = words[0] if words[0].endswith("/") else ""
            floors.append([])
        names = re.findall(r"\b([a-z_]+)\.py\b", line if folder else head)
        floors[-1] += [folder.replace("/", ".") + n for n in names] + (
            [folder.rstrip("/")] if folder else []
        )
    return floors


def test_the_readme_picture_is_the_package_floor_by_floor():
    floors = readme_picture()
    pictured = [m for floor in floors for m in floor]
    package = {m for m in MODULES if m and not m.endswith("__main__")}
    assert sorted(set(pictured) - package) == [], "in the picture, not in the package"
    assert sorted(package - set(pictured)) == [], "in the package, not in the picture"
    floor_of = {m: i for i, floor in enumerate(floors) for m in floor}
    for m, targets in GRAPH.items():
        for t in targets:
            if m in floor_of and t in floor_of:
                assert floor_of[t] <= floor_of[m], (
                    f"{m} (floor {floor_of[m]}) imports {t} from above (floor {floor_of[t]})"
                )
