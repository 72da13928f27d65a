//! Building blocks every architecture shares, as transformers computes them: linear layers and RMSNorm (Gemma's
//! `1 + weight` folded in when loaded), RoPE (partial rotary, linear and LongRoPE scaling; cos/sin computed per
//! step from each row's positions), the additive masks of one step (causal, padding, sliding window), the KV cache
//! (a padded batch's, or one sequence slot's: cleared and reused), grouped-query attention (optional q/k norms,
//! scale, soft-capping; a ragged step attends per sequence, see [`SlotInputs`]) and the gated MLP.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{Activation, LayerType, ModelConfig, RopeScaling, RopeSpec};
use super::device::Compute;
use super::kernels::{self, PackedWeight};
use super::weights::get_f32;
use clem_kernels::Path as KernelPath;

/// Added to the scores of masked keys. Finite on purpose: a fully masked (padding) query row must stay finite,
/// or its NaNs would reach real rows through the KV cache.
pub const MASKED: f32 = -1e30;

/// A linear layer `x W^T + b`: f32 activations in and out, bias f32.
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

/// A weight matrix `(out, inp)` as a [`Compute`] multiplies it.
#[derive(Clone)]
enum Weight {
    /// Packed by [`super::kernels`] in its stored dtype (f32, bf16, f16), multiplied with f32 activations.
    Packed(Arc<PackedWeight>),
    /// On the model's device for candle's matmul, which rounds activations to the stored `dtype` first and its
    /// output after, as transformers on a GPU. candle's CPU has no half-precision matmul: there `weight` is an f32
    /// copy, giving the same roundings.
    Dense { weight: Tensor, dtype: DType },
}

impl Weight {
    fn new(w: &Tensor, compute: Compute) -> Result<Weight> {
        Ok(match compute {
            Compute::Kernels(path) => Weight::Packed(Arc::new(PackedWeight::new(w, path)?)),
            Compute::Candle if w.device().is_cpu() => {
                Weight::Dense { weight: w.to_dtype(DType::F32)?, dtype: w.dtype() }
            }
            Compute::Candle => Weight::Dense { weight: w.clone(), dtype: w.dtype() },
        })
    }
}

impl Linear {
    /// `weight` `(out, inp)`, `bias` `(out)` f32.
    pub fn new(weight: &Tensor, bias: Option<Tensor>, compute: Compute) -> Result<Linear> {
        Ok(Linear { weight: Weight::new(weight, compute)?, bias })
    }

