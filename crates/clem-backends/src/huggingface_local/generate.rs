//! transformers' batched generation, kept as the reference the goldens check (the backend itself generates
//! through [`super::slots`] and the scheduler): left-padded rows in one forward pass with per-row positions and an
//! attention mask, a KV cache, greedy or sampled next tokens (temperature, top-p, seed), stop at any EOS id; rows
//! that finish leave the batch. Also what every generation shares: the token types, [`choose`], and [`on_pool`],
//! which runs a forward pass on the model's threads. Architecture-agnostic: it sees only [`CausalLm`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use candle_core::{Device, Result, Tensor};
use clem_core::Cancel;

use super::causal_lm::CausalLm;
use super::layers::{KvCache, StepMask};

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0: greedy.
    pub temperature: f64,
    /// Nucleus sampling mass (1.0: off).
    pub top_p: f64,
    pub seed: u64,
}

/// What one row produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowOutput {
    /// Generated ids, the EOS that stopped it included.
    pub tokens: Vec<u32>,
    /// Whether an EOS stopped it (else the token budget or cancellation).
    pub stopped_by_eos: bool,
    /// Whether its [`Cancel`] flag took it out of the batch.
    pub cancelled: bool,
    /// Whether a stop string ended it (set by the step scheduler's path; this reference loop has none).
    pub stopped_by_string: bool,
}

/// Timings of one batch, for benchmarks.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    pub prefill: std::time::Duration,
    pub decode: std::time::Duration,
    pub decode_tokens: usize,
}

/// Runs `rows` left-padded through a fresh cache: each row's last-position logits `(rows, vocab)`, the cache, and
/// which slots of each row are real tokens.
fn prefill(
    model: &CausalLm,
    rows: &[Vec<u32>],
    pad_id: u32,
    device: &Device,
) -> Result<(Tensor, KvCache, Vec<Vec<bool>>)> {
    let n = rows.len();
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    if n == 0 || width == 0 {
        candle_core::bail!("empty prompt");
    }
    // Left padding: row i's tokens fill the last len_i columns.
    let mut ids = Vec::with_capacity(n * width);
    let mut positions = Vec::with_capacity(n * width);
    let mut keep: Vec<Vec<bool>> = Vec::with_capacity(n);
    for p in rows {
        let pad = width - p.len();
        ids.extend(std::iter::repeat_n(pad_id, pad).chain(p.iter().copied()));
        // transformers: position = cumsum(mask) - 1, padding positions set to 1.
        positions.extend((0..width).map(|j| if j < pad { 1 } else { (j - pad) as u32 }));
        keep.push((0..width).map(|j| j >= pad).collect());
    }
    let mut cache = KvCache::new(model.config().num_layers);
    let logits = model.forward(
        &Tensor::from_vec(ids, (n, width), device)?,
        &Tensor::from_vec(positions, n * width, device)?,
        &StepMask::new(&keep, width)?,
        &mut cache,
    )?;
    Ok((logits, cache, keep))
}

/// Each row's last-position logits after one left-padded forward pass (transformers'
/// `model(ids, attention_mask).logits[:, -1]`).
pub fn last_logits(model: &CausalLm, prompts: &[Vec<u32>], pad_id: u32, device: &Device) -> Result<Vec<Vec<f32>>> {
    prefill(model, prompts, pad_id, device)?.0.to_vec2()
}

/// Runs `f` on a worker of `pool` (the model's own, when threads are configured) or of rayon's global pool: candle's
/// CPU kernels split their work on the pool of the thread that calls them; a kernel called from a worker runs
/// inline or splits between workers, while one called from outside a pool blocks until a worker wakes (measured:
/// ~11% of decode time at one thread was spent in those hand-offs).
pub fn on_pool<T: Send>(pool: Option<&rayon::ThreadPool>, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    if let Some(pool) = pool {
        return pool.install(|| with_workers_awake(f));
    }
    let f = || with_workers_awake(f);
    let f = Mutex::new(Some(f));
    let out = Mutex::new(None);
    // Two jobs so that candle starts a rayon scope (with one it calls inline); the second has nothing to do.
    candle_core::cpu::kernels::par_for_each(2, |i| {
        let job = if i == 0 { f.lock().ok().and_then(|mut f| f.take()) } else { None };
        if let (Some(job), Ok(mut out)) = (job, out.lock()) {
            *out = Some(job());
        }
    });
    out.into_inner()
        .ok()
        .flatten()
        .unwrap_or_else(|| Err(candle_core::Error::Msg("generation panicked on a worker thread".into())))
}

/// Runs `f` (on a worker of the current pool) while the pool's other workers keep polling for work instead of
/// falling asleep between the short parallel sections of a decoding step: waking a sleeping worker costs tens of
/// microseconds on a virtual machine, a decoding step's matrix product a few hundred. They execute the work `f`
/// splits off meanwhile, and stop when `f` returns.
fn with_workers_awake<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let (Some(owner), threads) = (rayon::current_thread_index(), rayon::current_num_threads()) else {
        return f();
    };
    // Polling workers need a core each: with more threads than cores (RAYON_NUM_THREADS set high) they would
    // take the cores from the thread doing the work, so rayon's own sleeping workers serve instead.
    if threads < 2 || threads > crate::cpu::usable_cores() {
        return f();
    }
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        for _ in 1..threads {
            s.spawn(|_| {
                // Picked up by `f`'s own thread while it waits on a split: return, or it would wait on itself.
                if rayon::current_thread_index() == Some(owner) {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        // Awake but yielding the core: other processes' threads (parallel tests, a second
                        // model) still get it.
                        std::thread::yield_now();
                    }
                }
            });
        }
        let out = f();
        done.store(true, Ordering::Release);
        out
    })
}

