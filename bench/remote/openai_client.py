"""The Python side of the remote benchmark: the official `openai` client against the same loopback server.

Usage: python3 openai_client.py BASE_URL SEQUENTIAL BATCH CONCURRENCY
Prints one JSON object: {"sequential": {...}, "async": {...}} with requests/s and p50/p99 latency in ms.
Installs `openai` with pip when it is missing (benchmark only, never in CI).
"""

import asyncio
import json
import subprocess
import sys
import time

try:
    import openai
except ImportError:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "openai"], check=True, stdout=sys.stderr)
    import openai

MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def pct(sorted_values, p):
    return sorted_values[min(len(sorted_values) - 1, int(round(p / 100 * (len(sorted_values) - 1))))]


def summary(latencies, total):
    lat = sorted(latencies)
    return {"requests": len(lat), "seconds": total, "rps": len(lat) / total,
            "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3}


def sequential(base_url, n):
    client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0)
    for _ in range(20):  # warm up the connection
        client.chat.completions.create(model="m", messages=MESSAGES, temperature=0, max_tokens=300)
    latencies = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        client.chat.completions.create(model="m", messages=MESSAGES, temperature=0, max_tokens=300)
        latencies.append(time.perf_counter() - t)
    return summary(latencies, time.perf_counter() - start)


async def concurrent(base_url, n, concurrency):
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    gate = asyncio.Semaphore(concurrency)
    latencies = []

    async def one():
        async with gate:
            t = time.perf_counter()
            await client.chat.completions.create(model="m", messages=MESSAGES, temperature=0, max_tokens=300)
            latencies.append(time.perf_counter() - t)

    await asyncio.gather(*(one() for _ in range(50)))  # warm up
    latencies.clear()
    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return summary(latencies, time.perf_counter() - start)


def main():
    base_url, n_seq, n_batch, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    out = {"openai_version": openai.__version__, "sequential": sequential(base_url, n_seq),
           "async": asyncio.run(concurrent(base_url, n_batch, conc))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
