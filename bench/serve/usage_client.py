"""Token usage and finish reasons of a running `clem serve`, as the official `openai` package reads them.

Usage: python3 usage_client.py BASE_URL MODEL MAX_TOKENS
Sends one plain and one streaming request (`stream_options.include_usage`) with the same user message at
temperature 0 and prints one JSON line {"plain": {"text", "finish", "usage"}, "stream": {...}}; `usage` is the
client's parsed object (`model_dump`), `null` when absent. Exit 3 (reason on stderr) when `openai` is missing.
"""

import json
import sys

try:
    import openai
except ImportError:
    print("MISSING openai (pip install openai)", file=sys.stderr)
    sys.exit(3)

MESSAGES = [{"role": "user", "content": "Say hello to Ada."}]


def dump(usage):
    return None if usage is None else usage.model_dump(exclude_none=True)


def main():
    base, model, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = openai.OpenAI(base_url=base.rstrip("/") + "/v1", api_key="none", max_retries=0, timeout=120)

    plain = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, max_tokens=max_tokens)
    out = {"plain": {"text": plain.choices[0].message.content, "finish": plain.choices[0].finish_reason,
                     "usage": dump(plain.usage)}}

    pieces, finish, usage, usage_chunks = [], None, None, 0
    stream = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, max_tokens=max_tokens,
                                            stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
            # OpenAI sends usage only on the last chunk, the one without choices.
            assert chunk.usage is None, chunk
        elif chunk.usage is not None:
            usage, usage_chunks = chunk.usage, usage_chunks + 1
    out["stream"] = {"text": "".join(pieces), "finish": finish, "usage": dump(usage), "usage_chunks": usage_chunks}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
