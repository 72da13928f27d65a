//! Continuous batching for the local backends: a [`StepEngine`] (a model with a fixed number of sequence slots,
//! each with its own KV cache) driven step by step by a [`Scheduler`], which owns the running batch.
//!
//! At every step the scheduler drops the sequences that were cancelled, admits waiting ones into free slots,
//! prefills their prompts in chunks under a per-step token budget (at least one chunk per step, so neither side
//! starves), then runs one decode step for every sequence with a sampled token (one token each, one engine call).
//! An engine that [reuses prefixes](StepEngine::reuses_prefixes) keeps a slot's cache after its sequence leaves;
//! the next sequence goes to the free slot sharing the longest prompt prefix with it and prefills only the rest.
//! Each sequence samples with its own settings and seeded RNG, stops at an end-of-generation token, its
//! `max_tokens` or a stop string (cut before it), and pushes its text deltas to its caller as they are decoded.
//!
//! Outputs at temperature 0 do not depend on what else runs: a prompt is cut into chunks at fixed offsets of its
//! own (multiples of [`SchedulerConfig::prefill_chunk`]), never mixed with other sequences' tokens in a prefill
//! call, and the engine's decode step must be batch-invariant (each slot's logits the same whichever slots run
//! with it; the CPU kernels of both local backends are). Sampling draws from a per-sequence RNG seeded by the
//! request's seed, one draw per token, so a seed gives the same reply alone or in any batch.
//!
//! Streamed deltas are the raw decoded text (before the backend's output cleaning); their concatenation is
//! exactly [`SeqOutput::text`].
//!
//! [`Scheduler`] runs the loop on its own thread, or several loops (lanes: one engine and thread each, every
//! sequence given to the lane with the least outstanding work, so a multi-core CPU can run one single-threaded
//! engine per core); [`SchedulerCore`] is the same loop driven by the caller, step by step (tests, benchmarks).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cancel::Cancel;

/// A token id of the engine's vocabulary.
pub type TokenId = u32;

/// A prompt chunk that starts after a reused prefix has at least this many tokens, unless it starts at one of the
/// fixed chunk offsets: llama.cpp's CPU matrix products take another path, which rounds differently, under 2 rows
/// on x86 and under 8 on some ARM builds.
const MIN_CHUNK_ROWS: usize = 8;

/// One prefill chunk: `tokens` go into `slot`'s cache at positions `start..start + tokens.len()`.
#[derive(Clone, Copy, Debug)]
pub struct Prefill<'a> {
    pub slot: usize,
    pub start: usize,
    pub tokens: &'a [TokenId],
    /// Whether the logits of the chunk's last token are wanted (the prompt's last chunk).
    pub logits: bool,
}

/// One decode entry: `token` goes into `slot`'s cache at position `pos`, and its logits come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decode {
    pub slot: usize,
    pub pos: usize,
    pub token: TokenId,
}

/// A local model as the scheduler drives it: `slots()` sequence slots of `slot_capacity()` tokens each, each
/// with its own KV cache. Implemented by the local backends; the scheduler never calls it from two threads.
pub trait StepEngine: Send {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Slots of the current layout (0 before the first [`StepEngine::resize`]).
    fn slots(&self) -> usize;

    /// Tokens (prompt + generated) one slot holds in the current layout.
    fn slot_capacity(&self) -> usize;

    /// Rebuilds the caches for `slots` slots of at least `capacity` tokens each (an engine may round up). Called
    /// only when no slot is in use; every slot is empty afterwards.
    fn resize(&mut self, slots: usize, capacity: usize) -> Result<(), Self::Error>;

    /// Grows to at least `slots` slots of at least `capacity` tokens while slots are in use, keeping every slot's
    /// cache under its number (so outputs do not change). `Ok(false)`: not done and nothing changed (the engine
    /// cannot, the default, or memory does not allow it); the scheduler then lets the running sequences finish
    /// and resizes. An error means the slots' caches are lost: their sequences fail.
    fn grow(&mut self, slots: usize, capacity: usize) -> Result<bool, Self::Error> {
        let _ = (slots, capacity);
        Ok(false)
    }

