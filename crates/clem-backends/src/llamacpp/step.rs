//! llama.cpp as a [`StepEngine`]: one context whose llama.cpp sequences are the scheduler's slots (sequence id =
//! slot), each with its own KV stream. A prefill chunk is one `llama_decode` of one sequence; a decode step is one
//! `llama_decode` of one token per running sequence; freeing a slot removes its sequence from the KV cache
//! (`llama_memory_seq_rm`), and a slot's cache outlives its sequence until the next one truncates it to their
//! shared prompt prefix.
//!
//! A context has at least `width` sequences (fewer only when memory refuses). It does not grow under running
//! sequences: llama.cpp refuses a sequence's saved state in a context of another number of KV streams
//! (`n_stream mismatch`), so a longer need waits for the running sequences to finish and the context is rebuilt.

use std::sync::Arc;

use clem_core::schedule::{Decode, Prefill, StepEngine, TokenId};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use super::engine::{new_context, EngineError, CELL_STEP, N_BATCH};

/// Cells a context holds at least, memory allowing (720 MiB of KV cache on SmolLM2-135M): rebuilding a
/// context waits for every running sequence to finish, so one roomy context beats several that fit just so.
const CONTEXT_CELLS: usize = 32768;

/// Whether a KV cache of this many cells fits in memory (the message says why not).
pub type Afford = Box<dyn Fn(u64) -> Result<(), String> + Send>;

/// The context of the current layout.
struct Layout<'m> {
    ctx: LlamaContext<'m>,
    slots: usize,
    per_seq: u32,
}

type OptionalLayout<'m> = Option<Layout<'m>>;

self_cell::self_cell!(
    /// The model (shared with the callers' tokenizer) and the context that borrows it.
    struct StepCell {
        owner: Arc<LlamaModel>,
        #[covariant]
        dependent: OptionalLayout,
    }
);

/// The step engine of a llamacpp model; the scheduler's thread owns it.
pub struct LlamaSteps {
    cell: StepCell,
    threads: i32,
    afford: Afford,
    batch: LlamaBatch<'static>,
    /// Sequences of a context unless memory refuses.
    width: usize,
    /// The longest sequence a context needs room for (the model's context size).
    max_cells: usize,
}

impl LlamaSteps {
    pub(super) fn new(
        model: Arc<LlamaModel>,
        threads: i32,
        afford: Afford,
        width: usize,
        max_cells: usize,
    ) -> LlamaSteps {
        let batch = LlamaBatch::new(N_BATCH, 1);
        LlamaSteps { cell: StepCell::new(model, |_| None), threads, afford, batch, width, max_cells }
    }
}

fn decode_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Decode { message: e.to_string() }
}

fn token(t: TokenId) -> LlamaToken {
    LlamaToken(i32::try_from(t).unwrap_or(i32::MAX))
}

/// One decoding step: one token per entry; the logits of each, in the entries' order.
///
/// The tokens go in by slot, in groups from [`decode_groups`], one `llama_decode` per group: with a KV stream per
/// sequence, llama.cpp evaluates a batch in one pass only over runs of consecutive sequence ids in increasing
/// order (8 sequences in admission order took 1.35x as long as the same 8 sorted), and every sequence of a pass
/// attends over as many cells as the longest one. Each sequence's logits are the same in any group.
fn decode_step(
    ctx: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch<'static>,
    entries: &[Decode],
) -> Result<Vec<Vec<f32>>, EngineError> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| entries[i].slot);
    let sorted: Vec<(usize, usize)> = order.iter().map(|&i| (entries[i].slot, entries[i].pos + 1)).collect();
    let mut logits = vec![Vec::new(); entries.len()];
    for group in decode_groups(&sorted) {
        batch.clear();
        for &i in &order[group.clone()] {
            let d = &entries[i];
            batch.add(token(d.token), int(d.pos)?, &[int(d.slot)?], true).map_err(decode_err)?;
        }
        ctx.decode(batch).map_err(decode_err)?;
        for (row, &i) in order[group].iter().enumerate() {
            logits[i] = ctx.get_logits_ith(int(row)?).to_vec();
        }
    }
    Ok(logits)
}

/// A pass over the weights costs about as much as attending over this many 256-cell blocks (measured on
/// SmolLM2-135M Q4_1: splitting 8 sequences of 100 cells from 8 of 700 into their own pass saved 10%).
const PASS_COST_BLOCKS: usize = 3;

