//! A shutdown request that work can check before starting something new and wait on while idle.
//! SIGINT/SIGTERM trigger it; calls already in flight are let finish (each is bounded by
//! `mbg.timeout`) and recorded, so a stop never loses an outcome the MBG already has.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use tokio::sync::Notify;

#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// 0 while running; else the signal number that asked to stop.
    signal: AtomicI32,
    notify: Notify,
}

/// SIGINT and SIGTERM, by their numbers (exit codes are 128 + the number).
pub const SIGINT: i32 = 2;
pub const SIGTERM: i32 = 15;

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks everything holding a clone to stop; `signal` is remembered for the exit code.
    pub fn trigger(&self, signal: i32) {
        let _ =
            self.0
                .signal
                .compare_exchange(0, signal.max(1), Ordering::SeqCst, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    /// The signal that asked to stop, if one did.
    pub fn signal(&self) -> Option<i32> {
        Some(self.0.signal.load(Ordering::SeqCst)).filter(|s| *s != 0)
    }

    pub fn is_triggered(&self) -> bool {
        self.signal().is_some()
    }

    /// Returns once a stop is asked (at once if it already was).
    pub async fn triggered(&self) {
        loop {
            // Created before the check, so a trigger in between still wakes it.
            let notified = self.0.notify.notified();
            if self.is_triggered() {
                return;
            }
            notified.await;
        }
    }

    /// Triggers on SIGINT or SIGTERM from now on.
    pub fn on_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        for (kind, number) in [
            (SignalKind::interrupt(), SIGINT),
            (SignalKind::terminate(), SIGTERM),
        ] {
            let mut stream = signal(kind)?;
            let shutdown = self.clone();
            tokio::spawn(async move {
                if stream.recv().await.is_some() {
                    shutdown.trigger(number);
                }
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_trigger_wakes_waiters_and_keeps_the_first_signal() {
        let shutdown = Shutdown::new();
        let waiter = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.triggered().await }
        });
        tokio::task::yield_now().await;
        assert!(!shutdown.is_triggered());
        shutdown.trigger(SIGTERM);
        shutdown.trigger(SIGINT);
        waiter.await.unwrap();
        assert_eq!(shutdown.signal(), Some(SIGTERM));
        shutdown.triggered().await; // already triggered: returns at once
    }
}