    /// Evaluates prefill chunks in the order given (a slot's later chunk after its earlier one), each chunk alone
    /// as a single run would evaluate it; returns, per chunk, its last token's logits when it asked for them.
    fn prefill(&mut self, chunks: &[Prefill<'_>]) -> Result<Vec<Option<Vec<f32>>>, Self::Error>;

    /// One decoding step: every entry's token evaluated together; logits per entry, in order. Each slot's logits
    /// must not depend on which other slots are in the step (batch invariance).
    fn decode(&mut self, batch: &[Decode]) -> Result<Vec<Vec<f32>>, Self::Error>;

    /// Empties a slot's cache so that another sequence can use it.
    fn free(&mut self, slot: usize);

    /// Whether a slot's cache may outlive its sequence so that the next one reuses a shared prompt prefix
    /// ([`StepEngine::truncate`]). Such an engine's prefill must give the same logits for a chunk `start..end`
    /// evaluated over a kept prefix as for the same positions evaluated from the chunk's fixed offset.
    fn reuses_prefixes(&self) -> bool {
        false
    }

    /// Keeps the first `len` positions of a slot's cache and drops the rest. `false`: not done; the scheduler then
    /// frees the slot.
    fn truncate(&mut self, slot: usize, len: usize) -> bool {
        let _ = (slot, len);
        false
    }

    /// Whether a token ends generation (EOS, end of turn).
    fn is_end(&self, token: TokenId) -> bool;

    /// The text of a run of generated tokens (special tokens not rendered). The scheduler decodes short windows
    /// and diffs them, so a character split over tokens is emitted once complete.
    fn detokenize(&self, tokens: &[TokenId]) -> String;
}

/// How the next token is chosen. Greedy (the first maximum) at temperature 0; otherwise the filters in
/// llama.cpp's order (top-k, top-p, min-p on the untempered distribution, then temperature), or temperature
/// first (transformers' order) with `temperature_first`, and one draw from the sequence's RNG.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0: off.
    pub top_k: usize,
    /// 1: off.
    pub top_p: f32,
    /// 0: off.
    pub min_p: f32,
    pub seed: u64,
    pub temperature_first: bool,
}

impl SamplingParams {
    pub fn greedy() -> SamplingParams {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed: 0, temperature_first: false }
    }
}

/// One sequence to generate.
#[derive(Clone, Debug)]
pub struct SeqRequest {
    /// The prompt's token ids (not empty).
    pub prompt: Vec<TokenId>,
    pub max_tokens: u32,
    pub sampling: SamplingParams,
    /// Generation ends at the first of these in the text, which is cut before it (empty strings never match).
    pub stop: Vec<String>,
    /// Keep generating through end tokens (benchmarks that need exactly `max_tokens`).
    pub ignore_eos: bool,
    /// Checked at every step: a set flag takes the sequence out (waiting or running).
    pub cancel: Cancel,
}

impl SeqRequest {
    /// A greedy request with no stop strings.
    pub fn new(prompt: Vec<TokenId>, max_tokens: u32) -> SeqRequest {
        SeqRequest {
            prompt,
            max_tokens,
            sampling: SamplingParams::greedy(),
            stop: Vec::new(),
            ignore_eos: false,
            cancel: Cancel::new(),
        }
    }

    /// What the sequence costs a lane, roughly: a generated token about two prompt tokens.
    fn weight(&self) -> u64 {
        (self.prompt.len() as u64).saturating_add(2 * u64::from(self.max_tokens))
    }

    /// Cache cells the sequence may use.
    fn need(&self) -> usize {
        self.prompt.len().saturating_add(self.max_tokens as usize)
    }
}

/// Why a sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An end token came (not part of the output).
    Eos,
    /// A stop string appeared; the text is cut before it.
    StopString,
    /// `max_tokens` were generated.
    Length,
    /// Its [`Cancel`] flag was set, or its caller went away.
    Cancelled,
}

/// One finished sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqOutput {
    /// Generated tokens, without the end token that stopped them.
    pub tokens: Vec<TokenId>,
    /// The end token that stopped them ([`Finish::Eos`]): callers that record the raw output with its special
    /// tokens (huggingface_local's `response`, as transformers' `batch_decode`) need to know which one it was.
    pub end_token: Option<TokenId>,
    /// The generated text, cut before a stop string; the concatenation of the streamed deltas.
    pub text: String,
    pub finish: Finish,
    pub prompt_tokens: usize,
    /// From submission to the first sampled token.
    pub time_to_first_token: Option<Duration>,
}

/// Why the scheduler could not run a sequence.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the sequence needs {need} tokens (prompt + max_tokens), a slot holds at most {max}")]
    TooLong { need: usize, max: usize },
    /// The engine failed a step this sequence was part of.
    #[error("{0}")]
    Engine(String),
    /// The scheduler's thread is gone (it panicked).
    #[error("the scheduler stopped")]
    Stopped,
}

/// Limits of the running batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Sequences running at once, at most.
    pub max_slots: usize,
    /// Tokens (prompt + max_tokens) of one sequence, at most.
    pub max_capacity: usize,
    /// Tokens per step (decode tokens + prefill chunks); at least one prefill chunk runs in a step that has one.
    pub step_tokens: usize,
    /// A prompt is prefilled in chunks at multiples of this many tokens.
    pub prefill_chunk: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig { max_slots: 16, max_capacity: 4096, step_tokens: 512, prefill_chunk: 512 }
    }
}

/// Counters of a scheduler (for `/metrics`): gauges of now, totals since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub running: u64,
    pub waiting: u64,
    pub slots: u64,
    pub steps: u64,
    pub prompt_tokens: u64,
    /// Prompt tokens not prefilled because their slot's cache held them already.
    pub reused_tokens: u64,
    pub generated_tokens: u64,
    pub finished: u64,
    pub cancelled: u64,
}

#[derive(Debug, Default)]
struct StatCells {
    running: AtomicU64,
    waiting: AtomicU64,
    slots: AtomicU64,
    steps: AtomicU64,
    prompt_tokens: AtomicU64,
    reused_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    finished: AtomicU64,
    cancelled: AtomicU64,
}

