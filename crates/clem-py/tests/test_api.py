"""The `clemrs` package as a clembench user calls it: the guide's examples, equality with `clem generate --json`,
ModelSpec, list_models, generation arguments, exceptions and bad input."""

import copy
import json
import subprocess

import pytest

import clemrs
from conftest import MESSAGES, need_gguf, need_hf, need_model, remote_setup

LOCAL = ["smollm2-135m", "smollm2-135m-hf"]


def without_timing(triple):
    """A triple without the values that differ between any two calls, which are then checked for shape only:
    clem_player's `call_start`, `call_duration` and `request_seconds` (remote), and the llamacpp completion's
    `id` (a fresh uuid) and `created` (the clock). Everything else must be equal."""
    prompt, response, text = copy.deepcopy(list(triple))
    record = response.get("clem_player", {})
    assert set(record) >= {"call_start", "call_duration", "response", "model_name"}, response
    for key in ("call_start", "call_duration", "request_seconds"):
        record.pop(key, None)
    completion = response.get("response")
    if isinstance(completion, dict) and completion.get("object") == "text_completion":
        assert completion.pop("id").startswith("cmpl-") and isinstance(completion.pop("created"), int)
    return [prompt, response, text]


def cli_triple(clem_bin, tmp_path, model, messages, extra=()):
    path = tmp_path / "messages.json"
    path.write_text(json.dumps(messages))
    out = subprocess.run([str(clem_bin), *extra, "generate", "-m", model, "--messages", str(path), "--json"],
                         check=True, capture_output=True, text=True, cwd=tmp_path)
    v = json.loads(out.stdout)
    return [v["prompt"], v["response"], v["response_text"]]


# -- the guide's two examples ("How to use the clembench model backend directly") --

def test_guide_basic_example_llamacpp():
    need_gguf()
    model = clemrs.get_model_for("smollm2-135m")
    prompt, response, response_text = model.generate_response(MESSAGES)
    print("smollm2-135m reply:", response_text)
    assert "Paris" in response_text
    assert response["clem_player"]["model_name"] == "smollm2-135m"


def test_guide_multiple_models_example():
    need_gguf()
    need_hf()
    replies = {}
    for model_name in LOCAL:
        model = clemrs.get_model_for(model_name)
        prompt, response, response_text = model.generate_response(MESSAGES)
        replies[model_name] = response_text
        del model
    print(replies)
    assert all("Paris" in r for r in replies.values()), replies


# -- the same triple as the CLI --

@pytest.mark.parametrize("model", ["mock", "smollm2-135m", "smollm2-135m-hf"])
def test_triple_equals_clem_generate_json(model, clem_bin, tmp_path):
    need_model(model)
    ours = clemrs.load_model(model).generate_response(MESSAGES)
    assert isinstance(ours, tuple) and len(ours) == 3
    assert without_timing(ours) == without_timing(cli_triple(clem_bin, tmp_path, model, MESSAGES))


def test_triple_equals_clem_generate_json_openai_compatible(clem_bin, tmp_path, fake_openai):
    server = fake_openai()
    registry, keys = remote_setup(tmp_path, server)
    ours = clemrs.load_model("fake-gpt", registries=[registry], keys=keys).generate_response(MESSAGES)
    theirs = cli_triple(clem_bin, tmp_path, "fake-gpt", MESSAGES, ["--registry", str(registry), "--keys", str(keys)])
    assert without_timing(ours) == without_timing(theirs)
    assert ours[2] == "echo: Tell me the name of the capital of France."
    # Both sent the same request.
    assert server.requests[0] == server.requests[1]
    assert server.requests[0]["max_tokens"] == 300 and server.requests[0]["temperature"] == 0.0


def test_batch_keeps_order_and_matches_single_calls(fake_openai, tmp_path):
    server = fake_openai()
    registry, keys = remote_setup(tmp_path, server)
    model = clemrs.load_model("fake-gpt", registries=[registry], keys=keys)
    batch = [[{"role": "user", "content": f"row {i}"}] for i in range(6)]
    results = model.generate_batch_response(batch)
    assert [r[2] for r in results] == [f"echo: row {i}" for i in range(6)]
    assert model.batch_mode == "concurrent"


def test_batch_local_one_forward_pass_equals_single():
    need_hf()
    model = clemrs.load_model("smollm2-135m-hf", {"temperature": 0.0, "max_tokens": 12})
    batch = [MESSAGES, [{"role": "user", "content": "Name a colour."}]]
    results = model.generate_batch_response(batch)
    assert model.batch_mode == "forward_pass"
    assert [r[2] for r in results] == [model.generate_response(m)[2] for m in batch]


# -- ModelSpec and list_models --

