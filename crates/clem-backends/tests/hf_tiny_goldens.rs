//! The huggingface_local architectures against transformers' own numbers: tiny random-weight models of every
//! supported architecture (tests/fixtures/hf_tiny/<arch>/, made by tests/support/make_tiny_hf_models.py, whose
//! doc says how to regenerate them) with the logits and greedy tokens transformers computed for them. Runs without
//! Python: the fixtures are committed. Logits must agree to 1e-4 of the row's largest logit, greedy tokens exactly,
//! alone and in left-padded batches; config layouts that mean the same must give the same numbers, and a changed
//! RoPE base or norm must not. Every architecture is checked with the CPU kernels on each kernel path this CPU runs
//! (AVX-512 BF16, AVX-512, AVX2, portable; `SKIP:` on stderr names the features a skipped path lacks, and
//! `CLEM_KERNELS` restricts the run to the path it forces), and with candle's own ops on the CPU (the path a GPU
//! runs with the `cuda` feature; `CLEM_TEST_DEVICE=cuda:0` runs those on a GPU). The fixtures are f32, which every
//! kernel path sums in f32; bf16 copies of them check the AVX-512 BF16 path's rounding of activations against the
//! candle path's, which rounds them too.

#![cfg(feature = "huggingface_local")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use clem_backends::huggingface_local::causal_lm::CausalLm;
use clem_backends::huggingface_local::clem_kernels::{self, Path as KernelPath};
use clem_backends::huggingface_local::device::{DeviceSetting, Placement};
use clem_backends::huggingface_local::generate::{self, Sampling};
use clem_backends::huggingface_local::slots::HfEngine;
use clem_core::schedule::{Finish, ScheduleError, SchedulerConfig, SchedulerCore, SeqEvent, SeqOutput, SeqRequest};
use clem_core::Cancel;
use serde_json::{json, Value};

/// Relative to max(1, the row's largest |logit|).
const TOLERANCE: f64 = 1e-4;

fn fixture(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_tiny").join(arch)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("a list of ids").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("a list of numbers").iter().map(|x| x.as_f64().expect("a number")).collect()
}

struct Goldens {
    json: Value,
    prompts: Vec<Vec<u32>>,
    new_tokens: usize,
    pad: u32,
}

impl Goldens {
    fn load(arch: &str) -> Goldens {
        let json = read_json(&fixture(arch).join("goldens.json"));
        let prompts = json["prompts"].as_array().expect("prompts").iter().map(ids).collect();
        let new_tokens = json["new_tokens"].as_u64().expect("new_tokens") as usize;
        let pad = json["pad_token_id"].as_u64().expect("pad_token_id") as u32;
        Goldens { json, prompts, new_tokens, pad }
    }

    fn single(&self) -> &[Value] {
        self.json["single"].as_array().expect("single")
    }

    fn batches(&self) -> &[Value] {
        self.json["batches"].as_array().expect("batches")
    }

    /// The rows of batch `b` and each row's golden tokens.
    fn batch(&self, b: usize) -> (Vec<usize>, Vec<Vec<u32>>) {
        let batch = &self.batches()[b];
        let rows = ids(&batch["rows"]).into_iter().map(|r| r as usize).collect();
        (rows, batch["tokens"].as_array().expect("tokens").iter().map(ids).collect())
    }
}

/// max |ours - golden| / max(1, max |golden|).
fn rel_diff(ours: &[f32], golden: &[f64]) -> f64 {
    assert_eq!(ours.len(), golden.len(), "vocabulary sizes differ");
    let scale = golden.iter().fold(1.0f64, |m, g| m.max(g.abs()));
    ours.iter().zip(golden).map(|(&o, g)| (f64::from(o) - g).abs()).fold(0.0, f64::max) / scale
}

