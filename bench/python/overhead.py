"""Per-call overhead (run by run.py in the bench venv): sequential `generate_response` calls through clemrs's and
clemcore 3.7.2's openai_compatible backends against BASE (a fast loopback server); prints one JSON line."""

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def timed(call, n):
    lat = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        call(i)
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    return {"calls": n, "rps": n / total, "p50_ms": 1000 * statistics.median(lat)}


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
        ours.generate_response(messages(0))
        assert ours.generate_response(messages(7))[2] == "call 7"
        r_ours = timed(lambda i: ours.generate_response(messages(i)), calls)

        import logging

        logging.disable(logging.WARNING)
        from clemcore import backends

        theirs = backends.load_model("bench-remote", {"temperature": 0.0, "max_tokens": 300})
        assert theirs.generate_response(messages(7))[2] == "call 7"
        r_theirs = timed(lambda i: theirs.generate_response(messages(i)), max(calls // 4, 50))
    print(json.dumps({"clemrs": r_ours, "clemcore": r_theirs}))


if __name__ == "__main__":
    main()
