"""The GIL is released while a model works: one model from several Python threads, and Ctrl-C
(KeyboardInterrupt) during a slow remote call or a long local generation."""

import _thread
import signal
import threading
import time

import pytest

import clemrs
from conftest import need_gguf, need_hf, remote_setup

DELAY = 0.3


def test_eight_threads_share_one_model(fake_openai, tmp_path):
    server = fake_openai(delay=DELAY)
    registry, keys = remote_setup(tmp_path, server)
    model = clemrs.load_model("fake-gpt", registries=[registry], keys=keys)
    calls = 3
    replies = {}

    def worker(t):
        replies[t] = [model.generate_response([{"role": "user", "content": f"thread {t} call {c}"}])[2]
                      for c in range(calls)]

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    took = time.monotonic() - started
    # Every reply right, and each thread's in the order it asked.
    assert replies == {t: [f"echo: thread {t} call {c}" for c in range(calls)] for t in range(8)}
    # The server saw them together: sequential calls would take 8 * 3 * DELAY = 7.2 s.
    print(f"8 threads x {calls} calls of {DELAY}s: {took:.2f}s, at most {server.max_in_flight} in flight")
    assert server.max_in_flight == 8
    assert took < calls * DELAY * 3


def interrupt_after(seconds):
    """Interrupts the main thread after `seconds`, as Ctrl-C would; returns the Timer and when it fired."""
    fired = {}

    def fire():
        fired["at"] = time.monotonic()
        _thread.interrupt_main()

    timer = threading.Timer(seconds, fire)
    timer.start()
    return timer, fired


def assert_interrupts_within_a_second(call, after=0.5):
    # Python's own Ctrl-C handler, as in a terminal: a process started in the background by a shell without job
    # control inherits SIGINT ignored, and interrupt_main() then does nothing.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer, fired = interrupt_after(after)
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            call()
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    raised = time.monotonic()
    assert "at" in fired, f"the call ended after {raised - started:.2f}s, before the interrupt"
    print(f"KeyboardInterrupt {raised - fired['at']:.3f}s after the interrupt")
    assert raised - fired["at"] < 1.0


def test_ctrl_c_during_a_slow_remote_call(fake_openai, tmp_path):
    server = fake_openai(delay=20)
    registry, keys = remote_setup(tmp_path, server)
    model = clemrs.load_model("fake-gpt", registries=[registry], keys=keys)
    assert_interrupts_within_a_second(lambda: model.generate_response([{"role": "user", "content": "slow"}]))
    assert_interrupts_within_a_second(
        lambda: model.generate_batch_response([[{"role": "user", "content": "slow"}]] * 3))


# Greedy SmolLM2-135M repeats "hello" until max_tokens (300 tokens: 1,049 characters, both backends); asked to
# count, it answers one short sentence and stops, and the call ends before any interrupt.
COUNT = [{"role": "user", "content": "Repeat the word hello 1000 times."}]


@pytest.mark.parametrize("name", ["smollm2-135m", "smollm2-135m-hf"])
def test_ctrl_c_during_a_long_local_generation(name):
    (need_gguf if name == "smollm2-135m" else need_hf)()
    model = clemrs.load_model(name, {"temperature": 0.0, "max_tokens": 8})
    started = time.monotonic()
    short = model.generate_response(COUNT)[2]
    baseline = time.monotonic() - started
    model.set_gen_args(temperature=0.0, max_tokens=4000)
    assert_interrupts_within_a_second(lambda: model.generate_response(COUNT), after=1.0)
    # The cancelled generation leaves the model usable, and leaves it at its next step: were it still decoding its
    # 4000 tokens, this call would wait for it (minutes). Load on a shared machine slows both calls alike.
    model.set_gen_args(temperature=0.0, max_tokens=8)
    started = time.monotonic()
    assert model.generate_response(COUNT)[2] == short
    after = time.monotonic() - started
    print(f"8 tokens: {baseline:.2f}s before, {after:.2f}s after the interrupted call")
    assert after < 4 * baseline + 10
