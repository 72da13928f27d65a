#!/usr/bin/env bash
# The Python wheel `clemrs` (crates/clem-py), as scripts/test.sh runs it after `cargo test --workspace`:
#  1. pytest and maturin into the clemcore venv ($CARGO_TARGET_DIR/clemcore-venv, default target/, made by
#     install-test-deps.sh with clemcore 3.7.2), so the wheel is tested beside clemcore as users run it;
#  2. the wheel built by maturin with the dev profile and clem-cli's backend features, reusing every crate
#     `cargo test --workspace` compiled (crates/workspace-hack gives the single-package build the same features;
#     scripts/check-shared-features.py fails when they drift); installed into that venv;
#  3. pytest on crates/clem-py/tests (the `clem` binary they compare with: target/debug/clem, or $CLEM_BIN).
# Exits non-zero when a test fails; tests missing a part print `SKIP:` (and fail under CI).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
[[ $target == /* ]] || target=$PWD/$target
py=$target/clemcore-venv/bin/python
if [[ ! -x $py ]]; then
  echo "error: $py is missing: run scripts/install-test-deps.sh" >&2
  exit 1
fi
"$py" -c 'import pytest, maturin' 2>/dev/null ||
  "$py" -m pip install -q --disable-pip-version-check 'pytest>=7,<10' 'maturin>=1.9.4,<2'

# `cargo test --workspace` built target/debug/clem (clem-cli's tests run it); built here only when run alone.
[[ -x $target/debug/clem ]] || cargo build -q -p clem-cli
# The wheel's build must reuse the test build's crates (same features), or CI compiles them all twice.
python3 scripts/check-shared-features.py
rm -f "$target"/wheels/clemrs-*.whl
start=$(date +%s)
"$py" -m maturin build --profile dev -m crates/clem-py/Cargo.toml -i "$py" -o "$target/wheels"
echo "clemrs wheel built in $(($(date +%s) - start)) s" >&2
"$py" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$target"/wheels/clemrs-*.whl

# From the tests' folder, so `import clemrs` is the installed wheel, not the source tree.
cd crates/clem-py/tests
CLEM_BIN=${CLEM_BIN:-$target/debug/clem} "$py" -m pytest -p no:cacheprovider -q -rs "$@"
