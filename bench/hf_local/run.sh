#!/usr/bin/env bash
# huggingface_local benchmark: SmolLM2-135M-Instruct (bf16 and f32 folders made by scripts/prepare-smollm2-hf.sh),
# 128 greedy tokens, 1 and 2 threads, batch 1 and 8. Prints one block per run.
# The transformers side of the comparison (a PyTorch venv) is not written yet.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BF16="$("$HERE/scripts/prepare-smollm2-hf.sh" bf16 | tail -1)"
F32="$("$HERE/scripts/prepare-smollm2-hf.sh" f32 | tail -1)"
cd "$HERE"
cargo build --release -p clem-backends --no-default-features --features huggingface_local --bench hf_local >&2
BIN="$(ls -t target/release/deps/hf_local-* | grep -v '\.d$' | head -1)"
for threads in 1 2; do
  for dir in "$BF16" "$F32"; do
    RAYON_NUM_THREADS=$threads "$BIN" --bench "$dir"
  done
done