/// Splits slot-sorted `(slot, cells)` entries into ranges decoded one pass each: runs of consecutive slots (llama.cpp
/// splits there anyway), cut further where a pass of short sequences saves more attention than a pass costs. A
/// pass attends over the longest sequence's cells, rounded up to 256, for each of its sequences.
fn decode_groups(sorted: &[(usize, usize)]) -> Vec<std::ops::Range<usize>> {
    let blocks = |cells: usize| cells.div_ceil(256).max(1);
    let n = sorted.len();
    // best[j]: the cheapest cost of the first j entries, and where its last range starts.
    let mut best: Vec<(usize, usize)> = vec![(0, 0); n + 1];
    for j in 1..=n {
        let mut longest = 0;
        best[j] = (usize::MAX, 0);
        for i in (0..j).rev() {
            if i + 1 < j && sorted[i].0 + 1 != sorted[i + 1].0 {
                break;
            }
            longest = longest.max(blocks(sorted[i].1));
            let cost = best[i].0.saturating_add(PASS_COST_BLOCKS + (j - i) * longest);
            if cost < best[j].0 {
                best[j] = (cost, i);
            }
        }
    }
    let mut groups = Vec::new();
    let mut j = n;
    while j > 0 {
        let i = best[j].1;
        groups.push(i..j);
        j = i;
    }
    groups.reverse();
    groups
}

/// Cells per sequence (rounded up to llama.cpp's padding) and sequences of a layout.
fn layout(slots: usize, capacity: usize) -> Result<(u32, u32), EngineError> {
    let step = u64::from(CELL_STEP);
    let per_seq = u32::try_from((capacity.max(1) as u64).div_ceil(step) * step)
        .map_err(|_| EngineError::Context { n_ctx: u32::MAX, n_seq: u32::try_from(slots).unwrap_or(u32::MAX) })?;
    let n_seq = u32::try_from(slots.max(1)).map_err(|_| EngineError::Context { n_ctx: per_seq, n_seq: u32::MAX })?;
    Ok((per_seq, n_seq))
}

/// The layouts `(sequences, cells each)` to try for a need of `slots` x `capacity`, best first, the last the need
/// itself. Wider than asked (`width`) and roomier: twice as long sequences (to the next power of two), and at least
/// [`CONTEXT_CELLS`] in all, so that the longer requests that follow short first ones (a server's warm-up) do not
/// each wait for a rebuild; no sequence longer than `max_cells`.
fn layout_tries(slots: usize, capacity: usize, width: usize, max_cells: usize) -> [(usize, usize); 4] {
    let roomy = capacity.next_power_of_two().min(max_cells).max(capacity);
    let wide = slots.max(width);
    let spacious = (CONTEXT_CELLS / wide).min(max_cells).max(roomy);
    [(wide, spacious), (wide, roomy), (wide, capacity), (slots, capacity)]
}

/// Position or slot as llama.cpp's i32.
fn int(n: usize) -> Result<i32, EngineError> {
    i32::try_from(n).map_err(|_| decode_err(format!("{n} does not fit llama.cpp's positions")))
}

impl StepEngine for LlamaSteps {
    type Error = EngineError;

    fn slots(&self) -> usize {
        self.cell.borrow_dependent().as_ref().map_or(0, |l| l.slots)
    }

    fn slot_capacity(&self) -> usize {
        self.cell.borrow_dependent().as_ref().map_or(0, |l| l.per_seq as usize)
    }

    fn resize(&mut self, slots: usize, capacity: usize) -> Result<(), EngineError> {
        // A context cannot grow under running sequences, so a later request longer than the waiting ones would wait
        // for every running one to finish: the roomiest layout memory allows.
        let tries = layout_tries(slots, capacity, self.width, self.max_cells);
        let mut chosen = None;
        for (n, cells) in tries {
            let (per_seq, n_seq) = layout(n, cells)?;
            let total = u64::from(per_seq) * u64::from(n_seq);
            match (self.afford)(total) {
                Ok(()) => {
                    chosen = Some((per_seq, n_seq));
                    break;
                }
                Err(e) if (n, cells) == (slots, capacity) => return Err(EngineError::Memory(e)),
                Err(_) => {}
            }
        }
        let Some((per_seq, n_seq)) = chosen else { return Err(EngineError::Memory("no layout fits".into())) };
        let threads = self.threads;
        let mut result = Ok(());
        self.cell.with_dependent_mut(|model, layout| {
            // The old cache is freed before the new one is made.
            *layout = None;
            match new_context(model, per_seq, n_seq, threads) {
                Ok(ctx) => *layout = Some(Layout { ctx, slots: n_seq as usize, per_seq }),
                Err(e) => result = Err(e),
            }
        });
        if slots > N_BATCH {
            self.batch = LlamaBatch::new(slots, 1);
        }
        result
    }

