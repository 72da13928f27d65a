#!/usr/bin/env python3
"""Derive a Hugging Face model folder from a llama-architecture GGUF (used for SmolLM2-135M-Instruct).

Needs only numpy and the `gguf` package (no torch, no safetensors package: the safetensors file is written by
hand, which is also how bf16 is stored without numpy bf16 support). Writes config.json, generation_config.json,
model.safetensors (bf16 or f32), tokenizer.json (GPT2-style byte-level BPE from the GGUF vocab and merges),
tokenizer_config.json (chat template, special tokens) and MANIFEST.sha256 (checksums of every file written).

Usage: gguf_to_hf.py GGUF OUT_DIR [--dtype bf16|f32]
"""
import argparse
import hashlib
import json
import os
import struct
import sys

import numpy as np
import gguf

CONVERTER_VERSION = "1"

NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def unpermute(w, n_head):
    """Undo llama.cpp's convert permute of q_proj/k_proj rows (interleaved -> HF half-split RoPE layout)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def to_bf16_bits(a):
    """f32 -> bf16 as uint16, round to nearest even (what torch's .to(bfloat16) does)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def write_safetensors(path, tensors, dtype):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        a = tensors[name]
        if dtype == "bf16":
            data, tag = to_bf16_bits(a).tobytes(), "BF16"
        else:
            data, tag = np.ascontiguousarray(a, dtype="<f4").tobytes(), "F32"
        header[name] = {"dtype": tag, "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("out")
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    args = ap.parse_args()
    r = gguf.GGUFReader(args.gguf)
    arch = field(r, "general.architecture")
    if arch != "llama":
        sys.exit(f"{args.gguf}: architecture {arch!r}, only llama is supported")
    a = lambda k, d=None: field(r, f"llama.{k}", d)
    n_head, n_kv = int(a("attention.head_count")), int(a("attention.head_count_kv"))
    hidden = int(a("embedding_length"))

    tensors = {}
    for t in r.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(x) for x in reversed(t.shape.tolist())])
        parts = t.name.split(".")
        if t.name == "token_embd.weight":
            name = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            name = "model.norm.weight"
        elif t.name == "output.weight":
            name = "lm_head.weight"
        elif parts[0] == "blk" and parts[2] in NAMES:
            name = f"model.layers.{parts[1]}.{NAMES[parts[2]]}.weight"
            if parts[2] == "attn_q":
                w = unpermute(w, n_head)
            elif parts[2] == "attn_k":
                w = unpermute(w, n_kv)
        else:
            sys.exit(f"unexpected tensor {t.name}")
        tensors[name] = w
    tied = "lm_head.weight" not in tensors

    tokens = field(r, "tokenizer.ggml.tokens")
    types = field(r, "tokenizer.ggml.token_type")
    merges = field(r, "tokenizer.ggml.merges")
    tok_id = lambda k: field(r, f"tokenizer.ggml.{k}_token_id")
    bos, eos, unk, pad = tok_id("bos"), tok_id("eos"), tok_id("unknown"), tok_id("padding")
    name_of = lambda i: None if i is None else tokens[int(i)]
    added = [
        {"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": types[i] != 3, "special": types[i] == 3}
        for i in range(len(tokens)) if types[i] in (3, 4)
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, byte_level]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": list(merges)},
    }
    tok_config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added},
        "additional_special_tokens": [t for t in (name_of(bos), name_of(eos)) if t],
        "bos_token": name_of(bos),
        "chat_template": field(r, "tokenizer.chat_template"),
        "clean_up_tokenization_spaces": False,
        "eos_token": name_of(eos),
        "model_max_length": int(a("context_length")),
        "pad_token": name_of(pad),
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": name_of(unk),
        "vocab_size": len(tokens),
    }
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "head_dim": hidden // n_head,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": int(a("feed_forward_length")),
        "max_position_embeddings": int(a("context_length")),
        "mlp_bias": False,
        "num_attention_heads": n_head,
        "num_hidden_layers": int(a("block_count")),
        "num_key_value_heads": n_kv,
        "rms_norm_eps": float(np.float32(a("attention.layer_norm_rms_epsilon"))),
        "rope_scaling": None,
        "rope_theta": float(a("rope.freq_base")),
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16" if args.dtype == "bf16" else "float32",
        "use_cache": True,
        "vocab_size": len(tokens),
    }
    # rms_norm_eps is stored as f32 in the GGUF: 1e-5 comes back as 9.99999974e-06; HF's config says 1e-05.
    config["rms_norm_eps"] = float(f"{config['rms_norm_eps']:.6g}")
    gen_config = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}

    os.makedirs(args.out, exist_ok=True)
    for name, obj in [("config.json", config), ("generation_config.json", gen_config),
                      ("tokenizer.json", tokenizer), ("tokenizer_config.json", tok_config)]:
        with open(os.path.join(args.out, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=2)
    write_safetensors(os.path.join(args.out, "model.safetensors"), tensors, args.dtype)
    with open(os.path.join(args.out, "MANIFEST.sha256"), "w") as f:
        for name in sorted(os.listdir(args.out)):
            if name != "MANIFEST.sha256":
                with open(os.path.join(args.out, name), "rb") as g:
                    f.write(f"{hashlib.sha256(g.read()).hexdigest()}  {name}\n")


if __name__ == "__main__":
    main()