def test_model_spec():
    s = clemrs.ModelSpec.from_name("x")
    assert s.model_name == "x" and s["model_name"] == "x" and "model_name" in s and "backend" not in s
    u = s.unify({"backend": "llamacpp", "model_config": {"a": 1}})
    assert u.to_dict() == {"model_name": "x", "backend": "llamacpp", "model_config": {"a": 1}}
    assert u.unify(clemrs.ModelSpec(model_config={"a": 1.0})) == u  # 1 == 1.0 unifies; the left value stays
    with pytest.raises(ValueError):
        u.unify({"backend": "openai"})
    # Content equality (clemcore's ModelSpecs all compare equal), usable as dict keys.
    assert clemrs.ModelSpec.from_dict({"a": 1, "b": 2}) == clemrs.ModelSpec(b=2, a=1)
    assert clemrs.ModelSpec(a=1) != clemrs.ModelSpec(a=2)
    assert len({clemrs.ModelSpec(a=1), clemrs.ModelSpec(a=1)}) == 1
    # Selector strings as `clem -m` reads them: an apostrophe inside a Python dict value survives.
    assert clemrs.ModelSpec.from_string("{'model_name': \"it's\"}").model_name == "it's"
    assert clemrs.ModelSpec.from_string("gpt-4o").to_dict() == {"model_name": "gpt-4o"}
    with pytest.raises(AttributeError):
        s.backend
    assert clemrs.ModelSpec.from_name("mock").is_programmatic()
    assert repr(s) == 'ModelSpec({"model_name":"x"})'


def test_list_models_filters_in_registry_order():
    names = [s.model_name for s in clemrs.list_models(backend="llamacpp")]
    assert "smollm2-135m" in names and "smollm2-135m-hf" not in names
    everything = clemrs.list_models()
    assert len(everything) > len(names)
    assert [s.model_name for s in everything if s.backend == "llamacpp"] == names


def test_load_model_reads_the_model_spec(tmp_path, fake_openai):
    server = fake_openai()
    registry, keys = remote_setup(tmp_path, server)
    model = clemrs.load_model({"backend": "openai_compatible"}, registries=[registry], keys=keys)
    assert model.model_name == model.name == "fake-gpt"
    assert model.model_spec.model_id == "fake-model"
    assert isinstance(model.model_spec, clemrs.ModelSpec)


# -- generation arguments, as clemcore's Model --

def test_gen_args(tmp_path, fake_openai):
    server = fake_openai()
    registry, keys = remote_setup(tmp_path, server)
    model = clemrs.load_model("fake-gpt", registries=[registry], keys=keys)
    assert model.gen_args == {"temperature": 0.0, "max_tokens": 300}
    model.set_gen_args(temperature=0.5, max_tokens=7, seed=3)
    assert model.get_gen_arg("max_tokens") == 7 and model.temperature == 0.5
    model.set_gen_arg("top_p", 0.9)
    model.generate_response([{"role": "user", "content": "hi"}])
    sent = server.requests[-1]
    assert (sent["temperature"], sent["max_tokens"], sent["seed"], sent["top_p"]) == (0.5, 7, 3, 0.9)
    model.set_gen_args(max_tokens=5)  # replaces all, as clemcore's
    with pytest.raises(KeyError):
        model.get_gen_arg("temperature")
    with pytest.raises(ValueError, match="temperature"):
        model.set_gen_arg("temperature", -1)
    with pytest.raises(ValueError, match="max_tokens"):
        model.set_gen_args(max_tokens=2**40)
    with pytest.raises(ValueError, match="temperature"):
        clemrs.load_model("mock", {"temperature": "hot"})


def test_stop_gen_arg_is_honoured(tmp_path, fake_openai):
    server = fake_openai()
    registry, keys = remote_setup(tmp_path, server)
    model = clemrs.load_model("fake-gpt", registries=[registry], keys=keys)
    model.set_gen_arg("stop", "END")
    model.generate_response([{"role": "user", "content": "hi"}])
    assert server.requests[-1]["stop"] == ["END"]
    model.set_gen_arg("stop", ["END", "\n\n"])
    model.generate_response([{"role": "user", "content": "hi"}])
    assert server.requests[-1]["stop"] == ["END", "\n\n"]
    with pytest.raises(ValueError, match="stop"):
        model.set_gen_arg("stop", 3)


def test_stop_gen_arg_cuts_a_local_reply():
    need_gguf()
    model = clemrs.get_model_for("smollm2-135m")
    _, _, free = model.generate_response(MESSAGES)
    assert "Paris" in free
    model.set_gen_arg("stop", ["Paris"])
    _, response, cut = model.generate_response(MESSAGES)
    assert "Paris" not in cut and free.startswith(cut.rstrip()), (free, cut)


# -- exceptions --

