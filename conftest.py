"""Test-session defaults (pytest reads this before collecting tests and the notebook).

The notebook re-executed by nbval reads these: CIFARKIT_SMOKE=1 trains for a handful of batches so
the re-run takes minutes on a CPU, and CIFARKIT_DATA points at the offline copy of CIFAR-10 when it
exists.
"""

import os
from pathlib import Path

os.environ.setdefault("CIFARKIT_SMOKE", "1")
_shared = Path(__file__).resolve().parent / ".." / "shared" / "data" / "cifar10-jpg.tar.gz"
if _shared.exists():
    os.environ.setdefault("CIFARKIT_DATA", str(_shared.resolve()))
os.environ.setdefault("MPLBACKEND", "Agg")  # plain tests draw off-screen; the notebook sets its own
# The notebook re-executed by nbval writes its runs in a fresh folder, never in the checkout's runs/
# (a run left there by other code would be refused, rightly, by resume="auto").
if "CIFARKIT_RUNS" not in os.environ:
    import tempfile

    os.environ["CIFARKIT_RUNS"] = tempfile.mkdtemp(prefix="cifarkit-notebook-runs-")
# One layout measurement per network for the whole session (fit measures NCHW vs NHWC on a CPU; each
# test's private data cache would otherwise repeat it in every test).
if "CIFARKIT_LAYOUT_CACHE" not in os.environ:
    import tempfile

    os.environ["CIFARKIT_LAYOUT_CACHE"] = str(
        Path(tempfile.mkdtemp(prefix="cifarkit-layout-")) / "layout.json"
    )


_SESSION_START = [0.0]


def pytest_sessionstart(session):
    import time

    _SESSION_START[0] = time.perf_counter()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line the README's test facts are copied from: counts, wall time and the machine."""
    import time

    import torch

    from cifarkit.hardware import cpu_kind, cpu_name

    counts = {
        k: len(terminalreporter.stats.get(k, [])) for k in ("passed", "skipped", "failed", "error")
    }
    said = ", ".join(f"{n} {k}" for k, n in counts.items() if n or k == "passed")
    minutes = (time.perf_counter() - _SESSION_START[0]) / 60
    terminalreporter.write_line(
        f"test facts: {said} in {minutes:.1f} min on a {os.cpu_count()}-core {cpu_name()} "
        f"({cpu_kind()}), torch {torch.__version__.split('+')[0]}"
    )