impl StatCells {
    fn snapshot(&self) -> SchedulerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SchedulerStats {
            running: get(&self.running),
            waiting: get(&self.waiting),
            slots: get(&self.slots),
            steps: get(&self.steps),
            prompt_tokens: get(&self.prompt_tokens),
            reused_tokens: get(&self.reused_tokens),
            generated_tokens: get(&self.generated_tokens),
            finished: get(&self.finished),
            cancelled: get(&self.cancelled),
        }
    }
}

/// What a sequence tells its caller.
#[derive(Debug)]
pub enum SeqEvent {
    /// Newly decoded text.
    Delta(String),
    /// The end: the output or why it failed.
    Done(Result<SeqOutput, ScheduleError>),
}

/// Where a sequence's events go; returns false once nobody listens (the sequence is then cancelled).
pub type Notify = Box<dyn FnMut(SeqEvent) -> bool + Send>;

// ------------------------------------------------------------------------------------------------
// Text: incremental detokenisation and stop strings
// ------------------------------------------------------------------------------------------------

/// A sequence's text as its tokens come: windows of tokens decoded and diffed (a character split over tokens
/// waits until complete), stop strings searched in what is new, and what might begin a stop held back.
#[derive(Debug, Default)]
struct TextState {
    /// Start of the decode window and the end of what it had decoded before.
    prefix: usize,
    read: usize,
    text: String,
    /// Bytes of `text` already sent.
    sent: usize,
}

impl TextState {
    /// Appends the text of new `tokens`; `last`: flush what is held for an incomplete character.
    fn update<E: StepEngine + ?Sized>(&mut self, engine: &E, tokens: &[TokenId], last: bool) {
        if self.read >= tokens.len() && !last {
            return;
        }
        let before = engine.detokenize(&tokens[self.prefix..self.read]);
        let now = engine.detokenize(&tokens[self.prefix..]);
        let complete = last || !now.ends_with('\u{FFFD}');
        if complete && now.len() > before.len() && now.is_char_boundary(before.len()) {
            self.text.push_str(&now[before.len()..]);
            self.prefix = self.read;
            self.read = tokens.len();
        }
    }

    /// Cuts the text before the earliest stop string that starts at or after `from` bytes; true when one did.
    fn cut_stop(&mut self, stop: &[String], from: usize) -> bool {
        let longest = stop.iter().map(String::len).max().unwrap_or(0);
        let mut start = from.saturating_sub(longest.saturating_sub(1)).min(self.text.len());
        while !self.text.is_char_boundary(start) {
            start -= 1;
        }
        let hit = stop.iter().filter(|s| !s.is_empty()).filter_map(|s| self.text[start..].find(s.as_str())).min();
        match hit {
            Some(at) => {
                self.text.truncate(start + at);
                true
            }
            None => false,
        }
    }

    /// The text not sent yet, minus a tail that may begin a stop string (all of it when `last`).
    fn take_delta(&mut self, stop: &[String], last: bool) -> Option<String> {
        let mut end = self.text.len();
        if !last {
            let held = stop
                .iter()
                .flat_map(|s| (1..s.len()).rev().filter(move |&k| s.is_char_boundary(k)).map(move |k| &s[..k]))
                .filter(|p| self.text.ends_with(p))
                .map(str::len)
                .max()
                .unwrap_or(0);
            end -= held;
        }
        if end <= self.sent {
            return None;
        }
        let delta = self.text[self.sent..end].to_string();
        self.sent = end;
        Some(delta)
    }
}

// ------------------------------------------------------------------------------------------------
// Sampling
// ------------------------------------------------------------------------------------------------

/// The next token from one sequence's logits.
pub fn sample(logits: &[f32], s: &SamplingParams, rng: &mut fastrand::Rng) -> TokenId {
    if s.temperature <= 0.0 || !s.temperature.is_finite() {
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        return best as TokenId;
    }
    let scale = if s.temperature_first { 1.0 / s.temperature } else { 1.0 };
    let mut cands: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l * scale)).collect();
    let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if s.top_k > 0 && s.top_k < cands.len() {
        cands.select_nth_unstable_by(s.top_k - 1, by_logit);
        cands.truncate(s.top_k);
    }
    cands.sort_by(by_logit);
    let probs = |c: &[(u32, f32)]| -> Vec<f32> {
        let max = c.first().map_or(0.0, |x| x.1);
        let e: Vec<f32> = c.iter().map(|x| (x.1 - max).exp()).collect();
        let sum: f32 = e.iter().sum();
        e.into_iter().map(|x| x / sum).collect()
    };
    if s.top_p < 1.0 {
        let p = probs(&cands);
        let mut acc = 0.0f32;
        let mut keep = p.len();
        for (i, q) in p.iter().enumerate() {
            acc += q;
            if acc >= s.top_p {
                keep = i + 1;
                break;
            }
        }
        cands.truncate(keep.max(1));
    }
    if s.min_p > 0.0 {
        // Relative to the most likely token: keep logits >= max + ln(min_p).
        let floor = cands.first().map_or(0.0, |x| x.1) + s.min_p.ln();
        let keep = cands.iter().take_while(|x| x.1 >= floor).count();
        cands.truncate(keep.max(1));
    }
    if !s.temperature_first {
        cands.iter_mut().for_each(|x| x.1 /= s.temperature);
    }
    let p = probs(&cands);
    let mut x = rng.f32();
    for (c, q) in cands.iter().zip(&p) {
        if x < *q {
            return c.0;
        }
        x -= q;
    }
    cands.last().map_or(0, |c| c.0)
}

