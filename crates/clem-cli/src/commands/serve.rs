//! `clem serve -m MODEL... [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--max-batch N]`: every model given
//! behind one OpenAI-compatible server (clem-serve). Prints `clem serve: listening on http://HOST:PORT` on stdout
//! once it accepts connections (`--port 0` picks a free port), and stops cleanly on Ctrl-C or SIGTERM.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clem_core::ModelSpec;
use clem_serve::{App, ServeConfig};

use crate::context::Ctx;

#[derive(clap::Args)]
pub struct Args {
    /// A model to serve (repeatable): a name, or a JSON object that must unify with an entry.
    #[arg(short, long = "model", value_name = "SELECTOR", required = true)]
    models: Vec<String>,
    /// The address to listen on; anything but loopback exposes the models to the network.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The port (0: any free port).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer KEY` (also read from CLEM_SERVE_API_KEY).
    #[arg(long)]
    api_key: Option<String>,
    /// Most requests a local model decodes together (1: one at a time).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    max_batch: u16,
    /// Milliseconds a local model waits for more requests after the first one of a batch.
    #[arg(long, default_value_t = 2)]
    batch_window_ms: u64,
    /// Largest `max_tokens` a request may ask for.
    #[arg(long, default_value_t = 4096)]
    max_tokens_cap: u32,
    /// Requests in flight across all models; more get 503.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrent: u32,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
}

pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let registry = ctx.registry()?;
    let load = ctx.load_context()?;
    let mut models = Vec::new();
    for selector in &args.models {
        let spec = ModelSpec::parse_selector(selector)?;
        models.push(clem_backends::load_model(registry, &spec, &load)?);
    }
    let config = ServeConfig {
        api_key: args.api_key.or_else(|| std::env::var("CLEM_SERVE_API_KEY").ok()).filter(|k| !k.is_empty()),
        max_batch: usize::from(args.max_batch),
        batch_window: Duration::from_millis(args.batch_window_ms),
        max_tokens_cap: args.max_tokens_cap,
        max_concurrent: args.max_concurrent as usize,
        max_body_bytes: args.max_body_bytes,
        ..ServeConfig::default()
    };
    let app = App::new(models, config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("listening on {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        eprintln!("clem serve: models {}", app.model_names().join(", "));
        println!("clem serve: listening on http://{addr}");
        std::io::stdout().flush()?;
        clem_serve::run(listener, &app, clem_serve::shutdown_signal()).await?;
        eprintln!("clem serve: stopped");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
