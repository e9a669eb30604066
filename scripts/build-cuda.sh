#!/usr/bin/env bash
# Builds socratune with candle's CUDA backend on a machine without a GPU or a CUDA install,
# for a target with CUDA 13 (driver >= 580) and compute capability $CUDA_COMPUTE_CAP
# (default 90: H100/H200). Run from the repository root:
#
#   scripts/build-cuda.sh [extra cargo build args...]     -> target-cuda/release/socratune
#                                                            and target-cuda/release/parity
#
# `parity` is tests/parity.rs built as a binary with the same features, for
# scripts/gpu-check.sh on the GPU machine, where there is no cargo.
#
# The CUDA 13.0 toolkit comes from PyPI's nvidia-* wheels, installed into $CUDA_VENV
# (default ~/.cache/cuda13). The driver library libcuda.so.1 belongs to the target machine, so
# the link uses a stand-in that only exports the driver API's names. Keep the toolkit at 13.0:
# a newer nvcc writes PTX that a 13.0 driver refuses to load.
#
# On the GPU machine the binary needs libcublas.so.13, libcudart.so.13, libnvrtc.so.13 and
# libcurand.so.10; with the same wheels installed there:
#   export LD_LIBRARY_PATH=$(python3 -c 'import nvidia,os;print(":".join(os.path.join(p,"cu13","lib") for p in nvidia.__path__))'):$LD_LIBRARY_PATH
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${CUDA_VENV:-$HOME/.cache/cuda13}
cap=${CUDA_COMPUTE_CAP:-90}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q \
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
  nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 \
  nvidia-cublas==13.0.2.14 nvidia-curand
cuda=$("$venv/bin/python" -c 'import nvidia,os;print(os.path.join(list(nvidia.__path__)[0],"cu13"))')
link="$venv/link"
mkdir -p "$link"
# The wheels ship only versioned sonames; the linker looks for the bare names.
for l in cublas cublasLt cudart nvrtc; do ln -sf "$cuda/lib/lib$l.so.13" "$link/lib$l.so"; done
ln -sf "$(ls "$cuda"/lib/libcurand.so.* | head -1)" "$link/libcurand.so"
if [ ! -f "$link/libcuda.so" ]; then
  # Link-time stand-in for the driver: one empty function per cu* name declared in cuda.h.
  grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$cuda/include/cuda.h" | sort -u |
    awk '{print "void " $1 "(void){}"}' >"$link/stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$link/stub.c"
fi
export PATH="$cuda/bin:$PATH" CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_TOOLKIT_ROOT_DIR="$cuda" \
  CUDA_COMPUTE_CAP="$cap" CUDARC_CUDA_VERSION=13000 LIBRARY_PATH="$link" \
  RUSTFLAGS="${RUSTFLAGS:-} -L $link" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target-cuda}"
cargo build --release --features cuda "$@"
exe=$(cargo test --release --features cuda --no-run --test parity --message-format=json "$@" |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -n "$exe" ] || { echo "build-cuda: cargo built no parity test binary" >&2; exit 1; }
cp "$exe" "$CARGO_TARGET_DIR/release/parity"
echo "build-cuda: $CARGO_TARGET_DIR/release/socratune and $CARGO_TARGET_DIR/release/parity" >&2
