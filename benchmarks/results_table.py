"""The README's results table, from the committed runs: mean +- sd of the final test accuracy per
group, single view and with the run's test-time augmentation (TTA), each its own column.

    python benchmarks/results_table.py [checkpoints]

Runs are grouped by folder name without the trailing "-sN" (seed-net-s0, -s1, -s2 -> seed-net). The
sd is the sample standard deviation over seeds. Time is the run's wall clock (training, per-epoch
tests, final test-time augmentation) as results.json recorded it.
"""

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "checkpoints")
    groups: dict[str, list[dict]] = defaultdict(list)
    for f in sorted(root.glob("*/results.json")):
        groups[re.sub(r"-s\d+$", "", f.parent.name)].append(
            {**json.loads(f.read_text()), "run": f.parent.name}
        )
    print(
        f"{'group':<18}{'model':<9}{'params':>9}{'epochs':>7}  {'single view':<36}{'TTA':<36}"
        f"{'minutes':<20}tta"
    )
    for name, runs in groups.items():
        mins = [r["wall_seconds"] / 60 for r in runs]
        r = runs[0]
        print(
            f"{name:<18}{r['model']:<9}{r['parameters']:>9,}{r['epochs']:>7}  "
            f"{summary([r['single_view_accuracy'] for r in runs]):<36}"
            f"{summary([r['tta_accuracy'] for r in runs if r['tta_accuracy'] is not None]):<36}"
            f"{', '.join(f'{m:.1f}' for m in mins):<20}{r['tta']}"
        )
    return 0


def summary(accs: list[float]) -> str:
    """'mean +- sd (a, b, c)', or '-' for no runs."""
    if not accs:
        return "-"
    text = f"{statistics.mean(accs):.2f}" + (
        f" +- {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
    )
    return text + f" ({', '.join(f'{a:.2f}' for a in accs)})"


if __name__ == "__main__":
    sys.exit(main())
