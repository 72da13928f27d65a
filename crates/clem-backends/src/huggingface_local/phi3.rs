//! Phi-3 (and Phi-3.5 / Phi-4-mini): the llama decoder with fused projections — `self_attn.qkv_proj` (queries,
//! then keys, then values) and `mlp.gate_up_proj` (gate, then up) — used as stored (the other architectures'
//! projections are fused the same way when loaded).
//! RoPE may rotate only part of each head (`partial_rotary_factor`) and use LongRoPE (`rope_scaling` type
//! "longrope", formerly "su"): short factors while the sequence fits in `original_max_position_embeddings`, long
//! ones beyond, where transformers also recomputes the KV cache once (see
//! [`ModelConfig::cache_rebuild_len`]); every layer slides when `sliding_window` is set.

use candle_core::Result;
use candle_nn::VarBuilder;

use super::config::ModelConfig;
use super::layers::{linear, Attention, Mlp};
use super::llama::Llama;

/// Loads a Phi-3 checkpoint into the llama decoder.
pub fn load(vb: VarBuilder, c: &ModelConfig) -> Result<Llama> {
    let (q_out, kv_out) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    Llama::load_with(
        vb,
        c,
        |a| {
            // Already fused in the checkpoint, in the order the attention expects.
            let qkv = linear(&a.pp("qkv_proj"), c.hidden_size, q_out + 2 * kv_out, false, c.compute)?;
            Ok(Attention::new((qkv, linear(&a.pp("o_proj"), q_out, c.hidden_size, false, c.compute)?), None, c))
        },
        |m| {
            let n = c.intermediate_size;
            let gate_up = linear(&m.pp("gate_up_proj"), c.hidden_size, 2 * n, false, c.compute)?;
            Ok(Mlp::new(gate_up, linear(&m.pp("down_proj"), n, c.hidden_size, false, c.compute)?, c))
        },
    )
}
