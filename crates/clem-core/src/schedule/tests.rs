//! The scheduler against a fake engine whose next token hashes the slot's whole cache: any mix-up of slots,
//! positions or freed caches changes the output, so "equals its single run" checks the bookkeeping.

use std::sync::{Arc, Mutex};

use super::*;

const VOCAB: usize = 200;
const EOS: TokenId = 0;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Resize(usize, usize),
    Grow(usize, usize),
    /// (slot, start, len) per chunk.
    Prefill(Vec<(usize, usize, usize)>),
    Decode(Vec<usize>),
    Free(usize),
    Truncate(usize, usize),
}

#[derive(Debug, thiserror::Error)]
#[error("fake engine: {0}")]
struct FakeError(String);

/// Slots hold the tokens put into them; logits are a hash of a slot's tokens. Prompt tokens are >= 100;
/// generated ones 1..=20 (two letters each), 21 and 22 the two bytes of "é", 0 the end token.
#[derive(Default)]
struct Fake {
    cache: Vec<Vec<TokenId>>,
    capacity: usize,
    calls: Vec<Call>,
    /// A prompt containing this token fails its prefill.
    poison: Option<TokenId>,
    /// Grows under running sequences (keeping their caches).
    live: bool,
    /// Keeps slots' caches for prefix reuse.
    reuse: bool,
}