def test_exceptions_form_one_family():
    for cls in (clemrs.ContextExceededError, clemrs.ModelConfigError, clemrs.BackendError):
        assert issubclass(cls, clemrs.ClemrsError)
    with pytest.raises(clemrs.ModelConfigError, match="no-such-model"):
        clemrs.load_model("no-such-model")


def test_unusable_entry_is_a_config_error(tmp_path):
    keys = tmp_path / "key.json"
    keys.write_text("{}")
    registry = tmp_path / "r.json"
    registry.write_text(json.dumps([{"model_name": "broken", "backend": "openai_compatible"}]))
    with pytest.raises(clemrs.ModelConfigError, match="model_id"):
        clemrs.load_model("broken", registries=[registry], keys=keys)


def test_context_exceeded_before_generating():
    need_gguf()
    model = clemrs.load_model("smollm2-135m", {"temperature": 0.0, "max_tokens": 100})
    long = [{"role": "user", "content": "word " * 9000}]
    with pytest.raises(clemrs.ContextExceededError) as e:
        model.generate_response(long)
    assert e.value.context_size == 8192
    assert e.value.tokens_used > 9000 and e.value.tokens_left == e.value.context_size - e.value.tokens_used
    # In a batch, the row that overflows holds its exception; the other row is answered.
    ok, bad = model.generate_batch_response([MESSAGES, long])
    assert "Paris" in ok[2]
    assert isinstance(bad, clemrs.ContextExceededError) and bad.tokens_left < 0


def test_provider_error_is_a_backend_error(tmp_path, fake_openai):
    server = fake_openai(reply=lambda body: (400, {"error": {"message": "bad things", "type": "invalid"}}))
    registry, keys = remote_setup(tmp_path, server)
    model = clemrs.load_model("fake-gpt", registries=[registry], keys=keys)
    with pytest.raises(clemrs.BackendError, match="bad things"):
        model.generate_response(MESSAGES)
    assert len(server.requests) == 1  # a 400 is not retried


# -- messages as clemcore's games send them --

def test_messages_with_images_are_accepted(tmp_path, fake_openai):
    server = fake_openai()
    registry, keys = remote_setup(tmp_path, server, multimodality={"multiple_images": True})
    model = clemrs.load_model("fake-gpt", registries=[registry], keys=keys)
    model.generate_response([{"role": "user", "content": "what is it?", "image": "https://example.org/cat.png"}])
    model.generate_response([{"role": "user", "content": "and these?", "image": ["https://a/1.png", "https://a/2.png"]}])
    first, second = server.requests
    assert first["messages"][0]["content"][1] == {"type": "image_url", "image_url": {"url": "https://example.org/cat.png"}}
    assert [p["type"] for p in second["messages"][0]["content"]] == ["text", "image_url", "image_url"]


def test_messages_are_normalised_as_clemcore_does(tmp_path, fake_openai):
    server = fake_openai()
    registry, keys = remote_setup(tmp_path, server)
    model = clemrs.load_model("fake-gpt", registries=[registry], keys=keys)
    model.generate_response([{"role": "system", "content": ""}, {"role": "user", "content": "a"},
                             {"role": "user", "content": "b"}])
    assert server.requests[0]["messages"] == [{"role": "user", "content": "a\n\nb"}]


@pytest.mark.parametrize("bad, error, where", [
    ("hello", TypeError, "messages must be a list"),
    (["hello"], TypeError, r"messages\[0\] must be"),
    ([{"role": "robot", "content": "x"}], ValueError, r"messages\[0\]"),
    ([{"role": "user"}], ValueError, "content"),
    ([{"role": "user", "content": "x", "image": 3}], ValueError, r"messages\[0\]"),
    ([{"role": "user", "content": "x", "extra": float("nan")}], ValueError, "finite"),
    ([{"role": "user", "content": "x", 1: 2}], TypeError, "keys must be str"),
])
def test_bad_messages_are_refused_naming_where(bad, error, where):
    model = clemrs.load_model("mock")
    with pytest.raises(error, match=where):
        model.generate_response(bad)


def test_deep_input_is_refused_not_recursed():
    deep = {"role": "user", "content": "x"}
    for _ in range(100_000):
        deep = {"a": deep}
    with pytest.raises(ValueError, match="nested more than 64"):
        clemrs.load_model("mock").generate_response([deep])
    with pytest.raises(ValueError, match="nested more than 64"):
        clemrs.ModelSpec.from_dict(deep)


def test_help_is_enough():
    doc = clemrs.load_model.__doc__
    assert "registries" in doc and "gen_args" in doc and "resolve" in doc
    assert clemrs.load_model.__text_signature__.startswith("(spec, gen_args=None, *, registries=None")
    assert "(prompt, response, response_text)" in clemrs.Model.generate_response.__doc__
