"""huggingface_local benchmark, side by side with transformers (what a clemcore user runs instead).

Usage: python3 bench/hf_local/run.py [--threads 1 2] [--dtypes bf16 f32] [--kernels auto avx2 ...] [--torch-python PY]
SmolLM2-135M-Instruct as HF folders (bf16 and f32, made by scripts/prepare-smollm2-hf.sh), the same chat prompt,
exactly 128 greedy new tokens: prefill time, decode tokens/s, batch-8 throughput (and its ratio to batch 1), the
memory-bandwidth ceiling of decoding and the compute ceiling of batch 8 with the fractions reached, peak RSS, for
each thread count and dtype; clemrs first, then transformers, never at the same time; each timed run the fastest
of BENCH_REPEATS (default 3) on both sides. Prints both and the clemrs/transformers ratios, with the CPU model, its
features and, on every row, the kernel path clemrs ran on (--kernels runs each path named, through CLEM_KERNELS;
default: auto, the path clemrs picks) and its tuning.
transformers runs in --torch-python (default $TORCH_PYTHON, else target/bench-torch-venv, created with
`pip install torch transformers` when missing: a bench may install, CI does not run this).
"""

import argparse
import glob
import json
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def sh(cmd, env=None):
    return subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE, env=env, cwd=ROOT).stdout


def last_json(text):
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def torch_python(arg):
    py = arg or os.environ.get("TORCH_PYTHON")
    if py:
        return py
    venv = os.path.join(ROOT, "target", "bench-torch-venv")
    py = os.path.join(venv, "bin", "python")
    ready = os.path.exists(py) and subprocess.run([py, "-c", "import torch, transformers"]).returncode == 0
    if not ready:
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "torch", "transformers"], check=True)
    return py


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "f32"])
    ap.add_argument("--kernels", nargs="+", default=["auto"],
                    help="kernel paths for clemrs (CLEM_KERNELS): auto, avx512bf16, avx512, avx2, portable")
    ap.add_argument("--torch-python")
    a = ap.parse_args()
    py = torch_python(a.torch_python)
    dirs = {d: sh(["scripts/prepare-smollm2-hf.sh", d]).strip().splitlines()[-1] for d in a.dtypes}
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "clem-backends", "--bench", "hf_local"], check=True,
                   cwd=ROOT, stdout=sys.stderr)
    bins = [b for b in glob.glob(os.path.join(ROOT, "target/release/deps/hf_local-*")) if not b.endswith(".d")]
    binary = max(bins, key=os.path.getmtime)
    rows = []
    for threads in a.threads:
        for dtype, d in dirs.items():
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            theirs = last_json(sh([py, "bench/hf_local/transformers_bench.py", d, str(threads)], env=env))
            for kernels in a.kernels:
                env = {**os.environ, "RAYON_NUM_THREADS": str(threads), "CLEM_KERNELS": kernels}
                ours = last_json(sh([binary, "--bench", d], env=env))
                rows.append((threads, dtype, ours, theirs))
                print(json.dumps({"clemrs": ours, "transformers": theirs}), file=sys.stderr)
    print("SmolLM2-135M-Instruct, 128 greedy tokens; clemrs huggingface_local (weights as stored, f32 sums) vs transformers "
          f"{rows[0][3]['versions']['transformers']} / torch {rows[0][3]['versions']['torch']} (CPU, dtype auto)")
    print(f"CPU {rows[0][2]['cpu']}: {rows[0][2]['features']}")
    print("| threads | weights | clemrs kernels (tuning) | prefill ms (clemrs / transformers) | decode tok/s (clemrs / transformers / ratio) "
          "| batch 8 tok/s (clemrs / transformers / ratio) | clemrs batch 8 / batch 1 | decode / bandwidth ceiling "
          "| batch 8 / compute ceiling (ceiling / batch 1; FMA peak 3x batch 1 needs) | peak RSS MiB (clemrs / transformers) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for threads, dtype, o, t in rows:
        print(f"| {threads} | {dtype} | {o['kernels']} ({o['tuning']}) | {1000 * o['prefill_s']:.0f} / {1000 * t['prefill_s']:.0f} "
              f"| {o['decode_tps']:.1f} / {t['decode_tps']:.1f} / {o['decode_tps'] / t['decode_tps']:.2f}x "
              f"| {o['batch8_tps']:.1f} / {t['batch8_tps']:.1f} / {o['batch8_tps'] / t['batch8_tps']:.2f}x "
              f"| {o['batch8_tps'] / o['batch1_tps']:.2f}x "
              f"| {o['decode_tps']:.1f} / {o['ceiling_tps']:.1f} = {100 * o['decode_tps'] / o['ceiling_tps']:.0f}% "
              f"| {o['batch8_tps']:.1f} / {o['compute_ceiling_tps']:.1f} = "
              f"{100 * o['batch8_tps'] / max(o['compute_ceiling_tps'], 1e-9):.0f}% "
              f"({o['compute_ceiling_tps'] / o['batch1_tps']:.2f}x; "
              f"{100 * 3 * o['batch1_tps'] / max(o['compute_ceiling_tps'], 1e-9):.0f}%) "
              f"| {o['peak_rss_mib']} / {t['peak_rss_mib']} |")

if __name__ == "__main__":
    main()
