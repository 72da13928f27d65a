//! huggingface_local as a [`StepEngine`] for [`clem_core::schedule`]'s scheduler: sequence slots, each with its
//! own KV cache (one row, reused by the slot's next sequence), prefilled in chunks and decoded one token a step.
//!
//! Every engine call is one ragged forward pass over the tokens of all the slots it names
//! ([`CausalLm::forward_slots`]): no padding, the matrix products over all tokens at once, attention per slot
//! against its own cache. A slot's logits are therefore those of its single run whichever slots share the call:
//! the CPU kernels give a row the same bits whatever the rows beside it, and the scheduler cuts prompts into
//! chunks at fixed offsets (candle's ops on a GPU sum in an order that depends on the batch, as transformers does
//! there).
//!
//! LongRoPE (Phi-3) switches its frequencies once a sequence is longer than the original context: a slot whose
//! cache was computed with the short ones is then recomputed over its whole sequence (transformers recomputes at
//! the same length), whether the switch comes in a prefill chunk or a decoding step.

use std::sync::Arc;

use candle_core::{Error, Result};
use clem_core::schedule::{Decode, Prefill, StepEngine, TokenId};

use super::causal_lm::CausalLm;
use super::generate::on_pool;
use super::layers::{KvCache, SlotStep};

/// Positions a slot's recomputation (LongRoPE's switch) runs per pass, bounding its attention scores' memory.
const RECOMPUTE_CHUNK: usize = 512;

/// Checks that `slots` sequences of `capacity` tokens fit in memory (an error says why not).
pub type MemoryCheck = Box<dyn Fn(usize, usize) -> std::result::Result<(), String> + Send>;

/// Text of generated ids, special tokens not rendered (stop strings, streamed deltas).
pub type Detokenize = Box<dyn Fn(&[TokenId]) -> String + Send>;

/// One sequence slot.
struct Slot {
    cache: KvCache,
    /// The ids in the cache, in order (a LongRoPE switch recomputes them).
    history: Vec<TokenId>,
    /// Whether the cache was computed with LongRoPE's long frequencies.
    long: bool,
}

/// A loaded model's slots.
pub struct HfEngine {
    model: Arc<CausalLm>,
    pool: Option<Arc<rayon::ThreadPool>>,
    slots: Vec<Slot>,
    capacity: usize,
    eos: Vec<TokenId>,
    detokenize: Detokenize,
    memory: Option<MemoryCheck>,
    /// LongRoPE: sequences this long or longer use the long frequencies.
    long_from: Option<usize>,
}

/// One slot's part of a forward pass: `n` tokens of the call's, or its whole history again.
struct Part {
    slot: usize,
    ids: Vec<TokenId>,
    recompute: bool,
}

impl HfEngine {
    /// An engine without slots yet ([`StepEngine::resize`] makes them); `eos` end a sequence; forward passes run
    /// on `pool` (else rayon's global pool).
    pub fn new(
        model: Arc<CausalLm>,
        pool: Option<Arc<rayon::ThreadPool>>,
        eos: Vec<TokenId>,
        detokenize: Detokenize,
        memory: Option<MemoryCheck>,
    ) -> HfEngine {
        let long_from = model.config().cache_rebuild_len();
        HfEngine { model, pool, slots: Vec::new(), capacity: 0, eos, detokenize, memory, long_from }
    }

    fn slot(&self, slot: usize) -> Result<&Slot> {
        self.slots.get(slot).ok_or_else(|| Error::Msg(format!("slot {slot} of {}", self.slots.len())))
    }

    /// Checks that `n` tokens at `start` continue slot `slot`'s cache and fit in it.
    fn check(&self, slot: usize, start: usize, n: usize) -> Result<()> {
        let held = self.slot(slot)?.history.len();
        if start != held || n == 0 || start + n > self.capacity {
            candle_core::bail!(
                "slot {slot} holds {held} of {} tokens; {n} more at {start} do not follow",
                self.capacity
            );
        }
        Ok(())
    }

    /// Runs `parts` (distinct slots) and returns each one's last logits. Slots that LongRoPE switches are
    /// recomputed over their whole sequence; the others share one ragged pass. A failed pass leaves every slot
    /// as it was.
    fn run(&mut self, mut parts: Vec<Part>) -> Result<Vec<Vec<f32>>> {
        for p in parts.iter_mut() {
            let s = &self.slots[p.slot];
            let end = s.history.len() + p.ids.len();
            p.recompute = !s.history.is_empty() && !s.long && self.long_from.is_some_and(|l| end >= l);
        }
        let before: Vec<usize> = parts.iter().map(|p| self.slots[p.slot].history.len()).collect();
        let out = self.forward(&parts);
        match out {
            Ok(logits) => {
                for p in &parts {
                    let s = &mut self.slots[p.slot];
                    s.history.extend_from_slice(&p.ids);
                    s.long = self.long_from.is_some_and(|l| s.history.len() >= l);
                }
                Ok(logits)
            }
            Err(e) => {
                for (p, held) in parts.iter().zip(before) {
                    let s = &mut self.slots[p.slot];
                    if p.recompute {
                        // The cache was rebuilt from scratch: start the slot over from its history.
                        s.cache.clear();
                        s.long = false;
                        s.history.clear();
                    } else {
                        s.cache.truncate(held);
                    }
                }
                Err(e)
            }
        }
    }

