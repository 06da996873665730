#!/usr/bin/env bash
# Here, before a GPU session's first device call: what a lent GPU machine (nvidia-h200: Python 3.12, torch,
# pytest, coverage, attrs, matplotlib, tqdm, opencv-headless and scikit-learn already there, no internet)
# needs for the README's test command, the notebook and the student networks, put in two git-ignored
# folders the device tool carries: .whl/ (the missing packages as wheels, at the versions the CPU lanes
# test; 15 MB) and .gpudata/ (the JPEG copy of CIFAR-10, 20 MB). Then run benchmarks/gpu_session.sh there.
# Rehearsed 2026-12-05 on a 2-core AMD EPYC (Zen 5) with Python 3.12.1, torch 2.11.0 and only those packages
# (the tree copied without .git, as the tool sends it): 622 passed, 4 skipped in 2.1 min; student networks 75 s.
set -euo pipefail
cd "$(dirname "$0")/.."
for d in /.whl/ /.gpudata/; do grep -qx "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
# pure Python, published as source only: built into wheels here
sources=(torchsummary==1.5.1 grad-cam==1.5.7 ttach==0.0.3)
wheels=(
  nbval==0.11.0 nbclient==0.11.0 nbformat==5.11.1 fastjsonschema==2.22.3 jsonschema==4.26.0
  jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
  jupyter_client==8.10.0 jupyter_core==5.9.1 ipykernel==7.4.0 ipython==9.18.1 ipython_pygments_lexers==1.1.1
  comm==0.2.3 debugpy==1.8.22 pyzmq==27.3.0 tornado==6.6.1 traitlets==5.16.1 matplotlib-inline==0.2.2
  nest-asyncio2==1.7.4 platformdirs==4.14.9 prompt_toolkit==3.0.53 wcwidth==0.9.4 jedi==0.20.1 parso==0.8.7
  pexpect==4.9.0 ptyprocess==0.7.0 stack-data==0.6.3 executing==2.3.0 asttokens==3.0.2 pure_eval==0.2.4
)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl "${wheels[@]}"
python3 -m pip wheel -q --no-deps -w .whl "${sources[@]}"
mkdir -p .gpudata
cp "${1:-../shared/data/cifar10-jpg.tar.gz}" .gpudata/cifar10-jpg.tar.gz
du -sh .whl .gpudata
