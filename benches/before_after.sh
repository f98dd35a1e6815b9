#!/bin/bash
# A training step of two builds of simplecnn, alternating, in one run: the old binary, the new
# one, and the new one with extra `--set`s (e.g. fit.precision=mixed_bfloat16). Prints the
# CPU-seconds per step (user+sys of the worker over its timed steps), the median wall time of
# a step and the mean training loss (equal losses: the same arithmetic).
#
#   benches/before_after.sh OLD_BINARY NEW_BINARY EXPERIMENT STEPS WARMUP ROUNDS [KEY=VALUE …]
#   e.g. benches/before_after.sh /tmp/ref/target/release/simplecnn target/release/simplecnn \
#          airbench94 5 1 2 fit.precision=mixed_bfloat16
set -euo pipefail
old=$1 new=$2 exp=$3 steps=$4 warm=$5 rounds=$6
shift 6
sets=()
for s in "$@"; do sets+=(--set "$s"); done
data=${CIFAR10_DIR:-data/bin}

run() {
  local label=$1 bin=$2
  shift 2
  local out
  out=$("$bin" bench --worker fast --experiment "$exp" --data "$data" --steps "$steps" \
    --warmup "$warm" --inference-images 1000 --rounds 1 --device cpu "$@" 2>/dev/null | tail -1)
  python3 - "$out" "$label" <<'PY'
import json, statistics, sys
r = json.loads(sys.argv[1])["raw"]
steps = r["step_ms"]
print(f"{sys.argv[2]:<22} cpu_ms_per_step {1000 * r['train_cpu_seconds'] / len(steps):8.1f}  "
      f"median_step_ms {statistics.median(steps):8.1f}  loss {r['mean_train_loss']:.6f}")
PY
}

for _ in $(seq "$rounds"); do
  run "old" "$old"
  run "new" "$new"
  if [ ${#sets[@]} -gt 0 ]; then run "new $*" "$new" "${sets[@]}"; fi
done
