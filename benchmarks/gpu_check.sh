#!/usr/bin/env bash
# One prepared GPU check (~8 minutes on an H100-class card), for whatever CUDA GPU this machine has:
#   1. throughput rows A / B / C (C = CUDA graphs) of benchmarks/throughput.py;
#   2. full 20-epoch runs of the default recipe: eager and CUDA graphs, random seeds 0-2 each, in the card's
#      native precision (bf16 on compute capability >= 8.0, else fp16 + scaler), plus one fp16 + scaler run
#      where bf16 is native; run side by side on the one card;
#   3. one JSON line per result in benchmarks/results/gpu-check-<card>.jsonl (wall time, accuracy, setting);
#   4. benchmarks/student_networks.py: a dozen student-style networks, every default, one epoch each.
# Defaults follow from it: cuda_graphs stays off until its three seeds match eager's within seed noise and
# its epochs are faster. Usage: bash benchmarks/gpu_check.sh DATA  (DATA: CIFAR-10 folder or archive; empty
# or absent: torchvision's download into ./data)
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-${CIFARKIT_DATA:-}}"
py=${PYTHON:-python}
card=$($py -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name().replace(' ', '-'))")
major=$($py -c "import torch; print(torch.cuda.get_device_capability()[0])")
out="benchmarks/results/gpu-check-$card.jsonl"
runs="$(mktemp -d)"
mkdir -p benchmarks/results
data_args=(); [ -n "$data" ] && data_args=(--data "$data")
echo "{\"about\": \"benchmarks/gpu_check.sh on $card, $(date -u +%F)\"}" >> "$out"

$py benchmarks/throughput.py "${data_args[@]}" --rows A,B,C --steps 60 | tee "$runs/throughput.txt"
$py - "$runs/throughput.txt" "$out" <<'PY'
import json, sys
rows = [l.split() for l in open(sys.argv[1]) if l[:2] in ("A ", "B ", "C ")]
with open(sys.argv[2], "a") as f:
    for l in rows:
        f.write(json.dumps({"kind": "throughput", "row": l[0], "line": " ".join(l)}) + "\n")
PY

native=$([ "$major" -ge 8 ] && echo bf16 || echo fp16)
jobs=()
for graphs in no-cuda-graphs cuda-graphs; do
  for seed in 0 1 2; do
    name="$native-$graphs-s$seed"
    $py -m cifarkit train "${data_args[@]}" --precision "$native" --$graphs --seed $seed --no-progress \
        --out "$runs/$name" > "$runs/$name.log" 2>&1 & jobs+=("$name")
  done
done
if [ "$native" = bf16 ]; then
  $py -m cifarkit train "${data_args[@]}" --precision fp16 --no-cuda-graphs --seed 0 --no-progress \
      --out "$runs/fp16-no-cuda-graphs-s0" > "$runs/fp16-no-cuda-graphs-s0.log" 2>&1 & jobs+=("fp16-no-cuda-graphs-s0")
fi
wait || true
for name in "${jobs[@]}"; do
  $py - "$runs/$name" "$name" "$out" <<'PY'
import json, sys
from pathlib import Path
run, name, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
try:
    r = json.loads((run / "results.json").read_text())
    h = json.loads((run / "history.json").read_text())
    line = {"kind": "run", "name": name, "single_view": r["single_view_accuracy"], "tta": r["tta_accuracy"],
            "wall_s": round(r["wall_seconds"], 1), "epoch_s": [round(e["train_seconds"] + e["eval_seconds"], 2) for e in h],
            "precision": r["precision"], "hardware": r["hardware"], "torch": r["torch"], "shared_card_with": "the other runs"}
except (OSError, KeyError, ValueError) as e:
    log = (run.parent / f"{name}.log").read_text().strip().splitlines()[-3:]
    line = {"kind": "run", "name": name, "failed": f"{type(e).__name__}: {e}", "log": log}
print(json.dumps(line))
open(out, "a").write(json.dumps(line) + "\n")
PY
done
# A dozen networks written the way students write them, every default, on this card (issue 37).
$py benchmarks/student_networks.py "${data_args[@]}" --out "benchmarks/results/student-networks-$card.jsonl"
echo "wrote $out and benchmarks/results/student-networks-$card.jsonl"