fn load(dir: &Path) -> CausalLm {
    CausalLm::load_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn logits(model: &CausalLm, prompts: &[Vec<u32>], pad: u32, device: &Device) -> Vec<Vec<f32>> {
    generate::last_logits(model, prompts, pad, device).expect("forward pass")
}

fn greedy(model: &CausalLm, prompts: &[Vec<u32>], budgets: &[usize], pad: u32, device: &Device) -> Vec<Vec<u32>> {
    let sampling = Sampling { temperature: 0.0, top_p: 1.0, seed: 0 };
    let (out, _) = generate::generate(model, prompts, budgets, &sampling, &[], pad, device, &[]).expect("generation");
    out.into_iter().map(|r| r.tokens).collect()
}

/// Checks one architecture, loaded on `placement`, against every golden and prints the largest relative logit
/// difference seen.
fn check_arch(arch: &str, placement: Placement) {
    let g = Goldens::load(arch);
    let dir = fixture(arch);
    let path = format!("{:?}", placement.compute);
    let model = CausalLm::load_dir_on(&dir, &placement).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let dev = &placement.device;
    let mut worst = 0.0f64;
    let mut check = |what: String, ours: &[f32], golden: &[f64]| {
        let d = rel_diff(ours, golden);
        assert!(d <= TOLERANCE, "{arch} ({path}): {what}: logits differ by {d:.3e} (relative) from transformers");
        worst = worst.max(d);
    };
    for (i, (prompt, s)) in g.prompts.iter().zip(g.single()).enumerate() {
        let ours = logits(&model, std::slice::from_ref(prompt), g.pad, dev);
        check(format!("prompt {i} prefill"), &ours[0], &floats(&s["prefill_logits"]));
        let golden_tokens = ids(&s["tokens"]);
        let tokens = greedy(&model, std::slice::from_ref(prompt), &[g.new_tokens], g.pad, dev);
        assert_eq!(tokens[0], golden_tokens, "{arch} ({path}): prompt {i}: greedy tokens differ from transformers");
        // Every decoding step's top-5 logits, recomputed from the prompt and the tokens so far.
        for (k, step) in s["steps"].as_array().expect("steps").iter().enumerate() {
            let seq: Vec<u32> = prompt.iter().chain(&golden_tokens[..k]).copied().collect();
            let ours = logits(&model, &[seq], g.pad, dev);
            let top: Vec<f32> = ids(&step["ids"]).iter().map(|&t| ours[0][t as usize]).collect();
            check(format!("prompt {i} step {k} top-5"), &top, &floats(&step["logits"]));
        }
    }
    for (b, batch) in g.batches().iter().enumerate() {
        let (rows, golden_tokens) = g.batch(b);
        let prompts: Vec<Vec<u32>> = rows.iter().map(|&r| g.prompts[r].clone()).collect();
        let ours = logits(&model, &prompts, g.pad, dev);
        for (j, golden) in batch["prefill_logits"].as_array().expect("prefill_logits").iter().enumerate() {
            check(format!("batch {b} row {j} prefill"), &ours[j], &floats(golden));
        }
        let tokens = greedy(&model, &prompts, &vec![g.new_tokens; prompts.len()], g.pad, dev);
        assert_eq!(
            tokens, golden_tokens,
            "{arch} ({path}): batch {b} ({rows:?}): greedy tokens differ from transformers"
        );
    }
    println!(
        "{arch} ({path}): matches transformers {}; max relative logit difference {worst:.2e}",
        g.json["transformers"]
    );
}

/// Where the candle-path tests run: the CPU, or the device `CLEM_TEST_DEVICE` names ("cuda:0" in a build with the
/// `cuda` feature), which is how a machine with a GPU checks the GPU path against the same goldens.
fn candle_placement() -> Placement {
    match std::env::var("CLEM_TEST_DEVICE") {
        Ok(name) => DeviceSetting::parse(&name)
            .and_then(Placement::from_setting)
            .unwrap_or_else(|e| panic!("CLEM_TEST_DEVICE: {e}")),
        Err(_) => Placement::cpu_candle(),
    }
}

/// `SKIP: <what>` on stderr, written directly: the test harness hides what a passing test prints.
fn skip(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP: {what}");
}

/// The kernel paths to check: the one `CLEM_KERNELS` forces (a path this CPU lacks fails, naming what is
/// missing), else every path this CPU runs, with `SKIP:` for the others.
fn kernel_paths(what: &str) -> Vec<KernelPath> {
    if std::env::var_os(clem_kernels::dispatch::ENV).is_some() {
        return vec![clem_kernels::path().unwrap_or_else(|e| panic!("{e}"))];
    }
    KernelPath::ALL
        .into_iter()
        .filter(|p| {
            let missing = p.missing(clem_kernels::Features::detect());
            if !missing.is_empty() {
                skip(&format!("{what} on the {p} kernels: this CPU lacks {}", missing.join(", ")));
            }
            missing.is_empty()
        })
        .collect()
}

fn kernels_on(path: KernelPath) -> Placement {
    Placement::cpu_kernels(path).unwrap_or_else(|e| panic!("{e}"))
}

macro_rules! golden_tests {
    ($($name:ident, $candle:ident => $arch:literal),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                for path in kernel_paths($arch) {
                    check_arch($arch, kernels_on(path));
                }
            }

            #[test]
            fn $candle() {
                check_arch($arch, candle_placement());
            }
        )*
    };
}

