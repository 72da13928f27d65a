"""Benchmark `clem serve`: the same load with dynamic batching and one request at a time (`--max-batch 1`).

Usage: python3 bench/serve/run.py [--clem target/release/clem] [--model smollm2-135m] [--clients 200]
       [--requests 1] [--max-tokens 16] [--max-batch 16]
Starts `clem serve` on 127.0.0.1 with a free port for each mode, runs load.py against it, stops it, and prints
both results and the throughput ratio (batched / one-at-a-time). Exit 1 when any request failed.
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def serve(clem, model, max_batch, extra):
    proc = subprocess.Popen([clem, "serve", "-m", model, "--port", "0", "--max-batch", str(max_batch)] + extra,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        sys.exit(f"clem serve did not start (said {line!r})")
    return proc, line.strip().split("listening on ")[1]


def load(base, a):
    out = subprocess.run([sys.executable, os.path.join(HERE, "load.py"), base, a.model, "--clients",
                          str(a.clients), "--requests", str(a.requests), "--max-tokens", str(a.max_tokens)],
                         capture_output=True, text=True, timeout=1800)
    if out.returncode == 3:
        sys.exit(out.stderr.strip())
    result = json.loads(out.stdout)
    return result, out.returncode


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clem", default="target/release/clem")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--requests", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--threads", type=int)
    a = ap.parse_args()
    extra = ["--threads", str(a.threads)] if a.threads else []
    results, failed = {}, False
    for label, batch in (("batched", a.max_batch), ("one_at_a_time", 1)):
        proc, base = serve(a.clem, a.model, batch, extra)
        try:
            results[label], rc = load(base, a)
            failed |= rc != 0
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        r = results[label]
        print(f"{label:>14} (--max-batch {batch}): {r['requests']} requests from {r['clients']} clients in "
              f"{r['seconds']} s = {r['rps']} req/s, errors {r['errors']}, statuses {r['statuses']}, "
              f"largest batch {r['health']['models'][0].get('largest_batch')}")
    ratio = results["batched"]["rps"] / results["one_at_a_time"]["rps"]
    print(f"throughput ratio batched / one-at-a-time: {ratio:.2f}x")
    print(json.dumps({"ratio": round(ratio, 3), **results}))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
