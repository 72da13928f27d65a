//! Gemma 3's language model: the Gemma decoder ([`super::gemma2`]) with `1 + weight` RMSNorms on every query and
//! key head (`q_norm`, `k_norm`, before RoPE), global layers every `sliding_window_pattern`-th layer (or as
//! `layer_types` says), and local layers rotating with their own base (`rope_local_base_freq`, or
//! `rope_parameters.sliding_attention`). From a multimodal `gemma3` checkpoint only the language model is read:
//! `language_model.model.*` as published (or `model.language_model.*` as transformers 5 saves it); the vision
//! tower's weights stay on disk.

use candle_core::Result;
use candle_nn::VarBuilder;

use super::config::ModelConfig;
use super::gemma2::Gemma;
use super::layers::Attention;

/// Loads a `gemma3_text` or multimodal `gemma3` checkpoint into the Gemma decoder.
pub fn load(vb: VarBuilder, c: &ModelConfig) -> Result<Gemma> {
    let (m, head) = if vb.contains_tensor("language_model.model.embed_tokens.weight") {
        (vb.pp("language_model.model"), vb.pp("language_model.lm_head"))
    } else if vb.contains_tensor("model.language_model.embed_tokens.weight") {
        (vb.pp("model.language_model"), vb.pp("lm_head"))
    } else {
        (vb.pp("model"), vb.pp("lm_head"))
    };
    Gemma::load_with(m, head, c, |a| {
        Ok(Attention::new(Attention::projections(a, c)?, Some(Attention::qk_norms(a, c, true)?), c))
    })
}