golden_tests! {
    llama_matches_transformers, llama_candle_path_matches_transformers => "llama",
    qwen2_matches_transformers, qwen2_candle_path_matches_transformers => "qwen2",
    qwen3_matches_transformers, qwen3_candle_path_matches_transformers => "qwen3",
    mistral_matches_transformers, mistral_candle_path_matches_transformers => "mistral",
    gemma2_matches_transformers, gemma2_candle_path_matches_transformers => "gemma2",
    gemma3_text_matches_transformers, gemma3_text_candle_path_matches_transformers => "gemma3_text",
    phi3_matches_transformers, phi3_candle_path_matches_transformers => "phi3",
}

const ARCHS: [&str; 7] = ["llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text", "phi3"];

#[test]
fn batches_agree_with_single_runs_where_transformers_does() {
    for arch in ARCHS {
        let g = Goldens::load(arch);
        for b in 0..g.batches().len() {
            let (rows, tokens) = g.batch(b);
            let single: Vec<Vec<u32>> = rows.iter().map(|&r| ids(&g.single()[r]["tokens"])).collect();
            // Phi-3's LongRoPE switches on the batch's padded length, so its rows legitimately differ.
            if arch != "phi3" {
                assert_eq!(tokens, single, "{arch}: batch {b}: the goldens themselves disagree");
            }
        }
    }
}

#[test]
fn finished_rows_leave_the_batch_without_changing_the_others() {
    for arch in ARCHS {
        let g = Goldens::load(arch);
        let model = load(&fixture(arch));
        let (rows, golden) = g.batch(0);
        let prompts: Vec<Vec<u32>> = rows.iter().map(|&r| g.prompts[r].clone()).collect();
        let mut budgets = vec![g.new_tokens; prompts.len()];
        budgets[1] = 5;
        let tokens = greedy(&model, &prompts, &budgets, g.pad, &Device::Cpu);
        for (j, (ours, golden)) in tokens.iter().zip(&golden).enumerate() {
            assert_eq!(ours[..], golden[..budgets[j]], "{arch}: row {j} with budget {}", budgets[j]);
        }
    }
}

/// A copy of a fixture with its config.json replaced by `edit(config)` and its tensors by `tensors(map)`.
fn variant(
    arch: &str,
    edit: impl FnOnce(&mut Value),
    tensors: impl FnOnce(HashMap<String, Tensor>) -> HashMap<String, Tensor>,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = read_json(&fixture(arch).join("config.json"));
    edit(&mut config);
    std::fs::write(dir.path().join("config.json"), serde_json::to_string_pretty(&config).expect("json"))
        .expect("write config");
    let weights = candle_core::safetensors::load(fixture(arch).join("model.safetensors"), &Device::Cpu)
        .expect("read fixture weights");
    candle_core::safetensors::save(&tensors(weights), dir.path().join("model.safetensors")).expect("write weights");
    dir
}