// ------------------------------------------------------------------------------------------------
// The loop
// ------------------------------------------------------------------------------------------------

/// A sequence in the scheduler.
struct Seq {
    req: SeqRequest,
    notify: Notify,
    slot: usize,
    /// Prompt tokens in the cache.
    prefilled: usize,
    tokens: Vec<TokenId>,
    /// Generated tokens in the cache (the last sampled one is not until the next decode step).
    evaluated: usize,
    /// Sampled, not yet in the cache.
    pending: Option<TokenId>,
    /// The end token that stopped it.
    end_token: Option<TokenId>,
    rng: fastrand::Rng,
    text: TextState,
    submitted: Instant,
    first_token: Option<Duration>,
    /// Set when it finished in this step (it leaves at the end of the step).
    done: Option<Finish>,
}

impl Seq {
    /// The tokens whose keys and values its slot's cache holds, in position order.
    fn cached(&self) -> Vec<TokenId> {
        let mut held = self.req.prompt[..self.prefilled].to_vec();
        if self.prefilled == self.req.prompt.len() {
            held.extend_from_slice(&self.tokens[..self.evaluated.min(self.tokens.len())]);
        }
        held
    }

    fn output(&self, finish: Finish) -> SeqOutput {
        SeqOutput {
            tokens: self.tokens.clone(),
            end_token: self.end_token,
            text: self.text.text.clone(),
            finish,
            prompt_tokens: self.req.prompt.len(),
            time_to_first_token: self.first_token,
        }
    }
}

/// The scheduling loop driven by its caller: [`SchedulerCore::add`] sequences, [`SchedulerCore::step`] until
/// [`SchedulerCore::is_idle`]. [`Scheduler`] runs it on a thread.
pub struct SchedulerCore<E: StepEngine> {
    engine: E,
    config: SchedulerConfig,
    waiting: VecDeque<Seq>,
    /// Admitted sequences in admission order (prefilling, then decoding).
    running: Vec<Seq>,
    stats: Arc<StatCells>,
    /// The engine refused to grow since it was last idle.
    grow_refused: bool,
    /// What each free slot's cache still holds (engines that reuse prefixes; empty for slots in use).
    kept: Vec<Vec<TokenId>>,
}

impl<E: StepEngine> SchedulerCore<E> {
    pub fn new(engine: E, config: SchedulerConfig) -> Self {
        let config = SchedulerConfig {
            max_slots: config.max_slots.max(1),
            max_capacity: config.max_capacity.max(1),
            step_tokens: config.step_tokens.max(1),
            prefill_chunk: config.prefill_chunk.max(1),
        };
        SchedulerCore {
            engine,
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            stats: Arc::default(),
            grow_refused: false,
            kept: Vec::new(),
        }
    }

    pub fn engine(&self) -> &E {
        &self.engine
    }

    pub fn stats(&self) -> SchedulerStats {
        self.stats.snapshot()
    }

    /// No sequence waiting or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Queues a sequence; it joins the batch at a coming step. Requests that can never run end here.
    pub fn add(&mut self, req: SeqRequest, mut notify: Notify) {
        let error = if req.prompt.is_empty() {
            Some(ScheduleError::EmptyPrompt)
        } else if req.need() > self.config.max_capacity {
            Some(ScheduleError::TooLong { need: req.need(), max: self.config.max_capacity })
        } else {
            None
        };
        if let Some(e) = error {
            self.stats.finished.fetch_add(1, Ordering::Relaxed);
            notify(SeqEvent::Done(Err(e)));
            return;
        }
        let rng = fastrand::Rng::with_seed(req.sampling.seed);
        self.waiting.push_back(Seq {
            req,
            notify,
            slot: usize::MAX,
            prefilled: 0,
            tokens: Vec::new(),
            evaluated: 0,
            pending: None,
            end_token: None,
            rng,
            text: TextState::default(),
            submitted: Instant::now(),
            first_token: None,
            done: None,
        });
        self.publish();
    }

    /// One step: cancellations, admissions, prefill chunks, a decode step for every sequence with a sampled token
    /// (a prompt prefilled in this step included, so that a new sequence decodes beside the others at once instead
    /// of leaving its slot out of one step).
    pub fn step(&mut self) {
        self.sweep_cancelled();
        self.admit();
        let decoding = self.running.iter().filter(|s| s.pending.is_some()).count();
        self.prefill_step(decoding);
        self.decode_step();
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        self.publish();
    }

