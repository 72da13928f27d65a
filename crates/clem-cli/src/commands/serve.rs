//! `clem serve -m MODEL... [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--max-batch N] [--lanes N]`: every
//! model given behind one OpenAI-compatible server (clem-serve). Prints `clem serve: listening on http://HOST:PORT`
//! on stdout once it accepts connections (`--port 0` picks a free port). On Ctrl-C or SIGTERM it stops accepting,
//! lets requests in flight finish within `--shutdown-timeout`, cancels the rest and prints `clem serve: stopped`
//! once nothing runs any more. An empty `--api-key` is refused; listening beyond loopback without a key warns.

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
    /// Most requests a local model decodes together (1: one at a time). Default: as many as the model's step
    /// scheduler has slots for (llamacpp: 32, memory allowing; huggingface_local: 16), 8 for other local models.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    max_batch: Option<u16>,
    /// Lanes of a llamacpp model on the CPU: independent schedulers, each with its own context and its share of
    /// the threads, each request given to the least busy. `per-thread` (the default) serves many concurrent
    /// requests fastest; 1 decodes a lone request fastest (all threads on it). Replies are the same either way.
    #[arg(long, value_name = "N|per-thread", default_value = "per-thread", value_parser = lanes)]
    lanes: clem_backends::Lanes,
    /// Milliseconds a local model waits for more requests after the first one of a batch.
    #[arg(long, default_value_t = 2)]
    batch_window_ms: u64,
    /// Largest `max_tokens` a request may ask for.
    #[arg(long, default_value_t = 4096)]
    max_tokens_cap: u32,
    /// Largest `n` (choices) a request may ask for; each choice takes one of `--max-concurrent`.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    max_n: u32,
    /// Sequences in flight (a request is `n` of them) across all models; more get 503.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrent: u32,
    /// Largest request body in bytes (also the largest image the server fetches itself).
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Bytes of request bodies being received at once, across all connections; more get 503.
    #[arg(long, default_value_t = 256 << 20)]
    max_body_buffer_bytes: usize,
    /// Seconds a connection may take to send a request's headers (idle keep-alive connections close after it).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = seconds)]
    header_timeout: Duration,
    /// Seconds a request's body may take to arrive (408 after).
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = seconds)]
    body_timeout: Duration,
    /// Open connections; at the cap, new ones wait until one closes.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Seconds requests in flight may take to finish on Ctrl-C/SIGTERM before they are cancelled.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = seconds)]
    shutdown_timeout: Duration,
    /// Let the server fetch images (for providers that take them inline only, e.g. google) from private,
    /// loopback and link-local addresses.
    #[arg(long)]
    allow_private_urls: bool,
}

/// The warning for a server reachable beyond this machine without an API key.
fn exposure_warning(addr: std::net::SocketAddr, authenticated: bool) -> Option<String> {
    (!authenticated && !addr.ip().is_loopback()).then(|| {
        format!(
            "clem serve: WARNING: listening on {addr}, beyond this machine, WITHOUT an API key: anyone who can \
             reach it can use the models (and the provider keys behind them). Give --api-key KEY, or --host \
             127.0.0.1."
        )
    })
}

/// `per-thread` or a positive number of lanes.
fn lanes(text: &str) -> Result<clem_backends::Lanes, String> {
    match text {
        "per-thread" => Ok(clem_backends::Lanes::PerThread),
        _ => match text.parse::<usize>() {
            Ok(n) if n > 0 => Ok(clem_backends::Lanes::Count(n)),
            _ => Err(format!("{text:?} is neither a positive number of lanes nor `per-thread`")),
        },
    }
}

/// A positive number of seconds.
fn seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>().ok().and_then(|s| Duration::try_from_secs_f64(s).ok()) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}

pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let api_key = args.api_key.or_else(|| std::env::var("CLEM_SERVE_API_KEY").ok());
    if api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
        // Checked before loading models: an empty key used to switch authentication off silently.
        anyhow::bail!(
            "the API key is empty (--api-key or CLEM_SERVE_API_KEY): give a non-empty key, or neither to serve \
             without authentication"
        );
    }
    let registry = ctx.registry()?;
    let load = clem_backends::LoadContext { lanes: args.lanes, ..ctx.load_context()? };
    let mut models = Vec::new();
    for selector in &args.models {
        let spec = ModelSpec::parse_selector(selector)?;
        models.push(clem_backends::load_model(registry, &spec, &load)?);
    }
    let config = ServeConfig {
        api_key,
        max_batch: args.max_batch.map(usize::from),
        batch_window: Duration::from_millis(args.batch_window_ms),
        max_tokens_cap: args.max_tokens_cap,
        max_n: args.max_n,
        max_concurrent: args.max_concurrent as usize,
        max_body_bytes: args.max_body_bytes,
        max_body_buffer_bytes: args.max_body_buffer_bytes,
        header_read_timeout: args.header_timeout,
        body_read_timeout: args.body_timeout,
        max_connections: args.max_connections as usize,
        shutdown_timeout: args.shutdown_timeout,
        allow_private_urls: args.allow_private_urls,
        ..ServeConfig::default()
    };
    let unauthenticated = config.api_key.is_none();
    let app = App::new(models, config)?;
    // The connection cap, not the default descriptor limit (often 1024), should be what limits connections.
    match clem_serve::raise_fd_limit() {
        Ok(n) if n < u64::from(args.max_connections) + 64 => eprintln!(
            "clem serve: warning: the open-file limit is {n}, below --max-connections {}; connections beyond it \
             are refused (raise `ulimit -Hn`)",
            args.max_connections
        ),
        Ok(_) => {}
        Err(e) => eprintln!("clem serve: warning: cannot read the open-file limit: {e}"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("listening on {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        if let Some(warning) = exposure_warning(addr, !unauthenticated) {
            eprintln!("{warning}");
        }
        eprintln!("clem serve: models {}", app.model_names().join(", "));
        println!("clem serve: listening on http://{addr}");
        std::io::stdout().flush()?;
        clem_serve::run(listener, &app, clem_serve::shutdown_signal()).await?;
        eprintln!("clem serve: stopped");
        anyhow::Ok(())
    })?;
    // Every request has stopped by now; do not wait on a backend that ignores cancellation.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_when_listening_beyond_loopback_without_a_key() {
        let at = |a: &str| a.parse::<std::net::SocketAddr>().expect("address");
        assert!(exposure_warning(at("0.0.0.0:8000"), false).is_some_and(|w| w.contains("WITHOUT an API key")));
        assert!(exposure_warning(at("[::]:8000"), false).is_some());
        assert!(exposure_warning(at("192.168.1.5:8000"), false).is_some());
        assert!(exposure_warning(at("0.0.0.0:8000"), true).is_none());
        assert!(exposure_warning(at("127.0.0.1:8000"), false).is_none());
        assert!(exposure_warning(at("[::1]:8000"), false).is_none());
    }

    #[test]
    fn lanes_are_per_thread_or_a_positive_count() {
        assert_eq!(lanes("per-thread"), Ok(clem_backends::Lanes::PerThread));
        assert_eq!(lanes("3"), Ok(clem_backends::Lanes::Count(3)));
        for bad in ["0", "-1", "two", ""] {
            assert!(lanes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn seconds_are_positive() {
        assert_eq!(seconds("2.5"), Ok(Duration::from_millis(2500)));
        for bad in ["0", "-1", "soon", "inf", "NaN"] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
    }
}