    /// Projections of one input stacked into one layer (outputs in order): one pass over the input and one
    /// split across threads instead of several small ones. A missing bias is zero when another part has one.
    pub fn fused(parts: &[(Tensor, Option<Tensor>)], compute: Compute) -> Result<Linear> {
        let weights: Vec<&Tensor> = parts.iter().map(|(w, _)| w).collect();
        let bias = if parts.iter().any(|(_, b)| b.is_some()) {
            let biases = parts
                .iter()
                .map(|(w, b)| match b {
                    Some(b) => Ok(b.clone()),
                    None => Tensor::zeros(w.dim(0)?, DType::F32, w.device()),
                })
                .collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        Linear::new(&Tensor::cat(&weights, 0)?, bias, compute)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Packed(w) => x.contiguous()?.apply_op1_no_bwd(w.as_ref())?,
            Weight::Dense { weight, dtype } => {
                let x = x.to_dtype(*dtype)?.to_dtype(weight.dtype())?;
                let y = candle_nn::Linear::new(weight.clone(), None).forward(&x)?;
                y.to_dtype(*dtype)?.to_dtype(DType::F32)?
            }
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// A `(out, inp)` weight and optional bias named as transformers names them under `vb`.
pub fn linear(vb: &VarBuilder, inp: usize, out: usize, bias: bool, compute: Compute) -> Result<Linear> {
    let (w, b) = linear_parts(vb, inp, out, bias)?;
    Linear::new(&w, b, compute)
}

/// The weight and optional bias of [`linear`], unpacked (to be fused with others).
pub fn linear_parts(vb: &VarBuilder, inp: usize, out: usize, bias: bool) -> Result<(Tensor, Option<Tensor>)> {
    let b = if bias { Some(get_f32(vb, out, "bias")?) } else { None };
    Ok((vb.get((out, inp), "weight")?, b))
}

/// Token embeddings, in the form the output projection shares when the two are tied.
pub struct Embedding {
    table: Weight,
    hidden: usize,
}

impl Embedding {
    /// `weight` `(vocab, hidden)` under `vb`.
    pub fn load(vb: &VarBuilder, vocab: usize, hidden: usize, compute: Compute) -> Result<Embedding> {
        Ok(Embedding { table: Weight::new(&vb.get((vocab, hidden), "weight")?, compute)?, hidden })
    }

    /// `(b, seq, hidden)` f32 for `ids` `(b, seq)`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, seq) = ids.dims2()?;
        let rows = match &self.table {
            Weight::Packed(t) => t.rows(ids, ids.device())?,
            Weight::Dense { weight, .. } => weight.index_select(&ids.flatten_all()?, 0)?.to_dtype(DType::F32)?,
        };
        rows.reshape((b, seq, self.hidden))
    }
}

/// The output projection: `lm_head` under `vb`, or the embeddings when tied and no `lm_head.weight` is stored.
pub fn lm_head(vb: &VarBuilder, embed: &Embedding, c: &ModelConfig) -> Result<Linear> {
    if c.tie_word_embeddings && !vb.contains_tensor("weight") {
        Ok(Linear { weight: embed.table.clone(), bias: None })
    } else {
        linear(vb, c.hidden_size, c.vocab_size, false, c.compute)
    }
}

/// RMSNorm over the last dimension.
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// Loads `vb`'s `weight`; `plus_one`: Gemma's norms multiply by `1 + weight` (added here once, in f32 as
    /// transformers does).
    pub fn load(vb: VarBuilder, size: usize, eps: f64, plus_one: bool) -> Result<RmsNorm> {
        let weight = get_f32(&vb, size, "weight")?;
        let weight = if plus_one { (weight + 1.0)? } else { weight };
        Ok(RmsNorm { weight, eps: eps as f32 })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// The key/value slots each row's queries may see at one step: per row, whether each slot of the sequence so far
/// (cache + this step) holds a real token. The step's queries are the last `seq` slots.
pub struct StepMask {
    valid: Vec<bool>,
    rows: usize,
    seq: usize,
    kv_len: usize,
}

impl StepMask {
    /// `rows[i][j]`: slot j of row i is a real token (not padding); every row has the same length.
    pub fn new(rows: &[Vec<bool>], seq: usize) -> Result<StepMask> {
        let kv_len = rows.first().map_or(0, Vec::len);
        if rows.iter().any(|r| r.len() != kv_len) || seq == 0 || seq > kv_len {
            candle_core::bail!("mask rows must have one length >= the step's {seq} tokens");
        }
        Ok(StepMask { valid: rows.concat(), rows: rows.len(), seq, kv_len })
    }

    /// Slots in the sequence so far, this step's included.
    pub fn kv_len(&self) -> usize {
        self.kv_len
    }

    /// The additive mask `(rows, 1, seq, kv_len)`: causal, real keys only, and with `window`, only keys less than
    /// `window` slots before the query (transformers' `kv_idx > q_idx - sliding_window`). Padding is on the left, so
    /// slot distances are token distances.
    pub fn build(&self, window: Option<usize>, device: &Device) -> Result<Tensor> {
        let (n, seq, kv) = (self.rows, self.seq, self.kv_len);
        let mut mask = Vec::with_capacity(n * seq * kv);
        for r in 0..n {
            let valid = &self.valid[r * kv..(r + 1) * kv];
            for j in 0..seq {
                let q = kv - seq + j;
                mask.extend(valid.iter().enumerate().map(|(k, &ok)| {
                    let visible = ok && k <= q && window.is_none_or(|w| q - k < w);
                    if visible {
                        0.0f32
                    } else {
                        MASKED
                    }
                }));
            }
        }
        Tensor::from_vec(mask, (n, 1, seq, kv), device)
    }
}

/// The masks of one step, one per layer type the model has.
pub struct LayerMasks {
    full: Option<Tensor>,
    sliding: Option<Tensor>,
}

impl LayerMasks {
    pub fn new(step: &StepMask, c: &ModelConfig, device: &Device) -> Result<LayerMasks> {
        let has = |t| c.layer_types.contains(&t);
        let full = if has(LayerType::Full) { Some(step.build(None, device)?) } else { None };
        let sliding = if has(LayerType::Sliding) { Some(step.build(c.sliding_window, device)?) } else { None };
        Ok(LayerMasks { full, sliding })
    }

    pub fn get(&self, t: LayerType) -> Result<&Tensor> {
        let m = match t {
            LayerType::Full => self.full.as_ref(),
            LayerType::Sliding => self.sliding.as_ref(),
        };
        m.ok_or_else(|| candle_core::Error::Msg(format!("no mask built for {t:?} layers")))
    }
}

/// One layer's keys and values so far, `(batch, kv_heads, len, head_dim)` views of buffers with room to grow:
/// a step writes its keys in place instead of copying the whole cache (capacity doubles when full).
#[derive(Clone)]
pub struct LayerKv {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl LayerKv {
    /// Appends `k`, `v` `(batch, kv_heads, seq, head_dim)` (stored in `dtype`) and returns the keys and values so
    /// far.
    fn append(slot: &mut Option<LayerKv>, k: &Tensor, v: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let (b, heads, seq, d) = k.dims4()?;
        let kv = Self::reserve(slot, (b, heads, seq, d), dtype, k.device())?;
        kv.k.slice_set(&k.to_dtype(dtype)?.contiguous()?, 2, kv.len)?;
        kv.v.slice_set(&v.to_dtype(dtype)?.contiguous()?, 2, kv.len)?;
        kv.len += seq;
        kv.views()
    }

    /// The keys and values so far, `(batch, kv_heads, len, head_dim)` views of the buffers.
    fn views(&self) -> Result<(Tensor, Tensor)> {
        Ok((self.k.narrow(2, 0, self.len)?, self.v.narrow(2, 0, self.len)?))
    }

    /// The cache of `slot` with room for `seq` more positions of `(b, heads, _, d)` (made, or grown by doubling,
    /// as needed); the caller writes them at `len` and then adds `seq` to `len`.
    fn reserve<'a>(
        slot: &'a mut Option<LayerKv>,
        (b, heads, seq, d): (usize, usize, usize, usize),
        dtype: DType,
        device: &Device,
    ) -> Result<&'a mut LayerKv> {
        let kv = match slot.take() {
            None => {
                // Room for a few steps beyond the prompt before the first growth.
                let cap = (seq + 32).next_power_of_two();
                let k_buf = Tensor::zeros((b, heads, cap, d), dtype, device)?;
                let v_buf = Tensor::zeros((b, heads, cap, d), dtype, device)?;
                LayerKv { k: k_buf, v: v_buf, len: 0 }
            }
            Some(kv) if kv.len + seq > kv.k.dim(2)? => {
                let cap = (kv.len + seq).next_power_of_two();
                let (b, heads, _, d) = kv.k.dims4()?;
                let grow = |t: &Tensor| -> Result<Tensor> {
                    let buf = Tensor::zeros((b, heads, cap, d), t.dtype(), t.device())?;
                    buf.slice_set(&t.narrow(2, 0, kv.len)?.contiguous()?, 2, 0)?;
                    Ok(buf)
                };
                LayerKv { k: grow(&kv.k)?, v: grow(&kv.v)?, len: kv.len }
            }
            Some(kv) => kv,
        };
        Ok(slot.insert(kv))
    }
}

/// Per-layer keys and values of every row so far.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
}

impl KvCache {
    pub fn new(layers: usize) -> KvCache {
        KvCache { layers: vec![None; layers] }
    }

