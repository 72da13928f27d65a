"""llama.cpp's own server (PyPI `xllamacpp`) measured the way clemrs's llamacpp benchmark measures clemrs.

Usage: python3 server_bench.py --model GGUF --threads N --prompts PROMPTS.json [--n-predict 128] [--runs 3]
PROMPTS.json is a list of already rendered prompt texts: the first is used for the single-sequence runs, all of
them (8) at once for the parallel-slot run. Starts the server on 127.0.0.1 with N threads and as many slots as
prompts, and prints one JSON object on stdout:
  {"single": [{"prompt_n", "prompt_per_second", "predicted_n", "predicted_per_second"}, ...],
   "parallel": {"requests", "tokens", "seconds", "tokens_per_second"}}
Every request generates exactly --n-predict tokens (ignore_eos) greedily, without prompt caching. Exit code 3
(with a reason on stderr) when xllamacpp is missing.
"""

import argparse
import json
import socket
import sys
import threading
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, body, timeout=600):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/completion",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--n-predict", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    try:
        import xllamacpp
    except ImportError:
        print("MISSING xllamacpp (pip install xllamacpp)", file=sys.stderr)
        sys.exit(3)
    with open(args.prompts) as f:
        prompts = json.load(f)

    port = free_port()
    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.hostnames = ["127.0.0.1"]  # loopback only
    params.port = port
    params.n_parallel = len(prompts)
    params.n_ctx = 1024 * len(prompts)
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.n_threads_http = 2
    params.warmup = True
    server = xllamacpp.Server(params)

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        print("server did not start listening", file=sys.stderr)
        sys.exit(1)

    def body(prompt):
        return {"prompt": prompt, "n_predict": args.n_predict, "ignore_eos": True, "temperature": 0.0,
                "cache_prompt": False, "stream": False}

    post(port, body(prompts[0]))  # warm-up
    single = []
    for _ in range(args.runs):
        t = post(port, body(prompts[0]))["timings"]
        single.append({k: t[k] for k in ("prompt_n", "prompt_per_second", "predicted_n", "predicted_per_second")})

    results = [None] * len(prompts)

    def one(i):
        results[i] = post(port, body(prompts[i]))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    tokens = sum(r["timings"]["predicted_n"] for r in results if r)
    print(json.dumps({"single": single,
                      "parallel": {"requests": len(prompts), "tokens": tokens, "seconds": seconds,
                                   "tokens_per_second": tokens / seconds}}), flush=True)
    del server


if __name__ == "__main__":
    main()
