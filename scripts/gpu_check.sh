#!/usr/bin/env bash
# The GPU check behind the README's performance table. On a CUDA machine, from the repo root:
#   bash scripts/gpu_check.sh OUT_DIR
# Writes OUT_DIR/{env.json,bench_loader.json,bench_step.jsonl,grid.log,grid_summary.json}.
# It renders a synthetic NIH-layout set sized like the paper's 10% NIH subset (about 7.9k train,
# 0.9k validation, 2.2k test images), benchmarks the loader and the model step of the paper's
# three archs, and times the paper grid on it. Pretrained trials use PLACEHOLDER weights
# (random init saved under torchvision's file names): they time the loading path only.
set -euo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT_DIR}
mkdir -p "$out"
py=${PYTHON:-python3}
export HARNESS_CACHE_DIR=${HARNESS_CACHE_DIR:-/tmp/harness-cache}
export TORCH_HOME=${TORCH_HOME:-/tmp/harness-torch-home}
data=${SYNTH_ROOT:-/tmp/harness-synth-11k}
n=${SYNTH_N:-11000}
epochs=${GRID_EPOCHS:-20}
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

$py - > "$out/env.json" <<'PY'
import json, torch, torchvision, platform, os
print(json.dumps({"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                  "torch": torch.__version__, "torchvision": torchvision.__version__,
                  "python": platform.python_version(), "cpus": os.cpu_count()}))
PY
cat "$out/env.json"
stamp "synthetic data: $n images at 256 px"
[ -f "$data/SYNTHETIC.json" ] || $py -m harness data synth --out "$data" --n "$n" --size 256 --seed 0
stamp "placeholder weights for pretrained trials"
$py -m harness weights placeholder alexnet resnet152 inception_v3
stamp "bench loader"
$py -m harness bench loader --data-root "$data" --images 8192 --json | tee "$out/bench_loader.json"
: > "$out/bench_step.jsonl"
for arch in alexnet resnet152 inception_v3; do
  stamp "bench step $arch"
  $py -m harness bench step --arch "$arch" --batch 64 --steps 30 --data-root "$data" --json | tee -a "$out/bench_step.jsonl"
done
stamp "paper grid, $epochs epochs, subset 1.0 of the synthetic set (the size of NIH's 10% subset)"
g0=$(date +%s)
set +e
$py -m harness run grids/paper.yaml --data-root "$data" --results /tmp/harness-results \
    --set subset_fraction=1.0 --set subset_test=false --set epochs="$epochs" 2>&1 | tee "$out/grid.log"
rc=${PIPESTATUS[0]}
set -e
g1=$(date +%s)
$py -m harness report /tmp/harness-results/paper --out /tmp/harness-report > /dev/null 2>&1 || true
echo "{\"grid_seconds\": $(( g1 - g0 )), \"rc\": $rc, \"epochs\": $epochs, \"synthetic_n\": $n}" | tee "$out/grid_summary.json"
stamp "done"
