//! The Gemma decoder of Gemma 2, which Gemma 3 ([`super::gemma3`]) loads its weights into: embeddings scaled by
//! sqrt(hidden_size), RMSNorm with `1 + weight`, a norm before *and* after each block (`input_layernorm`,
//! `post_attention_layernorm`, `pre_feedforward_layernorm`, `post_feedforward_layernorm`), attention scaled by
//! `query_pre_attn_scalar`^-1/2 with optional tanh soft-capping of the scores (`attn_logit_softcapping`) and of the
//! logits (`final_logit_softcapping`), a gelu_pytorch_tanh gated MLP, and sliding-window layers (every other one in
//! Gemma 2, from `layer_types` when given). Batched as [`super::llama`].

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{LayerType, ModelConfig};
use super::layers::{
    self, Attention, Embedding, KvCache, LayerMasks, Linear, Mlp, RmsNorm, Ropes, SlotInputs, SlotStep, StepMask,
};

/// One Gemma block: `x + post_attn(attn(input(x)))`, then `x + post_ff(mlp(pre_ff(x)))`.
pub struct Block {
    attn: Attention,
    mlp: Mlp,
    input_norm: RmsNorm,
    post_attn_norm: RmsNorm,
    pre_ff_norm: RmsNorm,
    post_ff_norm: RmsNorm,
    kind: LayerType,
}

/// A loaded Gemma 2 or Gemma 3 language model.
pub struct Gemma {
    embed: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    ropes: Ropes,
    pub config: ModelConfig,
}

/// Loads a Gemma 2 checkpoint (`model.` prefix).
pub fn load(vb: VarBuilder, c: &ModelConfig) -> Result<Gemma> {
    Gemma::load_with(vb.pp("model"), vb.pp("lm_head"), c, |a| {
        Ok(Attention::new(Attention::projections(a, c)?, None, c))
    })
}

impl Gemma {
    /// Loads the decoder under `m` (`embed_tokens`, `layers`, `norm`) and the output projection under `head`;
    /// `attention` loads one layer's `self_attn`.
    pub fn load_with(
        m: VarBuilder,
        head: VarBuilder,
        c: &ModelConfig,
        attention: impl Fn(&VarBuilder) -> Result<Attention>,
    ) -> Result<Gemma> {
        let embed = Embedding::load(&m.pp("embed_tokens"), c.vocab_size, c.hidden_size, c.compute)?;
        let norm = |vb: VarBuilder| RmsNorm::load(vb, c.hidden_size, c.rms_norm_eps, true);
        let layers = c
            .layer_types
            .iter()
            .enumerate()
            .map(|(i, &kind)| {
                let l = m.pp(format!("layers.{i}"));
                Ok(Block {
                    attn: attention(&l.pp("self_attn"))?,
                    mlp: Mlp::load(&l.pp("mlp"), c)?,
                    input_norm: norm(l.pp("input_layernorm"))?,
                    post_attn_norm: norm(l.pp("post_attention_layernorm"))?,
                    pre_ff_norm: norm(l.pp("pre_feedforward_layernorm"))?,
                    post_ff_norm: norm(l.pp("post_feedforward_layernorm"))?,
                    kind,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_norm = norm(m.pp("norm"))?;
        let lm_head = layers::lm_head(&head, &embed, c)?;
        let ropes = Ropes::new(c, m.device())?;
        Ok(Gemma { embed, layers, norm: final_norm, lm_head, ropes, config: c.clone() })
    }

    /// One forward step, as [`super::llama::Llama::forward`].
    pub fn forward(&self, ids: &Tensor, positions: &Tensor, mask: &StepMask, cache: &mut KvCache) -> Result<Tensor> {
        let (b, seq) = ids.dims2()?;
        let c = &self.config;
        let ropes = self.ropes.at(positions, b, seq, mask.kv_len())?;
        let masks = LayerMasks::new(mask, c, ids.device())?;
        // transformers multiplies by sqrt(hidden_size) as an f32 tensor.
        let mut x = (self.embed.forward(ids)? * f64::from((c.hidden_size as f32).sqrt()))?;
        for (layer, kv) in self.layers.iter().zip(cache.layers_mut(self.layers.len())) {
            let h = layer.input_norm.forward(&x)?;
            let h = layer.attn.forward(&h, ropes.get(layer.kind), masks.get(layer.kind)?, kv)?;
            x = (x + layer.post_attn_norm.forward(&h)?)?;
            let h = layer.mlp.forward(&layer.pre_ff_norm.forward(&x)?)?;
            x = (&x + layer.post_ff_norm.forward(&h)?)?;
        }
        let last = x.narrow(1, seq - 1, 1)?.contiguous()?;
        let logits = self.lm_head.forward(&self.norm.forward(&last)?)?.squeeze(1)?.to_dtype(DType::F32)?;
        self.softcap(logits)
    }

    /// A ragged step, as [`super::llama::Llama::forward_slots`].
    pub fn forward_slots(&self, steps: &mut [SlotStep<'_>]) -> Result<Tensor> {
        let c = &self.config;
        let device = self.ropes.device();
        let inputs = SlotInputs::new(steps, &self.ropes, c, &device)?;
        let mut x = (self.embed.forward(&inputs.ids)? * f64::from((c.hidden_size as f32).sqrt()))?;
        let n = self.layers.len();
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.input_norm.forward(&x)?;
            let h = layer.attn.forward_slots(&h, &mut inputs.parts(steps, l, n, layer.kind)?)?;
            x = (x + layer.post_attn_norm.forward(&h)?)?;
            let h = layer.mlp.forward(&layer.pre_ff_norm.forward(&x)?)?;
            x = (&x + layer.post_ff_norm.forward(&h)?)?;
        }
        let last = x.index_select(&inputs.last_tokens(&device)?, 1)?;
        let logits = self.lm_head.forward(&self.norm.forward(&last)?)?.squeeze(0)?.to_dtype(DType::F32)?;
        self.softcap(logits)
    }

    fn softcap(&self, logits: Tensor) -> Result<Tensor> {
        match self.config.final_softcap {
            Some(cap) => (logits / cap)?.tanh()? * cap,
            None => Ok(logits),
        }
    }
}
