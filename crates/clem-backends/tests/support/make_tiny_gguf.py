"""Write a tiny random-weight llama-architecture GGUF for clemrs's llamacpp wiring tests (PyPI `gguf`).

Usage: python3 make_tiny_gguf.py OUT.gguf [--ctx N] [--no-bos-eos] [--no-template] [--split-tensors N]

The model is a 2-layer llama (64-dim embeddings, 4 query heads, 2 KV heads) with a byte-level BPE vocabulary of
the 256 GPT-2 byte symbols, two merges and four special tokens. Its output is noise, which is all the wiring tests
need: the chat template in the metadata, the bos/eos tokens (or their absence), the context size and the split
format. With --split-tensors N the file is written in llama.cpp's split format (`OUT-00001-of-0000K.gguf`, ...),
N tensors per part. Exit code 3 (with a reason on stderr) when a package is missing, so a caller can tell "skip"
from "broken".
"""

import argparse
import sys

try:
    import numpy as np
    import gguf
except ImportError as e:  # the caller skips (or fails under CI) with this reason
    print(f"MISSING {e.name} (pip install gguf)", file=sys.stderr)
    sys.exit(3)

TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]


def byte_symbols():
    """GPT-2's byte-to-unicode table: the 256 symbols of a byte-level BPE vocabulary."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--no-bos-eos", action="store_true", help="leave out tokenizer.ggml.bos/eos_token_id")
    ap.add_argument("--no-template", action="store_true", help="leave out tokenizer.chat_template")
    ap.add_argument("--split-tensors", type=int, default=0, help="write llama.cpp split files of N tensors")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()

    n_embd, n_head, n_head_kv, n_layer, n_ff = 64, 4, 2, 2, 128
    head_dim = n_embd // n_head
    tokens = byte_symbols() + ["he", "ll"] + SPECIALS
    types = [gguf.TokenType.NORMAL] * (len(tokens) - len(SPECIALS)) + [gguf.TokenType.CONTROL] * len(SPECIALS)
    n_vocab = len(tokens)

    w = gguf.GGUFWriter(args.out, "llama", split_max_tensors=args.split_tensors)
    w.add_name("clemrs-tiny-random")
    w.add_context_length(args.ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["h e", "l l"])
    w.add_add_bos_token(False)
    if not args.no_bos_eos:
        w.add_bos_token_id(tokens.index("<s>"))
        w.add_eos_token_id(tokens.index("<|im_end|>"))
    if not args.no_template:
        w.add_chat_template(TEMPLATE)

    rng = np.random.default_rng(args.seed)

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    # numpy shapes are ggml's ne reversed: a (n_out, n_in) matrix maps n_in to n_out.
    w.add_tensor("token_embd.weight", rand(n_vocab, n_embd))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", rand(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.attn_k.weight", rand(n_head_kv * head_dim, n_embd))
        w.add_tensor(f"blk.{i}.attn_v.weight", rand(n_head_kv * head_dim, n_embd))
        w.add_tensor(f"blk.{i}.attn_output.weight", rand(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(n_embd, n_ff))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("output.weight", rand(n_vocab, n_embd))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
