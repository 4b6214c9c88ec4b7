#!/usr/bin/env bash
# The GPU check behind the README's performance table. On a CUDA machine, from the repo root:
#   bash scripts/gpu_check.sh OUT_DIR [bench] [compile] [grid]
# bench: env.json, bench_loader.json, bench_step.jsonl (loader vs naive, model step vs trial, evaluation, per arch).
# compile: bench_compile.json (ResNet152 with torch.compile: compile time and images/s, to set beside bench's).
# grid:  the paper grid on a synthetic NIH-layout set the size of NIH's 10% subset (SYNTH_N images, GRID_EPOCHS
#        epochs), timed from start to report: grid.log, grid_summary.json, packing.json (measured trials per GPU).
#        The grid runs in the background; when it outlives one call (GRID_WAIT seconds, under a device command's
#        limit), run `bash scripts/gpu_check.sh OUT_DIR wait` in the next call, on the same warm machine.
# Pretrained trials use PLACEHOLDER weights (random init saved under torchvision's file names): they time the
# loading path only. With no part named, both run. GRID_ARGS adds options to the grid's run (e.g. --profile smoke
# to try the script on a CPU).
set -euo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT_DIR [bench] [compile] [grid] [wait]}
shift
parts=${*:-bench grid}
mkdir -p "$out"
py=${PYTHON:-python3}
export HARNESS_CACHE_DIR=${HARNESS_CACHE_DIR:-/tmp/harness-cache}
export TORCH_HOME=${TORCH_HOME:-/tmp/harness-torch-home}
data=${SYNTH_ROOT:-/tmp/harness-synth-11k}
n=${SYNTH_N:-11000}
epochs=${GRID_EPOCHS:-20}
work=/tmp/harness-gpu-grid
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

$py - > "$out/env.json" <<'PY'
import json, torch, torchvision, platform, os
print(json.dumps({"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                  "torch": torch.__version__, "torchvision": torchvision.__version__,
                  "python": platform.python_version(), "cpus": os.cpu_count()}))
PY
cat "$out/env.json"

data_and_weights() {
  stamp "synthetic data: $n images at 256 px"
  [ -f "$data/SYNTHETIC.json" ] || $py -m harness data synth --out "$data" --n "$n" --size 256 --seed 0
  $py -m harness weights placeholder alexnet resnet152 inception_v3
}

collect() {  # the grid's figures into OUT, once it has ended
  cp "$work/grid.log" "$out/grid.log" 2>/dev/null || true
  cp "$HARNESS_CACHE_DIR/packing.json" "$out/packing.json" 2>/dev/null || true
  if [ -f "$work/end" ]; then
    echo "{\"grid_seconds\": $(( $(cat "$work/end") - $(cat "$work/start") )), \"rc\": $(cat "$work/rc"),"\
         "\"epochs\": $epochs, \"synthetic_n\": $n}" | tee "$out/grid_summary.json"
  else
    echo "grid still running after $(( $(date +%s) - $(cat "$work/start") )) s; next call: $0 OUT wait"
  fi
}

wait_grid() {  # up to $1 seconds
  local until=$(( $(date +%s) + $1 ))
  while [ ! -f "$work/end" ] && [ "$(date +%s)" -lt "$until" ]; do sleep 5; done
}

for part in $parts; do
  case $part in
    bench)
      data_and_weights
      stamp "bench loader"
      $py -m harness bench loader --data-root "$data" --images 8192 --json | tee "$out/bench_loader.json"
      : > "$out/bench_step.jsonl"
      for arch in alexnet resnet152 inception_v3; do
        stamp "bench step $arch"
        $py -m harness bench step --arch "$arch" --batch 64 --steps 30 --data-root "$data" --json \
          | tee -a "$out/bench_step.jsonl"
      done ;;
    compile)
      data_and_weights
      stamp "bench step resnet152, torch.compile"
      $py -m harness bench step --arch resnet152 --batch 64 --steps 30 --data-root "$data" --compile --json \
        | tee "$out/bench_compile.json" ;;
    grid)
      data_and_weights
      stamp "paper grid, $epochs epochs, subset 1.0 of the synthetic set (the size of NIH's 10% subset)"
      rm -rf "$work" /tmp/harness-results /tmp/harness-report && mkdir -p "$work"
      date +%s > "$work/start"
      # start to report, in the background so it can outlive this call
      setsid nohup bash -c "$py -m harness run grids/paper.yaml --data-root '$data' --results /tmp/harness-results \
          --set subset_fraction=1.0 --set subset_test=false --set epochs=$epochs ${GRID_ARGS:-} > '$work/grid.log' 2>&1; \
          echo \$? > '$work/rc'; $py -m harness report /tmp/harness-results/paper --out /tmp/harness-report \
          >> '$work/grid.log' 2>&1; date +%s > '$work/end'" > /dev/null 2>&1 &
      wait_grid "${GRID_WAIT:-540}"
      collect ;;
    wait)
      wait_grid "${GRID_WAIT:-560}"
      collect ;;
    *) echo "unknown part $part: expected bench, compile, grid or wait" >&2; exit 2 ;;
  esac
done
stamp "done"