fn same_weights(t: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    t
}

/// The prefill logits of every prompt, one row each.
fn all_logits(dir: &Path, arch: &str) -> Vec<Vec<f32>> {
    let g = Goldens::load(arch);
    let model = load(dir);
    g.prompts.iter().map(|p| logits(&model, std::slice::from_ref(p), g.pad, &Device::Cpu).remove(0)).collect()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn obj(v: &mut Value) -> &mut serde_json::Map<String, Value> {
    v.as_object_mut().expect("config object")
}

#[test]
fn rope_theta_and_rope_parameters_layouts_agree_and_the_base_matters() {
    // Llama: transformers 5 writes {"rope_parameters": {"rope_type": "default", "rope_theta": ..}}.
    let reference = all_logits(&fixture("llama"), "llama");
    let theta = read_json(&fixture("llama").join("config.json"))["rope_parameters"]["rope_theta"].clone();
    let v4 = |theta: Value| {
        move |c: &mut Value| {
            obj(c).remove("rope_parameters");
            obj(c).insert("rope_theta".into(), theta);
        }
    };
    let dir = variant("llama", v4(theta.clone()), same_weights);
    assert_eq!(all_logits(dir.path(), "llama"), reference, "llama: rope_theta layout differs");
    let wrong = json!(theta.as_f64().expect("theta") * 3.0);
    let dir = variant("llama", v4(wrong), same_weights);
    let d = max_abs_diff(&all_logits(dir.path(), "llama"), &reference);
    assert!(d > 1e-2, "llama: a wrong rope_theta changed the logits by only {d}");

    // Gemma 3: transformers 4 wrote rope_theta + rope_scaling (global layers), rope_local_base_freq and
    // sliding_window_pattern instead of rope_parameters per layer type and layer_types.
    let reference = all_logits(&fixture("gemma3_text"), "gemma3_text");
    let gemma_v4 = |local: f64| {
        move |c: &mut Value| {
            let m = obj(c);
            m.remove("rope_parameters");
            m.remove("layer_types");
            m.remove("_sliding_window_pattern");
            m.insert("rope_theta".into(), json!(1_000_000.0));
            m.insert("rope_scaling".into(), json!({"rope_type": "linear", "factor": 2.0}));
            m.insert("rope_local_base_freq".into(), json!(local));
            m.insert("sliding_window_pattern".into(), json!(3));
        }
    };
    let dir = variant("gemma3_text", gemma_v4(10_000.0), same_weights);
    assert_eq!(all_logits(dir.path(), "gemma3_text"), reference, "gemma3: transformers 4 layout differs");
    let dir = variant("gemma3_text", gemma_v4(20_000.0), same_weights);
    let d = max_abs_diff(&all_logits(dir.path(), "gemma3_text"), &reference);
    assert!(d > 1e-2, "gemma3: a wrong rope_local_base_freq changed the logits by only {d}");
    let dir = variant(
        "gemma3_text",
        |c| {
            c["rope_parameters"]["full_attention"]["factor"] = json!(1.0);
        },
        same_weights,
    );
    let d = max_abs_diff(&all_logits(dir.path(), "gemma3_text"), &reference);
    assert!(d > 1e-2, "gemma3: a wrong linear factor changed the logits by only {d}");

    // Phi-3: transformers 4 wrote rope_scaling {"type": "su" / "longrope", ..} and partial_rotary_factor on top.
    let reference = all_logits(&fixture("phi3"), "phi3");
    let phi_v4 = |kind: &'static str| {
        move |c: &mut Value| {
            let mut p = obj(c).remove("rope_parameters").expect("rope_parameters");
            let p = obj(&mut p);
            let m = obj(c);
            m.insert("rope_theta".into(), p.remove("rope_theta").expect("rope_theta"));
            m.insert("partial_rotary_factor".into(), p.remove("partial_rotary_factor").expect("partial"));
            p.remove("rope_type");
            p.remove("original_max_position_embeddings");
            p.insert("type".into(), json!(kind));
            m.insert("rope_scaling".into(), Value::Object(p.clone()));
        }
    };
    for kind in ["longrope", "su"] {
        let dir = variant("phi3", phi_v4(kind), same_weights);
        assert_eq!(all_logits(dir.path(), "phi3"), reference, "phi3: transformers 4 layout ({kind}) differs");
    }
    let dir = variant("phi3", |c| c["rope_parameters"]["short_factor"][1] = json!(1.0), same_weights);
    let d = max_abs_diff(&all_logits(dir.path(), "phi3"), &reference);
    assert!(d > 1e-2, "phi3: a changed short_factor changed the logits by only {d}");
}

