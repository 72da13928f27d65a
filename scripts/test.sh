#!/usr/bin/env bash
# The test command (README; .ci/run calls it): installs what the tests need (idempotent, quick when present),
# then formatting, lints, every test of the workspace, the Python wheel's tests (pytest), and a compile check of the
# `cuda` feature.
set -euo pipefail
cd "$(dirname "$0")/.."
# A clean CI build has nothing to reuse incrementally; the incremental cache only costs disk there.
if [[ -n "${CI:-}" ]]; then export CARGO_INCREMENTAL=0; fi
scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings
cargo test --workspace
scripts/test-python.sh
scripts/check-cuda.sh
