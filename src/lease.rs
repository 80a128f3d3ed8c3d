//! The pass lock holder's lease: how long it may go on calling the MBG without having heard
//! from its lock, and from when it may start.
//!
//! Losing a PostgreSQL lock is noticed by a liveness check of its connection, which can be late:
//! the check waits for its own timeout on a half-open connection, and a frozen process checks
//! nothing at all. Meanwhile another instance may already lead. So the MBG client asks the lease
//! before every attempt, a local check with no database round trip: past its deadline the holder
//! sends nothing more. The new holder in turn waits out the old one's lease and request timeout
//! before its first call ([`Lease::new`]'s `quiet_until`), so no two holders' calls overlap.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Never lapses: a lock that cannot be lost while the process lives (a SQLite lock file).
const NEVER: u64 = u64::MAX;

#[derive(Debug, Clone)]
pub struct Lease(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    origin: Instant,
    /// `None`: the lease never lapses.
    length: Option<Duration>,
    /// Milliseconds after `origin`.
    quiet_until: u64,
    deadline: AtomicU64,
}

/// Why no call may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "this instance's lease lapsed (its lock was not confirmed for {} ms): another instance may lead, so it sends nothing more",
    .0.as_millis()
)]
pub struct Lapsed(pub Duration);

impl Lease {
    /// A lease taken now, lasting `length` (`None`: for ever) until extended, whose first call
    /// waits until `quiet_until`.
    pub(crate) fn new(length: Option<Duration>, quiet_until: Instant) -> Lease {
        let origin = Instant::now();
        let quiet_until = millis(quiet_until.saturating_duration_since(origin));
        let deadline = length.map_or(NEVER, millis);
        Lease(Arc::new(Inner {
            origin,
            length,
            quiet_until,
            deadline: AtomicU64::new(deadline),
        }))
    }

    /// The lock answered a check that started at `checked_at`: the lease runs from there.
    pub(crate) fn extend_from(&self, checked_at: Instant) {
        if let Some(length) = self.0.length {
            let deadline = millis(checked_at.saturating_duration_since(self.0.origin) + length);
            self.0.deadline.fetch_max(deadline, Ordering::AcqRel);
        }
    }

    pub(crate) fn lapsed(&self) -> Option<Lapsed> {
        let deadline = self.0.deadline.load(Ordering::Acquire);
        let now = millis(self.0.origin.elapsed());
        (deadline != NEVER && now > deadline)
            .then(|| Lapsed(Duration::from_millis(now - deadline + self.0.length_ms())))
    }

    /// Before each MBG request: waits out the previous holder's calls, then refuses once the
    /// lease has lapsed.
    pub(crate) async fn permit(&self) -> Result<(), Lapsed> {
        let quiet_until = self.0.origin + Duration::from_millis(self.0.quiet_until);
        if Instant::now() < quiet_until {
            tokio::time::sleep_until(quiet_until.into()).await;
        }
        match self.lapsed() {
            Some(lapsed) => Err(lapsed),
            None => Ok(()),
        }
    }
}

impl Inner {
    fn length_ms(&self) -> u64 {
        self.length.map_or(0, millis)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(NEVER - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lease_lapses_unless_extended_and_waits_out_the_quiet_time() {
        let lease = Lease::new(Some(Duration::from_millis(100)), Instant::now());
        assert!(lease.permit().await.is_ok());
        std::thread::sleep(Duration::from_millis(60));
        lease.extend_from(Instant::now());
        std::thread::sleep(Duration::from_millis(60));
        assert!(lease.permit().await.is_ok(), "extended from the check");
        std::thread::sleep(Duration::from_millis(120));
        let lapsed = lease.permit().await.unwrap_err();
        assert!(lapsed.0 >= Duration::from_millis(100), "{lapsed}");

        let quiet = Instant::now() + Duration::from_millis(150);
        let lease = Lease::new(Some(Duration::from_secs(5)), quiet);
        let started = Instant::now();
        lease.permit().await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(140));

        let forever = Lease::new(None, Instant::now());
        std::thread::sleep(Duration::from_millis(5));
        assert!(forever.lapsed().is_none());
    }
}
