"""Talk to a running `clem serve` with the official `openai` package: one plain and one streaming completion.

Usage: python3 openai_client.py BASE_URL MODEL [API_KEY]
Prints one JSON line {"plain": ..., "stream": ..., "chunks": N}; exit 3 (reason on stderr) when `openai` is
missing, 1 on any check failing.
"""

import json
import sys

try:
    import openai
except ImportError:
    print("MISSING openai (pip install openai)", file=sys.stderr)
    sys.exit(3)


def main():
    base, model = sys.argv[1], sys.argv[2]
    key = sys.argv[3] if len(sys.argv) > 3 else "none"
    client = openai.OpenAI(base_url=base.rstrip("/") + "/v1", api_key=key, max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "Say hello to Ada."}]

    plain = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=20)
    text = plain.choices[0].message.content
    assert plain.object == "chat.completion", plain
    assert text, "empty reply"
    assert plain.choices[0].finish_reason in ("stop", "length"), plain

    pieces, chunks, finish = [], 0, None
    stream = client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=20, stream=True,
        stream_options={"include_usage": True})
    for chunk in stream:
        chunks += 1
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    streamed = "".join(pieces)
    # Greedy decoding of the same prompt: both ways must give the same cleaned reply.
    assert streamed == text, (streamed, text)
    assert finish in ("stop", "length"), finish

    models = [m.id for m in client.models.list()]
    assert model in models, models
    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError:
        pass
    print(json.dumps({"plain": text, "stream": streamed, "chunks": chunks}))


if __name__ == "__main__":
    main()