    fn publish(&self) {
        self.stats.running.store(self.running.len() as u64, Ordering::Relaxed);
        self.stats.waiting.store(self.waiting.len() as u64, Ordering::Relaxed);
        self.stats.slots.store(self.engine.slots() as u64, Ordering::Relaxed);
    }

    fn sweep_cancelled(&mut self) {
        let mut i = 0;
        while i < self.waiting.len() {
            if self.waiting[i].req.cancel.is_cancelled() {
                if let Some(seq) = self.waiting.remove(i) {
                    self.finish_seq(seq, Finish::Cancelled);
                }
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].req.cancel.is_cancelled() {
                let seq = self.running.remove(i);
                self.release(&seq);
                self.finish_seq(seq, Finish::Cancelled);
            } else {
                i += 1;
            }
        }
    }

    /// Moves waiting sequences into free slots, first come first served. When the head needs more than a slot
    /// holds, or more sequences wait than the layout has slots and it could have more, the engine grows under the
    /// running sequences ([`StepEngine::grow`]); an engine that cannot admits nobody else until the running ones
    /// finish, and is then resized to what the waiting ones need.
    fn admit(&mut self) {
        while let Some(head) = self.waiting.front() {
            if head.req.max_tokens == 0 {
                // Nothing to generate: no prefill (as a single run).
                if let Some(seq) = self.waiting.pop_front() {
                    self.finish_seq(seq, Finish::Length);
                }
                continue;
            }
            let need = head.req.need();
            if self.running.is_empty() {
                self.grow_refused = false;
                // Slots are never given back (a server keeps its width); capacity follows the need.
                let want_slots = self.waiting.len().min(self.config.max_slots).max(self.engine.slots());
                let want_cap = self.waiting.iter().take(want_slots).map(|s| s.req.need()).max().unwrap_or(need);
                if self.engine.slots() < want_slots || self.engine.slot_capacity() < want_cap {
                    if let Err(e) = self.resize(want_slots, want_cap, need) {
                        if let Some(seq) = self.waiting.pop_front() {
                            self.fail(seq, ScheduleError::Engine(e.to_string()));
                        }
                        continue;
                    }
                }
            }
            let (slots, capacity) = (self.engine.slots(), self.engine.slot_capacity());
            let room_to_grow =
                slots < self.config.max_slots && self.waiting.len() > slots.saturating_sub(self.running.len());
            let too_small = need > capacity;
            if !self.running.is_empty() && (too_small || room_to_grow) && !self.grow_refused {
                // Grow under the running sequences when the engine can (capacity doubled, so that growing is rare).
                let want_slots = if room_to_grow {
                    (self.running.len() + self.waiting.len()).min(self.config.max_slots)
                } else {
                    slots
                };
                let want_cap = if too_small {
                    capacity.saturating_mul(2).min(self.config.max_capacity).max(need)
                } else {
                    capacity
                };
                match self.engine.grow(want_slots.max(slots), want_cap) {
                    Ok(true) => continue,
                    Ok(false) => self.grow_refused = true,
                    Err(e) => {
                        let lost: Vec<usize> = self.running.iter().map(|s| s.slot).collect();
                        self.fail_slots(lost, &e.to_string());
                        continue;
                    }
                }
            }
            let used: Vec<usize> = self.running.iter().map(|s| s.slot).collect();
            if used.len() >= slots || too_small || (room_to_grow && !self.running.is_empty()) {
                break;
            }
            if let Some(mut seq) = self.waiting.pop_front() {
                let (slot, reuse) = self.choose_slot(slots, &used, &seq.req.prompt);
                seq.slot = slot;
                seq.prefilled = self.take_slot(slot, reuse);
                self.running.push(seq);
            }
        }
    }

    /// The free slot whose kept cache shares the longest usable prefix with `prompt` (the lowest on a tie, so
    /// that running slots stay close together), and that prefix's length.
    fn choose_slot(&self, slots: usize, used: &[usize], prompt: &[TokenId]) -> (usize, usize) {
        let mut best = (usize::MAX, 0);
        for slot in (0..slots).filter(|s| !used.contains(s)) {
            let reuse = self.kept.get(slot).map_or(0, |kept| self.reusable(kept, prompt));
            if best.0 == usize::MAX || reuse > best.1 {
                best = (slot, reuse);
            }
        }
        best
    }

    /// How much of `kept` a sequence with `prompt` may reuse: their common prefix, leaving at least one prompt
    /// token to evaluate, and such that the prompt's first chunk after it has at least [`MIN_CHUNK_ROWS`] tokens
    /// or starts at one of the fixed chunk offsets (kernels may change paths, and rounding, on fewer rows).
    fn reusable(&self, kept: &[TokenId], prompt: &[TokenId]) -> usize {
        let common = kept.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let reuse = common.min(prompt.len().saturating_sub(1));
        let chunk = self.config.prefill_chunk;
        let offset = reuse / chunk * chunk;
        let end = (offset + chunk).min(prompt.len());
        if end - reuse < MIN_CHUNK_ROWS {
            end.saturating_sub(MIN_CHUNK_ROWS).max(offset)
        } else {
            reuse
        }
    }

