//! The work the server has running: each request's cancellation flag, registered for as long as its generation
//! runs (queued in a batcher, on the blocking pool, or fetching images), so that shutdown can cancel all of it
//! and then wait until it has really stopped (nothing may reach a provider after "stopped").

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clem_core::Cancel;
use tokio::sync::OwnedSemaphorePermit;

/// Every running request's flag; shared by the handlers and the accept loop.
#[derive(Default)]
pub struct Inflight {
    next: AtomicU64,
    running: Mutex<HashMap<u64, Cancel>>,
    stopping: AtomicBool,
}

/// One request's registration, moved into its work (the blocking task or the batcher's job): dropped when the
/// work ends, not when the client goes, so shutdown waits for the backend to return. It also holds the
/// request's concurrency slot, which therefore bounds the work itself.
pub struct Work {
    id: u64,
    inflight: Arc<Inflight>,
    _slot: OwnedSemaphorePermit,
}

impl Inflight {
    fn running(&self) -> MutexGuard<'_, HashMap<u64, Cancel>> {
        // A panic while the map was held leaves it consistent (inserts and removes are single calls).
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `cancel`; once the server is stopping, the flag is set at once.
    pub fn register(self: &Arc<Self>, cancel: &Cancel, slot: OwnedSemaphorePermit) -> Work {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.running().insert(id, cancel.clone());
        // Checked after inserting: a concurrent `cancel_all` either sees the entry or we see its flag.
        if self.stopping.load(Ordering::Acquire) {
            cancel.cancel();
        }
        Work { id, inflight: self.clone(), _slot: slot }
    }

    /// Cancels every running request and every one registered from now on.
    pub fn cancel_all(&self) {
        self.stopping.store(true, Ordering::Release);
        for cancel in self.running().values() {
            cancel.cancel();
        }
    }

    pub fn count(&self) -> usize {
        self.running().len()
    }

    /// Waits until no work is registered, at most `limit`; true when none is left.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.count() == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        self.inflight.running().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;

    #[test]
    fn cancel_all_reaches_running_and_later_work() {
        let slots = Arc::new(Semaphore::new(4));
        let inflight = Arc::new(Inflight::default());
        let (a, b) = (Cancel::new(), Cancel::new());
        let work = inflight.register(&a, slots.clone().try_acquire_owned().expect("slot"));
        assert_eq!((inflight.count(), slots.available_permits()), (1, 3));
        inflight.cancel_all();
        assert!(a.is_cancelled());
        let later = inflight.register(&b, slots.clone().try_acquire_owned().expect("slot"));
        assert!(b.is_cancelled());
        drop((work, later));
        assert_eq!((inflight.count(), slots.available_permits()), (0, 4));
    }
}