fn logits_of(history: &[TokenId]) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &t in history {
        h = (h ^ u64::from(t)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut l: Vec<f32> = (0..VOCAB).map(|t| ((h >> (t % 32)) & 7) as f32 * 0.25).collect();
    let best = if h.is_multiple_of(29) { EOS as usize } else { 1 + (h % 20) as usize };
    l[best] = 3.0;
    l
}

impl StepEngine for Fake {
    type Error = FakeError;

    fn slots(&self) -> usize {
        self.cache.len()
    }

    fn slot_capacity(&self) -> usize {
        self.capacity
    }

    fn resize(&mut self, slots: usize, capacity: usize) -> Result<(), FakeError> {
        self.calls.push(Call::Resize(slots, capacity));
        self.cache = vec![Vec::new(); slots];
        self.capacity = capacity.div_ceil(8) * 8;
        Ok(())
    }

    fn grow(&mut self, slots: usize, capacity: usize) -> Result<bool, FakeError> {
        if !self.live {
            return Ok(false);
        }
        self.calls.push(Call::Grow(slots, capacity));
        self.cache.resize(slots.max(self.cache.len()), Vec::new());
        self.capacity = self.capacity.max(capacity.div_ceil(8) * 8);
        Ok(true)
    }

    fn prefill(&mut self, chunks: &[Prefill<'_>]) -> Result<Vec<Option<Vec<f32>>>, FakeError> {
        self.calls.push(Call::Prefill(chunks.iter().map(|c| (c.slot, c.start, c.tokens.len())).collect()));
        let mut out = Vec::new();
        for c in chunks {
            if self.poison.is_some_and(|p| c.tokens.contains(&p)) {
                return Err(FakeError("poisoned prompt".into()));
            }
            let slot = &mut self.cache[c.slot];
            if slot.len() != c.start || c.start + c.tokens.len() > self.capacity {
                return Err(FakeError(format!("slot {} holds {}, chunk starts at {}", c.slot, slot.len(), c.start)));
            }
            slot.extend_from_slice(c.tokens);
            out.push(c.logits.then(|| logits_of(slot)));
        }
        Ok(out)
    }

    fn decode(&mut self, batch: &[Decode]) -> Result<Vec<Vec<f32>>, FakeError> {
        self.calls.push(Call::Decode(batch.iter().map(|d| d.slot).collect()));
        let mut out = Vec::new();
        for d in batch {
            let slot = &mut self.cache[d.slot];
            if slot.len() != d.pos || slot.len() >= self.capacity {
                return Err(FakeError(format!("slot {} holds {}, decode at {}", d.slot, slot.len(), d.pos)));
            }
            slot.push(d.token);
            out.push(logits_of(slot));
        }
        Ok(out)
    }

    fn free(&mut self, slot: usize) {
        self.calls.push(Call::Free(slot));
        self.cache[slot].clear();
    }

    fn reuses_prefixes(&self) -> bool {
        self.reuse
    }

    fn truncate(&mut self, slot: usize, len: usize) -> bool {
        if !self.reuse || len > self.cache[slot].len() {
            return false;
        }
        self.calls.push(Call::Truncate(slot, len));
        self.cache[slot].truncate(len);
        true
    }

    fn is_end(&self, token: TokenId) -> bool {
        token == EOS
    }

    fn detokenize(&self, tokens: &[TokenId]) -> String {
        let mut bytes = Vec::new();
        for &t in tokens {
            match t {
                1..=20 => bytes.extend([b'a' + ((t - 1) % 5) as u8, b'p' + ((t - 1) / 5) as u8]),
                21 => bytes.push(0xC3),
                22 => bytes.push(0xA9),
                _ => {}
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

type Log = Arc<Mutex<Vec<SeqEvent>>>;

fn listener() -> (Log, Notify) {
    let log: Log = Arc::default();
    let sink = log.clone();
    (log, Box::new(move |e| sink.lock().map(|mut l| l.push(e)).is_ok()))
}

/// The deltas and the final result a listener got.
fn outcome(log: &Log) -> (String, Option<Result<SeqOutput, ScheduleError>>) {
    let mut text = String::new();
    let mut done = None;
    for e in log.lock().expect("log").iter() {
        match e {
            SeqEvent::Delta(d) => {
                assert!(done.is_none(), "a delta after the end");
                text.push_str(d);
            }
            SeqEvent::Done(r) => done = Some(r.clone()),
        }
    }
    (text, done)
}

fn config() -> SchedulerConfig {
    SchedulerConfig { max_slots: 4, max_capacity: 256, step_tokens: 16, prefill_chunk: 16 }
}

fn prompt(len: usize, salt: u32) -> Vec<TokenId> {
    (0..len as u32).map(|i| 100 + (i * 7 + salt) % 100).collect()
}

fn run_until_idle(core: &mut SchedulerCore<Fake>) -> usize {
    let mut steps = 0;
    while !core.is_idle() {
        core.step();
        steps += 1;
        assert!(steps < 10_000, "the scheduler never went idle");
    }
    steps
}

/// A request's output run alone; its deltas' concatenation is checked against its text.
fn single(req: &SeqRequest) -> SeqOutput {
    let mut core = SchedulerCore::new(Fake::default(), config());
    let (log, notify) = listener();
    core.add(req.clone(), notify);
    run_until_idle(&mut core);
    let (streamed, done) = outcome(&log);
    let out = done.expect("finished").expect("no error");
    assert_eq!(streamed, out.text, "deltas concatenate to the text");
    out
}

fn same(a: &SeqOutput, b: &SeqOutput) -> bool {
    (a.tokens == b.tokens) && a.text == b.text && a.finish == b.finish && a.prompt_tokens == b.prompt_tokens
}

fn request(len: usize, salt: u32, max_tokens: u32, stop: &[&str]) -> SeqRequest {
    let mut r = SeqRequest::new(prompt(len, salt), max_tokens);
    r.stop = stop.iter().map(|s| s.to_string()).collect();
    r
}

#[test]
fn sequences_joining_and_leaving_mid_batch_equal_their_single_runs() {
    let reqs = [
        request(3, 1, 12, &[]),
        request(20, 2, 40, &[]),
        request(45, 3, 5, &[]),
        request(9, 4, 30, &["cr"]),
        request(70, 5, 25, &[]),
        request(1, 6, 60, &["zz"]),
    ];
    let singles: Vec<SeqOutput> = reqs.iter().map(single).collect();
    // Different lengths and ends, so sequences really do leave at different steps.
    assert!(singles.iter().any(|s| s.finish == Finish::Length));

    let mut core = SchedulerCore::new(Fake::default(), config());
    let mut logs = Vec::new();
    // Two at the start, then one every few steps while others run.
    for (i, r) in reqs.iter().enumerate() {
        let (log, notify) = listener();
        core.add(r.clone(), notify);
        logs.push(log);
        if i >= 1 {
            for _ in 0..3 {
                core.step();
            }
        }
    }
    run_until_idle(&mut core);
    for (i, (log, want)) in logs.iter().zip(&singles).enumerate() {
        let (streamed, done) = outcome(log);
        let got = done.expect("finished").expect("no error");
        assert!(same(&got, want), "sequence {i}: batched {got:?} != single {want:?}");
        assert_eq!(streamed, got.text, "sequence {i}: deltas concatenate to the text");
    }
    let calls = &core.engine().calls;
    assert!(calls.iter().any(|c| matches!(c, Call::Decode(s) if s.len() >= 3)), "decode steps were batched");
    // A sequence joined while others were decoding: a prefill came after a decode step that had others in it.
    // A sequence joined while another kept decoding: slot s decodes, another slot prefills, s decodes again.
    let joined = (0..4).any(|s| {
        let mut seen_decode = false;
        let mut seen_prefill = false;
        for c in calls {
            match c {
                Call::Decode(slots) if slots.contains(&s) => {
                    if seen_prefill {
                        return true;
                    }
                    seen_decode = true;
                }
                Call::Prefill(chunks) if seen_decode && chunks.iter().any(|c| c.0 != s) => seen_prefill = true,
                Call::Free(f) if *f == s => (seen_decode, seen_prefill) = (false, false),
                _ => {}
            }
        }
        false
    });
    assert!(joined, "no sequence joined a running batch: {calls:?}");
}

#[test]
fn a_stop_string_across_tokens_is_cut_and_never_streamed() {
    let base = request(5, 9, 40, &[]);
    let free = single(&base);
    assert!(free.tokens.len() >= 6, "the fake generates long enough: {free:?}");
    // The last letter of token 3 and the first of token 4: the stop spans a token boundary.
    let t3 = free.text[4..6].to_string();
    let t4 = free.text[6..8].to_string();
    let stop = format!("{}{}", &t3[1..], &t4[..1]);
    let at = free.text.find(&stop).expect("occurs");
    let mut req = base.clone();
    req.stop = vec!["never".into(), stop.clone()];
    let got = single(&req);
    assert_eq!(got.finish, Finish::StopString);
    assert_eq!(got.text, free.text[..at]);
    // It stopped at the token that completed the stop, not at max_tokens.
    assert_eq!(got.tokens[..], free.tokens[..(at + stop.len()).div_ceil(2)]);

    // Streamed: nothing past the cut was ever sent (the stop's first letter was held back until it proved one).
    let mut core = SchedulerCore::new(Fake::default(), config());
    let (log, notify) = listener();
    core.add(req, notify);
    run_until_idle(&mut core);
    let (streamed, _) = outcome(&log);
    assert_eq!(streamed, free.text[..at]);
}

#[test]
fn a_character_split_over_tokens_is_sent_once_complete() {
    let engine = Fake::default();
    let mut text = TextState::default();
    let tokens = [1, 21, 22, 2];
    let mut deltas = Vec::new();
    for n in 1..=tokens.len() {
        text.update(&engine, &tokens[..n], false);
        deltas.push(text.take_delta(&[], false));
    }
    assert_eq!(deltas, vec![Some("ap".to_string()), None, Some("é".to_string()), Some("bp".to_string())]);
    // A lone first byte at the end is flushed as the replacement character (as a lossy decode of the whole).
    let mut text = TextState::default();
    text.update(&engine, &[1, 21], false);
    text.update(&engine, &[1, 21], true);
    assert_eq!(text.take_delta(&[], true).as_deref(), Some("ap\u{FFFD}"));
}

#[test]
fn a_cancelled_sequence_leaves_at_the_next_step_and_frees_its_slot() {
    let reqs = vec![request(4, 1, 50, &[]), request(6, 2, 50, &[]), request(8, 3, 50, &[])];
    let mut keep: Vec<SeqRequest> = reqs.clone();
    keep.iter_mut().for_each(|r| r.ignore_eos = true);
    let singles: Vec<SeqOutput> = keep.iter().map(single).collect();
    let mut core = SchedulerCore::new(Fake::default(), config());
    let logs: Vec<Log> = keep
        .iter()
        .map(|r| {
            let (log, notify) = listener();
            core.add(r.clone(), notify);
            log
        })
        .collect();
    for _ in 0..6 {
        core.step();
    }
    let slot = core.running.iter().find(|s| s.req.prompt.len() == 6).expect("running").slot;
    keep[1].cancel.cancel();
    let calls_before = core.engine().calls.len();
    core.step();
    // Freed at once, and not in that step's decode.
    let after = &core.engine().calls[calls_before..];
    assert_eq!(after.first(), Some(&Call::Free(slot)));
    assert!(after.iter().all(|c| !matches!(c, Call::Decode(s) if s.contains(&slot))));
    // A newcomer takes the freed slot and still equals its single run.
    let late = request(30, 7, 20, &[]);
    let (late_log, notify) = listener();
    core.add(late.clone(), notify);
    run_until_idle(&mut core);
    for i in [0, 2] {
        let got = outcome(&logs[i]).1.expect("done").expect("ok");
        assert!(same(&got, &singles[i]), "sequence {i}");
    }
    let cancelled = outcome(&logs[1]).1.expect("done").expect("ok");
    assert_eq!(cancelled.finish, Finish::Cancelled);
    assert!(cancelled.tokens.len() < 10 && singles[1].tokens.starts_with(&cancelled.tokens));
    assert!(same(&outcome(&late_log).1.expect("done").expect("ok"), &single(&late)));
    assert_eq!(core.stats().cancelled, 1);
    // Cancelled while waiting: never prefilled.
    let waiting = request(5, 8, 10, &[]);
    waiting.cancel.cancel();
    let (log, notify) = listener();
    let calls_before = core.engine().calls.len();
    core.add(waiting, notify);
    run_until_idle(&mut core);
    assert_eq!(outcome(&log).1.expect("done").expect("ok").finish, Finish::Cancelled);
    assert_eq!(core.engine().calls.len(), calls_before);
}

#[test]
fn prefill_is_chunked_under_the_budget_and_running_sequences_keep_decoding() {
    let mut core = SchedulerCore::new(Fake::default(), config());
    // Three slots; the third frees its slot at once, so the long prompt joins without waiting for a drain.
    let mut short: Vec<SeqRequest> = vec![request(2, 1, 120, &[]), request(3, 2, 120, &[]), request(4, 3, 1, &[])];
    short.iter_mut().for_each(|r| r.ignore_eos = true);
    for r in &short {
        core.add(r.clone(), listener().1);
    }
    for _ in 0..3 {
        core.step();
    }
    let long = request(100, 4, 5, &[]);
    let (log, notify) = listener();
    core.add(long.clone(), notify);
    let start = core.engine().calls.len();
    let mut steps = 0;
    while outcome(&log).1.is_none() {
        core.step();
        steps += 1;
    }
    let calls = &core.engine().calls[start..];
    let long_slot = calls
        .iter()
        .find_map(|c| match c {
            Call::Prefill(chunks) => chunks.iter().find(|c| c.2 > 3).map(|c| c.0),
            _ => None,
        })
        .expect("the long prompt was prefilled");
    let chunks: Vec<(usize, usize)> = calls
        .iter()
        .filter_map(|c| match c {
            Call::Prefill(chunks) => Some(chunks.iter().filter(|c| c.0 == long_slot).map(|c| (c.1, c.2))),
            _ => None,
        })
        .flatten()
        .collect();
    // Chunks at multiples of 16, one per step (the budget, 16, is spent by the decode tokens and one chunk).
    assert_eq!(chunks.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0, 16, 32, 48, 64, 80, 96]);
    assert!(chunks.iter().all(|c| c.1 <= 16));
    // Every step decoded both running sequences: one decode call per step, between every two chunks.
    let decodes = calls.iter().filter(|c| matches!(c, Call::Decode(s) if s.len() >= 2)).count();
    assert_eq!(decodes, steps);
    assert!(same(&outcome(&log).1.expect("done").expect("ok"), &single(&long)));
}

#[test]
fn many_short_prompts_share_one_steps_budget() {
    let mut core = SchedulerCore::new(Fake::default(), config());
    for i in 0..4 {
        core.add(request(5, i, 3, &[]), listener().1);
    }
    core.step();
    // 16 tokens of budget: four prompts of 5 start in the first step (the fourth overshoots by 4).
    let prefills: Vec<&Call> = core.engine().calls.iter().filter(|c| matches!(c, Call::Prefill(_))).collect();
    assert_eq!(prefills, vec![&Call::Prefill(vec![(0, 0, 5), (1, 0, 5), (2, 0, 5), (3, 0, 5)])]);
}

#[test]
fn requests_that_cannot_run_end_with_their_reason() {
    let mut core = SchedulerCore::new(Fake::default(), config());
    let (empty, n) = listener();
    core.add(SeqRequest::new(Vec::new(), 5), n);
    let (long, n) = listener();
    core.add(request(200, 1, 100, &[]), n);
    let (zero, n) = listener();
    core.add(request(5, 1, 0, &[]), n);
    run_until_idle(&mut core);
    assert_eq!(outcome(&empty).1, Some(Err(ScheduleError::EmptyPrompt)));
    assert_eq!(outcome(&long).1, Some(Err(ScheduleError::TooLong { need: 300, max: 256 })));
    let zero = outcome(&zero).1.expect("done").expect("ok");
    assert_eq!((zero.finish, zero.tokens.len()), (Finish::Length, 0));
    assert!(core.engine().calls.iter().all(|c| !matches!(c, Call::Prefill(_))), "nothing was prefilled");
}

#[test]
fn an_engine_failure_fails_only_the_sequences_in_that_call() {
    let fake = Fake { poison: Some(199), ..Fake::default() };
    let mut core = SchedulerCore::new(fake, config());
    let ok = request(10, 1, 20, &[]);
    let mut bad = request(3, 0, 20, &[]);
    bad.prompt = vec![101, 199, 102];
    let (ok_log, n) = listener();
    core.add(ok.clone(), n);
    core.step();
    core.step();
    let (bad_log, n) = listener();
    core.add(bad, n);
    run_until_idle(&mut core);
    assert!(matches!(outcome(&bad_log).1, Some(Err(ScheduleError::Engine(m))) if m.contains("poisoned")));
    assert!(same(&outcome(&ok_log).1.expect("done").expect("ok"), &single(&ok)));
}

#[test]
fn a_sequence_needing_more_room_waits_for_the_batch_to_drain_then_the_engine_grows() {
    let mut core = SchedulerCore::new(Fake::default(), config());
    let first = request(4, 1, 10, &[]);
    let big = request(60, 2, 100, &[]);
    let after = request(4, 3, 10, &[]);
    let logs: Vec<Log> = [&first, &big, &after]
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (log, n) = listener();
            core.add((*r).clone(), n);
            if i == 0 {
                core.step();
            }
            log
        })
        .collect();
    run_until_idle(&mut core);
    let resizes: Vec<&Call> = core.engine().calls.iter().filter(|c| matches!(c, Call::Resize(..))).collect();
    assert_eq!(resizes, vec![&Call::Resize(1, 14), &Call::Resize(2, 160)]);
    for (log, r) in logs.iter().zip([&first, &big, &after]) {
        assert!(same(&outcome(log).1.expect("done").expect("ok"), &single(r)));
    }
}

#[test]
fn a_seed_gives_the_same_sampled_reply_alone_and_in_a_batch() {
    let sampled = |seed: u64, len: usize| {
        let mut r = request(len, 4, 30, &[]);
        r.sampling = SamplingParams { temperature: 1.5, seed, ..SamplingParams::greedy() };
        r.ignore_eos = true;
        r
    };
    let a = sampled(7, 5);
    let alone = single(&a);
    let mut core = SchedulerCore::new(Fake::default(), config());
    let (log, n) = listener();
    core.add(sampled(99, 12), listener().1);
    core.step();
    core.add(a.clone(), n);
    core.add(sampled(3, 8), listener().1);
    run_until_idle(&mut core);
    assert!(same(&outcome(&log).1.expect("done").expect("ok"), &alone));
    // The temperature does something: another seed gives another reply, and greedy differs from both.
    assert_ne!(single(&sampled(8, 5)).tokens, alone.tokens);
    assert_ne!(single(&request(5, 4, 30, &[])).tokens, alone.tokens);
}

#[test]
fn sampling_filters() {
    let mut rng = fastrand::Rng::with_seed(1);
    let greedy = SamplingParams::greedy();
    assert_eq!(sample(&[0.1, 3.0, 3.0, -1.0], &greedy, &mut rng), 1, "the first maximum");
    let logits = [2.0, 1.9, 0.0, -5.0];
    let hot = SamplingParams { temperature: 1.0, ..greedy.clone() };
    let draws =
        |s: &SamplingParams, rng: &mut fastrand::Rng| (0..300).map(|_| sample(&logits, s, rng)).collect::<Vec<_>>();
    let all = draws(&hot, &mut rng);
    assert!(all.contains(&2) && all.contains(&0) && all.contains(&1));
    let k2 = draws(&SamplingParams { top_k: 2, ..hot.clone() }, &mut rng);
    assert!(k2.iter().all(|&t| t < 2) && k2.contains(&1));
    let p = draws(&SamplingParams { top_p: 0.3, ..hot.clone() }, &mut rng);
    assert!(p.iter().all(|&t| t == 0));
    // min_p 0.5: keeps tokens at least half as likely as the best (0 and 1), not token 2 (e^-2 of it).
    let m = draws(&SamplingParams { min_p: 0.5, ..hot.clone() }, &mut rng);
    assert!(m.iter().all(|&t| t < 2) && m.contains(&1));
}

#[test]
fn the_threaded_scheduler_keeps_batch_order_and_streams_to_each_caller() {
    let scheduler = Scheduler::new(Fake::default(), config());
    let reqs =
        vec![request(5, 1, 20, &[]), SeqRequest::new(Vec::new(), 5), request(30, 2, 15, &[]), request(2, 3, 8, &[])];
    let results = scheduler.generate_batch(reqs.clone());
    assert_eq!(results.len(), 4);
    assert_eq!(results[1], Err(ScheduleError::EmptyPrompt));
    for i in [0, 2, 3] {
        assert!(same(results[i].as_ref().expect("ok"), &single(&reqs[i])), "row {i}");
    }
    // Callers on their own threads, joining whenever they come: each gets its own deltas and output.
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let scheduler = &scheduler;
                scope.spawn(move || {
                    let req = request(3 + 7 * i, i as u32, 10 + 5 * i as u32, &[]);
                    let mut streamed = String::new();
                    let out = scheduler.generate(req.clone(), &mut |d| streamed.push_str(d)).expect("ok");
                    assert_eq!(streamed, out.text);
                    assert!(same(&out, &single(&req)), "caller {i}");
                })
            })
            .collect();
        for h in handles {
            h.join().expect("caller thread");
        }
    });
    let stats = scheduler.stats();
    assert_eq!((stats.running, stats.waiting, stats.finished), (0, 0, 10));
    assert!(stats.generated_tokens > 0 && stats.prompt_tokens > 0);
}

