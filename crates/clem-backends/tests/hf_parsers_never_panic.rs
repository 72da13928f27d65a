//! Property tests of huggingface_local's readers of outside input: `config.json`, safetensors headers, the
//! memory check fed by them, and `tokenizer.json` (read by the `tokenizers` crate, then used on any text and ids). A panic (an index, an unwrap, an arithmetic overflow in this debug build) fails the
//! test; where a reader accepts its input, what it reports must also be consistent with that input.
#![cfg(feature = "huggingface_local")]

use std::io::Write;

use clem_backends::huggingface_local::config::{registry_context_size, ModelConfig};
use clem_backends::huggingface_local::files::{check_memory, MemoryNeed};
use clem_backends::huggingface_local::tokenizer::HfTokenizer;
use clem_backends::huggingface_local::weights::SafetensorsFiles;
use clem_json_strategies as strategies;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Values a config key may hold, valid or not: sizes small and absurd, zero, negative, fractional, wrong types.
fn config_value() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        prop::sample::select(vec![0u64, 1, 2, 3, 4, 8, 16, 64, 4096, 1 << 31, 1 << 40, u64::MAX]).prop_map(Value::from),
        prop::sample::select(vec![-1i64, i64::MIN]).prop_map(Value::from),
        prop::sample::select(vec![0.0f64, 0.5, 1.0, 1e-6, 8.0, 1e300]).prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "default",
            "linear",
            "dynamic",
            "yarn",
            "llama3",
            "longrope",
            "su",
            "sliding_attention",
            "full_attention",
            "silu",
            "gelu_pytorch_tanh",
            "relu"
        ])
        .prop_map(Value::from),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ];
    // Keys of nested values (rope_scaling, layer_types): only the ones the reader looks for.
    let key = prop::sample::select(NESTED_KEYS).prop_map(String::from).boxed();
    strategies::tree(scalar.boxed(), key, 2, 16, 4)
}

const NESTED_KEYS: &[&str] = &[
    "rope_type",
    "type",
    "factor",
    "rope_theta",
    "short_factor",
    "long_factor",
    "original_max_position_embeddings",
    "low_freq_factor",
    "high_freq_factor",
    "beta_fast",
    "beta_slow",
    "attention_factor",
    "full_attention",
    "sliding_attention",
];

const CONFIG_KEYS: &[&str] = &[
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "partial_rotary_factor",
    "original_max_position_embeddings",
    "sliding_window",
    "layer_types",
    "max_window_layers",
    "use_sliding_window",
    "sliding_window_pattern",
    "query_pre_attn_scalar",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "hidden_act",
    "hidden_activation",
    "attention_bias",
    "tie_word_embeddings",
    "rope_local_base_freq",
    "eos_token_id",
    "bos_token_id",
];

/// A config.json of a supported (or unsupported) model type: a valid small llama base with random keys over it,
/// some of them nested in `text_config` as multimodal configs do.
fn config() -> impl Strategy<Value = Value> {
    let model_type = prop::sample::select(vec![
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma2",
        "gemma3",
        "gemma3_text",
        "phi3",
        "gpt2",
    ]);
    let keys = prop::collection::btree_map(prop::sample::select(CONFIG_KEYS.to_vec()), config_value(), 0..6);
    (model_type, keys, any::<bool>()).prop_map(|(model_type, keys, nested)| {
        let mut text = json!({"model_type": model_type, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
            "max_position_embeddings": 512});
        if let Value::Object(m) = &mut text {
            m.extend(keys.into_iter().map(|(k, v)| (k.to_string(), v)));
        }
        if nested {
            json!({"model_type": "gemma3", "text_config": text})
        } else {
            text
        }
    })
}

