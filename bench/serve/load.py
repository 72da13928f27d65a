"""Load test for `clem serve` on loopback: N concurrent clients (default 200), each sending R chat requests.

Usage: python3 load.py BASE_URL MODEL [--clients 200] [--requests 1] [--max-tokens 16]
Prints one JSON line {"clients", "requests", "errors", "seconds", "rps", "statuses"}; exit 1 when any request
failed. Standard library only (asyncio, one HTTP/1.1 connection per request). Bounded: every request has a timeout.
"""

import argparse
import asyncio
import collections
import json
import sys
import time

from urllib.parse import urlsplit

PROMPTS = ["Say hello to Ada.", "Name a colour.", "Count to three.", "Greet Bob warmly."]


async def request(host, port, method, path, body, timeout):
    """One HTTP/1.1 exchange with `Connection: close`: (status, body text)."""
    async def go():
        reader, writer = await asyncio.open_connection(host, port)
        data = json.dumps(body).encode() if body is not None else b""
        head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
        writer.write(head.encode() + data)
        await writer.drain()
        raw = await reader.read()
        writer.close()
        head, _, rest = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return status, rest.decode("utf-8", "replace")
    return await asyncio.wait_for(go(), timeout)


async def client(addr, model, i, requests, max_tokens, timeout, statuses, errors):
    host, port = addr
    for r in range(requests):
        body = {"model": model, "temperature": 0, "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": PROMPTS[(i + r) % len(PROMPTS)]}]}
        try:
            status, text = await request(host, port, "POST", "/v1/chat/completions", body, timeout)
            statuses[status] += 1
            if status != 200 or not json.loads(text)["choices"][0]["message"]["content"]:
                errors.append(f"{status}: {text[:200]}")
        except Exception as e:  # a failed request is counted, not fatal
            statuses["exception"] += 1
            errors.append(repr(e))


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("model")
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--requests", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()
    parts = urlsplit(a.base)
    addr = (parts.hostname, parts.port or 80)
    statuses, errors = collections.Counter(), []
    start = time.perf_counter()
    await asyncio.gather(*(client(addr, a.model, i, a.requests, a.max_tokens, a.timeout, statuses, errors)
                           for i in range(a.clients)))
    took = time.perf_counter() - start
    _, health = await request(addr[0], addr[1], "GET", "/health", None, 30)
    health = json.loads(health)
    total = a.clients * a.requests
    print(json.dumps({"clients": a.clients, "requests": total, "errors": len(errors), "seconds": round(took, 3),
                      "rps": round(total / took, 2), "statuses": {str(k): v for k, v in statuses.items()},
                      "health": health, "first_errors": errors[:3]}))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    asyncio.run(main())