    /// Keeps only the given rows (finished rows stop costing work).
    pub fn keep_rows(&mut self, rows: &Tensor) -> Result<()> {
        for kv in self.layers.iter_mut().flatten() {
            kv.k = kv.k.index_select(rows, 0)?;
            kv.v = kv.v.index_select(rows, 0)?;
        }
        Ok(())
    }

    /// One slot per layer (a cache made for another model is reset).
    pub fn layers_mut(&mut self, layers: usize) -> &mut [Option<LayerKv>] {
        if self.layers.len() != layers {
            *self = KvCache::new(layers);
        }
        &mut self.layers
    }

    /// Positions held (those of the first layer; every layer holds as many after a step).
    pub fn len(&self) -> usize {
        self.layers.first().and_then(Option::as_ref).map_or(0, |kv| kv.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the first `len` positions (a failed step's writes taken back).
    pub fn truncate(&mut self, len: usize) {
        for kv in self.layers.iter_mut().flatten() {
            kv.len = kv.len.min(len);
        }
    }

    /// Forgets every position but keeps the buffers, for the next sequence of a slot (no allocation until it
    /// outgrows them).
    pub fn clear(&mut self) {
        for kv in self.layers.iter_mut().flatten() {
            kv.len = 0;
        }
    }
}

/// One sequence's part of a ragged step ([`Attention::forward_slots`]) in one layer.
pub struct SlotAttn<'a> {
    pub kv: &'a mut Option<LayerKv>,
    pub tokens: usize,
    pub rope: &'a RopeAt,
    pub mask: &'a Tensor,
}

/// One sequence's tokens in a ragged step ([`super::causal_lm::CausalLm::forward_slots`]): they continue what its
/// own cache (one row) holds, at positions `cache.len()..`.
pub struct SlotStep<'a> {
    pub ids: &'a [u32],
    pub cache: &'a mut KvCache,
    /// The sequence length that picks LongRoPE's factors: the whole prompt's while it is prefilled in chunks (so
    /// every chunk turns as one pass over it would), else the length after this step.
    pub rope_len: usize,
}

/// What a ragged step computes once for all layers: the tokens, and each sequence's RoPE and masks.
pub struct SlotInputs {
    /// `(1, tokens)` u32.
    pub ids: Tensor,
    pub tokens: Vec<usize>,
    pub ropes: Vec<RopesAt>,
    pub masks: Vec<LayerMasks>,
}

impl SlotInputs {
    pub fn new(steps: &[SlotStep<'_>], ropes: &Ropes, c: &ModelConfig, device: &Device) -> Result<SlotInputs> {
        if steps.is_empty() || steps.iter().any(|s| s.ids.is_empty()) {
            candle_core::bail!("a ragged step needs at least one token of each sequence");
        }
        let ids: Vec<u32> = steps.iter().flat_map(|s| s.ids.iter().copied()).collect();
        let total = ids.len();
        let mut out = SlotInputs {
            ids: Tensor::from_vec(ids, (1, total), device)?,
            tokens: Vec::with_capacity(steps.len()),
            ropes: Vec::with_capacity(steps.len()),
            masks: Vec::with_capacity(steps.len()),
        };
        for s in steps {
            let (held, n) = (s.cache.len(), s.ids.len());
            let positions: Vec<u32> = (held..held + n).map(|p| p as u32).collect();
            out.ropes.push(ropes.at(&Tensor::from_vec(positions, n, device)?, 1, n, s.rope_len)?);
            out.masks.push(LayerMasks::new(&StepMask::new(&[vec![true; held + n]], n)?, c, device)?);
            out.tokens.push(n);
        }
        Ok(out)
    }

    /// Each sequence's part of layer `layer` (of `kind`), its cache taken from `steps`.
    pub fn parts<'a>(
        &'a self,
        steps: &'a mut [SlotStep<'_>],
        layer: usize,
        layers: usize,
        kind: LayerType,
    ) -> Result<Vec<SlotAttn<'a>>> {
        steps
            .iter_mut()
            .enumerate()
            .map(|(i, s)| {
                Ok(SlotAttn {
                    kv: &mut s.cache.layers_mut(layers)[layer],
                    tokens: self.tokens[i],
                    rope: self.ropes[i].get(kind),
                    mask: self.masks[i].get(kind)?,
                })
            })
            .collect()
    }

