"""Registry benchmark: clemrs next to clemcore, in one run, with ratios.

1. Cold start of `clem list models` (clemrs target: under 20 ms; clemcore takes seconds).
2. Loading and checking a 10,000-entry registry (clemrs target: under 50 ms for the whole command).

Usage: python3 bench/registry/run.py [--runs N] [--no-clemcore]
clemcore is installed into a venv under target/bench-venv (pip install clemcore) unless --no-clemcore.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLEM = ROOT / "target" / "release" / "clem"
VENV = ROOT / "target" / "bench-venv"


def timeit(cmd, runs, cwd, env=None):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        r = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
        if r.returncode not in (0, 1):
            raise SystemExit(f"{cmd} failed with {r.returncode}")
    return statistics.median(times), min(times)


def clemcore_cli():
    if not (VENV / "bin" / "clem").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "clemcore"], check=True)
    return str(VENV / "bin" / "clem")


def big_registry(path, n=10_000):
    base = json.loads((ROOT / "crates/clem-core/data/model_registry.json").read_text())
    entries = []
    for i in range(n):
        e = json.loads(json.dumps(base[i % len(base)]))
        e["model_name"] = f"{e['model_name']}-{i}"
        entries.append(e)
    path.write_text(json.dumps(entries))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--no-clemcore", action="store_true")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "clem-cli"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp())
    env = dict(os.environ, HOME=str(work))
    rows = []
    ours, ours_min = timeit([str(CLEM), "list", "models"], args.runs, work, env)
    rows.append(("clem list models (cold start)", ours, ours_min, 0.020))
    big = work / "big.json"
    big_registry(big)
    chk, chk_min = timeit([str(CLEM), "registry", "check", str(big)], args.runs, work, env)
    rows.append(("load + check 10,000 entries", chk, chk_min, 0.050))
    lst, lst_min = timeit([str(CLEM), "--registry", str(big), "list", "models"], args.runs, work, env)
    rows.append(("list models with 10,000 entries", lst, lst_min, None))
    print(f"{'clemrs':40} {'median':>10} {'min':>10} {'target':>10}")
    for name, med, mn, target in rows:
        verdict = "" if target is None else ("ok" if med < target else "MISSED")
        tgt = "" if target is None else f"{target * 1000:.0f} ms"
        print(f"{name:40} {med * 1000:8.1f}ms {mn * 1000:8.1f}ms {tgt:>10} {verdict}")
    if args.no_clemcore:
        return
    cc = clemcore_cli()
    runs = max(3, args.runs // 5)
    theirs, theirs_min = timeit([cc, "list", "models"], runs, work, env)
    (work / "model_registry.json").write_text(big.read_text())
    theirs_big, _ = timeit([cc, "list", "models"], runs, work, env)
    print(f"\n{'side by side':40} {'clemcore':>10} {'clemrs':>10} {'ratio':>8}")
    print(f"{'clem list models (cold start)':40} {theirs * 1000:8.0f}ms {ours * 1000:8.1f}ms {theirs / ours:7.0f}x")
    print(f"{'list models, 10,000-entry registry':40} {theirs_big * 1000:8.0f}ms {lst * 1000:8.1f}ms {theirs_big / lst:7.0f}x")


if __name__ == "__main__":
    main()
