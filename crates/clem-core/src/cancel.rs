//! Cancellation of one generation request. Whoever waits for the reply (a server whose client went away, a
//! Python caller interrupted by Ctrl-C) sets it; backends check it while a request is in flight (remote: the
//! request is aborted) and between decoding steps (local: the sequence leaves the batch).
//!
//! Async code can also wait for it ([`Cancel::cancelled`]): setting the flag wakes the waiting tasks at once, so
//! a remote request is dropped the moment its caller leaves rather than when someone next looks at the flag. The
//! wakers are plain `std::task::Waker`s, so this needs no async runtime.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// A cancellation flag shared between the caller and the backend; clones share the flag.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    flag: AtomicBool,
    waiters: Mutex<Waiters>,
}

/// The tasks waiting in [`Cancel::cancelled`], each under the id of its future (removed when it is dropped).
#[derive(Debug, Default)]
struct Waiters {
    next: u64,
    wakers: Vec<(u64, Waker)>,
}

impl Cancel {
    /// A flag nobody has set yet.
    pub fn new() -> Self {
        Cancel::default()
    }

    pub fn cancel(&self) {
        self.0.flag.store(true, Ordering::Release);
        // Taken under the lock after the store: a waiter either registered before (and is woken here) or
        // checks the flag under the lock after us (and sees it).
        let wakers = std::mem::take(&mut self.waiters().wakers);
        for (_, waker) in wakers {
            waker.wake();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.flag.load(Ordering::Acquire)
    }

    /// A future that completes once the flag is set (at once if it is already).
    pub fn cancelled(&self) -> Cancelled {
        Cancelled { cancel: self.clone(), id: None }
    }

    /// A guard that cancels when dropped: held by a request handler, it cancels the work when the handler's
    /// future is dropped because its client disconnected. [`CancelOnDrop::disarm`] keeps it from firing.
    pub fn on_drop(&self) -> CancelOnDrop {
        CancelOnDrop { cancel: Some(self.clone()) }
    }

    /// Row `i`'s flag from a batch's flags; a row without one is never cancelled.
    pub fn of(cancels: &[Cancel], i: usize) -> Cancel {
        cancels.get(i).cloned().unwrap_or_default()
    }

    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        // The list stays consistent whatever panicked while holding the lock.
        self.0.waiters.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The future of [`Cancel::cancelled`].
#[derive(Debug)]
pub struct Cancelled {
    cancel: Cancel,
    /// Its place among the flag's waiters, once it has waited.
    id: Option<u64>,
}

impl Future for Cancelled {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.cancel.is_cancelled() {
            return Poll::Ready(());
        }
        let this = &mut *self;
        let mut waiters = this.cancel.waiters();
        if this.cancel.is_cancelled() {
            return Poll::Ready(());
        }
        match this.id.and_then(|id| waiters.wakers.iter_mut().find(|(i, _)| *i == id)) {
            Some((_, waker)) => {
                if !waker.will_wake(cx.waker()) {
                    *waker = cx.waker().clone();
                }
            }
            None => {
                let id = waiters.next;
                waiters.next += 1;
                waiters.wakers.push((id, cx.waker().clone()));
                this.id = Some(id);
            }
        }
        Poll::Pending
    }
}

impl Drop for Cancelled {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.cancel.waiters().wakers.retain(|(i, _)| *i != id);
        }
    }
}

/// Cancels its flag when dropped, unless disarmed.
#[derive(Debug)]
pub struct CancelOnDrop {
    cancel: Option<Cancel>,
}

impl CancelOnDrop {
    pub fn disarm(mut self) {
        self.cancel = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.cancel.take() {
            c.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    #[test]
    fn clones_share_the_flag_and_guards_fire_unless_disarmed() {
        let c = Cancel::new();
        let seen = c.clone();
        c.on_drop().disarm();
        assert!(!seen.is_cancelled());
        drop(c.on_drop());
        assert!(seen.is_cancelled());
        assert!(!Cancel::of(&[], 3).is_cancelled());
    }

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn cancelled_wakes_its_waiter_once_and_forgets_dropped_ones() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let c = Cancel::new();
        let mut waiting = Box::pin(c.cancelled());
        // Polled twice by the same task: registered once.
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        let mut gone = Box::pin(c.cancelled());
        assert!(gone.as_mut().poll(&mut cx).is_pending());
        assert_eq!(c.waiters().wakers.len(), 2);
        drop(gone);
        assert_eq!(c.waiters().wakers.len(), 1);
        c.clone().cancel();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(waiting.as_mut().poll(&mut cx).is_ready());
        assert!(Box::pin(c.cancelled()).as_mut().poll(&mut cx).is_ready());
        assert!(c.waiters().wakers.is_empty());
    }
}
