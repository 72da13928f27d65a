"""Local decode through Python (run by run.py in the bench venv): smollm2-135m greedy, TOKENS new tokens,
REPEATS times; prints one JSON line with tokens/s measured by the wall clock around `generate_response`."""

import json
import sys
import time

import clemrs


def main():
    tokens, repeats, threads = (int(x) for x in sys.argv[1:4])
    model = clemrs.load_model("smollm2-135m", {"temperature": 0.0, "max_tokens": tokens}, threads=threads)
    msgs = [{"role": "user", "content": "Write a long story about a dragon and a knight."}]
    tps = []
    for _ in range(repeats):
        start = time.perf_counter()
        _, response, _ = model.generate_response(msgs)
        took = time.perf_counter() - start
        tps.append(response["response"]["usage"]["completion_tokens"] / took)
    print(json.dumps({"tps": tps}))


if __name__ == "__main__":
    main()
