"""clem serve against llama.cpp's server (the `xllamacpp` package), side by side in one run, same GGUF file.

Usage: python3 bench/serve/compare.py [--clem target/release/clem] [--model smollm2-135m] [--gguf PATH]
       [--clients 64] [--requests 128] [--slots 8,16] [--threads 2] [--max-batch N] [--lanes L,...] [--seed 0]
The load: `--clients` concurrent clients share `--requests` streaming chat requests (each one made once from `--seed`:
a user prompt of 20 to 400 tokens, `max_tokens` 16 to 256, temperature 0), each request's time to its first content
chunk measured at the client, its generated tokens read from the final usage chunk. Each server is started on
127.0.0.1 with a free port and `--threads` threads, warmed up with one request, loaded, stopped; llama.cpp's server
once per slot count in `--slots` (its `-np`, with a context of 1024 tokens per slot); clem serve with its default
width unless `--max-batch` is given, and its default lanes (one per thread), or once per value of `--lanes`
(`per-thread` or a number: `--lanes per-thread,1`). Prints one line per server (generated tokens/s, requests/s,
p50/p99 time to first token, errors), the ratios of each clem run to each llama.cpp one, and the CPU model, then one
JSON line. Exit 1 when any request failed, 3 when `xllamacpp` is missing. Standard library only for the clients
(asyncio, one HTTP/1.1 connection per request, SSE read as it arrives), so the client costs both servers the same.
"""

import argparse
import asyncio
import glob
import json
import os
import random
import statistics
import subprocess
import sys
import time

from urllib.parse import urlsplit

WORDS = ("the river bread dragon market stone winter garden lantern quiet number village letter morning "
         "silver harbour copper forest whisper candle orchard meadow thunder pocket journey ladder mirror "
         "engine pepper cotton shadow valley button marble feather").split()

LLAMA_SERVER = r"""
import sys, xllamacpp as x
p = x.CommonParams()
p.model.path = sys.argv[1]
p.n_parallel = int(sys.argv[2])
p.n_ctx = 1024 * int(sys.argv[2])
p.cpuparams.n_threads = int(sys.argv[3])
p.cpuparams_batch.n_threads = int(sys.argv[3])
p.port = 0
s = x.Server(p)
print("listening on " + s.listening_address, flush=True)
sys.stdin.read()
"""


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def find_gguf():
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
    hits = glob.glob(os.path.join(hub, "models--QuantFactory--SmolLM2-135M-Instruct-GGUF", "snapshots", "*",
                                  "SmolLM2-135M-Instruct.Q4_1.gguf"))
    return hits[0] if hits else None


