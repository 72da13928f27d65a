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
