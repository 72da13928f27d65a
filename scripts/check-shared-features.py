#!/usr/bin/env python3
"""Checks that maturin's build of clem-py alone (the wheel) resolves every dependency with the features that
`cargo test --workspace` gives it, so the wheel reuses the test build's compiled crates instead of compiling them
again (9.5 minutes of CI when they drifted apart). Run by scripts/test-python.sh before the wheel build.

A package can be built twice in one build with different features (once for build scripts and proc-macros, once
for the code), so each build of clem-py's dependencies must equal one of the workspace's builds of that package.
Exits 1 naming each package that differs and the features crates/workspace-hack/Cargo.toml should turn on."""

import subprocess
import sys
from collections import defaultdict


def feature_sets(*args):
    out = subprocess.run(["cargo", "tree", "--prefix", "none", "-f", "{p}|{f}", *args],
                         check=True, capture_output=True, text=True).stdout
    sets = defaultdict(set)
    for line in out.splitlines():
        if "|" not in line:
            continue
        package, features = line.split("|", 1)
        package = package.replace("(*)", "").strip()
        features = features.replace("(*)", "").strip()
        sets[package].add(frozenset(f for f in features.split(",") if f))
    return sets


workspace = feature_sets("--workspace", "-e", "normal,build,dev")
wheel = feature_sets("-p", "clem-py", "-e", "normal,build")
drift = []
for package, builds in sorted(wheel.items()):
    if package.startswith("clem-py ") or package.startswith("clem-workspace-hack "):
        continue
    for features in builds:
        if features not in workspace.get(package, set()):
            wanted = sorted(set().union(*workspace.get(package, [frozenset()])) - features)
            drift.append(f"  {package}: the wheel's build has {sorted(features) or 'no features'}; "
                         f"the workspace's builds have {[sorted(s) for s in workspace.get(package, [])]}"
                         f" (missing in the wheel's: {wanted})")
if drift:
    print("error: the wheel's build of clem-py resolves features the test build does not, so maturin would "
          "compile these again:", file=sys.stderr)
    print("\n".join(drift), file=sys.stderr)
    print("Turn the missing features on in crates/workspace-hack/Cargo.toml (or off where they come from).",
          file=sys.stderr)
    sys.exit(1)
print(f"check-shared-features: the wheel's {sum(len(b) for b in wheel.values())} dependency builds are all "
      "the test build's")