/// One safetensors entry, valid or not.
fn entry() -> impl Strategy<Value = Value> {
    let dim = prop::sample::select(vec![0u64, 1, 2, 3, 64, 1 << 32, u64::MAX]);
    let offset = prop::sample::select(vec![0u64, 1, 4, 8, 16, 24, 1 << 40, u64::MAX]);
    let dtype = prop::sample::select(vec!["F32", "BF16", "F16", "F64", "I64", "U8", "U32", "Q4", ""]);
    (dtype, prop::collection::vec(dim, 0..4), offset.clone(), offset, any::<u8>()).prop_map(
        |(dtype, shape, start, len, variant)| match variant % 8 {
            0 => json!({"dtype": dtype, "shape": shape}),
            1 => json!({"dtype": 3, "shape": shape, "data_offsets": [start, start.saturating_add(len)]}),
            2 => json!({"dtype": dtype, "shape": "x", "data_offsets": [start]}),
            _ => json!({"dtype": dtype, "shape": shape, "data_offsets": [start, start.saturating_add(len)]}),
        },
    )
}

/// A safetensors file: header length, JSON header of random entries, then `data` bytes of payload; or, when
/// `raw` is given, those bytes alone.
fn write_safetensors(dir: &std::path::Path, header: &Value, data: usize, raw: Option<&[u8]>) -> std::path::PathBuf {
    let path = dir.join("model.safetensors");
    let mut f = std::fs::File::create(&path).expect("create a file in a temporary directory");
    match raw {
        Some(bytes) => f.write_all(bytes),
        None => {
            let h = header.to_string().into_bytes();
            f.write_all(&(h.len() as u64).to_le_bytes())
                .and_then(|()| f.write_all(&h))
                .and_then(|()| f.write_all(&vec![0u8; data]))
        }
    }
    .expect("write a temporary file");
    path
}

