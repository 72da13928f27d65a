//! Qwen3: the llama decoder with an RMSNorm on every query and key head (`self_attn.q_norm`, `self_attn.k_norm`,
//! over head_dim, before RoPE), no q/k/v biases unless `attention_bias`, and an explicit `head_dim` that need not
//! be hidden_size / heads. Sliding layers only with `use_sliding_window` (from `max_window_layers` on).

use candle_core::Result;
use candle_nn::VarBuilder;

use super::config::ModelConfig;
use super::layers::{Attention, Mlp};
use super::llama::Llama;

/// Loads a Qwen3 checkpoint into the llama decoder.
pub fn load(vb: VarBuilder, c: &ModelConfig) -> Result<Llama> {
    Llama::load_with(
        vb,
        c,
        |a| Ok(Attention::new(Attention::projections(a, c)?, Some(Attention::qk_norms(a, c, false)?), c)),
        |m| Mlp::load(m, c),
    )
}