/// Generates for every prompt (token ids) at most `budgets[i]` new tokens, on the calling thread: call it through
/// [`on_pool`]. A row whose flag in `cancels` is set leaves the batch at the next step.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    budgets: &[usize],
    sampling: &Sampling,
    eos: &[u32],
    pad_id: u32,
    device: &Device,
    cancels: &[Cancel],
) -> Result<(Vec<RowOutput>, Timings)> {
    let n = prompts.len();
    let mut out = vec![RowOutput::default(); n];
    let mut timings = Timings::default();
    if n == 0 {
        return Ok((out, timings));
    }
    if budgets.len() != n {
        candle_core::bail!("{n} prompts but {} token budgets", budgets.len());
    }
    let mut rngs: Vec<fastrand::Rng> =
        (0..n).map(|i| fastrand::Rng::with_seed(sampling.seed.wrapping_add(i as u64))).collect();
    let clock = std::time::Instant::now();
    let (mut logits, mut cache, mut keep) = prefill(model, prompts, pad_id, device)?;
    timings.prefill = clock.elapsed();
    let clock = std::time::Instant::now();
    let rebuild_at = model.config().cache_rebuild_len();

    // Active rows: their index in `out`, next position, and their key mask so far.
    let mut active: Vec<usize> = (0..n).collect();
    let mut next_pos: Vec<u32> = prompts.iter().map(|p| p.len() as u32).collect();
    loop {
        let rows: Vec<Vec<f32>> = logits.to_vec2()?;
        let mut next = Vec::with_capacity(active.len());
        let mut still = Vec::with_capacity(active.len());
        for (slot, (&row, l)) in active.iter().zip(rows.iter()).enumerate() {
            if budgets[row] == 0 {
                continue;
            }
            if Cancel::of(cancels, row).is_cancelled() {
                out[row].cancelled = true;
                continue;
            }
            let tok = choose(l, sampling, &mut rngs[row]);
            out[row].tokens.push(tok);
            if eos.contains(&tok) {
                out[row].stopped_by_eos = true;
            } else if out[row].tokens.len() < budgets[row] {
                still.push(slot);
                next.push(tok);
            }
        }
        if still.is_empty() {
            break;
        }
        if still.len() < active.len() {
            let slots = Tensor::from_vec(still.iter().map(|&s| s as u32).collect::<Vec<_>>(), still.len(), device)?;
            cache.keep_rows(&slots)?;
            active = still.iter().map(|&s| active[s]).collect();
            keep = still.iter().map(|&s| keep[s].clone()).collect();
            next_pos = still.iter().map(|&s| next_pos[s]).collect();
        }
        for k in keep.iter_mut() {
            k.push(true);
        }
        let b = active.len();
        if rebuild_at == Some(keep[0].len()) {
            // The RoPE changes for every position from here on: recompute the cache over the whole sequences, as
            // transformers does (active rows have generated equally many tokens, so the padding is unchanged).
            let rows: Vec<Vec<u32>> =
                active.iter().map(|&r| prompts[r].iter().chain(&out[r].tokens).copied().collect()).collect();
            (logits, cache, keep) = prefill(model, &rows, pad_id, device)?;
        } else {
            logits = model.forward(
                &Tensor::from_vec(next, (b, 1), device)?,
                &Tensor::from_vec(next_pos.clone(), b, device)?,
                &StepMask::new(&keep, 1)?,
                &mut cache,
            )?;
        }
        timings.decode_tokens += b;
        for p in next_pos.iter_mut() {
            *p += 1;
        }
    }
    timings.decode = clock.elapsed();
    Ok((out, timings))
}

/// The next token from one row's logits: the first maximum at temperature 0 (as torch's argmax), else a draw
/// from softmax(logits / temperature) restricted to the top-p nucleus (as transformers' TopPLogitsWarper).
pub fn choose(logits: &[f32], s: &Sampling, rng: &mut fastrand::Rng) -> u32 {
    if s.temperature <= 0.0 {
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let t = s.temperature as f32;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f32)> = logits.iter().map(|&l| ((l - max) / t).exp()).enumerate().collect();
    let sum: f32 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= sum);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    if s.top_p < 1.0 {
        // Keep the smallest prefix whose mass reaches top_p (at least one token).
        let mut acc = 0.0f64;
        let mut cut = probs.len();
        for (i, p) in probs.iter().enumerate() {
            acc += f64::from(p.1);
            if acc >= s.top_p {
                cut = i + 1;
                break;
            }
        }
        probs.truncate(cut.max(1));
    }
    let total: f32 = probs.iter().map(|p| p.1).sum();
    let mut x = rng.f32() * total;
    for &(i, p) in &probs {
        if x < p {
            return i as u32;
        }
        x -= p;
    }
    probs.last().map_or(0, |p| p.0 as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let s = Sampling { temperature: 0.0, top_p: 1.0, seed: 0 };
        assert_eq!(choose(&[0.1, 3.0, 3.0, -1.0], &s, &mut fastrand::Rng::with_seed(1)), 1);
    }

    #[test]
    fn sampling_is_seeded_and_honours_top_p() {
        let logits = [2.0, 1.9, -5.0, -5.0];
        let s = Sampling { temperature: 1.0, top_p: 1.0, seed: 0 };
        let draw = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..50).map(|_| choose(&logits, &s, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert!(draw(7).contains(&1) && draw(7).contains(&0));
        // top_p 0.5 keeps only the most likely token.
        let s = Sampling { temperature: 1.0, top_p: 0.5, seed: 0 };
        let mut rng = fastrand::Rng::with_seed(3);
        assert!((0..50).all(|_| choose(&logits, &s, &mut rng) == 0));
    }
}
