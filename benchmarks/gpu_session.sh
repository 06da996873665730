#!/usr/bin/env bash
# The first device call of a session that is lent a GPU (issue 37's checks), prepared to fit one call:
#   here:   bash benchmarks/gpu_prepare.sh      (wheels into .whl/, the data copy into .gpudata/)
#   then:   the device tool's run, carry [".whl", ".gpudata"], timeout_s 590:  bash benchmarks/gpu_session.sh
#   there:  the wheels installed beside the machine's torch, the working tree's src/ first on the path;
#           1. the README's test command (`python -m pytest`), at most 6 minutes;
#           2. benchmarks/student_networks.py: a dozen student-style networks, every default, one epoch each.
# Everything lands in $OUT/ (the tool brings it back; copy it to benchmarks/results/). The 20-epoch runs of
# benchmarks/gpu_check.sh (~8 minutes) need a second call, when the session's device time allows.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheels did not install"; exit 1; }
export PYTHONPATH="$PWD/src:/tmp/site" PATH="/tmp/site/bin:$PATH"
export CIFARKIT_DATA="$PWD/.gpudata/cifar10-jpg.tar.gz"
card=$(python3 -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-') if torch.cuda.is_available() else 'cpu')")
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import sys, torch, torchvision; print(sys.version.split()[0], torch.__version__, torchvision.__version__)"
  git log --oneline -1 2>/dev/null || true; } > "$out/gpu-session-$card.txt"
start=$SECONDS
timeout 360 python3 -m pytest -q -p no:cacheprovider > "$out/pytest-$card.log" 2>&1
echo "pytest: rc $? in $(( SECONDS - start )) s" >> "$out/gpu-session-$card.txt"
tail -25 "$out/pytest-$card.log"
start=$SECONDS
timeout 150 python3 benchmarks/student_networks.py --data "$CIFARKIT_DATA" --out "$out/student-networks-$card.jsonl" \
  > "$out/student-networks-$card.log" 2>&1
echo "student networks: rc $? in $(( SECONDS - start )) s" >> "$out/gpu-session-$card.txt"
tail -15 "$out/student-networks-$card.log"
cat "$out/gpu-session-$card.txt"
