"""Streaming, `n` and cancellation of a running `clem serve`, as the official `openai` package sees them.

Usage: python3 stream_client.py BASE_URL MODEL MAX_TOKENS MODE
MODE `stream`: one streaming request (`stream_options.include_usage`) and the same request plain, at
  temperature 0; prints {"chunks": [[seconds since the request, text], ...], "text", "plain", "plain_seconds"
  (how long the plain request took), "finish", "plain_finish", "usage", "plain_usage", "roles", "usage_chunks"}.
MODE `n`: the same request with n=3, plain and streamed; prints {"plain": [texts by index], "stream": [...],
  "finish": [...], "usage", "plain_usage"}.
MODE `drop`: a streaming request left after its first content chunk (the connection closed); prints
  {"before": /metrics when the first chunk came, "closed": just after closing, "after": once the sequence left,
  "waited": seconds}
  with the model's clem_scheduler_* and clem_serve_* samples as {name: value}.
Exit 3 (reason on stderr) when `openai` is missing.
"""

import json
import sys
import time
import urllib.request

try:
    import openai
except ImportError:
    print("MISSING openai (pip install openai)", file=sys.stderr)
    sys.exit(3)

MESSAGES = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]


def metrics(base, model):
    """The samples of /metrics for `model` (and the unlabelled ones) as {name: value}."""
    text = urllib.request.urlopen(base.rstrip("/") + "/metrics", timeout=30).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        if "{" in name:
            metric, _, labels = name.partition("{")
            if f'model="{model}"' in labels:
                name = metric
            elif "status=" in labels:
                name = metric + "{" + labels
            else:
                continue
        out[name] = float(value)
    return out


def main():
    base, model, max_tokens, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    client = openai.OpenAI(base_url=base.rstrip("/") + "/v1", api_key="none", max_retries=0, timeout=1800)
    args = dict(model=model, messages=MESSAGES, temperature=0, max_tokens=max_tokens)

    if mode == "stream":
        start = time.perf_counter()
        chunks, roles, finish, usage, usage_chunks = [], [], None, None, 0
        for chunk in client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}):
            if chunk.choices:
                delta = chunk.choices[0].delta
                if delta.role:
                    roles.append(delta.role)
                if delta.content:
                    chunks.append([time.perf_counter() - start, delta.content])
                finish = chunk.choices[0].finish_reason or finish
            elif chunk.usage is not None:
                usage, usage_chunks = chunk.usage.model_dump(exclude_none=True), usage_chunks + 1
        start = time.perf_counter()
        plain = client.chat.completions.create(**args)
        plain_seconds = time.perf_counter() - start
        print(json.dumps({"chunks": chunks, "text": "".join(c[1] for c in chunks), "plain_seconds": plain_seconds,
                          "plain": plain.choices[0].message.content, "finish": finish,
                          "plain_finish": plain.choices[0].finish_reason, "usage": usage,
                          "plain_usage": plain.usage.model_dump(exclude_none=True), "roles": roles,
                          "usage_chunks": usage_chunks}))
    elif mode == "n":
        plain = client.chat.completions.create(**args, n=3)
        texts, finish, usage = {}, {}, None
        for chunk in client.chat.completions.create(**args, n=3, stream=True,
                                                    stream_options={"include_usage": True}):
            for c in chunk.choices:
                texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
                if c.finish_reason:
                    finish[c.index] = c.finish_reason
            if chunk.usage is not None:
                usage = chunk.usage.model_dump(exclude_none=True)
        print(json.dumps({"plain": [c.message.content for c in sorted(plain.choices, key=lambda c: c.index)],
                          "plain_index": [c.index for c in plain.choices],
                          "stream": [texts.get(i) for i in range(3)], "finish": [finish.get(i) for i in range(3)],
                          "usage": usage, "plain_usage": plain.usage.model_dump(exclude_none=True)}))
    elif mode == "drop":
        stream = client.chat.completions.create(**args, stream=True)
        before = None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                before = metrics(base, model)
                break
        stream.close()
        start = time.perf_counter()
        closed = after = metrics(base, model)
        while after.get("clem_scheduler_running", 0) > 0 or after.get("clem_serve_sequences_running", 0) > 0:
            if time.perf_counter() - start > 60:
                break
            time.sleep(0.005)
            after = metrics(base, model)
        print(json.dumps({"before": before, "closed": closed, "after": after, "waited": time.perf_counter() - start}))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