    /// Indices of each sequence's last token among the step's tokens, `(sequences)` u32.
    pub fn last_tokens(&self, device: &Device) -> Result<Tensor> {
        let mut at = 0u32;
        let last: Vec<u32> = self
            .tokens
            .iter()
            .map(|&n| {
                at += n as u32;
                at - 1
            })
            .collect();
        let n = last.len();
        Tensor::from_vec(last, n, device)
    }
}

/// `1 / theta^(2i/d)` in f32 as transformers computes it, each divided by `divisors[i]` when given.
fn inv_freq(theta: f64, dim: usize, divisors: Option<&[f64]>) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| {
            let base = (theta as f32).powf((2 * i) as f32 / dim as f32);
            1.0 / (base * divisors.map_or(1.0, |d| d[i] as f32))
        })
        .collect()
}

/// RoPE of one kind of layer. cos/sin are computed for each step's positions rather than looked up in a table, so
/// long contexts cost no table memory.
pub struct Rope {
    inv_freq: Tensor,
    /// LongRoPE: the frequencies used while the sequence is longer than the given length.
    long: Option<(Tensor, usize)>,
    /// Multiplies cos and sin (LongRoPE's attention factor).
    scale: f64,
    rotary_dim: usize,
}

impl Rope {
    pub fn new(spec: &RopeSpec, device: &Device) -> Result<Rope> {
        let d = spec.rotary_dim;
        let row = |v: Vec<f32>| Tensor::from_vec(v, (1, d / 2), device);
        let (freqs, long, scale) = match &spec.scaling {
            RopeScaling::None => (inv_freq(spec.theta, d, None), None, 1.0),
            RopeScaling::Linear { factor } => {
                let f = *factor as f32;
                (inv_freq(spec.theta, d, None).into_iter().map(|x| x / f).collect(), None, 1.0)
            }
            RopeScaling::LongRope { short_factor, long_factor, original_max, attention_factor } => {
                let long = row(inv_freq(spec.theta, d, Some(long_factor)))?;
                (inv_freq(spec.theta, d, Some(short_factor)), Some((long, *original_max)), *attention_factor)
            }
        };
        Ok(Rope { inv_freq: row(freqs)?, long, scale, rotary_dim: d })
    }

