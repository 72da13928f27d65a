"""Per-call overhead (run by run.py in the bench venv): sequential `generate_response` calls through clemrs's and
clemcore 3.7.2's openai_compatible backends against BASE (the loopback server of
crates/clem-backends/examples/loopback_openai.rs, which answers every request at once with the same reply,
"Paris"), and the same exchange by a bare socket client (the round trip no client can go below). The three take
turns in ROUNDS rounds, so drift on the machine hits each alike. Prints one JSON line."""

import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

ROUNDS = 4


def bare_client(base):
    """A function doing one exchange on one keep-alive socket: the request as clemrs sends it, the reply read whole."""
    url = urlparse(base)
    sock = socket.create_connection((url.hostname, url.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = json.dumps({"model": "mock", "messages": [{"role": "user", "content": "call"}], "temperature": 0.0,
                       "max_tokens": 300}).encode()
    request = (f"POST {url.path}/chat/completions HTTP/1.1\r\nhost: {url.netloc}\r\ncontent-type: application/json\r\n"
               f"authorization: Bearer sk-bench\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body

    def call(_i):
        sock.sendall(request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        head, rest = buf.split(b"\r\n\r\n", 1)
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        while len(rest) < length:
            rest += sock.recv(65536)
        assert b'"Paris"' in rest
    return call


def timed(call, n, into):
    for i in range(n):
        t = time.perf_counter()
        call(i)
        into.append(time.perf_counter() - t)


def summary(lat):
    return {"calls": len(lat), "rps": len(lat) / sum(lat), "p50_ms": 1000 * statistics.median(lat)}


def main():
    base, calls = sys.argv[1], int(sys.argv[2])
    entry = {"model_name": "bench-remote", "backend": "openai_compatible", "model_id": "mock"}
    keys = {"openai_compatible": {"api_key": "sk-bench", "base_url": base}}
    messages = lambda i: [{"role": "user", "content": f"call {i}"}]  # noqa: E731
    with tempfile.TemporaryDirectory() as d:
        # Both read ./model_registry.json and ./key.json, as clembench users keep them.
        os.chdir(d)
        Path("model_registry.json").write_text(json.dumps([entry]))
        Path("key.json").write_text(json.dumps(keys))
        import clemrs

        ours = clemrs.load_model("bench-remote")
        assert ours.generate_response(messages(7))[2] == "Paris"

        import logging

        logging.disable(logging.WARNING)
        from clemcore import backends

        theirs = backends.load_model("bench-remote", {"temperature": 0.0, "max_tokens": 300})
        assert theirs.generate_response(messages(7))[2] == "Paris"
        bare = bare_client(base)
        bare(0)
        lat = {"bare": [], "clemrs": [], "clemcore": []}
        per_round = max(calls // ROUNDS, 1)
        for _ in range(ROUNDS):
            timed(bare, per_round, lat["bare"])
            timed(lambda i: ours.generate_response(messages(i)), per_round, lat["clemrs"])
            timed(lambda i: theirs.generate_response(messages(i)), max(per_round // 8, 25), lat["clemcore"])
    print(json.dumps({k: summary(v) for k, v in lat.items()}))


if __name__ == "__main__":
    main()