#[test]
fn gemma3_multimodal_checkpoints_load_only_the_language_model() {
    let reference = all_logits(&fixture("gemma3_text"), "gemma3_text");
    let text = read_json(&fixture("gemma3_text").join("config.json"));
    // As published (`language_model.model.*`) and as transformers 5 saves it (`model.language_model.*`).
    for prefix in ["language_model.model.", "model.language_model."] {
        let text = text.clone();
        let dir = variant(
            "gemma3_text",
            move |c| {
                *c = json!({"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
                            "text_config": text, "vision_config": {"model_type": "siglip_vision_model"}});
            },
            |t| {
                let mut out: HashMap<String, Tensor> =
                    t.into_iter().map(|(k, v)| (k.replacen("model.", prefix, 1), v)).collect();
                let vision = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).expect("tensor");
                out.insert("vision_tower.vision_model.post_layernorm.weight".into(), vision);
                out
            },
        );
        assert_eq!(all_logits(dir.path(), "gemma3_text"), reference, "gemma3 multimodal with {prefix}");
    }
}

#[test]
fn a_changed_norm_or_cap_moves_the_logits_beyond_tolerance() {
    // Proof that the goldens can fail: each change below must push some logit past the tolerance.
    let scale = |name: &'static str, by: f64| {
        move |mut t: HashMap<String, Tensor>| {
            let w = t.remove(name).unwrap_or_else(|| panic!("no tensor {name}"));
            t.insert(name.into(), (w * by).expect("scale"));
            t
        }
    };
    let cases: Vec<(&str, tempfile::TempDir)> = vec![
        ("llama", variant("llama", |_| {}, scale("model.layers.0.input_layernorm.weight", 1.01))),
        ("qwen3", variant("qwen3", |_| {}, scale("model.layers.1.self_attn.k_norm.weight", 1.01))),
        ("gemma2", variant("gemma2", |_| {}, scale("model.layers.2.post_feedforward_layernorm.weight", 1.01))),
        ("gemma2", variant("gemma2", |c| c["attn_logit_softcapping"] = json!(3.3), same_weights)),
        ("gemma3_text", variant("gemma3_text", |_| {}, scale("model.layers.0.self_attn.q_norm.weight", 1.01))),
        ("gemma3_text", variant("gemma3_text", |c| c["query_pre_attn_scalar"] = json!(21), same_weights)),
        ("mistral", variant("mistral", |c| c["sliding_window"] = json!(9), same_weights)),
        ("phi3", variant("phi3", |c| c["sliding_window"] = json!(11), same_weights)),
    ];
    for (arch, dir) in cases {
        let g = Goldens::load(arch);
        let ours = all_logits(dir.path(), arch);
        let d =
            g.single().iter().zip(&ours).map(|(s, o)| rel_diff(o, &floats(&s["prefill_logits"]))).fold(0.0, f64::max);
        assert!(d > TOLERANCE * 10.0, "{arch}: {:?}: the change moved the logits by only {d:.2e}", dir.path());
    }
}