    /// cos/sin `(b, seq, rotary_dim / 2)` for `positions` `(b * seq)`; `kv_len` is the sequence length so far,
    /// which picks LongRoPE's factors (transformers: max position + 1, the same for the longest row).
    pub fn at(&self, positions: &Tensor, b: usize, seq: usize, kv_len: usize) -> Result<RopeAt> {
        let inv = match &self.long {
            Some((long, original_max)) if kv_len > *original_max => long,
            _ => &self.inv_freq,
        };
        let pos = positions.to_dtype(DType::F32)?.reshape((b * seq, 1))?;
        let freqs = pos.broadcast_mul(inv)?;
        let (mut cos, mut sin) = (freqs.cos()?, freqs.sin()?);
        if self.scale != 1.0 {
            cos = (cos * self.scale)?;
            sin = (sin * self.scale)?;
        }
        let half = self.rotary_dim / 2;
        Ok(RopeAt { cos: cos.reshape((b, seq, half))?, sin: sin.reshape((b, seq, half))?, rotary_dim: self.rotary_dim })
    }
}

/// The RoPE of a full-attention and of a sliding layer (one object when they are the same).
pub struct Ropes {
    full: Rope,
    sliding: Option<Rope>,
}

impl Ropes {
    pub fn new(c: &ModelConfig, device: &Device) -> Result<Ropes> {
        let sliding = if c.rope_sliding != c.rope_full && c.layer_types.contains(&LayerType::Sliding) {
            Some(Rope::new(&c.rope_sliding, device)?)
        } else {
            None
        };
        Ok(Ropes { full: Rope::new(&c.rope_full, device)?, sliding })
    }

    /// The device the frequencies live on (the model's).
    pub fn device(&self) -> Device {
        self.full.inv_freq.device().clone()
    }

    pub fn at(&self, positions: &Tensor, b: usize, seq: usize, kv_len: usize) -> Result<RopesAt> {
        let sliding = self.sliding.as_ref().map(|r| r.at(positions, b, seq, kv_len)).transpose()?;
        Ok(RopesAt { full: self.full.at(positions, b, seq, kv_len)?, sliding })
    }
}

/// cos/sin of one step, per layer type.
pub struct RopesAt {
    full: RopeAt,
    sliding: Option<RopeAt>,
}

impl RopesAt {
    pub fn get(&self, t: LayerType) -> &RopeAt {
        match (t, &self.sliding) {
            (LayerType::Sliding, Some(s)) => s,
            _ => &self.full,
        }
    }
}

/// cos/sin of one step for one kind of layer.
pub struct RopeAt {
    cos: Tensor,
    sin: Tensor,
    rotary_dim: usize,
}

impl RopeAt {
    /// cos and sin `(b, seq, head_dim / 2)` when every dimension of a head turns (no partial rotary).
    pub fn full(&self, head_dim: usize) -> Option<(&Tensor, &Tensor)> {
        (self.rotary_dim == head_dim).then_some((&self.cos, &self.sin))
    }

    /// Rotates `x` `(b, heads, seq, head_dim)` (contiguous) half-split style, as transformers' `rotate_half`; with
    /// partial rotary only the first `rotary_dim` dimensions turn.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let hd = x.dim(3)?;
        if self.rotary_dim == hd {
            return candle_nn::rotary_emb::rope(x, &self.cos, &self.sin);
        }
        let rot = x.narrow(3, 0, self.rotary_dim)?.contiguous()?;
        let rot = candle_nn::rotary_emb::rope(&rot, &self.cos, &self.sin)?;
        Tensor::cat(&[&rot, &x.narrow(3, self.rotary_dim, hd - self.rotary_dim)?], 3)?.contiguous()
    }
}

/// Grouped-query self-attention.
pub struct Attention {
    /// `q_proj`, `k_proj`, `v_proj` stacked.
    qkv: Linear,
    o: Linear,
    /// RMSNorm of each query and key head before RoPE (Qwen3, Gemma 3).
    qk_norms: Option<(RmsNorm, RmsNorm)>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f64,
    softcap: Option<f64>,
    /// The KV cache's dtype (see [`ModelConfig::kv_dtype`]).
    kv_dtype: DType,
    /// Decoding steps take the fused kernels on this path ([`Compute::Kernels`]).
    kernels: Option<KernelPath>,
}

