"""The `clemrs` Python package, side by side with what a clembench user runs instead; prints ratios.

Usage: python3 bench/python/run.py [overhead] [decode] [game] [--venv DIR] [--calls N]

- overhead: per-call overhead of `generate_response` through clemrs's openai_compatible backend vs clemcore 3.7.2's
  own openai_compatible backend, both against one fast loopback server (examples/loopback_openai.rs, another
  process, one thread, the same reply at once), sequential calls from Python, taking turns with a bare socket
  client that shows the round trip itself (target: >= 10x clemcore; printed as requests/s and as the p50 time each
  client adds to the bare round trip, with the requests/s ratio a client costing nothing would reach).
- decode: SmolLM2-135M (`smollm2-135m`, llamacpp) greedy decode through `clemrs` from Python (wall clock around
  `generate_response`) vs the same model through `clem generate` (its own `call_duration`); tokens/s from the
  reply's `usage.completion_tokens`; BENCH_REPEATS (default 5) fresh processes each, taken in turns, BENCH_THREADS
  (default 1) threads; fastest and median (target: within 3%).
- game: clemcore playing hellogame (10 instances) and guesswhat (experiment Level_1, 10 instances) with
  `smollm2-135m-hf`, `-b 8`: wall time with the clemrs drop-in vs clemcore's own huggingface_local
  (transformers + torch on the CPU) (target: >= 3x faster).

Everything runs in one venv (--venv, default target/bench-hf-venv: created with clemcore==3.7.2, and for `game`
torch, transformers, peft and accelerate; a bench may install, CI does not run this) into which the clemrs wheel
is built with `maturin build --release` and installed; `clem` is target/release/clem (`cargo build --release -p
clem-cli`; both under $CARGO_TARGET_DIR when set). Every figure is printed with the CPU model it was measured on.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def sh(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def venv_python(venv: Path, game: bool) -> Path:
    py = venv / "bin" / "python"
    wanted = ["clemcore==3.7.2"] + (["torch", "transformers", "peft", "accelerate"] if game else [])
    probe = "import clemcore.backends" + ("; import torch, transformers, peft" if game else "")
    if not py.exists():
        sh([sys.executable, "-m", "venv", venv])
    if subprocess.run([py, "-c", probe], capture_output=True).returncode != 0:
        print(f"installing {' '.join(wanted)} into {venv} ...", file=sys.stderr)
        sh([py, "-m", "pip", "install", "-q", *wanted, "maturin>=1.9.4,<2"])
    if subprocess.run([py, "-c", "import maturin"], capture_output=True).returncode != 0:
        sh([py, "-m", "pip", "install", "-q", "maturin>=1.9.4,<2"])
    return py


def target_dir() -> Path:
    d = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    return d if d.is_absolute() else ROOT / d


def build(py: Path):
    """The release wheel into the venv, and the release `clem`."""
    out = target_dir() / "wheels-release"
    for old in out.glob("clemrs-*.whl"):
        old.unlink()
    sh([py, "-m", "maturin", "build", "--release", "-m", ROOT / "crates/clem-py/Cargo.toml", "-i", py, "-o", out],
       stdout=sys.stderr)
    sh([py, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", *out.glob("clemrs-*.whl")])
    sh(["cargo", "build", "--release", "-q", "-p", "clem-cli"], cwd=ROOT)
    sh(["cargo", "build", "--release", "-q", "-p", "clem-backends", "--example", "loopback_openai"], cwd=ROOT)
    return target_dir() / "release" / "clem"


def last_json(text: str):
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def overhead(py: Path, server: Path, calls: int):
    proc = subprocess.Popen([server], stdout=subprocess.PIPE, text=True)
    try:
        base = proc.stdout.readline().strip().removeprefix("listening on ")
        out = sh([py, HERE / "overhead.py", base, str(calls)], capture_output=True, text=True).stdout
    finally:
        proc.terminate()
        proc.wait()
    r = last_json(out)
    ours, theirs, bare = r["clemrs"], r["clemcore"], r["bare"]
    ratio = ours["rps"] / theirs["rps"]
    # What a client adds to the round trip: its median latency above the bare socket client's.
    added = {k: v["p50_ms"] - bare["p50_ms"] for k, v in r.items()}
    print(f"\n## Per-call overhead, sequential generate_response against one loopback server "
          f"(examples/loopback_openai.rs; the three clients take turns)\nCPU: {cpu_model()}")
    print("| measure | clemrs | clemcore 3.7.2 openai_compatible | ratio | bare socket client |\n|---|---|---|---|---|")
    print(f"| requests/s ({ours['calls']} / {theirs['calls']} / {bare['calls']} calls) | {ours['rps']:.0f} "
          f"| {theirs['rps']:.0f} | {ratio:.1f}x | {bare['rps']:.0f} |")
    print(f"| p50 latency ms | {ours['p50_ms']:.3f} | {theirs['p50_ms']:.3f} | "
          f"{theirs['p50_ms'] / ours['p50_ms']:.1f}x | {bare['p50_ms']:.3f} |")
    print(f"| p50 ms added to the bare round trip | {added['clemrs']:.3f} | {added['clemcore']:.3f} | "
          f"{added['clemcore'] / max(added['clemrs'], 1e-6):.1f}x | 0 |")
    print(f"\nA client that cost nothing would reach {bare['rps'] / theirs['rps']:.1f}x clemcore's requests/s here: the "
          f"round trip itself (server, loopback, two thread wake-ups) bounds that ratio, the added time does not.")
    return ratio


def decode(py: Path, clem: Path, tokens: int):
    repeats = int(os.environ.get("BENCH_REPEATS", "5"))
    # One thread by default: llama.cpp's spinning thread pool collapses when a shared 2-core machine is busy.
    threads = int(os.environ.get("BENCH_THREADS", "1"))
    msgs = [{"role": "user", "content": "Write a long story about a dragon and a knight."}]
    cli, ours = [], []
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "messages.json"
        path.write_text(json.dumps(msgs))
        # Alike on both sides: a fresh process per generation (model loaded, one call), the two taken in turns so
        # drift on the machine hits both.
        for _ in range(repeats):
            out = sh([clem, "--threads", str(threads), "generate", "-m", "smollm2-135m", "--messages", path,
                      "-l", str(tokens), "--json"], capture_output=True, text=True, cwd=d).stdout
            v = json.loads(out)
            n = v["response"]["response"]["usage"]["completion_tokens"]
            cli.append(n / seconds(v["response"]["clem_player"]["call_duration"]))
            out = sh([py, HERE / "decode.py", str(tokens), "1", str(threads)], capture_output=True, text=True).stdout
            ours.extend(last_json(out)["tps"])
    best, theirs = max(ours), max(cli)
    mid = statistics.median(ours) / statistics.median(cli)
    print(f"\n## Local decode, smollm2-135m (llamacpp, Q4_1), {tokens} greedy tokens, {threads} thread(s), "
          f"{repeats} processes each, taken in turns\nCPU: {cpu_model()}")
    print("| measure | clemrs from Python tok/s (wall clock) | clem generate tok/s (call_duration) | ratio |"
          "\n|---|---|---|---|")
    print(f"| fastest | {best:.1f} | {theirs:.1f} | {best / theirs:.3f} |")
    print(f"| median | {statistics.median(ours):.1f} | {statistics.median(cli):.1f} | {mid:.3f} |")
    return best / theirs


def seconds(timedelta: str) -> float:
    h, m, s = timedelta.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("which", nargs="*", default=["overhead", "decode", "game"])
    ap.add_argument("--venv", type=Path, default=ROOT / "target" / "bench-hf-venv")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--fixtures", type=Path, default=ROOT.parent / "shared" / "fixtures" / "clembench")
    ap.add_argument("--no-build", action="store_true", help="use the wheel installed in the venv and release/clem")
    a = ap.parse_args()
    py = venv_python(a.venv, "game" in a.which)
    clem = target_dir() / "release" / "clem" if a.no_build else build(py)
    if "overhead" in a.which:
        overhead(py, target_dir() / "release" / "examples" / "loopback_openai", a.calls)
    if "decode" in a.which:
        decode(py, clem, a.tokens)
    if "game" in a.which:
        if not (a.fixtures / "hellogame").is_dir():
            print(f"game: clembench's games are not in {a.fixtures}; skipped", file=sys.stderr)
        else:
            # In the venv: clemcore's `clem`, and torch/transformers for their versions.
            sh([py, HERE / "game.py", a.fixtures, cpu_model()])


if __name__ == "__main__":
    main()
