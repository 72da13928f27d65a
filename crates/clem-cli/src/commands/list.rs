//! `clem list models|backends|keys|games`.
//!
//! Output (stable, tab-separated, one line per item):
//! - models: `model_name<TAB>backend`; with `-v` also release_date, open_weight, parameters, context_size,
//!   source (`file#index`), pricing (`$2.5/$10 per 1M tokens` from `model_config.pricing`, else `-`); `--json`
//!   prints the entries as a JSON list instead.
//! - backends: `name<TAB>built|not built<TAB>credentials` where credentials is `not needed`,
//!   `missing (section S)` or `SOURCE (section S)`; a backend whose section is optional (the local ones, which
//!   read it for entries with `requires_api_key`: gated downloads, or a vLLM server's key) says
//!   `not needed (optional section S: missing|SOURCE)`; with `-v` also the backend's runtime (huggingface_local: the
//!   CPU kernel path in use, the CPU and its features, the kernels' tuning; `-` for the others).
//!
//! An empty list is said on stderr (with where was looked); `--backend` with a backend that does not exist is
//! an error naming the nearest ones; a key.json section no backend reads is warned about, naming the nearest.
//! - keys: `section<TAB>masked api_key<TAB>source<TAB>extras` (extras as `k=v`, comma-separated; every value
//!   masked, except that `base_url` shows its scheme, host and port, never its user, password, path or query).
//! - games: `name<TAB>description` for each game clemrs plays.

use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use clem_core::schema::parse_count;
use serde_json::Value;

use crate::context::Ctx;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Models in the registries, in priority order.
    Models(ModelArgs),
    /// Backends of this build and whether each has credentials.
    Backends(BackendArgs),
    /// Credentials, masked.
    Keys,
    /// The games `clem run` plays.
    Games,
}

#[derive(clap::Args)]
struct BackendArgs {
    /// Also show what each backend runs on (huggingface_local: the CPU kernel path, the CPU's features).
    #[arg(short, long)]
    verbose: bool,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// Show metadata and where each entry comes from.
    #[arg(short, long)]
    verbose: bool,
    /// Only models of this backend.
    #[arg(long)]
    backend: Option<String>,
    /// Only open-weight models.
    #[arg(long)]
    open_weight: bool,
    /// Only models whose context_size is at least N (e.g. 8192 or 32k).
    #[arg(long, value_name = "N", value_parser = parse_min_context)]
    min_context: Option<f64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Format {
    Text,
    Json,
}

fn parse_min_context(s: &str) -> Result<f64, String> {
    parse_count(s).ok_or_else(|| format!("{s:?} is not a token count like 8192 or 32k"))
}

pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    match args.what {
        What::Models(m) => models(m, ctx),
        What::Backends(b) => backends(b, ctx),
        What::Keys => keys(ctx),
        What::Games => games(),
    }
}

fn games() -> anyhow::Result<ExitCode> {
    for g in clem_run::games::GAMES {
        println!("{}\t{}", g.name(), g.description());
    }
    Ok(ExitCode::SUCCESS)
}

