//! `clem list backends -v`: huggingface_local's line names the CPU kernel path in use, the CPU and its features;
//! `CLEM_KERNELS` changes the path shown, and a path the CPU lacks is shown as the error the loader gives. Without
//! `-v` the three columns stay as they were.

mod common;

use std::process::Command;

use clem_backends::huggingface_local::clem_kernels::{dispatch, Features, Path};

/// `clem list backends [-v]` with `CLEM_KERNELS` set to `forced` (unset: `None`), HOME in a scratch folder.
fn list(verbose: bool, forced: Option<&str>) -> (String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clem"));
    cmd.args(["list", "backends"]).current_dir(dir.path()).env("HOME", dir.path()).env_remove(dispatch::ENV);
    if verbose {
        cmd.arg("-v");
    }
    if let Some(value) = forced {
        cmd.env(dispatch::ENV, value);
    }
    let out = cmd.output().expect("clem runs");
    assert!(out.status.success(), "{}", common::stderr(&out));
    let hf = common::stdout(&out).lines().find(|l| l.starts_with("huggingface_local\t")).map(String::from);
    (hf.expect("a huggingface_local line"), common::stdout(&out))
}

#[test]
fn verbose_backends_name_the_kernel_path_and_the_cpu() {
    let features = Features::detect();
    let (line, all) = list(true, None);
    let chosen = dispatch::choose(features);
    assert!(line.contains(&format!("\tkernels {chosen} on ")), "{line}");
    assert!(line.contains(&dispatch::cpu_model()) && line.contains(&features.describe()), "{line}");
    // Nothing calibrated under a fresh HOME (the portable path is never calibrated).
    assert!(line.contains("not measured yet") || chosen == Path::Portable, "{line}");
    // Every line of -v has the fourth column.
    assert!(all.lines().all(|l| l.split('\t').count() == 4), "{all}");
    assert!(all.lines().any(|l| l.starts_with("openai\t") && l.ends_with("\t-")), "{all}");

    let (line, _) = list(true, Some("portable"));
    assert!(line.contains("\tkernels portable on ") && line.ends_with("tuning default"), "{line}");

    // A path this CPU lacks: the error, naming what is missing (before: no path was shown at all).
    match Path::ALL.into_iter().find(|p| !p.supported()) {
        Some(lacking) => {
            let (line, _) = list(true, Some(lacking.name()));
            let missing = lacking.missing(features).join(", ");
            assert!(line.contains("kernels: the ") && line.contains(&missing), "{line}");
        }
        None => eprintln!("SKIP: this CPU runs every kernel path, so none can be refused"),
    }
    let (line, _) = list(true, Some("sse9"));
    assert!(line.contains("CLEM_KERNELS=\"sse9\" names no kernel path"), "{line}");
}

#[test]
fn plain_backends_keep_three_columns() {
    let (line, all) = list(false, None);
    assert!(line.starts_with("huggingface_local\tbuilt\t") && line.split('\t').count() == 3, "{line}");
    assert!(all.lines().all(|l| l.split('\t').count() == 3), "{all}");
}