#[test]
fn unsupported_settings_are_refused_naming_the_key() {
    type Edit = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("llama", Box::new(|c| c["rope_parameters"]["rope_type"] = json!("yarn")), "yarn"),
        ("gemma2", Box::new(|c| c["use_bidirectional_attention"] = json!(true)), "use_bidirectional_attention"),
        ("gemma2", Box::new(|c| c["hidden_activation"] = json!("relu")), "hidden_activation"),
        ("qwen3", Box::new(|c| c["layer_types"] = json!(["full_attention", "chunked_attention"])), "layer_types"),
        ("phi3", Box::new(|c| c["rope_parameters"]["short_factor"] = json!([1.0])), "short_factor"),
        ("phi3", Box::new(|c| c["rope_parameters"]["rope_type"] = json!("dynamic")), "dynamic"),
    ];
    for (arch, edit, key) in cases {
        let dir = variant(arch, edit, same_weights);
        let e = CausalLm::load_dir(dir.path()).err().unwrap_or_else(|| panic!("{arch}: {key} was accepted"));
        assert!(e.to_string().contains(key), "{arch}: the error does not name {key}: {e}");
    }
}

/// max |a - b| / max(1, max |b|) over rows.
fn rows_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    a.iter().zip(b).map(|(x, y)| rel_diff(x, &y.iter().map(|&v| f64::from(v)).collect::<Vec<_>>())).fold(0.0, f64::max)
}

#[test]
fn bf16_weights_round_no_more_on_any_kernel_path_than_on_the_candle_path() {
    // bf16 copies of the fixtures. The reference: the portable kernels (f32 activations, f32 sums). The candle
    // path rounds activations and products to bf16, as transformers does on a GPU and oneDNN on AVX-512 BF16
    // CPUs; the AVX-512 BF16 kernel path rounds activations only: it may move the logits by the same order as the
    // candle path does (at most 3x: through a scalar model of `vdpbf16ps` the seven models moved 0.6x to 1.5x
    // as far), the f32-sum paths only by attention's summation order (within the goldens' tolerance).
    let to_bf16 = |t: HashMap<String, Tensor>| -> HashMap<String, Tensor> {
        t.into_iter().map(|(k, v)| (k, v.to_dtype(candle_core::DType::BF16).expect("bf16"))).collect()
    };
    for arch in ARCHS {
        let g = Goldens::load(arch);
        let dir = variant(arch, |c| c["dtype"] = json!("bfloat16"), to_bf16);
        let on = |placement: Placement| {
            let model = CausalLm::load_dir_on(dir.path(), &placement).unwrap_or_else(|e| panic!("{arch}: {e}"));
            let single: Vec<Vec<f32>> = g
                .prompts
                .iter()
                .map(|p| logits(&model, std::slice::from_ref(p), g.pad, &Device::Cpu).remove(0))
                .collect();
            let (rows, _) = g.batch(1);
            let prompts: Vec<Vec<u32>> = rows.iter().map(|&r| g.prompts[r].clone()).collect();
            let tokens = greedy(&model, &prompts, &vec![g.new_tokens; prompts.len()], g.pad, &Device::Cpu);
            let alone: Vec<Vec<u32>> = prompts
                .iter()
                .map(|p| greedy(&model, std::slice::from_ref(p), &[g.new_tokens], g.pad, &Device::Cpu).remove(0))
                .collect();
            (single, tokens, alone)
        };
        let (reference, _, _) = on(kernels_on(KernelPath::Portable));
        let (candle, _, _) = on(Placement::cpu_candle());
        let candle_diff = rows_diff(&candle, &reference);
        assert!(candle_diff > TOLERANCE, "{arch}: the candle path rounded by only {candle_diff:.2e}");
        for path in kernel_paths(&format!("{arch} in bf16")) {
            let (ours, batched, alone) = on(kernels_on(path));
            let diff = rows_diff(&ours, &reference);
            // The f32-sum paths differ from the portable one only in attention's summation order.
            let bound = if path == KernelPath::Avx512Bf16 { 3.0 * candle_diff } else { TOLERANCE };
            assert!(
                diff <= bound,
                "{arch} in bf16 on {path}: {diff:.2e} from the f32-sum logits; candle's {candle_diff:.2e}"
            );
            if arch != "phi3" {
                assert_eq!(batched, alone, "{arch} in bf16 on {path}: a batched row differs from its single run");
            }
            println!("{arch} in bf16 on {path}: {diff:.2e} from the f32-sum logits (candle path: {candle_diff:.2e})");
        }
    }
}