/// A small `tokenizer.json` (a word-level or BPE model over a few tokens), valid or mutated: ids past the
/// vocabulary, duplicate tokens, unknown component types, wrong value types.
fn tokenizer_json() -> impl Strategy<Value = Value> {
    // Mostly valid pieces, so that most tokenizers load; the rest broken in one place or another.
    let id = prop_oneof![8 => 0i64..6, 1 => prop::sample::select(vec![1000i64, -1, u32::MAX as i64])];
    let token = prop::sample::select(vec!["a", "b", "ab", "<s>", "</s>", "[UNK]", "", " ", "\u{0120}a"]);
    let vocab = prop::collection::btree_map(token.clone(), id.clone(), 0..6);
    let added = prop::collection::vec((id.clone(), token.clone(), any::<bool>()), 0..3);
    let component = prop_oneof![
        6 => Just(Value::Null),
        2 => prop::sample::select(vec![
            json!({"type": "Whitespace"}),
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
            json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always", "split": true}),
        ]),
        1 => prop::sample::select(vec![
            json!({"type": "Split", "pattern": {"Regex": "(("}, "behavior": "Isolated", "invert": false}),
            json!({"type": "NoSuchThing"}),
            json!(3),
        ]),
    ];
    let model_kind = prop_oneof![4 => Just("WordLevel"), 4 => Just("BPE"), 1 => Just("Unigram"), 1 => Just("Nope")];
    let merges = prop::collection::vec(prop::sample::select(vec!["a b", "b a", "a", "x y", ""]), 0..3);
    (vocab, added, component.clone(), component, model_kind, merges).prop_map(
        |(vocab, added, pre, decoder, kind, merges)| {
            let vocab: Map<String, Value> = vocab.into_iter().map(|(t, i)| (t.to_string(), json!(i))).collect();
            let model = match kind {
                "WordLevel" => json!({"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}),
                "BPE" => json!({"type": "BPE", "vocab": vocab, "merges": merges, "unk_token": null,
                    "dropout": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                    "fuse_unk": false, "byte_fallback": false}),
                other => json!({"type": other, "vocab": vocab}),
            };
            let added: Vec<Value> = added
                .into_iter()
                .map(|(id, content, special)| {
                    json!({"id": id, "content": content, "single_word": false,
                    "lstrip": false, "rstrip": false, "normalized": false, "special": special})
                })
                .collect();
            json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
                "normalizer": null, "pre_tokenizer": pre, "post_processor": null, "decoder": decoder, "model": model})
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any tokenizer.json is loaded or refused naming the file; a loaded one encodes any text and decodes any ids
    /// (past its vocabulary too) without panicking, and the ids of a text decode to tokens of the vocabulary.
    #[test]
    fn tokenizer_json_never_panics(
        tok in tokenizer_json(),
        text in "[ab </>\\[\\]UNKé\u{0120}]{0,12}",
        ids in prop::collection::vec(prop::sample::select(vec![0u32, 1, 2, 3, 7, 1000, u32::MAX]), 0..6),
        clean in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("tokenizer.json"), tok.to_string()).expect("write a temporary file");
        match HfTokenizer::load(dir.path(), clean) {
            Err(e) => prop_assert!(e.to_string().contains("tokenizer.json"), "{}", e),
            Ok(t) => {
                if let Ok(encoded) = t.encode(&text) {
                    if !encoded.is_empty() {
                        prop_assert!(t.decode(&encoded).is_ok(), "ids {:?} of {:?} do not decode", encoded, text);
                    }
                }
                let _ = t.decode(&ids);
                let _ = t.token_id(&text);
            }
        }
    }

    /// Any config.json is read or refused with a message; an accepted one has sizes the model can be built with,
    /// and its KV bytes per token do not overflow.
    #[test]
    fn config_json_never_panics(cfg in config()) {
        if let Ok(c) = ModelConfig::from_json(&cfg) {
            prop_assert!(c.head_dim > 0 && c.num_heads > 0 && c.num_kv_heads > 0);
            prop_assert_eq!(c.num_heads % c.num_kv_heads, 0);
            let kv = c.kv_bytes_per_token();
            prop_assert!(kv >= 2 * c.num_layers as u64 || kv == u64::MAX);
            let _ = c.cache_rebuild_len();
        }
    }

    /// Registry context sizes: a number or a string such as "8k"; nothing else.
    #[test]
    fn registry_context_sizes_never_panic(s in "[0-9.kKe+\\- ]{0,12}", n in any::<i64>()) {
        let parsed = registry_context_size(Some(&Value::from(s.clone())));
        if let Ok(plain) = s.trim().parse::<u64>() {
            prop_assert_eq!(parsed, Some(plain));
        }
        prop_assert_eq!(registry_context_size(Some(&Value::from(n))), u64::try_from(n).ok());
    }

    /// Safetensors headers of random entries (absurd shapes and offsets included): opened or refused; when
    /// opened, every tensor lies within the file, so the footprint is at most the payload's size per byte.
    #[test]
    fn safetensors_headers_never_panic(
        entries in prop::collection::btree_map("[a-z.]{1,6}", entry(), 0..4),
        data in 0usize..64,
        metadata in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut header: Map<String, Value> = entries.into_iter().collect();
        if metadata {
            header.insert("__metadata__".into(), json!({"format": "pt"}));
        }
        let path = write_safetensors(dir.path(), &Value::Object(header), data, None);
        if let Ok(files) = SafetensorsFiles::open(&[path]) {
            let fp = files.footprint();
            prop_assert!(fp.params <= data as u64, "{} elements in {} bytes", fp.params, data);
        }
    }

    /// Files that are not safetensors at all (short, truncated, a header length past the end, not JSON).
    #[test]
    fn random_bytes_as_safetensors_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..48)) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = write_safetensors(dir.path(), &Value::Null, 0, Some(&bytes));
        prop_assert!(SafetensorsFiles::open(&[path]).is_err() || bytes.len() >= 10);
    }

    /// The memory check with any sizes: refuses exactly when the (saturated) need exceeds what is available.
    #[test]
    fn memory_check_never_panics(
        weights in any::<u64>(), kv in any::<u64>(), tokens in any::<u64>(), batch in any::<u64>(),
        work in any::<u64>(), available in any::<u64>(),
    ) {
        let need = MemoryNeed {
            model: "m", weights, dtype: "bf16", kv_bytes_per_token: kv, tokens, batch, work_per_token: work,
        };
        match check_memory(&need, (Some(available), "free memory of cuda:0".into())) {
            Ok(()) => prop_assert!(weights <= available),
            Err(e) => {
                prop_assert!(e.needed() > available);
                let message = e.to_string();
                prop_assert!(message.contains("MiB"), "{}", message);
            }
        }
    }
}