    fn prefill(&mut self, chunks: &[Prefill<'_>]) -> Result<Vec<Option<Vec<f32>>>, EngineError> {
        let batch = &mut self.batch;
        let mut result = Ok(Vec::with_capacity(chunks.len()));
        self.cell.with_dependent_mut(|_, layout| {
            let Some(layout) = layout.as_mut() else {
                result = Err(decode_err("no context"));
                return;
            };
            let mut outs = Vec::with_capacity(chunks.len());
            for c in chunks {
                let mut run = || -> Result<Option<Vec<f32>>, EngineError> {
                    if c.tokens.is_empty() || c.tokens.len() > N_BATCH {
                        return Err(decode_err(format!("a prefill chunk of {} tokens", c.tokens.len())));
                    }
                    batch.clear();
                    let seq = int(c.slot)?;
                    for (i, &t) in c.tokens.iter().enumerate() {
                        let last = i + 1 == c.tokens.len();
                        batch.add(token(t), int(c.start + i)?, &[seq], last && c.logits).map_err(decode_err)?;
                    }
                    layout.ctx.decode(batch).map_err(decode_err)?;
                    Ok(c.logits.then(|| layout.ctx.get_logits_ith(batch.n_tokens() - 1).to_vec()))
                };
                match run() {
                    Ok(l) => outs.push(l),
                    Err(e) => {
                        result = Err(e);
                        return;
                    }
                }
            }
            result = Ok(outs);
        });
        result
    }

    fn decode(&mut self, entries: &[Decode]) -> Result<Vec<Vec<f32>>, EngineError> {
        let batch = &mut self.batch;
        let mut result = Err(decode_err("no context"));
        self.cell.with_dependent_mut(|_, layout| {
            if let Some(layout) = layout.as_mut() {
                result = decode_step(&mut layout.ctx, batch, entries);
            }
        });
        result
    }

    fn free(&mut self, slot: usize) {
        self.cell.with_dependent_mut(|_, layout| {
            if let Some(layout) = layout.as_mut() {
                // Only fails for ids beyond i32, which no slot has.
                let _ = layout.ctx.clear_kv_cache_seq(u32::try_from(slot).ok(), None, None);
            }
        });
    }

    fn reuses_prefixes(&self) -> bool {
        true
    }

    /// The slot's cells from position `len` on are removed; the next chunk's tokens take the cells after the kept
    /// ones, where a single run puts them.
    fn truncate(&mut self, slot: usize, len: usize) -> bool {
        let mut done = false;
        self.cell.with_dependent_mut(|_, layout| {
            if let (Some(layout), Ok(seq), Ok(from)) = (layout.as_mut(), u32::try_from(slot), u32::try_from(len)) {
                done = layout.ctx.clear_kv_cache_seq(Some(seq), Some(from), None).unwrap_or(false);
            }
        });
        done
    }

    fn is_end(&self, t: TokenId) -> bool {
        self.cell.borrow_owner().vocab().is_eog(token(t))
    }

    /// Special tokens not rendered (llama-cpp-python's completion text), bytes decoded as UTF-8 with replacement.
    fn detokenize(&self, tokens: &[TokenId]) -> String {
        let vocab = self.cell.borrow_owner().vocab();
        let mut bytes = Vec::new();
        for &t in tokens {
            vocab.token_to_piece_into(token(t), &mut bytes, false, None);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::{decode_groups, layout_tries, CONTEXT_CELLS};

    #[test]
    fn layouts_are_wide_and_roomy_first_and_the_need_last() {
        // A warm-up's short need still gets a roomy context, as wide as the engine's width.
        assert_eq!(layout_tries(1, 40, 32, 8192), [(32, CONTEXT_CELLS / 32), (32, 64), (32, 40), (1, 40)]);
        // Never longer than the model's context, never shorter than the need.
        assert_eq!(layout_tries(4, 700, 2, 1024)[0], (4, 1024));
        assert_eq!(layout_tries(64, 5000, 32, 8192)[0], (64, 8192));
        assert_eq!(layout_tries(64, 5000, 32, 8192)[3], (64, 5000));
    }

    #[test]
    fn decode_groups_follow_runs_of_slots_and_cut_where_a_pass_pays() {
        assert!(decode_groups(&[]).is_empty());
        let same: Vec<(usize, usize)> = (0..6).map(|s| (s, 300)).collect();
        assert_eq!(decode_groups(&same), vec![0..6]);
        // A gap in the slots is a cut (llama.cpp would make two passes anyway).
        assert_eq!(decode_groups(&[(0, 10), (1, 10), (3, 10)]), vec![0..2, 2..3]);
        // Eight short sequences beside eight long ones: two passes (11 + 27 blocks against 3 + 48).
        let mixed: Vec<(usize, usize)> = (0..16).map(|s| (s, if s < 8 { 100 } else { 700 })).collect();
        assert_eq!(decode_groups(&mixed), vec![0..8, 8..16]);
        // One short beside one long: a second pass costs more than it saves.
        assert_eq!(decode_groups(&[(4, 100), (5, 700)]), vec![0..2]);
        // Every entry is in exactly one range, in order.
        let scattered: Vec<(usize, usize)> =
            [(0, 900), (1, 30), (2, 30), (3, 30), (4, 30), (6, 500), (7, 20), (9, 1000)].to_vec();
        let groups = decode_groups(&scattered);
        let flat: Vec<usize> = groups.iter().flat_map(|g| g.clone()).collect();
        assert_eq!(flat, (0..scattered.len()).collect::<Vec<_>>());
        assert!(groups.iter().all(|g| scattered[g.clone()].windows(2).all(|w| w[0].0 + 1 == w[1].0)));
    }
}
