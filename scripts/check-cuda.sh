#!/usr/bin/env bash
# Compile check of huggingface_local's `cuda` feature (there is no GPU here to run it on): clippy -D warnings over
# clem-backends with `--no-default-features --features cuda`, which also compiles candle's CUDA kernels to PTX.
# The toolkit is NVIDIA's pip wheels (nvcc, runtime headers, CCCL) in $CARGO_TARGET_DIR/cuda-venv, installed by
# scripts/install-test-deps.sh. PyPI has nvcc only for CUDA 13 while cudarc 0.16 (under candle 0.9.1) knows CUDA
# up to 12.9, so cudarc is told 12.9 (CUDARC_CUDA_VERSION): enough to type-check the code and its bindings; a user
# builds with their own CUDA 12 toolkit. Own target dir: the feature changes candle's build, which would otherwise
# evict the test build's artifacts.
set -euo pipefail
cd "$(dirname "$0")/.."
target=$(realpath -m "${CARGO_TARGET_DIR:-target}")
venv=$target/cuda-venv
toolkit=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))' 2>/dev/null || true)
if [[ -z "$toolkit" || ! -x "$toolkit/bin/nvcc" ]]; then
  if [[ -n "${CI:-}" ]]; then
    echo "check-cuda: no nvcc in $venv (scripts/install-test-deps.sh installs it)" >&2
    exit 1
  fi
  echo "check-cuda: SKIPPED: no nvcc in $venv; run scripts/install-test-deps.sh" >&2
  exit 0
fi
PATH="$toolkit/bin:$PATH" CUDA_ROOT="$toolkit" CUDARC_CUDA_VERSION=12090 CUDA_COMPUTE_CAP=80 \
  CARGO_TARGET_DIR="$target/cuda-check" \
  cargo clippy -p clem-backends --no-default-features --features cuda --all-targets -q -- -D warnings
echo "check-cuda: clem-backends --features cuda compiles, clippy clean"
