//! The llama architecture (Llama 2/3, SmolLM2), which Mistral and Qwen2 share up to biases: RMSNorm,
//! grouped-query attention with half-split RoPE, SwiGLU MLP. Batched: every row carries its own positions and
//! an additive attention mask, so left-padded rows compute what they would alone.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::config::ModelConfig;

/// Added to the scores of masked keys. Finite on purpose: a fully masked (padding) query row must stay finite,
/// or its NaNs would reach real rows through the KV cache.
pub const MASKED: f32 = -1e30;

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

struct Layer {
    attn: Attention,
    mlp: Mlp,
    input_norm: Tensor,
    post_norm: Tensor,
}

/// Per-layer keys and values of every row so far: `(batch, kv_heads, seq, head_dim)`.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(layers: usize) -> KvCache {
        KvCache { layers: vec![None; layers] }
    }

    /// Keeps only the given rows (finished rows stop costing work).
    pub fn keep_rows(&mut self, rows: &Tensor) -> Result<()> {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(rows, 0)?;
            *v = v.index_select(rows, 0)?;
        }
        Ok(())
    }
}

/// A loaded llama-family model.
pub struct Llama {
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    /// RoPE tables `(max positions, head_dim / 2)`.
    cos: Tensor,
    sin: Tensor,
    eps: f32,
    pub config: ModelConfig,
}

fn linear(vb: &VarBuilder, inp: usize, out: usize, bias: bool) -> Result<Linear> {
    let w = vb.get((out, inp), "weight")?;
    let b = if bias { Some(vb.get(out, "bias")?) } else { None };
    Ok(Linear::new(w, b))
}

impl Llama {
    /// Loads the weights from `vb` (the `model.` prefix and `lm_head` as transformers names them).
    pub fn load(vb: VarBuilder, config: &ModelConfig, max_positions: usize) -> Result<Llama> {
        let c = config;
        let m = vb.pp("model");
        let embed = m.get((c.vocab_size, c.hidden_size), "embed_tokens.weight")?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let l = m.pp(format!("layers.{i}"));
            let a = l.pp("self_attn");
            let (q_out, kv_out) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
            let attn = Attention {
                q: linear(&a.pp("q_proj"), c.hidden_size, q_out, c.qkv_bias)?,
                k: linear(&a.pp("k_proj"), c.hidden_size, kv_out, c.qkv_bias)?,
                v: linear(&a.pp("v_proj"), c.hidden_size, kv_out, c.qkv_bias)?,
                o: linear(&a.pp("o_proj"), q_out, c.hidden_size, c.o_bias)?,
                heads: c.num_heads,
                kv_heads: c.num_kv_heads,
                head_dim: c.head_dim,
            };
            let p = l.pp("mlp");
            let mlp = Mlp {
                gate: linear(&p.pp("gate_proj"), c.hidden_size, c.intermediate_size, false)?,
                up: linear(&p.pp("up_proj"), c.hidden_size, c.intermediate_size, false)?,
                down: linear(&p.pp("down_proj"), c.intermediate_size, c.hidden_size, false)?,
            };
            layers.push(Layer {
                attn,
                mlp,
                input_norm: l.get(c.hidden_size, "input_layernorm.weight")?,
                post_norm: l.get(c.hidden_size, "post_attention_layernorm.weight")?,
            });
        }
        let norm = m.get(c.hidden_size, "norm.weight")?;
        let lm_head = if c.tie_word_embeddings && !vb.contains_tensor("lm_head.weight") {
            Linear::new(embed.clone(), None)
        } else {
            linear(&vb.pp("lm_head"), c.hidden_size, c.vocab_size, false)?
        };
        let (cos, sin) = rope_tables(c.head_dim, c.rope_theta, max_positions, vb.device())?;
        Ok(Llama { embed, layers, norm, lm_head, cos, sin, eps: c.rms_norm_eps as f32, config: c.clone() })
    }

    /// One forward step. `ids` `(batch, seq)` u32, `positions` `(batch * seq)` u32 (row-major), `mask`
    /// `(batch, 1, seq, kv_len)` additive f32. Returns the logits of each row's last position `(batch, vocab)`.
    pub fn forward(&self, ids: &Tensor, positions: &Tensor, mask: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (b, seq) = ids.dims2()?;
        let half = self.config.head_dim / 2;
        let cos = self.cos.index_select(positions, 0)?.reshape((b, seq, half))?;
        let sin = self.sin.index_select(positions, 0)?.reshape((b, seq, half))?;
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((b, seq, self.config.hidden_size))?;
        if cache.layers.len() != self.layers.len() {
            *cache = KvCache::new(self.layers.len());
        }
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let h = candle_nn::ops::rms_norm(&x, &layer.input_norm, self.eps)?;
            let h = layer.attn.forward(&h, &cos, &sin, mask, kv)?;
            x = (x + h)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.post_norm, self.eps)?;
            let h = layer.mlp.forward(&h)?;
            x = (x + h)?;
        }
        let last = x.narrow(1, seq - 1, 1)?.contiguous()?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, self.eps)?;
        self.lm_head.forward(&last)?.squeeze(1)?.to_dtype(DType::F32)
    }
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        kv: &mut Option<(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let (b, seq, _) = x.dims3()?;
        let (h, kvh, hd) = (self.heads, self.kv_heads, self.head_dim);
        let q = self.q.forward(x)?.reshape((b, seq, h, hd))?.transpose(1, 2)?.contiguous()?;
        let k = self.k.forward(x)?.reshape((b, seq, kvh, hd))?.transpose(1, 2)?.contiguous()?;
        let v = self.v.forward(x)?.reshape((b, seq, kvh, hd))?.transpose(1, 2)?.contiguous()?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        let (k, v) = match kv.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        *kv = Some((k.clone(), v.clone()));
        let kv_len = k.dim(2)?;
        // Grouped-query attention without repeating K/V: the query heads sharing a KV head are stacked.
        let rep = h / kvh;
        let q = q.reshape((b, kvh, rep * seq, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.reshape((b, h, seq, kv_len))?;
        let scores = scores.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.reshape((b, kvh, rep * seq, kv_len))?;
        let out = probs.matmul(&v)?.reshape((b, h, seq, hd))?.transpose(1, 2)?.reshape((b, seq, h * hd))?;
        self.o.forward(&out)
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate.forward(x)?)?;
        self.down.forward(&(gate * self.up.forward(x)?)?)
    }
}

/// cos/sin of `position * theta^(-2i/d)`, computed in f32 as transformers does.
fn rope_tables(head_dim: usize, theta: f64, positions: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let inv: Vec<f32> =
        (0..head_dim / 2).map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32)).collect();
    let inv = Tensor::from_vec(inv, (1, head_dim / 2), device)?;
    let pos = Tensor::arange(0u32, positions.max(1) as u32, device)?.to_dtype(DType::F32)?.unsqueeze(1)?;
    let freqs = pos.broadcast_mul(&inv)?;
    Ok((freqs.cos()?, freqs.sin()?))
}