impl Attention {
    /// From loaded projections; heads, scale and soft-capping from the config.
    /// `qkv` projects to queries, keys and values stacked in that order.
    pub fn new((qkv, o): (Linear, Linear), qk_norms: Option<(RmsNorm, RmsNorm)>, c: &ModelConfig) -> Attention {
        Attention {
            qkv,
            o,
            qk_norms,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            scale: c.attn_scale,
            softcap: c.attn_softcap,
            kv_dtype: c.kv_dtype,
            kernels: c.compute.kernel_path(),
        }
    }

    /// `q_proj`, `k_proj`, `v_proj` (fused) and `o_proj` under `vb` (a layer's `self_attn`).
    pub fn projections(vb: &VarBuilder, c: &ModelConfig) -> Result<(Linear, Linear)> {
        let (q_out, kv_out) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let qkv = Linear::fused(
            &[
                linear_parts(&vb.pp("q_proj"), c.hidden_size, q_out, c.qkv_bias)?,
                linear_parts(&vb.pp("k_proj"), c.hidden_size, kv_out, c.qkv_bias)?,
                linear_parts(&vb.pp("v_proj"), c.hidden_size, kv_out, c.qkv_bias)?,
            ],
            c.compute,
        )?;
        Ok((qkv, linear(&vb.pp("o_proj"), q_out, c.hidden_size, c.o_bias, c.compute)?))
    }

    /// `q_norm` and `k_norm` under `vb` (a layer's `self_attn`).
    pub fn qk_norms(vb: &VarBuilder, c: &ModelConfig, plus_one: bool) -> Result<(RmsNorm, RmsNorm)> {
        Ok((
            RmsNorm::load(vb.pp("q_norm"), c.head_dim, c.rms_norm_eps, plus_one)?,
            RmsNorm::load(vb.pp("k_norm"), c.head_dim, c.rms_norm_eps, plus_one)?,
        ))
    }

    /// `x` `(b, seq, hidden)`; the step's keys and values are appended to `kv`.
    pub fn forward(&self, x: &Tensor, rope: &RopeAt, mask: &Tensor, kv: &mut Option<LayerKv>) -> Result<Tensor> {
        let out = self.attend_qkv(&self.qkv.forward(x)?, rope, mask, kv)?;
        self.o.forward(&out)
    }

