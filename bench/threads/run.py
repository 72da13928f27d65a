"""Oversubscription benchmark: local inference with more threads than cores, side by side with as many threads as
cores, in one run, with ratios (issue #17: 8 threads on 2 cores must cost at most a few percent).

For each local backend (`smollm2-135m`: llamacpp; `smollm2-135m-hf`: huggingface_local) it times
`clem generate -l TOKENS` with `--threads CORES`, with `--threads 4*CORES` (clamped to the cores, with a warning),
and, for huggingface_local, with `RAYON_NUM_THREADS=4*CORES` (a global pool larger than the cores: lowered to the
cores with a warning, as --threads is). Prints the CPU and the fastest of --runs runs per row, the rows' runs taken in turns.

Usage: python3 bench/threads/run.py [--runs N] [--tokens N] [--clem PATH]
Needs `cargo build --release -p clem-cli` and the SmolLM2 files (scripts/install-test-deps.sh).
"""
import argparse
import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def once(cmd, env):
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    took = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr[-2000:]}")
    return took


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--clem", default=str(ROOT / "target" / "release" / "clem"))
    a = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    over = 4 * cores
    print(f"CPU: {cpu_model()}; cores this process may use: {cores}")
    prompt = "Write a short story about a robot who learns to paint."
    base_env = {k: v for k, v in os.environ.items() if k != "RAYON_NUM_THREADS"}
    print(f"{'model':<18} {'setting':<28} {'seconds':>8} {'vs cores':>9}")
    for model in ["smollm2-135m", "smollm2-135m-hf"]:
        gen = [a.clem, "generate", "-m", model, "-l", str(a.tokens), prompt]
        rows = [(f"--threads {cores}", [a.clem, "--threads", str(cores)] + gen[1:], base_env)]
        rows.append((f"--threads {over}", [a.clem, "--threads", str(over)] + gen[1:], base_env))
        if model.endswith("-hf"):
            rows.append((f"RAYON_NUM_THREADS={over}", gen, {**base_env, "RAYON_NUM_THREADS": str(over)}))
        # Rounds of one run per setting, so that the machine's drift over the runs hits every setting alike.
        best = [None] * len(rows)
        for _ in range(a.runs):
            for i, (_, cmd, env) in enumerate(rows):
                took = once(cmd, env)
                best[i] = took if best[i] is None else min(best[i], took)
        for (name, _, _), took in zip(rows, best):
            print(f"{model:<18} {name:<28} {took:8.2f} {took / best[0]:8.2f}x")

if __name__ == "__main__":
    main()
