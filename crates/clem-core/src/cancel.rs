//! Cancellation of one generation request. Whoever waits for the reply (a server whose client went away, a
//! Python caller interrupted by Ctrl-C) sets it; backends check it while a request is in flight (remote: the
//! request is aborted) and between decoding steps (local: the sequence leaves the batch).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A cancellation flag shared between the caller and the backend; clones share the flag.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A flag nobody has set yet.
    pub fn new() -> Self {
        Cancel::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
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
}
