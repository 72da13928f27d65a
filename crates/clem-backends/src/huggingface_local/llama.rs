//! The llama decoder (Llama 2/3, SmolLM2), which Mistral and Qwen2 share up to biases and sliding windows, and
//! which Qwen3 ([`super::qwen3`]) and Phi-3 ([`super::phi3`]) load their weights into: pre-norm RMSNorm blocks,
//! grouped-query attention with half-split RoPE, gated MLP. Batched: every row carries its own positions and an
//! additive attention mask, so left-padded rows compute what they would alone.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{LayerType, ModelConfig};
use super::layers::{
    self, Attention, Embedding, KvCache, LayerMasks, Linear, Mlp, RmsNorm, Ropes, SlotInputs, SlotStep, StepMask,
};

/// One pre-norm block: `x + attn(norm(x))`, then `x + mlp(norm(x))`.
pub struct Block {
    pub attn: Attention,
    pub mlp: Mlp,
    pub input_norm: RmsNorm,
    pub post_norm: RmsNorm,
    pub kind: LayerType,
}

/// A loaded llama-family model.
pub struct Llama {
    embed: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    ropes: Ropes,
    pub config: ModelConfig,
}

impl Llama {
    /// Loads llama-named weights (`model.` prefix, `lm_head`): Llama, Mistral, Qwen2.
    pub fn load(vb: VarBuilder, c: &ModelConfig) -> Result<Llama> {
        Self::load_with(vb, c, |a| Ok(Attention::new(Attention::projections(a, c)?, None, c)), |m| Mlp::load(m, c))
    }

    /// Loads the shared layout; `attention` and `mlp` load one layer's `self_attn` and `mlp`, which is where the
    /// architectures built on this decoder differ.
    pub fn load_with(
        vb: VarBuilder,
        c: &ModelConfig,
        attention: impl Fn(&VarBuilder) -> Result<Attention>,
        mlp: impl Fn(&VarBuilder) -> Result<Mlp>,
    ) -> Result<Llama> {
        let m = vb.pp("model");
        let embed = Embedding::load(&m.pp("embed_tokens"), c.vocab_size, c.hidden_size, c.compute)?;
        let eps = c.rms_norm_eps;
        let layers = c
            .layer_types
            .iter()
            .enumerate()
            .map(|(i, &kind)| {
                let l = m.pp(format!("layers.{i}"));
                Ok(Block {
                    attn: attention(&l.pp("self_attn"))?,
                    mlp: mlp(&l.pp("mlp"))?,
                    input_norm: RmsNorm::load(l.pp("input_layernorm"), c.hidden_size, eps, false)?,
                    post_norm: RmsNorm::load(l.pp("post_attention_layernorm"), c.hidden_size, eps, false)?,
                    kind,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(m.pp("norm"), c.hidden_size, eps, false)?;
        let lm_head = layers::lm_head(&vb.pp("lm_head"), &embed, c)?;
        let ropes = Ropes::new(c, vb.device())?;
        Ok(Llama { embed, layers, norm, lm_head, ropes, config: c.clone() })
    }

    /// One forward step. `ids` `(batch, seq)` u32, `positions` `(batch * seq)` u32 (row-major). Returns the logits
    /// of each row's last position `(batch, vocab)`.
    pub fn forward(&self, ids: &Tensor, positions: &Tensor, mask: &StepMask, cache: &mut KvCache) -> Result<Tensor> {
        let (b, seq) = ids.dims2()?;
        let ropes = self.ropes.at(positions, b, seq, mask.kv_len())?;
        let masks = LayerMasks::new(mask, &self.config, ids.device())?;
        let mut x = self.embed.forward(ids)?;
        for (layer, kv) in self.layers.iter().zip(cache.layers_mut(self.layers.len())) {
            let h = layer.input_norm.forward(&x)?;
            let h = layer.attn.forward(&h, ropes.get(layer.kind), masks.get(layer.kind)?, kv)?;
            x = (x + h)?;
            let h = layer.post_norm.forward(&x)?;
            x = (&x + layer.mlp.forward(&h)?)?;
        }
        let last = x.narrow(1, seq - 1, 1)?.contiguous()?;
        let last = self.norm.forward(&last)?;
        self.lm_head.forward(&last)?.squeeze(1)?.to_dtype(DType::F32)
    }

    /// A ragged step over sequences with caches of their own (see [`SlotStep`]): the logits of each one's last
    /// token `(sequences, vocab)`.
    pub fn forward_slots(&self, steps: &mut [SlotStep<'_>]) -> Result<Tensor> {
        let device = self.ropes.device();
        let inputs = SlotInputs::new(steps, &self.ropes, &self.config, &device)?;
        let mut x = self.embed.forward(&inputs.ids)?;
        let n = self.layers.len();
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.input_norm.forward(&x)?;
            let h = layer.attn.forward_slots(&h, &mut inputs.parts(steps, l, n, layer.kind)?)?;
            x = (x + h)?;
            let h = layer.post_norm.forward(&x)?;
            x = (&x + layer.mlp.forward(&h)?)?;
        }
        let last = x.index_select(&inputs.last_tokens(&device)?, 1)?;
        let last = self.norm.forward(&last)?;
        self.lm_head.forward(&last)?.squeeze(0)?.to_dtype(DType::F32)
    }
}