    fn forward(&mut self, parts: &[Part]) -> Result<Vec<Vec<f32>>> {
        let model = &*self.model;
        let slots = &mut self.slots;
        let mut logits: Vec<Option<Vec<f32>>> = vec![None; parts.len()];
        on_pool(self.pool.as_deref(), || {
            // The slots LongRoPE switches, one at a time: their whole sequence with the long frequencies.
            for (i, p) in parts.iter().enumerate().filter(|(_, p)| p.recompute) {
                let s = &mut slots[p.slot];
                let all: Vec<TokenId> = s.history.iter().chain(&p.ids).copied().collect();
                s.cache.clear();
                for chunk in all.chunks(RECOMPUTE_CHUNK) {
                    let step = SlotStep { ids: chunk, cache: &mut s.cache, rope_len: all.len() };
                    let l = model.forward_slots(&mut [step])?;
                    logits[i] = l.to_vec2::<f32>()?.pop();
                }
            }
            let mut steps: Vec<SlotStep<'_>> = Vec::new();
            let mut which = Vec::new();
            let mut taken: Vec<Option<&mut Slot>> = slots.iter_mut().map(Some).collect();
            for (i, p) in parts.iter().enumerate().filter(|(_, p)| !p.recompute) {
                let Some(s) = taken.get_mut(p.slot).and_then(Option::take) else {
                    candle_core::bail!("slot {} twice in one pass", p.slot);
                };
                let rope_len = s.history.len() + p.ids.len();
                steps.push(SlotStep { ids: &p.ids, cache: &mut s.cache, rope_len });
                which.push(i);
            }
            if !steps.is_empty() {
                let rows = model.forward_slots(&mut steps)?.to_vec2::<f32>()?;
                for (i, row) in which.into_iter().zip(rows) {
                    logits[i] = Some(row);
                }
            }
            Ok(())
        })?;
        logits.into_iter().map(|l| l.ok_or_else(|| Error::Msg("a slot got no logits".into()))).collect()
    }
}

impl StepEngine for HfEngine {
    type Error = Error;

    fn slots(&self) -> usize {
        self.slots.len()
    }

    fn slot_capacity(&self) -> usize {
        self.capacity
    }

    fn resize(&mut self, slots: usize, capacity: usize) -> Result<()> {
        if let Some(check) = &self.memory {
            check(slots, capacity).map_err(Error::Msg)?;
        }
        let layers = self.model.config().num_layers;
        // Caches keep their buffers (they grow as sequences need, and stay grown for the next ones).
        self.slots.truncate(slots);
        for s in self.slots.iter_mut() {
            s.cache.clear();
            s.history.clear();
            s.long = false;
        }
        while self.slots.len() < slots {
            self.slots.push(Slot { cache: KvCache::new(layers), history: Vec::new(), long: false });
        }
        self.capacity = capacity;
        Ok(())
    }

    /// New slots come empty and every cache grows as its sequence needs, so the running slots keep theirs.
    fn grow(&mut self, slots: usize, capacity: usize) -> Result<bool> {
        let (slots, capacity) = (slots.max(self.slots.len()), capacity.max(self.capacity));
        if self.memory.as_ref().is_some_and(|check| check(slots, capacity).is_err()) {
            return Ok(false);
        }
        let layers = self.model.config().num_layers;
        while self.slots.len() < slots {
            self.slots.push(Slot { cache: KvCache::new(layers), history: Vec::new(), long: false });
        }
        self.capacity = capacity;
        Ok(true)
    }

    fn prefill(&mut self, chunks: &[Prefill<'_>]) -> Result<Vec<Option<Vec<f32>>>> {
        let mut out = Vec::with_capacity(chunks.len());
        // Passes of distinct slots, in order: a slot's next chunk waits for the next pass.
        let mut rest = chunks;
        while !rest.is_empty() {
            let mut seen = Vec::new();
            let wave: Vec<&Prefill<'_>> = rest
                .iter()
                .take_while(|c| {
                    let fresh = !seen.contains(&c.slot);
                    seen.push(c.slot);
                    fresh
                })
                .collect();
            rest = &rest[wave.len()..];
            for c in &wave {
                self.check(c.slot, c.start, c.tokens.len())?;
            }
            let parts = wave.iter().map(|c| Part { slot: c.slot, ids: c.tokens.to_vec(), recompute: false }).collect();
            let logits = self.run(parts)?;
            out.extend(wave.iter().zip(logits).map(|(c, l)| c.logits.then_some(l)));
        }
        Ok(out)
    }

    fn decode(&mut self, batch: &[Decode]) -> Result<Vec<Vec<f32>>> {
        for d in batch {
            self.check(d.slot, d.pos, 1)?;
        }
        self.run(batch.iter().map(|d| Part { slot: d.slot, ids: vec![d.token], recompute: false }).collect())
    }

    fn free(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.cache.clear();
            s.history.clear();
            s.long = false;
        }
    }

    fn is_end(&self, token: TokenId) -> bool {
        self.eos.contains(&token)
    }

    fn detokenize(&self, tokens: &[TokenId]) -> String {
        (self.detokenize)(tokens)
    }
}
