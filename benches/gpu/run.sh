#!/usr/bin/env bash
# The GPU run (issue 16), on the lent GPU machine, from the repository root, after
# `cargo xtask gpu-pack` here (the pack travels as target/gpu-pack):
#
#   bash benches/gpu/run.sh            # results under $OUT (default target/gpu-out)
#   SKIP_CUDA=1 bash benches/gpu/run.sh  # here (after `cargo xtask setup --cuda` and
#                                        # `cargo xtask gpu-pack`): every CUDA step skipped
#
# Each step has its own time limit and writes its log under $OUT; steps.txt lists each with
# its exit status and seconds. The steps come in the order of what matters most, so a run cut
# short by the call's limit (timeout_s 600) still brings back the first ones. Two binaries:
# `simplecnn` (candle's own CUDA convolutions) and `simplecnn-cudnn` (cuDNN's).
# Nothing here needs the network or a Rust toolchain.
set -u
cd "$(dirname "$0")/../.."
PACK=${PACK:-target/gpu-pack}
OUT=${OUT:-target/gpu-out}
mkdir -p "$OUT"
if [ -n "${SKIP_CUDA:-}" ]; then
    # Here: the test venv's Python (Pillow) for the data, the CUDA venv's for its libraries,
    # and the driver's stub (target/cuda-home) so that the binaries start at all.
    PY=${PY:-target/py-venv/bin/python}
    CUDA_PY=${CUDA_PY:-target/cuda-venv/bin/python}
    STUB_LD=target/cuda-home/lib64:
fi
PY=${PY:-python3}
CUDA_PY=${CUDA_PY:-$PY}

# The binary and the libraries it links (HDF5 …), unpacked once.
UNPACKED=target/gpu-bin
if [ ! -x "$UNPACKED/simplecnn" ]; then
    mkdir -p "$UNPACKED"
    tar xJf "$PACK/simplecnn-cuda.tar.xz" -C "$UNPACKED" 2>/dev/null ||
        "$PY" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$PACK/simplecnn-cuda.tar.xz" "$UNPACKED"
fi
# CUDA's libraries from the image's PyTorch wheels (nvidia/cu13/lib), the driver's, and ours:
# for our binary only (PyTorch keeps its own).
# cuDNN from the same wheels (nvidia/cudnn/lib).
# NCCL from its wheel too (nvidia/nccl/lib), for the NCCL collective's check.
NV=$("$CUDA_PY" -c "import os, nvidia; d = list(nvidia.__path__)[0]; print(':'.join(os.path.join(d, p, 'lib') for p in ['cu13', 'cudnn', 'nccl']))" 2>/dev/null || true)
OURS_LD="$UNPACKED/lib:${STUB_LD:-}${NV}:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
# The copy of the tree has no repository: results name the commit the pack was made from.
COMMIT=$(cat "$PACK/commit.txt" 2>/dev/null || echo unknown)
RUN=(env "LD_LIBRARY_PATH=$OURS_LD" "SIMPLECNN_GIT_COMMIT=$COMMIT" RUST_BACKTRACE=1)
BIN=("${RUN[@]}" "$UNPACKED/simplecnn")
CUDNN=("${RUN[@]}" "$UNPACKED/simplecnn-cudnn")

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

{
    echo "pack from commit $COMMIT"
    nvidia-smi || true
    echo
    env "LD_LIBRARY_PATH=$OURS_LD" ldd "$UNPACKED/simplecnn" "$UNPACKED/simplecnn-cudnn"
    echo
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'cudnn', torch.backends.cudnn.version())" || true
    nproc
} >"$OUT/machine.txt" 2>&1

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
# The NCCL collective (issue 23): ordered sums and gathers over NCCL on one GPU.
cuda_step nccl_check 60 "${RUN[@]}" "$UNPACKED/simplecnn-nccl-check"
cuda_step compare 150 "${BIN[@]}" compare cpu cuda --epochs 2 --data "$DATA/bin" --out "$OUT/compare"
cuda_step bench_simplecnn 90 "${BIN[@]}" bench --device cuda --data "$DATA/bin" --steps 50 --rounds 2 --inference-images 10000 --out "$OUT/bench"
cuda_step torch_simplecnn 60 "$PY" benches/reference/torch_bench.py --device cuda --data "$BATCHES" --steps 50 --inference-images 10000
cuda_step bench_airbench94 90 "${BIN[@]}" bench --device cuda --experiment airbench94 --data "$DATA/bin" --steps 20 --warmup 3 --rounds 1 --inference-images 10000 --out "$OUT/bench"
cuda_step torch_airbench94 60 "$PY" benches/reference/torch_airbench94.py --device cuda --data "$BATCHES" --batch-size 1024 --steps 20 --inference-images 10000
# cuDNN's convolutions: the same checks and benches with the other binary.
cuda_step selftest_cudnn 45 "${CUDNN[@]}" selftest --device cuda
cuda_step bench_simplecnn_cudnn 90 "${CUDNN[@]}" bench --device cuda --data "$DATA/bin" --steps 50 --rounds 2 --inference-images 10000 --out "$OUT/bench-cudnn"
cuda_step bench_airbench94_cudnn 90 "${CUDNN[@]}" bench --device cuda --experiment airbench94 --data "$DATA/bin" --steps 20 --warmup 3 --rounds 1 --inference-images 10000 --out "$OUT/bench-cudnn"
if [ -n "${SKIP_CUDA:-}" ]; then
    # Here the pack's binaries still run: their CPU self-tests.
    step selftest_cpu 60 "${BIN[@]}" selftest --device cpu
    step selftest_cpu_cudnn 60 "${CUDNN[@]}" selftest --device cpu
fi
echo "results in $OUT"