    /// Readies `slot` for a new sequence that reuses the first `reuse` positions of its cache; returns how many
    /// it does reuse (0 when the engine would not keep them).
    fn take_slot(&mut self, slot: usize, reuse: usize) -> usize {
        let kept = self.kept.get_mut(slot).map(std::mem::take).unwrap_or_default();
        if reuse > 0 && self.engine.truncate(slot, reuse) {
            self.stats.reused_tokens.fetch_add(reuse as u64, Ordering::Relaxed);
            return reuse;
        }
        if !kept.is_empty() || reuse > 0 {
            self.engine.free(slot);
        }
        0
    }

    /// A sequence left its slot: the slot's cache is kept for a later prompt with the same prefix when the engine
    /// reuses prefixes, and freed otherwise.
    fn release(&mut self, seq: &Seq) {
        if !self.engine.reuses_prefixes() {
            self.engine.free(seq.slot);
            return;
        }
        if self.kept.len() <= seq.slot {
            self.kept.resize(seq.slot + 1, Vec::new());
        }
        self.kept[seq.slot] = seq.cached();
    }

    /// Resizes to `slots` x `capacity`, else (memory) to one slot for the head alone.
    fn resize(&mut self, slots: usize, capacity: usize, head_need: usize) -> Result<(), E::Error> {
        self.kept.clear();
        match self.engine.resize(slots, capacity) {
            Ok(()) => Ok(()),
            Err(_) if slots > 1 || capacity > head_need => self.engine.resize(1, head_need),
            Err(e) => Err(e),
        }
    }

    /// Runs the decode step.
    fn decode_step(&mut self) {
        let batch: Vec<Decode> = self
            .running
            .iter()
            .filter_map(|s| {
                s.pending.map(|token| Decode { slot: s.slot, pos: s.req.prompt.len() + s.tokens.len() - 1, token })
            })
            .collect();
        if batch.is_empty() {
            return;
        }
        match self.engine.decode(&batch) {
            Ok(logits) if logits.len() == batch.len() => {
                for (entry, l) in batch.iter().zip(logits) {
                    if let Some(i) = self.running.iter().position(|s| s.slot == entry.slot) {
                        self.running[i].pending = None;
                        self.running[i].evaluated += 1;
                        self.accept(i, &l);
                    }
                }
                self.retire();
            }
            Ok(logits) => {
                let e = format!("the engine returned {} logits for {} sequences", logits.len(), batch.len());
                self.fail_slots(batch.iter().map(|d| d.slot).collect(), &e);
            }
            Err(e) => self.fail_slots(batch.iter().map(|d| d.slot).collect(), &e.to_string()),
        }
    }

    /// Prefill chunks in admission order while the step has budget left after `decoding` tokens (at least one).
    fn prefill_step(&mut self, decoding: usize) {
        let mut budget = self.config.step_tokens.saturating_sub(decoding);
        let chunk = self.config.prefill_chunk;
        // (running index, start, end) of each chunk, in order.
        let mut plan: Vec<(usize, usize, usize)> = Vec::new();
        for (i, s) in self.running.iter().enumerate() {
            let len = s.req.prompt.len();
            let mut at = s.prefilled;
            while at < len && (budget > 0 || plan.is_empty()) {
                let end = ((at / chunk + 1) * chunk).min(len);
                plan.push((i, at, end));
                budget = budget.saturating_sub(end - at);
                at = end;
            }
            if budget == 0 && !plan.is_empty() {
                break;
            }
        }
        if plan.is_empty() {
            return;
        }
        let chunks: Vec<Prefill<'_>> = plan
            .iter()
            .map(|&(i, start, end)| {
                let s = &self.running[i];
                Prefill { slot: s.slot, start, tokens: &s.req.prompt[start..end], logits: end == s.req.prompt.len() }
            })
            .collect();
        let result = self.engine.prefill(&chunks);
        drop(chunks);
        let slots: Vec<usize> = plan.iter().map(|&(i, _, _)| self.running[i].slot).collect();
        match result {
            Ok(outs) if outs.len() == plan.len() => {
                let mut prompt_tokens = 0;
                for (&(i, start, end), out) in plan.iter().zip(outs) {
                    self.running[i].prefilled = end;
                    prompt_tokens += end - start;
                    if end == self.running[i].req.prompt.len() {
                        match out {
                            Some(l) => self.accept(i, &l),
                            None => {
                                let slot = self.running[i].slot;
                                self.fail_slots(vec![slot], "the engine returned no logits for a prompt");
                                self.stats.prompt_tokens.fetch_add(prompt_tokens as u64, Ordering::Relaxed);
                                return self.retire();
                            }
                        }
                    }
                }
                self.stats.prompt_tokens.fetch_add(prompt_tokens as u64, Ordering::Relaxed);
                self.retire();
            }
            Ok(outs) => {
                let e = format!("the engine returned {} results for {} prefill chunks", outs.len(), plan.len());
                self.fail_slots(slots, &e);
            }
            Err(e) => self.fail_slots(slots, &e.to_string()),
        }
    }