/// The backend's engine under the scheduler ([`HfEngine`] in [`SchedulerCore`]): five sequences of different
/// prompt lengths and budgets in four slots (two at the start, three joining after three steps, the last once a
/// slot frees), prompts prefilled in chunks of 5 positions (the remainders of 4 or fewer take the decoding
/// kernels) under a budget of 6 tokens a step, so prefill chunks run beside decoding sequences, and one sequence
/// cancelled after four steps. Each sequence's greedy tokens must be transformers' single-run tokens, on every
/// kernel path and on candle's ops: attention runs per slot over its own cache, so Phi-3's LongRoPE switch too
/// happens at each sequence's own length (transformers' padded batch switches at the batch's; see above).
#[test]
fn slots_give_each_joining_sequence_its_single_run() {
    for arch in ARCHS {
        let g = Goldens::load(arch);
        let mut placements: Vec<Placement> = kernel_paths(arch).into_iter().map(kernels_on).collect();
        placements.push(candle_placement());
        for placement in placements {
            let model = CausalLm::load_dir_on(&fixture(arch), &placement).expect("loads");
            let what = format!("{arch} ({:?})", placement.compute);
            slots_match_single_runs(&g, model, &what);
        }
    }
}

type Outcome = Arc<Mutex<Option<Result<SeqOutput, ScheduleError>>>>;

fn slots_match_single_runs(g: &Goldens, model: CausalLm, what: &str) {
    let engine = HfEngine::new(Arc::new(model), None, Vec::new(), Box::new(|_: &[u32]| String::new()), None);
    let config = SchedulerConfig { max_slots: 4, max_capacity: 64, step_tokens: 6, prefill_chunk: 5 };
    let mut core = SchedulerCore::new(engine, config);
    let cancel = Cancel::new();
    // (prompt, budget, joins at step, cancelled)
    let plan =
        [(3, g.new_tokens, 0, false), (1, 5, 0, false), (2, g.new_tokens, 3, false), (0, 9, 3, true), (2, 7, 3, false)];
    let outcomes: Vec<Outcome> = plan.iter().map(|_| Outcome::default()).collect();
    let mut step = 0;
    while step < 4 || !core.is_idle() {
        for (&(prompt, budget, joins, cancelled), outcome) in plan.iter().zip(&outcomes) {
            if joins == step {
                let mut req = SeqRequest::new(g.prompts[prompt].clone(), budget as u32);
                if cancelled {
                    req.cancel = cancel.clone();
                }
                let outcome = outcome.clone();
                core.add(
                    req,
                    Box::new(move |e| {
                        if let SeqEvent::Done(r) = e {
                            *outcome.lock().expect("lock") = Some(r);
                        }
                        true
                    }),
                );
            }
        }
        core.step();
        step += 1;
        if step == 7 {
            cancel.cancel();
        }
        assert!(step < 500, "{what}: the scheduler never went idle");
    }
    for (i, (&(prompt, budget, _, cancelled), outcome)) in plan.iter().zip(&outcomes).enumerate() {
        let got = outcome.lock().expect("lock").take();
        let got = got.unwrap_or_else(|| panic!("{what}: sequence {i} never ended")).expect("no error");
        let golden = ids(&g.single()[prompt]["tokens"]);
        if cancelled {
            assert_eq!(got.finish, Finish::Cancelled, "{what}: sequence {i}");
            assert!(got.tokens.len() < budget, "{what}: sequence {i} ran to its end: {got:?}");
            assert_eq!(got.tokens[..], golden[..got.tokens.len()], "{what}: cancelled sequence {i}");
        } else {
            assert_eq!(got.finish, Finish::Length, "{what}: sequence {i}");
            assert_eq!(got.tokens[..], golden[..budget], "{what}: sequence {i} (prompt {prompt})");
        }
    }
}