    /// A ragged step: `x` `(1, tokens, hidden)` holds the step's tokens of several sequences one after the other,
    /// `parts[i]` says how many are sequence i's and holds its own cache, RoPE and mask. The projections run over
    /// every token at once; attention runs per sequence against its own cache (the decoding ones in one parallel
    /// pass), so a sequence computes what it computes alone (the kernels' products give every row the same bits whatever the rows beside it).
    pub fn forward_slots(&self, x: &Tensor, parts: &mut [SlotAttn<'_>]) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?;
        let mut steps = Vec::with_capacity(parts.len());
        let mut at = 0;
        for p in parts.iter_mut() {
            let part = qkv.narrow(1, at, p.tokens)?;
            steps.push(self.step_qkv(&part, p.rope, p.mask, p.kv)?);
            at += p.tokens;
        }
        // The decoding parts' attention in one pass over all of them (see kernels::attend_parts).
        let (mut done, mut cached, mut shapes) = (Vec::with_capacity(steps.len()), Vec::new(), Vec::new());
        for s in steps {
            match s {
                AttnStep::Done(out) => done.push(Some(out)),
                AttnStep::Cached(part, shape) => {
                    done.push(None);
                    cached.push(part);
                    shapes.push(shape);
                }
            }
        }
        let attended = match (cached.is_empty(), self.kernels) {
            (true, _) => Vec::new(),
            (false, Some(path)) => kernels::attend_parts(path, &cached, self.scale, self.softcap)?,
            (false, None) => candle_core::bail!("kernel attention without a kernel path"),
        };
        let mut attended = attended.into_iter().zip(shapes);
        let outs = done
            .into_iter()
            .map(|out| match out {
                Some(out) => Ok(out),
                None => match attended.next() {
                    Some((out, shape)) => self.heads_out(&out, shape),
                    None => candle_core::bail!("a slot lost its attention"),
                },
            })
            .collect::<Result<Vec<_>>>()?;
        self.o.forward(&Tensor::cat(&outs, 1)?)
    }

    /// Attention of a step's fused projection `qkv` `(b, seq, (heads + 2 kv_heads) head_dim)`, before the output
    /// projection: `(b, seq, heads * head_dim)`.
    fn attend_qkv(&self, qkv: &Tensor, rope: &RopeAt, mask: &Tensor, kv: &mut Option<LayerKv>) -> Result<Tensor> {
        match self.step_qkv(qkv, rope, mask, kv)? {
            AttnStep::Done(out) => Ok(out),
            AttnStep::Cached(part, shape) => {
                let Some(path) = self.kernels else { candle_core::bail!("kernel attention without a kernel path") };
                let out = kernels::attend(path, &part.q, &part.k, &part.v, &part.mask, self.scale, self.softcap)?;
                self.heads_out(&out, shape)
            }
        }
    }

    /// A step's keys and values into `kv`, and its attention: computed here for a prompt, left to the kernels for a
    /// decoding step (which reads the cache in place, in one pass with the other slots' steps).
    fn step_qkv(&self, qkv: &Tensor, rope: &RopeAt, mask: &Tensor, kv: &mut Option<LayerKv>) -> Result<AttnStep> {
        let (b, seq, _) = qkv.dims3()?;
        let (h, kvh, hd) = (self.heads, self.kv_heads, self.head_dim);
        let decoding = seq <= DECODE_STEP && self.kernels.is_some();
        if let (true, None, Some((cos, sin))) = (decoding, &self.qk_norms, rope.full(hd)) {
            // A decoding step: split, rotate and cache in one pass; attention then reads the cache in place.
            let cache = LayerKv::reserve(kv, (b, kvh, seq, hd), self.kv_dtype, qkv.device())?;
            let heads = kernels::Heads { heads: h, kv_heads: kvh, head_dim: hd };
            let q = kernels::split_step(qkv, cos, sin, heads, (&cache.k, &cache.v, cache.len))?;
            cache.len += seq;
            let (k, v) = cache.views()?;
            return Ok(AttnStep::Cached(kernels::AttendPart { q, k, v, mask: mask.clone() }, (b, seq)));
        }
        let part = |from: usize, heads: usize| -> Result<Tensor> {
            qkv.narrow(2, from * hd, heads * hd)?.contiguous()?.reshape((b, seq, heads, hd))
        };
        let mut q = part(0, h)?;
        let mut k = part(h, kvh)?;
        if let Some((qn, kn)) = &self.qk_norms {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let q = rope.apply(&q.transpose(1, 2)?.contiguous()?)?;
        let k = rope.apply(&k.transpose(1, 2)?.contiguous()?)?;
        let v = part(h + kvh, kvh)?.transpose(1, 2)?.contiguous()?;
        let (k, v) = LayerKv::append(kv, &k, &v, self.kv_dtype)?;
        let kv_len = k.dim(2)?;
        // Grouped-query attention without repeating K/V: the query heads sharing a KV head are stacked.
        let rep = h / kvh;
        let q = q.reshape((b, kvh, rep * seq, hd))?;
        if decoding {
            return Ok(AttnStep::Cached(kernels::AttendPart { q, k, v, mask: mask.clone() }, (b, seq)));
        }
        // A prompt: candle's matmuls, in f32.
        let (k, v) = (k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?);
        let mut scores = (q.matmul(&k.t()?)? * self.scale)?;
        if let Some(cap) = self.softcap {
            scores = ((scores / cap)?.tanh()? * cap)?;
        }
        let scores = scores.reshape((b, h, seq, kv_len))?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.reshape((b, kvh, rep * seq, kv_len))?;
        let out = probs.matmul(&v)?.reshape((b, h, seq, hd))?.transpose(1, 2)?.reshape((b, seq, h * hd))?;
        Ok(AttnStep::Done(out))
    }

    /// The kernels' attention `(b, kv_heads, heads / kv_heads * seq, d)` as `(b, seq, heads * head_dim)`.
    fn heads_out(&self, out: &Tensor, (b, seq): (usize, usize)) -> Result<Tensor> {
        let (h, hd) = (self.heads, self.head_dim);
        out.reshape((b, h, seq, hd))?.transpose(1, 2)?.reshape((b, seq, h * hd))
    }
}

/// One step's attention as [`Attention::step_qkv`] leaves it.
enum AttnStep {
    /// Computed: `(b, seq, heads * head_dim)`.
    Done(Tensor),
    /// For the kernels, with the step's `(b, seq)`.
    Cached(kernels::AttendPart, (usize, usize)),
}

/// At most this many positions per step take the kernel attention (decoding); longer steps (prefill) take
/// candle's matmuls, which block large products well.
const DECODE_STEP: usize = 4;

/// The gated MLP: `down(act(gate(x)) * up(x))`.
pub struct Mlp {
    /// `gate_proj` and `up_proj` stacked.
    gate_up: Linear,
    down: Linear,
    act: Activation,
    intermediate: usize,
    /// The gated SiLU takes the fused kernel on this path ([`Compute::Kernels`]).
    kernels: Option<KernelPath>,
}

impl Mlp {
    /// `gate_up` projects to the gate and the up projection stacked in that order.
    pub fn new(gate_up: Linear, down: Linear, c: &ModelConfig) -> Mlp {
        Mlp { gate_up, down, act: c.activation, intermediate: c.intermediate_size, kernels: c.compute.kernel_path() }
    }

    /// `gate_proj`, `up_proj` (fused) and `down_proj` under `vb` (a layer's `mlp`).
    pub fn load(vb: &VarBuilder, c: &ModelConfig) -> Result<Mlp> {
        let gate_up = Linear::fused(
            &[
                linear_parts(&vb.pp("gate_proj"), c.hidden_size, c.intermediate_size, false)?,
                linear_parts(&vb.pp("up_proj"), c.hidden_size, c.intermediate_size, false)?,
            ],
            c.compute,
        )?;
        let down = linear(&vb.pp("down_proj"), c.intermediate_size, c.hidden_size, false, c.compute)?;
        Ok(Mlp::new(gate_up, down, c))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate_up = self.gate_up.forward(x)?;
        if let (Activation::Silu, Some(path)) = (self.act, self.kernels) {
            return self.down.forward(&kernels::silu_mul(path, &gate_up, self.intermediate)?);
        }
        let last = gate_up.rank() - 1;
        let gate = gate_up.narrow(last, 0, self.intermediate)?.contiguous()?;
        let up = gate_up.narrow(last, self.intermediate, self.intermediate)?;
        let gate = match self.act {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            Activation::GeluTanh => gate.gelu()?,
            Activation::Gelu => gate.gelu_erf()?,
        };
        self.down.forward(&(gate * up)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels on each path this CPU runs (`SKIP:` on stderr for the others), and candle's ops.
    fn computes() -> Vec<Compute> {
        let mut all = Vec::new();
        for path in KernelPath::ALL {
            match path.check() {
                Ok(path) => all.push(Compute::Kernels(path)),
                Err(e) => {
                    use std::io::Write;
                    let _ = writeln!(std::io::stderr(), "SKIP: layers on the {path} kernels: {e}");
                }
            }
        }
        all.push(Compute::Candle);
        all
    }

    #[test]
    fn linear_layers_match_a_plain_matmul_for_each_stored_dtype_and_compute() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (300, 40), &dev)?;
        let bias = Tensor::randn(0f32, 1.0, 300, &dev)?;
        for compute in computes() {
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                let w = w.to_dtype(dtype)?;
                let lin = Linear::new(&w, Some(bias.clone()), compute)?;
                // candle rounds activations to the weights' dtype (as transformers on a GPU), and so does the
                // AVX-512 BF16 kernel path for bf16 weights: bf16 keeps 8 bits.
                let tolerance = match (compute, dtype) {
                    (Compute::Candle | Compute::Kernels(KernelPath::Avx512Bf16), DType::BF16) => 0.3,
                    (Compute::Candle, DType::F16) => 0.05,
                    _ => 1e-4,
                };
                for rows in [1, 5, 60] {
                    let x = Tensor::randn(0f32, 1.0, (1, rows, 40), &dev)?;
                    let want = x.squeeze(0)?.matmul(&w.to_dtype(DType::F32)?.t()?)?.broadcast_add(&bias)?;
                    let got = lin.forward(&x)?;
                    assert_eq!((got.dtype(), got.dims()), (DType::F32, &[1, rows, 300][..]));
                    let diff = (got.squeeze(0)? - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                    assert!(diff < tolerance, "{compute:?} {dtype:?}, {rows} rows: {diff}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn embeddings_read_the_same_rows_whichever_compute() -> Result<()> {
        let dev = Device::Cpu;
        let table = Tensor::randn(0f32, 1.0, (50, 8), &dev)?.to_dtype(DType::BF16)?;
        let ids = Tensor::new(&[[3u32, 0, 49], [7, 7, 1]], &dev)?;
        let want = table.to_dtype(DType::F32)?.index_select(&ids.flatten_all()?, 0)?.reshape((2, 3, 8))?;
        for compute in computes() {
            let embed = Embedding { table: Weight::new(&table, compute)?, hidden: 8 };
            let got = embed.forward(&ids)?;
            let diff = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "{compute:?}");
        }
        Ok(())
    }
}
