#!/usr/bin/env bash
# Builds the `peft` CLI with the CUDA backend on a machine without a GPU or a system CUDA
# toolkit (this project's build machines), from pinned CUDA 13.0 wheels of PyPI and generated
# link stubs. Facts and reasons: ../shared/notes/gpu.md (§1-§3, §6).
#
#   scripts/cuda-build.sh [OUT_DIR]     # default OUT_DIR: target/cuda
#
# Writes OUT_DIR/peft (stripped) and OUT_DIR/peft.xz (what travels to a GPU machine), and
# prints the CUDA libraries the binary needs at run time. Repeatable: the venv, the stubs and the
# cargo target (~/.cache/peft-studio/target-cuda) are reused when present.
#
# Pins (do not float them): nvcc/nvvm 13.0.x emit PTX that driver 580 JIT-compiles; nvcc >= 13.1
# may not, and cudarc 0.19 panics on CUDA 13.5. `CUDA_COMPUTE_CAP=90` is the H200/H100 (Hopper);
# set another (e.g. 89 for Ada, 86 for Ampere) in the environment to build for a different GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/cuda}
V=${CUDA_VENV:-$HOME/.cache/peft-studio/cu13-venv}
export CARGO_TARGET_DIR=${CUDA_TARGET_DIR:-$HOME/.cache/peft-studio/target-cuda}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CUDARC_CUDA_VERSION=13000

# 1. nvcc, nvvm, runtime headers, CRT and CCCL headers: five pinned wheels, ~280 MB unpacked.
if [ ! -x "$V/bin/python" ]; then
  python3 -m venv "$V"
fi
"$V/bin/pip" install -q \
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
CU=$("$V/bin/python" -c 'import nvidia,os;print(os.path.join(list(nvidia.__path__)[0],"cu13"))')
test -x "$CU/bin/nvcc" || { echo "cuda-build: no nvcc in $CU/bin" >&2; exit 1; }
ln -sf libcudart.so.13 "$CU/lib/libcudart.so"

# 2. Link stubs with the sonames the real libraries have, one empty function per symbol cudarc
#    declares (no wheel ships libcuda; the driver provides it on the GPU machine).
cargo fetch --locked >/dev/null
C=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.10/src 2>/dev/null | head -1)
test -n "$C" || { echo "cuda-build: cudarc 0.19.10 sources not found (cargo fetch)" >&2; exit 1; }
mkdir -p "$CU/lib/stubs"
stub() {
  local n=$1 so=$2; shift 2
  grep -hoE '^\s+fn (cu|nvrtc)[A-Za-z0-9_]*\(' "$@" | sed -E 's/^\s+fn ([A-Za-z0-9_]+)\(/\1/' \
    | sort -u | sed 's/.*/void &(void){}/' > "$CU/lib/stubs/$n.c"
  gcc -shared -fPIC -Wl,-soname,"$so" -o "$CU/lib/stubs/lib$n.so" "$CU/lib/stubs/$n.c"
}
stub cuda libcuda.so.1 "$C/driver/sys/mod.rs"
stub cublas libcublas.so.13 "$C/cublas/sys/mod.rs"
stub cublasLt libcublasLt.so.13 "$C/cublaslt/sys/mod.rs"
stub curand libcurand.so.10 "$C/curand/sys/mod.rs"
stub nvrtc libnvrtc.so.13 "$C/nvrtc/sys/mod.rs"

# 3. The build: candle's kernels compile to PTX (JIT-loaded on first use) plus its mmq static
#    library; ~10-20 CPU-minutes the first time.
export PATH="$CU/bin:$PATH" CUDA_HOME="$CU"
cargo build --release --locked -p peft-cli --features peft-engine/cuda

mkdir -p "$OUT"
cp "$CARGO_TARGET_DIR/release/peft" "$OUT/peft"
strip "$OUT/peft"
xz -T0 -9 -k -f "$OUT/peft"
echo "cuda-build: $OUT/peft ($(du -h "$OUT/peft" | cut -f1)), $OUT/peft.xz ($(du -h "$OUT/peft.xz" | cut -f1))"
echo "cuda-build: run-time libraries (LD_LIBRARY_PATH on the GPU machine must provide them):"
readelf -d "$OUT/peft" | grep NEEDED | sed 's/^/  /'