def workload(n, seed):
    """`n` requests: (user message of about 20-400 tokens, max_tokens 16-256), the same for every server."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.randint(12, 300)  # about 1.3 tokens a word, plus the template's tokens
        text = "Summarise these notes in plain words: " + " ".join(rng.choice(WORDS) for _ in range(words))
        out.append((text, rng.randint(16, 256)))
    return out


async def one(addr, model, message, max_tokens, timeout):
    """One streaming request: (seconds to the first content chunk, generated tokens, total seconds)."""
    host, port = addr
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": message}], "temperature": 0,
                       "max_tokens": max_tokens, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    start = time.perf_counter()

    async def go():
        reader, writer = await asyncio.open_connection(host, port)
        writer.write((f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
        await writer.drain()
        status = (await reader.readline()).split(b" ", 2)
        if len(status) < 2 or status[1] != b"200":
            raise RuntimeError(f"status {status}")
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip().lower()

        async def pieces():
            if "chunked" in headers.get("transfer-encoding", ""):
                while size := int((await reader.readline()).split(b";")[0].strip() or b"0", 16):
                    yield await reader.readexactly(size)
                    await reader.readexactly(2)
            else:
                while data := await reader.read(65536):
                    yield data

        first, tokens, buf, done = None, None, b"", False
        async for piece in pieces():
            buf = (buf + piece).replace(b"\r\n", b"\n")
            while b"\n\n" in buf and not done:
                event, buf = buf.split(b"\n\n", 1)
                data = event.strip()
                if not data.startswith(b"data: "):
                    continue
                if data[6:] == b"[DONE]":
                    done = True
                    break
                chunk = json.loads(data[6:])
                if first is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices") or []):
                    first = time.perf_counter() - start
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
            if done:
                break
        writer.close()
        if tokens is None:
            raise RuntimeError("no usage chunk")
        return first if first is not None else time.perf_counter() - start, tokens, time.perf_counter() - start

    return await asyncio.wait_for(go(), timeout)


async def load(base, model, work, clients, timeout=1800):
    parts = urlsplit(base)
    addr = (parts.hostname, parts.port)
    queue = list(enumerate(work))
    results, errors = [], []

    async def client():
        while queue:
            _, (message, max_tokens) = queue.pop(0)
            try:
                results.append(await one(addr, model, message, max_tokens, timeout))
            except Exception as e:  # counted, not fatal
                errors.append(repr(e)[:200])

    await one(addr, model, "Say hello.", 8, timeout)  # warm-up
    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    took = time.perf_counter() - start
    ttft = sorted(r[0] for r in results)
    q = (lambda p: ttft[min(len(ttft) - 1, int(p * len(ttft)))] if ttft else float("nan"))
    tokens = sum(r[1] for r in results)
    return {"requests": len(results), "errors": len(errors), "first_errors": errors[:3], "seconds": round(took, 2),
            "tokens": tokens, "tokens_per_s": round(tokens / took, 1), "requests_per_s": round(len(results) / took, 3),
            "ttft_p50": round(statistics.median(ttft), 3) if ttft else None, "ttft_p99": round(q(0.99), 3)}


def started(cmd, **kw):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            **kw)
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        sys.exit(f"{cmd[0]} did not start (said {line!r})")
    return proc, line.strip().split("listening on ", 1)[1]


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clem", default="target/release/clem")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--gguf")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--slots", default="8,16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-batch", type=int)
    ap.add_argument("--lanes", default="")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    try:
        import xllamacpp  # noqa: F401
    except ImportError:
        print("MISSING xllamacpp (pip install xllamacpp)", file=sys.stderr)
        sys.exit(3)
    gguf = a.gguf or find_gguf()
    if not gguf:
        sys.exit("SmolLM2-135M-Instruct.Q4_1.gguf is not in the HF cache: run scripts/fetch-smollm2.sh")
    cpu = cpu_model()
    work = workload(a.requests, a.seed)
    print(f"workload: {a.requests} requests from {a.clients} clients, user messages of {min(len(m) for m, _ in work)}-"
          f"{max(len(m) for m, _ in work)} characters, max_tokens {min(t for _, t in work)}-"
          f"{max(t for _, t in work)} (sum {sum(t for _, t in work)}), temperature 0, {a.threads} threads; CPU: {cpu}")
    clems, servers = {}, {}
    width = ["--max-batch", str(a.max_batch)] if a.max_batch else []
    for lanes in [["--lanes", l] for l in a.lanes.split(",") if l] or [[]]:
        cmd = [a.clem, "--threads", str(a.threads), "serve", "-m", a.model, "--port", "0"] + width + lanes
        proc, base = started(cmd)
        try:
            clems[" ".join(["clem serve", a.model] + width + lanes)] = asyncio.run(load(base, a.model, work, a.clients))
        finally:
            stop(proc)
    for slots in [int(s) for s in a.slots.split(",") if s]:
        proc, base = started([sys.executable, "-c", LLAMA_SERVER, gguf, str(slots), str(a.threads)])
        try:
            servers[f"llama.cpp server -np {slots}"] = asyncio.run(load(base, a.model, work, a.clients))
        finally:
            stop(proc)
    runs = {**clems, **servers}
    for name, r in runs.items():
        print(f"{name:>40}: {r['tokens_per_s']:7.1f} tokens/s, {r['requests_per_s']:6.3f} requests/s, TTFT p50 "
              f"{r['ttft_p50']} s p99 {r['ttft_p99']} s, {r['tokens']} tokens in {r['seconds']} s, errors "
              f"{r['errors']} [{cpu}]")
    ratios = {}
    for mine, clem in clems.items():
        for name, r in servers.items():
            key = f"{mine} / {name}"
            ratios[key] = {
                "tokens_per_s": round(clem["tokens_per_s"] / r["tokens_per_s"], 3) if r["tokens_per_s"] else None,
                "ttft_p99": round(clem["ttft_p99"] / r["ttft_p99"], 3) if r["ttft_p99"] else None}
            print(f"{key}: throughput {ratios[key]['tokens_per_s']}x, p99 TTFT {ratios[key]['ttft_p99']}x [{cpu}]")
    print(json.dumps({"cpu": cpu, "runs": runs, "ratios": ratios}))
    sys.exit(1 if any(r["errors"] for r in runs.values()) else 0)


if __name__ == "__main__":
    main()
