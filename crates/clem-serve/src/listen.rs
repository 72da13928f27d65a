//! The accept loop: HTTP/1 connections served by hyper with the limits `axum::serve` does not expose: a header
//! read timeout (a client that does not finish its request head in time is disconnected, which is also how idle
//! keep-alive connections end), a cap on open connections (the loop stops accepting at the cap), and graceful
//! shutdown within a deadline, after which everything still running is cancelled and waited for.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::inflight::Inflight;
use crate::ServeConfig;

/// How long cancelled work may take to notice its flag before `run` returns anyway (remote requests end at once,
/// local models at their next decoding step).
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, lets requests in flight finish
/// within `config.shutdown_timeout`, cancels what is left and waits (bounded) until it has stopped.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: &ServeConfig,
    inflight: Arc<Inflight>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // At the cap, wait for a connection to close before accepting (new ones wait in the listen backlog).
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors (or a connection reset before accept): back off instead of spinning.
                if !matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let mut stop = stop_rx.clone();
        let header_timeout = config.header_read_timeout;
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            // The watch guard is dropped inside, never held across an await.
            let stopping = async move { stop.wait_for(|stopping| *stopping).await.map(|_| ()) };
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopping => {
                    // Finish the request in flight, if any, then close (keep-alive ends).
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(config.shutdown_timeout, async { while connections.join_next().await.is_some() {} })
            .await
            .is_ok();
    if !drained {
        // Dropping a connection drops its handler, whose guard cancels the request; cancel_all also reaches work
        // whose handler is already gone and refuses anything registered later.
        inflight.cancel_all();
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
    inflight.cancel_all();
    if !inflight.wait_idle(CANCEL_GRACE).await {
        eprintln!(
            "clem serve: {} request(s) still running {} s after being cancelled; stopping anyway",
            inflight.count(),
            CANCEL_GRACE.as_secs()
        );
    }
}

/// Raises this process's soft limit on open files to its hard limit, so that the connection cap (not the
/// descriptor limit, often 1024) is what limits connections; returns the soft limit now in force.
#[cfg(unix)]
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit only reads the struct it is given. Refused (e.g. macOS's unlimited hard limit)
        // leaves the old limit, which is then reported.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    // rlim_t is u64 on Linux but not on every Unix.
    #[allow(clippy::unnecessary_cast)]
    Ok(limit.rlim_cur as u64)
}

/// Elsewhere descriptors are not limited this way.
#[cfg(not(unix))]
pub fn raise_fd_limit() -> std::io::Result<u64> {
    Ok(u64::MAX)
}
