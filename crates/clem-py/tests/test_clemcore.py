"""The clemcore drop-in: clemcore 3.7.2, in this same environment, plays clembench's real games (hellogame,
guesswhat, from ../shared/fixtures/clembench) on clemrs through the `<backend>_api.py` files that
`python -m clemrs.clemcore install` writes. Each run's calls are counted through $CLEMRS_CALL_LOG (one JSON line
per call that reached clemrs), so a batch is seen to arrive as one `generate_batch_response` call."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import clemrs
import clemrs.clemcore as dropin
from conftest import MESSAGES, need_model, skip


@pytest.fixture(scope="module")
def clemcore():
    try:
        import importlib.metadata as md

        import clemcore.backends  # noqa: F401
    except ImportError as e:
        skip(f"clemcore is not installed here ({e}): pip install clemcore==3.7.2")
    version = md.version("clemcore")
    if version != "3.7.2":
        skip(f"clemcore {version} is installed, these tests are for 3.7.2")
    return Path(sys.executable).parent / "clem"


def module_of(path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_install_writes_one_file_per_backend_and_uninstall_removes_exactly_those(tmp_path, clemcore):
    from clemcore.backends.backend_registry import Backend, is_backend
    import inspect

    foreign = tmp_path / "slurk_api.py"
    foreign.write_text("# someone else's backend\n")
    other = tmp_path / "notes.py"
    other.write_text("x = 1\n")
    out = subprocess.run([sys.executable, "-m", "clemrs.clemcore", "install", str(tmp_path)], check=True,
                         capture_output=True, text=True)
    names = {Path(p).name for p in out.stdout.split()}
    expected = {"openai", "openai_compatible", "openrouter", "azure", "anthropic", "google", "mistral", "cohere",
                "huggingface_local", "llamacpp", "vllm"}
    assert names == {f"{n}_api.py" for n in expected}
    assert set(dropin.drop_in_backends()) == expected
    # What clemcore's BackendRegistry requires of each file: exactly one Backend subclass, built without arguments.
    for name in names:
        members = inspect.getmembers(module_of(tmp_path / name), predicate=is_backend)
        assert len(members) == 1, (name, members)
        assert isinstance(members[0][1](), Backend)
    # A foreign *_api.py is never written over.
    mine = tmp_path / "openai_api.py"
    mine.unlink()
    mine.write_text("# mine\n")
    with pytest.raises(FileExistsError, match="openai_api.py"):
        dropin.install(tmp_path)
    assert mine.read_text() == "# mine\n"
    with pytest.raises(ValueError, match="no drop-in for nope"):
        dropin.install(tmp_path, only=["nope"])
    out = subprocess.run([sys.executable, "-m", "clemrs.clemcore", "uninstall", str(tmp_path)], check=True,
                         capture_output=True, text=True)
    assert {Path(p).name for p in out.stdout.split()} == names - {"openai_api.py"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.py", "openai_api.py", "slurk_api.py"]


def test_only_installs_the_named_backends(tmp_path, clemcore):
    written = dropin.install(tmp_path, only=["llamacpp"])
    assert [p.name for p in written] == ["llamacpp_api.py"]
    assert [p.name for p in tmp_path.iterdir()] == ["llamacpp_api.py"]


def prepare(tmp_path: Path, models):
    """A folder to run clemcore in: the drop-in files and the models' clemrs registry entries (clemcore's own
    registry does not have SmolLM2)."""
    dropin.install(tmp_path, only=["llamacpp", "huggingface_local"])
    subprocess.run([sys.executable, "-m", "clemrs.clemcore", "registry", *models, "--dir", str(tmp_path)], check=True)
    return tmp_path


def game_dir(tmp_path: Path, fixtures: Path, models):
    """`prepare`, and a game registry pointing at the fixtures (read in place, never copied)."""
    prepare(tmp_path, models)
    (tmp_path / "game_registry.json").write_text(json.dumps([{"benchmark_path": str(fixtures)}]))
    return tmp_path


def clem_run(clem: Path, cwd: Path, game: str, model: str, batch: int):
    """clemcore's `clem run` on the instances_small files, at most 64 tokens a reply (`-l`: SmolLM2-135M rambles
    to the 300-token default, and this bounds the run's time; the games judge the replies all the same)."""
    log = cwd / f"calls-{game}-{batch}.jsonl"
    env = {**os.environ, "CLEMRS_CALL_LOG": str(log)}
    started = time.monotonic()
    out = subprocess.run([str(clem), "run", "-g", game, "-m", model, "-b", str(batch), "-i", "instances_small",
                          "-l", "64", "-r", str(cwd / "results")], cwd=cwd, env=env, capture_output=True, text=True)
    took = time.monotonic() - started
    print(f"clem run -g {game} -m {model} -b {batch}: {took:.1f}s")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Fallback to sequential" not in out.stderr + out.stdout
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return calls, out