/// Lanes: each sequence goes to the lane with the least outstanding work, and its output is its single run's.
#[test]
fn lanes_take_sequences_by_outstanding_work_and_outputs_stay_the_same() {
    let scheduler = Scheduler::with_lanes(vec![Fake::default(), Fake::default()], config());
    // The long one goes to the first lane (both idle), the short ones to the other: theirs add up to less.
    let reqs = vec![request(10, 1, 200, &[]), request(5, 2, 10, &[]), request(6, 3, 12, &[]), request(7, 4, 9, &[])];
    let results = scheduler.generate_batch(reqs.clone());
    for (i, (r, req)) in results.iter().zip(&reqs).enumerate() {
        assert!(same(r.as_ref().expect("ok"), &single(req)), "row {i}");
    }
    let lanes = scheduler.lane_stats();
    assert_eq!(lanes.iter().map(|l| l.finished).collect::<Vec<_>>(), vec![1, 3], "{lanes:?}");
    let total = scheduler.stats();
    assert_eq!(total.finished, 4);
    assert_eq!(total.steps, lanes[0].steps + lanes[1].steps);
    assert_eq!(total.generated_tokens, lanes[0].generated_tokens + lanes[1].generated_tokens);
    // Finished work no longer counts: with both lanes idle again, the next sequence goes to the first.
    let out = scheduler.generate(request(4, 5, 6, &[]), &mut |_| {}).expect("ok");
    assert!(same(&out, &single(&request(4, 5, 6, &[]))));
    assert_eq!(scheduler.lane_stats()[0].finished, 2);
}

