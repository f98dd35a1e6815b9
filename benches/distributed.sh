#!/bin/bash
# A data-parallel step against one process, alternating, in one run: EXPERIMENT's training
# steps on one process with THREADS threads, then under `mpirun -np N` with one thread each
# (the same global batch, each process its share). Prints CPU-seconds per step (all processes),
# the median wall time of a step, rank 0's time in the collective and the bytes it sent and
# received per step, and the mean loss (equal: the same arithmetic). Needs a build with the
# `mpi` feature (cargo build --release -p simplecnn-cli --features mpi).
#
#   benches/distributed.sh BINARY EXPERIMENT STEPS WARMUP ROUNDS N THREADS
#   e.g. benches/distributed.sh target/release/simplecnn airbench94 5 1 2 2 2
set -euo pipefail
bin=$1 exp=$2 steps=$3 warm=$4 rounds=$5 np=$6 threads=$7
data=${CIFAR10_DIR:-data/bin}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
worker=(bench --worker fast --experiment "$exp" --data "$data" --steps "$steps" --warmup "$warm"
  --inference-images 100 --rounds 1 --device cpu)

report() {
  python3 - "$1" "$2" <<'PY'
import json, statistics, sys
d = json.loads(sys.argv[1])
r, p = d["raw"], d.get("processes")
steps = len(r["step_ms"])
cpu = sum(p["train_cpu_seconds_per_rank"]) if p else r["train_cpu_seconds"]
line = (f"{sys.argv[2]:<24} cpu_ms_per_step {1000 * cpu / steps:9.1f}  "
        f"median_step_ms {statistics.median(r['step_ms']):9.1f}  loss {r['mean_train_loss']:.9f}")
if p:
    line += (f"  collective_ms_per_step {1000 * p['collective_seconds_per_step']:8.1f}"
             f"  MB_sent {p['bytes_sent_per_step'] / 1e6:7.2f}"
             f"  MB_received {p['bytes_received_per_step'] / 1e6:7.2f}")
print(line)
PY
}

for _ in $(seq "$rounds"); do
  out=$(RAYON_NUM_THREADS=$threads "$bin" "${worker[@]}" 2>/dev/null | tail -1)
  report "$out" "1 process x $threads threads"
  out=$(mpirun -np "$np" --oversubscribe --bind-to none -x RAYON_NUM_THREADS=1 \
    "$bin" "${worker[@]}" 2>/dev/null | tail -1)
  report "$out" "$np processes x 1 thread"
done