fn models(args: ModelArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let registry = ctx.registry()?;
    if let Some(b) = args.backend.as_deref().filter(|b| clem_backends::backend(b).is_none()) {
        let names = clem_backends::BACKENDS.iter().flat_map(|b| b.schema.aliases.iter().chain([&b.schema.name]));
        anyhow::bail!(
            "--backend {b:?}: no such backend{} (backends: {})",
            clem_core::suggest::did_you_mean(b, names.copied()),
            clem_backends::BACKENDS.iter().map(|b| b.name()).collect::<Vec<_>>().join(", ")
        );
    }
    let selected = registry.entries().iter().filter(|e| {
        let v = &e.value;
        args.backend
            .as_deref()
            .is_none_or(|b| e.backend().and_then(clem_backends::backend).is_some_and(|eb| eb.schema.answers_to(b)))
            && (!args.open_weight || v.get("open_weight") == Some(&Value::Bool(true)))
            && args.min_context.is_none_or(|min| {
                v.get("context_size").and_then(Value::as_str).and_then(parse_count).is_some_and(|c| c >= min)
            })
    });
    let selected: Vec<&clem_core::registry::Entry> = selected.collect();
    if selected.is_empty() {
        eprintln!(
            "clem: no model entry matches these filters (searched {} entries in: {})",
            registry.entries().len(),
            registry.sources().join(", ")
        );
    }
    let mut out = String::new();
    if args.format == Format::Json {
        let list: Vec<&Value> = selected.iter().map(|e| &e.value).collect();
        out = serde_json::to_string_pretty(&list)?;
        out.push('\n');
    } else {
        for e in selected {
            let name = e.model_name().unwrap_or("<no model_name>");
            let backend = e.backend().unwrap_or("<no backend>");
            out.push_str(name);
            out.push('\t');
            out.push_str(backend);
            if args.verbose {
                let field = |k: &str| match e.value.get(k) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => "-".into(),
                    Some(v) => v.to_string(),
                };
                for k in ["release_date", "open_weight", "parameters", "context_size"] {
                    out.push('\t');
                    out.push_str(&field(k));
                }
                out.push_str(&format!("\t{}#{}\t{}", e.file, e.index, pricing(&e.value)));
            }
            out.push('\n');
        }
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// `model_config.pricing` as `$IN/$OUT per 1M tokens` (input, output), `-` when the entry has none.
fn pricing(entry: &Value) -> String {
    match entry.pointer("/model_config/pricing").map(clem_core::Pricing::from_value) {
        Some(Ok(p)) => format!("${}/${} per 1M tokens", p.input_per_million, p.output_per_million),
        Some(Err(_)) => "invalid pricing".into(),
        None => "-".into(),
    }
}

fn backends(args: BackendArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let keys = ctx.keys()?;
    for b in clem_backends::BACKENDS {
        let built = if b.loader.is_some() { "built" } else { "not built" };
        // The local backends need no key; they read their section when an entry asks (requires_api_key).
        let optional = b.schema.config_optional.iter().any(|(k, _)| *k == "requires_api_key");
        let creds = match b.key_section {
            None => "not needed".to_string(),
            Some(section) => {
                let found = match keys.section(section) {
                    Some(s) if s.api_key.is_some() => Some(s.source.to_string()),
                    _ => None,
                };
                match (optional, found) {
                    (false, Some(source)) => format!("{source} (section {section})"),
                    (false, None) => format!("missing (section {section})"),
                    (true, found) => {
                        format!("not needed (optional section {section}: {})", found.as_deref().unwrap_or("missing"))
                    }
                }
            }
        };
        if args.verbose {
            let runtime = if b.name() == "huggingface_local" { cpu_kernels() } else { "-".into() };
            println!("{}\t{built}\t{creds}\t{runtime}", b.name());
        } else {
            println!("{}\t{built}\t{creds}", b.name());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// huggingface_local's CPU side: "kernels avx2 on AMD EPYC (avx2 fma f16c -avx512f -avx512bf16); tuning ...", or
/// why `CLEM_KERNELS` cannot be used.
fn cpu_kernels() -> String {
    use clem_backends::huggingface_local::clem_kernels::{self as kernels, tuning};
    let cpu = format!("{} ({})", kernels::dispatch::cpu_model(), kernels::Features::detect().describe());
    match kernels::path() {
        Ok(path) => {
            let tuned = match tuning::cached(path) {
                Some((t, file)) => {
                    format!("block {} B, row prefetch {} B ({})", t.block_bytes, t.row_ahead, file.display())
                }
                None if path == kernels::Path::Portable => "default".into(),
                None => "not measured yet (the first model load calibrates it)".into(),
            };
            format!("kernels {path} on {cpu}; tuning {tuned}")
        }
        Err(e) => format!("kernels: {e}; CPU {cpu}"),
    }
}

fn keys(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let keys = ctx.keys()?;
    for skipped in &keys.skipped {
        eprintln!("clem: warning: key file not used: {skipped}");
    }
    let names = keys.section_names();
    if names.is_empty() {
        let file =
            ctx.keys_file.as_ref().map_or("./key.json, ~/.clemcore/key.json".to_string(), |f| f.display().to_string());
        let vars: Vec<&str> = clem_core::keys::ENV_FALLBACK.iter().map(|(_, var, _)| *var).collect();
        eprintln!("clem: no keys: none in {file}, nor in the environment ({}); `clem register key SECTION --set api_key=...` writes one", vars.join(", "));
    }
    let known = super::register::known_sections();
    for name in names.iter().filter(|n| !known.contains(&n.as_str())) {
        // A typo in key.json leaves the backend's own section missing, with no word about why.
        let hint = clem_core::suggest::did_you_mean(name, known.iter().copied());
        eprintln!("clem: warning: key.json section {name:?} is read by no backend{hint}");
    }
    for name in names {
        let Some(section) = keys.section(&name) else { continue };
        let masked = section.api_key.as_ref().map(|k| k.masked()).unwrap_or_else(|| "-".into());
        let extras: Vec<String> = section.extras.iter().map(|(k, v)| format!("{k}={}", shown_extra(k, v))).collect();
        println!("{name}\t{masked}\t{}\t{}", section.source, extras.join(","));
    }
    Ok(ExitCode::SUCCESS)
}

/// An extra of a key.json section as listed: any field may hold a credential (a `bearer`, a password), so all
/// are masked; `base_url` shows where requests go (scheme, host, port) and nothing else of it.
fn shown_extra(key: &str, value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match url_origin(&text) {
        Some(origin) if key == "base_url" => origin,
        _ => clem_core::keys::mask(&text),
    }
}

/// `scheme://host[:port]` of a URL, without user, password, path, query or fragment; `None` when it is not one.
fn url_origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // The user part ends at the last '@' (a password may hold one).
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let host_ok = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-_:[]%".contains(c));
    (scheme_ok && host_ok).then(|| format!("{scheme}://{host}"))
}
