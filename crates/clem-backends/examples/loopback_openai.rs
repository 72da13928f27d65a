//! The benchmarks' loopback OpenAI server as a process of its own (bench/python's overhead run): one thread,
//! every request answered at once with the same reply ("Paris"). Prints `listening on http://ADDR/v1` and
//! serves until killed. Usage: `loopback_openai [PORT]` (default: any free port).

#[path = "../benches/support/loopback.rs"]
mod loopback;

use std::io::Write as _;

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    // One thread: the connection's task runs where the request arrives, with no hand-over between threads.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("listening on http://{}/v1", listener.local_addr()?);
        std::io::stdout().flush()?;
        loopback::serve(listener).await;
        Ok(())
    })
}
