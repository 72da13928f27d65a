//! Remote-backend overhead: clemrs's `openai_compatible` backend next to the Python `openai` client, both
//! against one fast loopback server started here (see bench/remote/README.md). Prints requests/s, p50/p99
//! latency and the ratios clemrs / Python.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use clem_backends::{load_spec, LoadContext};
use clem_core::keys::Keys;
use clem_core::{GenArgs, LoadedModel, Message, ModelSpec};
use serde_json::{json, Value};
use tokio::net::TcpListener;

#[path = "support/loopback.rs"]
mod loopback;
use loopback::serve;

struct Stats {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn stats(mut latencies: Vec<f64>, total: Duration) -> Stats {
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((p / 100.0) * (latencies.len() - 1) as f64).round() as usize] * 1e3;
    Stats { rps: latencies.len() as f64 / total.as_secs_f64(), p50_ms: pct(50.0), p99_ms: pct(99.0) }
}

fn model(base_url: &str, concurrency: usize) -> LoadedModel {
    let spec: ModelSpec = serde_json::from_value(json!({"model_name": "bench", "backend": "openai_compatible",
        "model_id": "m", "model_config": {"base_url": base_url, "max_concurrency": concurrency}}))
    .expect("spec");
    load_spec(&spec, &LoadContext { keys: Keys::from_env(vec![]), ..LoadContext::default() }).expect("loads")
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn line(label: &str, s: &Stats) {
    println!("{label:<36} {:>9.0} req/s   p50 {:>7.3} ms   p99 {:>7.3} ms", s.rps, s.p50_ms, s.p99_ms);
}

fn main() {
    let n_seq = env_usize("BENCH_SEQ", 2000);
    let n_batch = env_usize("BENCH_BATCH", 5000);
    let conc = env_usize("BENCH_CONCURRENCY", 32);

    // The server gets its own runtime (2 threads) so it is never starved by the clients.
    let server_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let listener = server_rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    server_rt.spawn(serve(listener));
    let base_url = format!("http://{addr}/v1");
    let messages = vec![Message::user("What is the capital of France? Answer in one word.")];
    let args = GenArgs::new(0.0, 300);

    // clemrs, sequential.
    let m = model(&base_url, conc);
    for _ in 0..50 {
        m.generate_response(&messages, &args).expect("warm-up");
    }
    let mut lat = Vec::with_capacity(n_seq);
    let start = Instant::now();
    for _ in 0..n_seq {
        let t = Instant::now();
        let g = m.generate_response(&messages, &args).expect("reply");
        lat.push(t.elapsed().as_secs_f64());
        assert_eq!(g.response_text, "Paris");
    }
    let seq = stats(lat, start.elapsed());

    // clemrs, one batch at max_concurrency.
    let _ = m.generate_batch_response(&vec![messages.clone(); 64], &args);
    let batch = vec![messages.clone(); n_batch];
    let start = Instant::now();
    let results = m.generate_batch_response(&batch, &args);
    let took = start.elapsed();
    let lat: Vec<f64> = results
        .iter()
        .map(|r| {
            let g = r.as_ref().expect("reply");
            g.response["clem_player"]["request_seconds"].as_f64().expect("request_seconds")
        })
        .collect();
    let bat = stats(lat, took);

    println!("remote backend benchmark against one loopback server ({addr})");
    line(&format!("clemrs sequential ({n_seq})"), &seq);
    line(&format!("clemrs batch ({n_batch}, concurrency {conc})"), &bat);

    if std::env::var_os("BENCH_NO_PYTHON").is_some() {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/remote/openai_client.py");
    let out = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(&script)
        .args([&base_url, &n_seq.to_string(), &n_batch.to_string(), &conc.to_string()])
        .output();
    let py: Value = match out {
        Ok(o) if o.status.success() => match serde_json::from_slice(&o.stdout) {
            Ok(v) => v,
            Err(e) => return eprintln!("python side printed no JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)),
        },
        Ok(o) => return eprintln!("python side failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => return eprintln!("cannot run python: {e}"),
    };
    let get = |k: &str| Stats {
        rps: py[k]["rps"].as_f64().unwrap_or(f64::NAN),
        p50_ms: py[k]["p50_ms"].as_f64().unwrap_or(f64::NAN),
        p99_ms: py[k]["p99_ms"].as_f64().unwrap_or(f64::NAN),
    };
    let (pseq, pasync) = (get("sequential"), get("async"));
    line(&format!("python openai {} OpenAI ({n_seq})", py["openai_version"].as_str().unwrap_or("?")), &pseq);
    line(&format!("python AsyncOpenAI ({n_batch}, concurrency {conc})"), &pasync);
    println!(
        "ratios clemrs/python: sequential {:.1}x req/s (p50 {:.1}x lower), batch {:.1}x req/s (p50 {:.1}x lower)",
        seq.rps / pseq.rps,
        pseq.p50_ms / seq.p50_ms,
        bat.rps / pasync.rps,
        pasync.p50_ms / bat.p50_ms
    );
    println!("targets: sequential >= 5x, batch >= 10x");
}
