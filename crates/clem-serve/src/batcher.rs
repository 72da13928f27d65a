//! Dynamic batching for local models: one worker thread per model takes the requests that are waiting when it
//! becomes free (up to `max_batch`, after a short collection window), groups them by generation arguments, and
//! runs each group through one `generate_batch_response`, i.e. one forward pass. Each request keeps its own
//! cancellation flag: a cancelled request still queued is skipped, one in a running batch leaves it at the next
//! decoding step.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clem_core::{Cancel, GenArgs, Generation, LoadedModel, Message, ModelError};
use tokio::sync::oneshot;

use crate::inflight::Work;

/// The reply to one request.
pub type Reply = Result<Generation, ModelError>;

/// One request waiting for the worker.
pub struct Job {
    pub messages: Vec<Message>,
    pub args: GenArgs,
    pub cancel: Cancel,
    pub reply: oneshot::Sender<Reply>,
    /// The request's registration, held until the job is answered.
    pub work: Work,
}

impl Job {
    /// Sends the reply (if anyone still waits), then ends the request's registration.
    fn answer(self, reply: Reply) {
        let _ = self.reply.send(reply);
        drop(self.work);
    }
}

/// Counters shown on `/health`, so batching can be observed from outside.
#[derive(Default)]
pub struct Stats {
    pub batches: AtomicU64,
    pub requests: AtomicU64,
    pub largest: AtomicU64,
}

impl Stats {
    fn record(&self, size: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(size as u64, Ordering::Relaxed);
        self.largest.fetch_max(size as u64, Ordering::Relaxed);
    }
}

/// The sending side; dropping it ends the worker once its queue is empty.
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    pub stats: Arc<Stats>,
}

impl Batcher {
    pub fn start(model: Arc<LoadedModel>, max_batch: usize, window: Duration) -> std::io::Result<Batcher> {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let worker_stats = stats.clone();
        std::thread::Builder::new()
            .name(format!("clem-batch-{}", model.name()))
            .spawn(move || work(&model, &rx, max_batch.max(1), window, &worker_stats))?;
        Ok(Batcher { tx, stats })
    }

    /// Queues a request; `None` when the worker is gone.
    pub fn submit(&self, job: Job) -> Option<()> {
        self.tx.send(job).ok()
    }
}

/// Generation arguments as a grouping key (they hold floats and JSON, so no `Eq`/`Hash`).
fn key(args: &GenArgs) -> String {
    serde_json::to_string(args).unwrap_or_default()
}

fn work(model: &LoadedModel, rx: &mpsc::Receiver<Job>, max_batch: usize, window: Duration, stats: &Stats) {
    let mut pending: VecDeque<Job> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match rx.recv() {
                Ok(job) => pending.push_back(job),
                Err(_) => return,
            }
            // Requests sent together reach the queue a moment apart: wait briefly for the rest of them.
            let deadline = Instant::now() + window;
            while pending.len() < max_batch {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(job) => pending.push_back(job),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        while let Ok(job) = rx.try_recv() {
            pending.push_back(job);
        }
        // A client that went away (or a request cancelled by shutdown) does not need its reply computed.
        let (skipped, kept): (VecDeque<Job>, VecDeque<Job>) =
            pending.drain(..).partition(|j| j.cancel.is_cancelled() || j.reply.is_closed());
        pending = kept;
        for job in skipped {
            job.answer(Err(ModelError::cancelled(model.name())));
        }
        let Some(first) = pending.front() else { continue };
        let group = key(&first.args);
        let mut batch = Vec::new();
        let mut rest = VecDeque::with_capacity(pending.len());
        for job in pending.drain(..) {
            if batch.len() < max_batch && key(&job.args) == group {
                batch.push(job);
            } else {
                rest.push_back(job);
            }
        }
        pending = rest;
        run_batch(model, batch, stats);
    }
}

fn run_batch(model: &LoadedModel, mut batch: Vec<Job>, stats: &Stats) {
    let Some(args) = batch.first().map(|j| j.args.clone()) else { return };
    let lists: Vec<Vec<Message>> = batch.iter_mut().map(|j| std::mem::take(&mut j.messages)).collect();
    let cancels: Vec<Cancel> = batch.iter().map(|j| j.cancel.clone()).collect();
    // A panicking backend must not take the worker (and every later request) with it.
    let results = catch_unwind(AssertUnwindSafe(|| {
        if lists.len() == 1 {
            vec![model.generate_response_cancellable(&lists[0], &args, &cancels[0])]
        } else {
            model.generate_batch_response_cancellable(&lists, &args, &cancels)
        }
    }));
    stats.record(batch.len());
    match results {
        Ok(results) => {
            let mut results = results.into_iter();
            for job in batch {
                let reply = results
                    .next()
                    .unwrap_or_else(|| Err(ModelError::backend(model.name(), "the batch returned too few results")));
                job.answer(reply);
            }
        }
        Err(_) => {
            for job in batch {
                job.answer(Err(ModelError::backend(model.name(), "the backend panicked")));
            }
        }
    }
}
