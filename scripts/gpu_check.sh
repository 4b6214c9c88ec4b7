#!/usr/bin/env bash
# The GPU check behind the README's performance table. On a CUDA machine, from the repo root:
#   bash scripts/gpu_check.sh OUT_DIR [bench] [regress] [compile] [grid] [wait]
# bench:   env.json, bench_loader.json, bench_step.jsonl: per arch, the trial's step beside a bare PyTorch loop
#          in the same process (step_vs_bare), the trial's epoch from the cache, evaluation.
# regress: bench_step_OLD.jsonl and regress.json: the same `bench step` run by the code of commit OLD_COMMIT
#          (default 9da2b69, whose docs/perf figures are 2.4x above HEAD's on another day), unpacked into its own
#          folder, on this machine, beside HEAD's bare loop: a slower step at HEAD than at OLD is the code; both
#          below the recorded figures is the machine. The old code comes from `git archive` when git can read
#          this checkout, else from .device/harness-OLD.tar (make it where git works:
#          `git archive 9da2b69 > .device/harness-9da2b69.tar`); without either the part says so and is skipped.
# compile: bench_compile.json (ResNet152 with torch.compile: compile time and images/s, to set beside bench's).
# grid:    the paper grid on a synthetic NIH-layout set the size of NIH's 10% subset (SYNTH_N images, GRID_EPOCHS
#          epochs), start to report, with its own cache folder (so its data phase builds the caches, as a first run
#          does): grid.log, packing.json, gpu.csv (every GPU's utilisation and memory once a second, from
#          nvidia-smi; empty without it) and grid_summary.json (the time of each phase: data, ray_start, packing,
#          trials, report; GPU utilisation over the grid and per phase). The grid runs in the background; when it
#          outlives this call, run `bash scripts/gpu_check.sh OUT_DIR wait` next, on the same warm machine.
# The call ends by DEADLINE seconds after its start (default 540: one device command, with time to spare), the
# grid's wait cut short to keep it; a grid still running then is summarised as it stands (finished: false).
# One device command for everything (the performance figures the README still lacks: start to first trial, the whole grid, GPU utilisation), in about 9 minutes:
#   GRID_EPOCHS=2 bash scripts/gpu_check.sh /tmp/gc bench regress grid; tar -czf $OUT/gpu_check.tgz -C /tmp gc
# Pretrained trials use PLACEHOLDER weights (random init saved under torchvision's file names): they time the
# loading path only. With no part named, bench and grid run. To try it on a CPU with tiny sizes:
#   SYNTH_N=300 SYNTH_SIZE=96 ARCHS=alexnet IMAGE_SIZE=64 BATCH=8 STEPS=2 WINDOWS=2 BENCH_IMAGES=64 \
#   GRID_ARGS="--profile smoke --device cpu" GRID_EPOCHS=1 bash scripts/gpu_check.sh /tmp/gc bench regress grid
set -euo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT_DIR [bench] [regress] [compile] [grid] [wait]}
shift
parts=${*:-bench grid}
mkdir -p "$out"
out=$(cd "$out" && pwd)
py=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
export HARNESS_CACHE_DIR=${HARNESS_CACHE_DIR:-/tmp/harness-cache}
export TORCH_HOME=${TORCH_HOME:-/tmp/harness-torch-home}
data=${SYNTH_ROOT:-/tmp/harness-synth-${SYNTH_N:-11000}-${SYNTH_SIZE:-256}}
n=${SYNTH_N:-11000}
epochs=${GRID_EPOCHS:-20}
archs=${ARCHS:-alexnet resnet152 inception_v3}
old=${OLD_COMMIT:-9da2b69}
work=/tmp/harness-gpu-grid
grid_cache=${GRID_CACHE_DIR:-/tmp/harness-grid-cache}
t0=$(date +%s)
deadline=$(( t0 + ${DEADLINE:-540} ))
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
# The options every `bench step` here takes, at HEAD and at the old commit alike (its CLI has them all).
step_opts=(--batch "${BATCH:-64}" --steps "${STEPS:-30}" --data-root "$data" --json)
[ -n "${IMAGE_SIZE:-}" ] && step_opts+=(--image-size "$IMAGE_SIZE")

$py - > "$out/env.json" <<'PY'
import json, torch, torchvision, platform, os
print(json.dumps({"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                  "torch": torch.__version__, "torchvision": torchvision.__version__,
                  "python": platform.python_version(), "cpus": os.cpu_count()}))
PY
cat "$out/env.json"

data_and_weights() {
  if [ ! -f "$data/SYNTHETIC.json" ]; then
    stamp "synthetic data: $n images at ${SYNTH_SIZE:-256} px"
    $py -m harness data synth --out "$data" --n "$n" --size "${SYNTH_SIZE:-256}" --seed 0
  fi
  $py -m harness weights placeholder alexnet resnet152 inception_v3
}

