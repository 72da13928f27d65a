#!/usr/bin/env python3
"""Build tiny random-weight Hugging Face models and transformers' reference outputs for clemrs's
huggingface_local golden tests (crates/clem-backends/tests/hf_tiny_goldens.rs).

Usage: make_tiny_hf_models.py [OUT_DIR] [--only ARCH ...]
       (OUT_DIR defaults to crates/clem-backends/tests/fixtures/hf_tiny next to this script)

Needs torch, transformers and safetensors (a dev tool only; the Rust tests read the committed files without
Python). For each architecture (llama, qwen2, qwen3, mistral, gemma2, gemma3_text, phi3) it writes, with fixed
seeds, OUT_DIR/<arch>/config.json, model.safetensors (f32, each model well under 200 KB) and goldens.json:

- prompts: four fixed token-id prompts (4, 9, 13 and 22 tokens; the sliding windows are 8-10 tokens, Phi-3's
  LongRoPE switches at 17);
- single[i]: prompt i alone: `prefill_logits` (all logits of the last prompt position), `tokens` (12 greedy new
  tokens from `generate(do_sample=False)`, no EOS) and `steps` (top-5 ids and logits of every generation step);
- batches[j]: rows (prompt indexes) run as one left-padded `generate`: each row's prefill logits and tokens.

Weights are drawn larger than transformers' init (unit-scale norms, non-zero Gemma norm offsets, q/k norms,
biases) so that every part of the forward pass moves the logits, and the seed is advanced until every greedy
choice wins by a clear margin (so the greedy tokens do not hinge on rounding) and the continuations vary.
goldens.json records the torch and transformers versions used. Exit code 3 (with the reason on stderr) when a
package is missing.
"""

import argparse
import json
import math
import os
import sys

try:
    import torch
    import transformers
    from safetensors.torch import load_file, save_file
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )
except ImportError as e:  # the caller skips (or fails) with this reason
    print(f"MISSING {e.name} (pip install torch transformers safetensors)", file=sys.stderr)
    sys.exit(3)

VOCAB = 128
NEW_TOKENS = 12
PAD = 0
PROMPTS = [
    [5, 17, 99, 3],
    [12, 40, 7, 88, 101, 64, 2, 9, 33],
    [120, 4, 56, 78, 23, 19, 91, 11, 70, 45, 6, 100, 38],
    [8, 61, 27, 115, 49, 13, 84, 30, 72, 21, 96, 1, 59, 44, 107, 15, 36, 90, 24, 67, 52, 119],
]
BATCHES = [[0, 1, 2], [3, 0, 2, 1]]
# A greedy choice must beat the runner-up by this much (f32 noise is ~1e-6).
MIN_MARGIN = 2e-3
# Continuations must vary (a model that only repeats its input would hide bugs).
MIN_DISTINCT = 16

COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=128, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=PAD)


def configs():
    """The tiny configs, each exercising its architecture's particulars."""
    return {
        "llama": LlamaConfig(**COMMON, num_hidden_layers=2, rope_theta=5000.0, tie_word_embeddings=False),
        "qwen2": Qwen2Config(**COMMON, num_hidden_layers=2, rope_theta=20000.0, tie_word_embeddings=False),
        "qwen3": Qwen3Config(**COMMON, num_hidden_layers=2, head_dim=16, rope_theta=1_000_000.0,
                             tie_word_embeddings=False),
        "mistral": MistralConfig(**COMMON, num_hidden_layers=2, sliding_window=8, rope_theta=10000.0,
                                 tie_word_embeddings=False),
        "gemma2": Gemma2Config(**COMMON, num_hidden_layers=3, head_dim=16, query_pre_attn_scalar=24,
                               sliding_window=8, final_logit_softcapping=15.0, attn_logit_softcapping=3.0,
                               hidden_activation="gelu_pytorch_tanh", rope_theta=10000.0, tie_word_embeddings=True),
        "gemma3_text": Gemma3TextConfig(
            **COMMON, num_hidden_layers=3, head_dim=16, query_pre_attn_scalar=20, sliding_window=8,
            sliding_window_pattern=3, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
            rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1_000_000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
        "phi3": Phi3Config(
            **{**COMMON, "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64,
               "rms_norm_eps": 1e-5},
            num_hidden_layers=2, original_max_position_embeddings=16, sliding_window=10, tie_word_embeddings=False,
            rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                             "short_factor": [1.0, 1.3, 2.1, 3.5], "long_factor": [1.5, 2.5, 4.0, 7.0]}),
    }