def episodes(results: Path, game: str):
    found = sorted(p for p in results.glob(f"*/{game}/*/instance_*") if p.is_dir())
    assert found, f"no {game} episodes under {results}"
    return found


def check_episodes(results, game, calls, players):
    """Every episode completed and recorded by clemcore; each model player's recorded prompts are the ones clemrs
    rendered (as the call log has them)."""
    rendered = [json.dumps(p, sort_keys=True) for c in calls for p in c["prompts"]]
    recorded = 0
    for ep in episodes(results, game):
        assert (ep / "interactions.json").is_file(), ep
        assert not (ep / "error.json").exists(), (ep / "error.json").read_text()
        for player in players:
            requests = json.loads((ep / f"{player}.requests.json").read_text())
            for call in requests["calls"]:
                prompt = call["call"]["manipulated_prompt_obj"]
                assert json.dumps(prompt, sort_keys=True) in rendered, prompt
                # SmolLM2's chat template, rendered by clemrs (a batch's rows are left-padded with <|im_end|>).
                assert re.match(r"(<\|im_end\|>)*<\|im_start\|>system\n", prompt["inputs"]), prompt
                recorded += 1
    assert recorded == len(rendered), (recorded, len(rendered))


def test_hellogame_sequential_and_batched(tmp_path, fixtures, clemcore):
    need_model("smollm2-135m")
    cwd = game_dir(tmp_path, fixtures, ["smollm2-135m"])
    calls, _ = clem_run(clemcore, cwd, "hellogame", "smollm2-135m", 1)
    assert {c["method"] for c in calls} == {"generate_response"}
    check_episodes(cwd / "results", "hellogame", calls, ["player_1"])
    assert len(calls) == len(episodes(cwd / "results", "hellogame")) == 3

    (cwd / "results").rename(cwd / "results-b1")
    calls, _ = clem_run(clemcore, cwd, "hellogame", "smollm2-135m", 4)
    # Three one-turn episodes at -b 4: one batch of three rows, one clemrs call.
    assert [(c["method"], c["rows"]) for c in calls] == [("generate_batch_response", 3)]
    check_episodes(cwd / "results", "hellogame", calls, ["player_1"])


def test_guesswhat_batched_huggingface_local(tmp_path, fixtures, clemcore):
    need_model("smollm2-135m-hf")
    cwd = game_dir(tmp_path, fixtures, ["smollm2-135m-hf"])
    calls, _ = clem_run(clemcore, cwd, "guesswhat", "smollm2-135m-hf", 4)
    assert calls and {c["method"] for c in calls} == {"generate_batch_response"}
    print("batch sizes reaching clemrs:", [c["rows"] for c in calls])
    # The first round asks the four episodes' guessers at once.
    assert calls[0]["rows"] == 4
    check_episodes(cwd / "results", "guesswhat", calls, ["player_1"])


def test_context_overflow_is_clemcores_error_without_retries(tmp_path, monkeypatch, clemcore):
    need_model("smollm2-135m")
    from clemcore import backends
    from clemcore.backends.utils import ContextExceededError

    cwd = prepare(tmp_path, ["smollm2-135m"])
    monkeypatch.chdir(cwd)
    log = cwd / "calls.jsonl"
    monkeypatch.setenv("CLEMRS_CALL_LOG", str(log))
    model = backends.load_model("smollm2-135m", {"temperature": 0.0, "max_tokens": 100})
    assert type(model).__name__ == "ClemrsModel" and model.supports_batching()
    long = [{"role": "user", "content": "word " * 9000}]
    started = time.monotonic()
    with pytest.raises(ContextExceededError) as e:
        model.generate_response(long)
    took = time.monotonic() - started
    assert took < 2, f"{took:.1f}s: retried?"  # clemcore's own remote backends retry for 20 s
    assert e.value.context_size == 8192 and e.value.tokens_left < 0
    assert isinstance(e.value.__cause__, clemrs.ContextExceededError)
    # In a batch clemcore's runner takes triples only: the overflowing row fails the batch, as in clemcore.
    with pytest.raises(ContextExceededError):
        model.generate_batch_response([MESSAGES, long])
    # Each reached clemrs once and was not retried.
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(c["method"], c["rows"], c["errors"]) for c in calls] == [
        ("generate_response", 1, 1), ("generate_batch_response", 2, 1)]
    prompt, response, text = model.generate_response(MESSAGES)
    assert "Paris" in text and model.gen_args == {"temperature": 0.0, "max_tokens": 100}