old_tree() {  # the harness at $old, unpacked into $1; false when neither git nor the archive has it
  rm -rf "$1" && mkdir -p "$1"
  if git rev-parse -q --verify "$old^{commit}" > /dev/null 2>&1; then
    git archive "$old" harness | tar -x -C "$1"
  elif [ -f ".device/harness-$old.tar" ]; then
    tar -xf ".device/harness-$old.tar" -C "$1"
  else
    return 1
  fi
  [ -d "$1/harness" ]
}

others_path() {  # PYTHONPATH without this checkout (the site packages the device recipe adds stay)
  tr ':' '\n' <<< "${PYTHONPATH:-}" | grep -vxF -e "$PWD" -e . -e '' | paste -sd: -  || true
}

collect() {  # the grid's figures into OUT, as they stand
  cp "$work/grid.log" "$out/grid.log" 2>/dev/null || true
  cp "$work/gpu.csv" "$out/gpu.csv" 2>/dev/null || true
  cp "$grid_cache/packing.json" "$out/packing.json" 2>/dev/null || true
  $py "$here/gpu_summary.py" grid "$work" "$out/grid_summary.json" epochs="$epochs" synthetic_n="$n" \
    gpu_name="$($py -c 'import json,sys; print(json.load(open(sys.argv[1]))["gpu"] or "none")' "$out/env.json")"
  [ -f "$work/end" ] || echo "grid still running after $(( $(date +%s) - ${grid_start%.*} )) s; next call: $0 OUT wait"
}

wait_grid() {  # up to $1 seconds, and never past the deadline
  local until=$(( $(date +%s) + $1 ))
  [ "$until" -gt "$deadline" ] && until=$deadline
  while [ ! -f "$work/end" ] && [ "$(date +%s)" -lt "$until" ]; do sleep 5; done
}

for part in $parts; do
  case $part in
    bench)
      data_and_weights
      stamp "bench loader"
      $py -m harness bench loader --data-root "$data" --images "${BENCH_IMAGES:-8192}" --json | tee "$out/bench_loader.json"
      : > "$out/bench_step.jsonl"
      for arch in $archs; do
        stamp "bench step $arch: trial step and bare loop, windows in turn"
        $py -m harness bench step --arch "$arch" --windows "${WINDOWS:-5}" "${step_opts[@]}" \
          | tee -a "$out/bench_step.jsonl" || stamp "bench step $arch failed"
      done ;;
    regress)
      data_and_weights
      tree=/tmp/harness-$old
      if ! old_tree "$tree"; then
        stamp "regress: no code for $old (no git history here, no .device/harness-$old.tar); skipped"
        continue
      fi
      : > "$out/bench_step_$old.jsonl"
      for arch in $archs; do
        stamp "bench step $arch at $old"
        # Its own cache folder: the old cache format is not this one's to share. This checkout leaves the path.
        (cd "$tree" && HARNESS_CACHE_DIR=/tmp/harness-cache-$old PYTHONPATH="$tree:$(others_path)" \
          $py -m harness bench step --arch "$arch" "${step_opts[@]}") \
          | tee -a "$out/bench_step_$old.jsonl" || stamp "bench step $arch at $old failed"
      done
      $py "$here/gpu_summary.py" regress "$out/bench_step.jsonl" "$out/bench_step_$old.jsonl" "$old" "$out/regress.json" ;;
    compile)
      data_and_weights
      stamp "bench step resnet152, torch.compile"
      $py -m harness bench step --arch resnet152 --batch 64 --steps 30 --data-root "$data" --compile --json \
        | tee "$out/bench_compile.json" ;;
    grid)
      data_and_weights
      stamp "paper grid, $epochs epochs, subset 1.0 of the synthetic set (the size of NIH's 10% subset)"
      rm -rf "$work" "$grid_cache" /tmp/harness-results /tmp/harness-report && mkdir -p "$work"
      date +%s.%N > "$work/start"
      grid_start=$(cat "$work/start")
      # start to report, in the background so it can outlive this call; the sampler stops with it
      HARNESS_CACHE_DIR=$grid_cache setsid nohup bash -c "
          $py '$here/gpu_sample.py' '$work/gpu.csv' 2>> '$work/grid.log' & sampler=\$!
          $py '$here/grid_phases.py' '$work/phases.json' run -- run grids/paper.yaml --data-root '$data' \
            --results /tmp/harness-results --set subset_fraction=1.0 --set subset_test=false \
            --set epochs=$epochs ${GRID_ARGS:-} >> '$work/grid.log' 2>&1
          echo \$? > '$work/rc'
          $py '$here/grid_phases.py' '$work/phases.json' report -- report /tmp/harness-results/paper \
            --out /tmp/harness-report >> '$work/grid.log' 2>&1
          date +%s.%N > '$work/end'
          kill \$sampler 2> /dev/null; wait" > /dev/null 2>&1 &
      wait_grid "${GRID_WAIT:-540}"
      collect ;;
    wait)
      grid_start=$(cat "$work/start")
      deadline=$(( $(date +%s) + ${DEADLINE:-560} ))
      wait_grid "${GRID_WAIT:-560}"
      collect ;;
    *) echo "unknown part $part: expected bench, regress, compile, grid or wait" >&2; exit 2 ;;
  esac
done
stamp "done"