def randomize(model, arch, seed):
    """Draws every weight: linear ~ N(0, 1/fan_in), embeddings ~ N(0, 1), norms around their neutral value."""
    gen = torch.Generator().manual_seed(seed)
    gemma = arch.startswith("gemma")
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if gemma and ("post_attention_layernorm" in name or "post_feedforward_layernorm" in name
                          or name == "model.norm.weight"):
                # Gemma adds the blocks' (1 + w)-scaled outputs to embeddings scaled by sqrt(hidden), and a tied
                # model's logits are dot products with those embeddings: with smaller embeddings (below) and larger
                # w here the blocks, not the last token's embedding, decide the next token.
                p.copy_(2.0 + 0.3 * noise)
            elif name.endswith("norm.weight"):
                # Gemma multiplies by (1 + w): w around 0; the others by w: around 1.
                p.copy_((0.0 if gemma else 1.0) + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.2 * noise)
            elif "embed_tokens" in name:
                p.copy_((0.3 if gemma else 1.0) * noise)
            elif name == "lm_head.weight":
                p.copy_(3.0 * noise / math.sqrt(p.shape[1]))
            else:
                p.copy_(noise / math.sqrt(p.shape[1]))


def padded(rows):
    width = max(len(r) for r in rows)
    ids = [[PAD] * (width - len(r)) + r for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    return torch.tensor(ids), torch.tensor(mask), width


def run(model, rows):
    """Greedy generation of a left-padded batch: tokens, all step logits, and the smallest greedy margin."""
    ids, mask, width = padded(rows)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                         do_sample=False, eos_token_id=None, pad_token_id=PAD, output_logits=True,
                         return_dict_in_generate=True, use_cache=True)
    tokens = out.sequences[:, width:].tolist()
    logits = torch.stack(out.logits, dim=1).float()  # (rows, steps, vocab)
    top2 = logits.topk(2, dim=-1).values
    margin = (top2[..., 0] - top2[..., 1]).min().item()
    return tokens, logits, margin


def f32(x):
    return float(f"{x:.9g}")


def build(arch, config, out_dir):
    for attempt in range(50):
        seed = 1000 * (list(configs()).index(arch) + 1) + attempt
        torch.manual_seed(seed)
        config._attn_implementation = "eager"
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        model = model.float().eval()
        randomize(model, arch, seed)
        with torch.no_grad():
            single = [run(model, [p]) for p in PROMPTS]
            batches = [run(model, [PROMPTS[i] for i in rows]) for rows in BATCHES]
        margin = min(m for _, _, m in single + batches)
        distinct = len({t for tokens, _, _ in single for t in tokens[0]})
        if margin >= MIN_MARGIN and distinct >= MIN_DISTINCT:
            break
        print(f"{arch}: seed {seed}: greedy margin {margin:.2e}, {distinct} distinct tokens; trying the next",
              file=sys.stderr)
    else:
        sys.exit(f"{arch}: no seed gave greedy margins >= {MIN_MARGIN} and {MIN_DISTINCT} distinct tokens")

    d = os.path.join(out_dir, arch)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    for extra in os.listdir(d):
        if extra not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(d, extra))
    # The saved weights must be the ones the goldens were computed with.
    saved = load_file(os.path.join(d, "model.safetensors"))
    state = model.state_dict()
    assert all(torch.equal(saved[k], state[k]) for k in saved), f"{arch}: saved weights differ"

    def steps(logits):
        top = logits.topk(5, dim=-1)
        return [{"ids": i, "logits": [f32(x) for x in v]} for i, v in zip(top.indices.tolist(), top.values.tolist())]

    goldens = {
        "generator": "crates/clem-backends/tests/support/make_tiny_hf_models.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "seed": seed,
        "min_greedy_margin": f32(margin),
        "new_tokens": NEW_TOKENS,
        "pad_token_id": PAD,
        "prompts": PROMPTS,
        "single": [
            {"prefill_logits": [f32(x) for x in logits[0, 0].tolist()], "tokens": tokens[0], "steps": steps(logits[0])}
            for tokens, logits, _ in single
        ],
        "batches": [
            {"rows": rows, "tokens": tokens, "prefill_logits": [[f32(x) for x in r] for r in logits[:, 0].tolist()]}
            for rows, (tokens, logits, _) in zip(BATCHES, batches)
        ],
    }
    with open(os.path.join(d, "goldens.json"), "w") as f:
        json.dump(goldens, f, indent=1)
        f.write("\n")
    size = os.path.getsize(os.path.join(d, "model.safetensors"))
    print(f"{arch}: seed {seed}, min greedy margin {margin:.3g}, model.safetensors {size // 1024} KB")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", nargs="?", default=os.path.join(here, "..", "fixtures", "hf_tiny"))
    ap.add_argument("--only", nargs="*", help="architectures to (re)build")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for arch, config in configs().items():
        if not args.only or arch in args.only:
            build(arch, config, os.path.normpath(args.out_dir))


if __name__ == "__main__":
    main()
