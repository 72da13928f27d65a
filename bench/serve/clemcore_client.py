"""Call a running `clem serve` through clemcore's own `openai_compatible` backend (PyPI `clemcore`).

Usage: python3 clemcore_client.py BASE_URL MODEL [API_KEY]
Writes key.json and model_registry.json into a temporary working directory (clemcore reads both from the
cwd), loads the model with `clemcore.backends.load_model` and generates one reply. Prints one JSON line;
exit 3 (reason on stderr) when clemcore is missing.
"""

import json
import os
import sys
import tempfile

# clemcore writes clembench.log into the working directory on import: move to a scratch folder first.
os.chdir(tempfile.mkdtemp(prefix="clemcore-client-"))
try:
    import clemcore.backends as backends
except ImportError:
    print("MISSING clemcore (pip install clemcore)", file=sys.stderr)
    sys.exit(3)


def main():
    base, model = sys.argv[1], sys.argv[2]
    key = sys.argv[3] if len(sys.argv) > 3 else "none"
    with open("key.json", "w") as f:
        json.dump({"openai_compatible": {"api_key": key, "base_url": base.rstrip("/") + "/v1"}}, f)
    name = "served-" + model
    with open("model_registry.json", "w") as f:
        json.dump([{"model_name": name, "backend": "openai_compatible", "model_id": model,
                    "release_date": "2024-11-01", "open_weight": True, "parameters": "135M",
                    "languages": ["en"], "context_size": "8k", "license": {"name": "Apache 2.0", "url": ""}}], f)
    m = backends.load_model(name, gen_args=dict(temperature=0.0, max_tokens=20))
    prompt, response, text = m.generate_response([
        {"role": "system", "content": ""},
        {"role": "user", "content": "Say hello to Ada."},
    ])
    assert isinstance(text, str) and text, (prompt, response, text)
    assert response["choices"][0]["message"]["content"] == text, response
    spec = m.model_spec
    backend = spec.get("backend") if hasattr(spec, "get") else getattr(spec, "backend", None)
    print(json.dumps({"backend": backend, "class": type(m).__name__, "text": text}))


if __name__ == "__main__":
    main()
