//! Phi-3 (and Phi-3.5 / Phi-4-mini): the llama decoder with fused projections — `self_attn.qkv_proj` (queries,
//! then keys, then values) and `mlp.gate_up_proj` (gate, then up) — split into separate weights when loaded.
//! RoPE may rotate only part of each head (`partial_rotary_factor`) and use LongRoPE (`rope_scaling` type
//! "longrope", formerly "su"): short factors while the sequence fits in `original_max_position_embeddings`, long
//! ones beyond, where transformers also recomputes the KV cache once (see
//! [`ModelConfig::cache_rebuild_len`]); every layer slides when `sliding_window` is set.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::config::ModelConfig;
use super::layers::{linear, Attention, Linear, Mlp};
use super::llama::Llama;

/// Rows `start..start + len` of a fused `(out, in)` weight as a linear layer.
fn rows(w: &Tensor, start: usize, len: usize) -> Result<Linear> {
    Linear::new(&w.narrow(0, start, len)?, None)
}

/// Loads a Phi-3 checkpoint into the llama decoder.
pub fn load(vb: VarBuilder, c: &ModelConfig) -> Result<Llama> {
    let (q_out, kv_out) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    Llama::load_with(
        vb,
        c,
        |a| {
            let qkv = a.get((q_out + 2 * kv_out, c.hidden_size), "qkv_proj.weight")?;
            let o = linear(&a.pp("o_proj"), q_out, c.hidden_size, false)?;
            let parts = (rows(&qkv, 0, q_out)?, rows(&qkv, q_out, kv_out)?, rows(&qkv, q_out + kv_out, kv_out)?, o);
            Ok(Attention::new(parts, None, c))
        },
        |m| {
            let n = c.intermediate_size;
            let gate_up = m.get((2 * n, c.hidden_size), "gate_up_proj.weight")?;
            let down = linear(&m.pp("down_proj"), n, c.hidden_size, false)?;
            Ok(Mlp::new(rows(&gate_up, 0, n)?, rows(&gate_up, n, n)?, down, c.activation))
        },
    )
}