/// The end token that stopped a sequence comes back (huggingface_local records the raw output with it); a
/// sequence that ran out of tokens has none.
#[test]
fn the_end_token_that_stopped_a_sequence_is_reported() {
    let outs: Vec<SeqOutput> = (0..40).map(|salt| single(&request(5, salt, 30, &[]))).collect();
    assert!(outs.iter().any(|o| o.finish == Finish::Eos) && outs.iter().any(|o| o.finish == Finish::Length));
    for o in outs {
        let want = (o.finish == Finish::Eos).then_some(EOS);
        assert_eq!(o.end_token, want, "{o:?}");
    }
}

#[test]
fn an_engine_that_grows_live_lets_newcomers_join_without_a_drain() {
    let mut core = SchedulerCore::new(Fake { live: true, ..Fake::default() }, config());
    let mut first = request(4, 1, 60, &[]);
    first.ignore_eos = true;
    let (first_log, n) = listener();
    core.add(first.clone(), n);
    core.step();
    core.step();
    // Wider (a second slot) and longer (more than the first layout's 64 tokens) while the first decodes.
    let big = request(60, 2, 50, &[]);
    let (big_log, n) = listener();
    core.add(big.clone(), n);
    run_until_idle(&mut core);
    let calls = &core.engine().calls;
    let layouts: Vec<&Call> = calls.iter().filter(|c| matches!(c, Call::Resize(..) | Call::Grow(..))).collect();
    // Before grow(): the big one waited for the first to finish, then a Resize (see the drain test).
    assert_eq!(layouts, vec![&Call::Resize(1, 64), &Call::Grow(2, 128)]);
    // The first kept decoding through the growth, and both equal their single runs.
    let grew = calls.iter().position(|c| matches!(c, Call::Grow(..))).expect("grew");
    assert!(calls[grew..].iter().any(|c| matches!(c, Call::Decode(s) if s.len() == 2)));
    assert!(same(&outcome(&first_log).1.expect("done").expect("ok"), &single(&first)));
    assert!(same(&outcome(&big_log).1.expect("done").expect("ok"), &single(&big)));
}