    /// Samples running sequence `i`'s next token from `logits`, updates its text and sends what is new; marks it
    /// done when it finished.
    fn accept(&mut self, i: usize, logits: &[f32]) {
        let seq = &mut self.running[i];
        let token = sample(logits, &seq.req.sampling, &mut seq.rng);
        if seq.first_token.is_none() {
            seq.first_token = Some(seq.submitted.elapsed());
        }
        if self.engine.is_end(token) && !seq.req.ignore_eos {
            seq.end_token = Some(token);
            seq.done = Some(Finish::Eos);
            return;
        }
        seq.tokens.push(token);
        self.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        let before = seq.text.text.len();
        seq.text.update(&self.engine, &seq.tokens, false);
        if seq.text.cut_stop(&seq.req.stop, before) {
            seq.done = Some(Finish::StopString);
        } else if seq.tokens.len() >= seq.req.max_tokens as usize {
            seq.done = Some(Finish::Length);
        } else {
            seq.pending = Some(token);
            if let Some(delta) = seq.text.take_delta(&seq.req.stop, false) {
                if !(seq.notify)(SeqEvent::Delta(delta)) {
                    seq.req.cancel.cancel();
                }
            }
        }
    }

    /// Takes out the sequences that finished in this step.
    fn retire(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            let Some(finish) = self.running[i].done else {
                i += 1;
                continue;
            };
            let seq = self.running.remove(i);
            self.release(&seq);
            self.finish_seq(seq, finish);
        }
    }

    /// Flushes a sequence's text, sends the rest of it and its output.
    fn finish_seq(&mut self, mut seq: Seq, mut finish: Finish) {
        if finish != Finish::Cancelled && finish != Finish::StopString {
            let before = seq.text.text.len();
            seq.text.update(&self.engine, &seq.tokens, true);
            if seq.text.cut_stop(&seq.req.stop, before) {
                finish = Finish::StopString;
            }
        }
        if finish != Finish::Cancelled {
            if let Some(delta) = seq.text.take_delta(&seq.req.stop, true) {
                (seq.notify)(SeqEvent::Delta(delta));
            }
        }
        let counter = if finish == Finish::Cancelled { &self.stats.cancelled } else { &self.stats.finished };
        counter.fetch_add(1, Ordering::Relaxed);
        // The gauges first: a caller that reads them once it has its output must not still count its sequence.
        self.publish();
        let out = seq.output(finish);
        (seq.notify)(SeqEvent::Done(Ok(out)));
    }

    fn fail(&mut self, mut seq: Seq, error: ScheduleError) {
        self.stats.finished.fetch_add(1, Ordering::Relaxed);
        self.publish();
        (seq.notify)(SeqEvent::Done(Err(error)));
    }

    /// Fails the running sequences in `slots` (one engine call failed for all of them) and frees their slots.
    fn fail_slots(&mut self, slots: Vec<usize>, message: &str) {
        let mut i = 0;
        while i < self.running.len() {
            if slots.contains(&self.running[i].slot) {
                let seq = self.running.remove(i);
                self.engine.free(seq.slot);
                self.fail(seq, ScheduleError::Engine(message.to_string()));
            } else {
                i += 1;
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The threaded scheduler
// ------------------------------------------------------------------------------------------------

struct Job {
    req: SeqRequest,
    notify: Notify,
}

/// A [`SchedulerCore`] on its own thread, or several (lanes, one engine each): callers on any thread submit
/// sequences and wait for them; sequences submitted while others run join a batch at the next step. With several
/// lanes each sequence goes to the lane with the least outstanding work. Dropping it ends the threads once the
/// running sequences are done.
pub struct Scheduler {
    lanes: Vec<Lane>,
}

/// One scheduler thread and what it has been given and not yet finished.
struct Lane {
    jobs: Mutex<Option<mpsc::Sender<Vec<Job>>>>,
    worker: Option<JoinHandle<()>>,
    stats: Arc<StatCells>,
    /// Outstanding work: [`SeqRequest::weight`] of its unfinished sequences.
    load: Arc<AtomicU64>,
}

impl Scheduler {
    /// Starts the loop's thread for `engine`.
    pub fn new<E: StepEngine + 'static>(engine: E, config: SchedulerConfig) -> Scheduler {
        Scheduler::with_lanes(vec![engine], config)
    }

    /// Starts one loop thread per engine (`config` holds for each).
    pub fn with_lanes<E: StepEngine + 'static>(engines: Vec<E>, config: SchedulerConfig) -> Scheduler {
        let lanes = engines
            .into_iter()
            .map(|engine| {
                let core = SchedulerCore::new(engine, config.clone());
                let stats = core.stats.clone();
                let (tx, rx) = mpsc::channel::<Vec<Job>>();
                let worker =
                    std::thread::Builder::new().name("clem-scheduler".into()).spawn(move || run_loop(core, rx)).ok();
                Lane { jobs: Mutex::new(worker.is_some().then_some(tx)), worker, stats, load: Arc::default() }
            })
            .collect();
        Scheduler { lanes }
    }

    /// The lanes' counters, summed.
    pub fn stats(&self) -> SchedulerStats {
        let mut total = SchedulerStats::default();
        for s in self.lane_stats() {
            total.running += s.running;
            total.waiting += s.waiting;
            total.slots += s.slots;
            total.steps += s.steps;
            total.prompt_tokens += s.prompt_tokens;
            total.reused_tokens += s.reused_tokens;
            total.generated_tokens += s.generated_tokens;
            total.finished += s.finished;
            total.cancelled += s.cancelled;
        }
        total
    }

    /// Each lane's counters.
    pub fn lane_stats(&self) -> Vec<SchedulerStats> {
        self.lanes.iter().map(|l| l.stats.snapshot()).collect()
    }

    /// Submits a sequence whose events go to `notify` (called on the scheduler's thread).
    pub fn submit(&self, req: SeqRequest, notify: Notify) {
        self.submit_all(vec![(req, notify)]);
    }

    /// Submits sequences together: those given to one lane join its batch at the same step, in this order.
    pub fn submit_all(&self, seqs: Vec<(SeqRequest, Notify)>) {
        let mut by_lane: Vec<Vec<Job>> = (0..self.lanes.len()).map(|_| Vec::new()).collect();
        for (req, mut notify) in seqs {
            let Some((i, lane)) = self.lanes.iter().enumerate().min_by_key(|(_, l)| l.load.load(Ordering::Relaxed))
            else {
                notify(SeqEvent::Done(Err(ScheduleError::Stopped)));
                continue;
            };
            let weight = req.weight();
            lane.load.fetch_add(weight, Ordering::Relaxed);
            let load = lane.load.clone();
            let notify: Notify = Box::new(move |event| {
                if matches!(event, SeqEvent::Done(_)) {
                    load.fetch_sub(weight, Ordering::Relaxed);
                }
                notify(event)
            });
            by_lane[i].push(Job { req, notify });
        }
        for (lane, jobs) in self.lanes.iter().zip(by_lane) {
            if jobs.is_empty() {
                continue;
            }
            let sent = match lane.jobs.lock() {
                Ok(tx) => match tx.as_ref() {
                    Some(tx) => tx.send(jobs).map_err(|e| e.0),
                    None => Err(jobs),
                },
                Err(_) => Err(jobs),
            };
            if let Err(jobs) = sent {
                for mut job in jobs {
                    (job.notify)(SeqEvent::Done(Err(ScheduleError::Stopped)));
                }
            }
        }
    }

    /// Generates one sequence, calling `on_delta` on this thread with each piece of text as it is decoded.
    pub fn generate(&self, req: SeqRequest, on_delta: &mut dyn FnMut(&str)) -> Result<SeqOutput, ScheduleError> {
        let rx = self.submit_channel(req);
        loop {
            match rx.recv() {
                Ok(SeqEvent::Delta(d)) => on_delta(&d),
                Ok(SeqEvent::Done(result)) => return result,
                Err(_) => return Err(ScheduleError::Stopped),
            }
        }
    }

    /// Generates every sequence of `reqs` together (one running batch per lane they went to); results in input order.
    pub fn generate_batch(&self, reqs: Vec<SeqRequest>) -> Vec<Result<SeqOutput, ScheduleError>> {
        let mut receivers = Vec::with_capacity(reqs.len());
        let mut seqs: Vec<(SeqRequest, Notify)> = Vec::with_capacity(reqs.len());
        for req in reqs {
            let (tx, rx) = mpsc::channel();
            receivers.push(rx);
            seqs.push((req, Box::new(move |e| tx.send(e).is_ok())));
        }
        self.submit_all(seqs);
        receivers
            .into_iter()
            .map(|rx| loop {
                match rx.recv() {
                    Ok(SeqEvent::Delta(_)) => {}
                    Ok(SeqEvent::Done(result)) => break result,
                    Err(_) => break Err(ScheduleError::Stopped),
                }
            })
            .collect()
    }

    fn submit_channel(&self, req: SeqRequest) -> mpsc::Receiver<SeqEvent> {
        let (tx, rx) = mpsc::channel();
        self.submit(req, Box::new(move |e| tx.send(e).is_ok()));
        rx
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        for lane in &mut self.lanes {
            if let Ok(mut tx) = lane.jobs.lock() {
                tx.take();
            }
        }
        for lane in &mut self.lanes {
            if let Some(worker) = lane.worker.take() {
                let _ = worker.join();
            }
        }
    }
}

fn run_loop<E: StepEngine>(mut core: SchedulerCore<E>, rx: mpsc::Receiver<Vec<Job>>) {
    loop {
        if core.is_idle() {
            match rx.recv() {
                Ok(jobs) => jobs.into_iter().for_each(|j| core.add(j.req, j.notify)),
                Err(_) => return,
            }
        }
        while let Ok(jobs) = rx.try_recv() {
            jobs.into_iter().for_each(|j| core.add(j.req, j.notify));
        }
        core.step();
    }
}

#[cfg(test)]
mod tests;
