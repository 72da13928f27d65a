"""A whole game under clemcore 3.7.2 (run by run.py in the bench venv): hellogame (10 instances) and guesswhat
(experiment Level_1, 10 instances) with smollm2-135m-hf at -b 8, once with the clemrs drop-in
(`python -m clemrs.clemcore install`) and once with clemcore's own huggingface_local (transformers + torch, CPU),
one after the other; prints the wall times and their ratio with the CPU model."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers


def play(game, extra, fixtures, drop_in):
    py = sys.executable
    clem = Path(py).parent / "clem"
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        if drop_in:
            subprocess.run([py, "-m", "clemrs.clemcore", "install", d, "--only", "huggingface_local"], check=True,
                           stdout=subprocess.DEVNULL)
        # The same registry entry for both: clemrs's smollm2-135m-hf (clemcore's registry has no SmolLM2).
        subprocess.run([py, "-m", "clemrs.clemcore", "registry", "smollm2-135m-hf", "--dir", d], check=True,
                       stdout=subprocess.DEVNULL)
        (d / "game_registry.json").write_text(json.dumps([{"benchmark_path": str(fixtures)}]))
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        started = time.monotonic()
        out = subprocess.run([clem, "run", "-g", game, "-m", "smollm2-135m-hf", "-b", "8", *extra], cwd=d, env=env,
                             capture_output=True, text=True)
        took = time.monotonic() - started
        if out.returncode != 0:
            sys.exit(f"clem run failed ({'drop-in' if drop_in else 'clemcore'}):\n{out.stderr[-3000:]}")
        played = len(list(d.glob(f"results/*/{game}/*/instance_*/interactions.json")))
        errors = len(list(d.glob(f"results/*/{game}/*/instance_*/error.json")))
        batched = "Start batchwise runner" in out.stdout + out.stderr
        return took, played, errors, batched


def main():
    fixtures, cpu = Path(sys.argv[1]), sys.argv[2]
    rows = []
    for game, extra in [("hellogame", []), ("guesswhat", ["-e", "Level_1"])]:
        ours = play(game, extra, fixtures, True)
        theirs = play(game, extra, fixtures, False)
        rows.append((game, ours, theirs))
        print(json.dumps({"game": game, "clemrs": ours, "clemcore": theirs}), file=sys.stderr)
    print(f"\n## A whole game under clemcore 3.7.2, smollm2-135m-hf, -b 8: the clemrs drop-in vs clemcore's own "
          f"huggingface_local (transformers {transformers.__version__}, torch {torch.__version__}, CPU, "
          f"{torch.get_num_threads()} threads)\nCPU: {cpu}")
    print("| game | episodes played (errors), clemrs / clemcore | batched runner | clemrs s | clemcore s | ratio |")
    print("|---|---|---|---|---|---|")
    for game, (t1, p1, e1, b1), (t2, p2, e2, b2) in rows:
        print(f"| {game} | {p1} ({e1}) / {p2} ({e2}) | {b1} / {b2} | {t1:.1f} | {t2:.1f} | {t2 / t1:.2f}x |")


if __name__ == "__main__":
    main()