/// Prefix reuse: a slot's cache outlives its sequence, and the next prompt sharing its start evaluates only the
/// rest. The fake's logits hash the slot's whole cache, so a wrong truncation, a stale cell or a chunk at the
/// wrong position changes the output (or fails the fake's position check).
#[test]
fn a_shared_prompt_prefix_is_reused_from_a_slot_and_outputs_stay_the_same() {
    let shared = prompt(40, 11);
    let with_tail = |tail: &[TokenId], max_tokens: u32| {
        let mut p = shared.clone();
        p.extend_from_slice(tail);
        SeqRequest::new(p, max_tokens)
    };
    let reqs = [
        // The longest need first, so that no later one makes the engine rebuild its caches.
        with_tail(&[150, 151, 152], 40),
        with_tail(&[160; 12], 14),
        // The same prompt again.
        with_tail(&[160; 12], 14),
        // Shorter than the kept prefix.
        SeqRequest::new(shared[..20].to_vec(), 7),
        // Nothing shared.
        request(30, 5, 10, &[]),
    ];
    let singles: Vec<SeqOutput> = reqs.iter().map(single).collect();
    let engine = Fake { reuse: true, ..Fake::default() };
    let config = SchedulerConfig { max_slots: 1, ..config() };
    let mut core = SchedulerCore::new(engine, config);
    let mut logs = Vec::new();
    for r in &reqs {
        let (log, notify) = listener();
        core.add(r.clone(), notify);
        logs.push(log);
        run_until_idle(&mut core);
    }
    for (i, (log, want)) in logs.iter().zip(&singles).enumerate() {
        let got = outcome(log).1.expect("finished").expect("no error");
        assert!(same(&got, want), "sequence {i}: with reuse {got:?} != single {want:?}");
    }
    let truncations: Vec<(usize, usize)> = core
        .engine()
        .calls
        .iter()
        .filter_map(|c| if let Call::Truncate(s, n) = c { Some((*s, *n)) } else { None })
        .collect();
    // 2nd: the 40 shared tokens (its chunk 40..48 has MIN_CHUNK_ROWS rows). 3rd: the same prompt, all but its
    // last token shared; that would leave a 1-row chunk, so the kept prefix ends at the fixed offset 48. 4th: 19
    // of its 20 tokens shared; the fixed offset 16 again. 5th: nothing shared, so the slot is freed instead.
    assert_eq!(truncations, vec![(0, 40), (0, 48), (0, 16)]);
    assert_eq!(core.stats().reused_tokens, 104);
    assert!(core.engine().calls.contains(&Call::Free(0)), "a prompt sharing nothing frees the slot");
    let first_chunks: Vec<(usize, usize, usize)> = core
        .engine()
        .calls
        .iter()
        .filter_map(|c| if let Call::Prefill(chunks) = c { chunks.first().copied() } else { None })
        .collect();
    assert!(first_chunks.contains(&(0, 40, 8)) && first_chunks.contains(&(0, 16, 4)), "{first_chunks:?}");
}

/// A free slot with the longest usable shared prefix is chosen, the lowest on a tie.
#[test]
fn the_slot_holding_the_longest_shared_prefix_is_chosen() {
    let engine = Fake { reuse: true, ..Fake::default() };
    let mut core = SchedulerCore::new(engine, SchedulerConfig { max_slots: 2, ..config() });
    let a = prompt(40, 1);
    let b = prompt(40, 2);
    let (_l1, n1) = listener();
    let (_l2, n2) = listener();
    core.add(SeqRequest::new(a.clone(), 3), n1);
    core.add(SeqRequest::new(b.clone(), 3), n2);
    run_until_idle(&mut core);
    // Slot 0 held `a`, slot 1 held `b`: a prompt starting like `b` goes to slot 1.
    let mut again = b[..32].to_vec();
    again.extend([190; 10]);
    let (log, n3) = listener();
    core.add(SeqRequest::new(again.clone(), 4), n3);
    run_until_idle(&mut core);
    assert!(core.engine().calls.contains(&Call::Truncate(1, 32)), "{:?}", core.engine().calls);
    let got = outcome(&log).1.expect("finished").expect("no error");
    assert!(same(&got, &single(&SeqRequest::new(again, 4))));
}
