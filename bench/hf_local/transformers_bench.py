"""The transformers side of the huggingface_local benchmark: what a clemcore user runs instead.

Usage: PYTHON_WITH_TORCH bench/hf_local/transformers_bench.py MODEL_DIR THREADS
Loads MODEL_DIR as clemcore's huggingface_local does (AutoModelForCausalLM, dtype "auto", CPU), renders the same
chat prompt with the tokenizer's template, and measures exactly 128 greedy new tokens (EOS ignored): prefill
time (one forward pass over the prompt), decode tokens/s, and batch-8 throughput (8 copies of the prompt, one
generate call), and peak RSS. Each timed run is repeated (BENCH_REPEATS, default 3, as the clemrs side) and the
fastest kept. Prints one JSON line.
"""

import json
import os
import resource
import sys
import time

NEW_TOKENS = 128
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def main():
    model_dir, threads = sys.argv[1], int(sys.argv[2])
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    model.eval()
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    gen = dict(do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=tok.eos_token_id)

    repeats = max(1, int(os.environ.get("BENCH_REPEATS", "3")))

    def fastest(run):
        best, out = None, None
        for _ in range(repeats):
            t = time.perf_counter()
            out = run()
            took = time.perf_counter() - t
            best = took if best is None else min(best, took)
        return best, out

    with torch.inference_mode():
        model.generate(ids, **{**gen, "max_new_tokens": 8, "min_new_tokens": 8})  # warm-up
        prefill, _ = fastest(lambda: model(ids))
        total, out = fastest(lambda: model.generate(ids, **gen))
        assert out.shape[1] - ids.shape[1] == NEW_TOKENS
        batch = ids.repeat(8, 1)
        total8, out8 = fastest(lambda: model.generate(batch, attention_mask=torch.ones_like(batch), **gen))
    decode_tps = (NEW_TOKENS - 1) / max(total - prefill, 1e-9)
    print(json.dumps({"side": "transformers", "threads": threads, "dir": model_dir, "dtype": str(model.dtype),
                      "prompt_tokens": ids.shape[1], "prefill_s": prefill, "decode_tps": decode_tps,
                      "batch1_tps": NEW_TOKENS / total,
                      "batch8_tps": 8 * (out8.shape[1] - batch.shape[1]) / total8,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                      "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__}}))


if __name__ == "__main__":
    main()
