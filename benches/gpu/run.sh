#!/usr/bin/env bash
# The GPU run (issue 16), on the lent GPU machine, from the repository root, after
# `cargo xtask gpu-pack` here (the pack travels as target/gpu-pack):
#
#   bash benches/gpu/run.sh            # results under $OUT (default target/gpu-out)
#   SKIP_CUDA=1 bash benches/gpu/run.sh  # here, without a GPU: every CUDA step skipped
#
# Each step has its own time limit and writes its log under $OUT; steps.txt lists each with
# its exit status and seconds; the limits add up to 9 minutes (one `run` call, timeout_s 600).
# Nothing here needs the network or a Rust toolchain.
set -u
cd "$(dirname "$0")/../.."
PACK=${PACK:-target/gpu-pack}
OUT=${OUT:-target/gpu-out}
mkdir -p "$OUT"
PY=${PY:-python3}

# The binary and the libraries it links (HDF5 …), unpacked once.
UNPACKED=target/gpu-bin
if [ ! -x "$UNPACKED/simplecnn" ]; then
    mkdir -p "$UNPACKED"
    tar xJf "$PACK/simplecnn-cuda.tar.xz" -C "$UNPACKED" 2>/dev/null ||
        "$PY" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$PACK/simplecnn-cuda.tar.xz" "$UNPACKED"
fi
# CUDA's libraries from the image's PyTorch wheels (nvidia/cu13/lib), the driver's, and ours:
# for our binary only (PyTorch keeps its own).
NV=$("$PY" -c "import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'lib'))" 2>/dev/null || true)
OURS_LD="$UNPACKED/lib:${NV}:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
BIN=(env "LD_LIBRARY_PATH=$OURS_LD" RUST_BACKTRACE=1 "$UNPACKED/simplecnn")

step() { # NAME LIMIT_S COMMAND…
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo "== $name ($*)"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name exit=$rc seconds=$((SECONDS - start))" | tee -a "$OUT/steps.txt"
    tail -n 3 "$OUT/$name.log"
}
cuda_step() {
    if [ -n "${SKIP_CUDA:-}" ]; then
        echo "$1 skipped (SKIP_CUDA)" | tee -a "$OUT/steps.txt"
    else
        step "$@"
    fi
}

{ nvidia-smi || true; echo; env "LD_LIBRARY_PATH=$OURS_LD" ldd "$UNPACKED/simplecnn"; echo; "$PY" -c "import torch; print(torch.__version__, torch.cuda.is_available())" || true; } >"$OUT/machine.txt" 2>&1
nproc >>"$OUT/machine.txt"

# The data: the shared JPEG copy for ours, its binary layout for the PyTorch references.
DATA=target/gpu-data
if [ ! -d "$DATA/bin" ]; then
    mkdir -p "$DATA"
    tar xzf "$PACK/cifar10-jpg.tar.gz" -C "$DATA"
    JPG=$(dirname "$(find "$DATA" -maxdepth 3 -type d -name train | head -n 1)")
    step make_cifar_bin 300 "$PY" "$PACK/make_cifar_bin.py" "$JPG" "$DATA/bin"
fi
BATCHES=$(find "$DATA/bin" -maxdepth 2 -type d -name cifar-10-batches-bin | head -n 1)

cuda_step selftest 60 "${BIN[@]}" selftest --device cuda
cuda_step compare 180 "${BIN[@]}" compare cpu cuda --epochs 2 --data "$DATA/bin" --out "$OUT/compare"
cuda_step bench_simplecnn 90 "${BIN[@]}" bench --device cuda --data "$DATA/bin" --steps 50 --rounds 2 --inference-images 10000 --out "$OUT/bench"
cuda_step torch_simplecnn 60 "$PY" benches/reference/torch_bench.py --device cuda --data "$BATCHES" --steps 50 --inference-images 10000
cuda_step bench_airbench94 90 "${BIN[@]}" bench --device cuda --experiment airbench94 --data "$DATA/bin" --steps 20 --warmup 3 --rounds 1 --inference-images 10000 --out "$OUT/bench"
cuda_step torch_airbench94 60 "$PY" benches/reference/torch_airbench94.py --device cuda --data "$BATCHES" --batch-size 1024 --steps 20 --inference-images 10000
# Here (SKIP_CUDA) the pack's binary still runs: its CPU self-test and a short CPU bench.
step selftest_cpu 60 "${BIN[@]}" selftest --device cpu
echo "results in $OUT"
