//! Time for what follows a schedule: "now" as epoch seconds (UTC), the monotonic instant the
//! daemon's timers are set against, and the waits themselves. A daemon is handed one [`Clock`]
//! in its [`App`](crate::app::App), which its console shares (token states, the next renewal);
//! tests hand it a manual one and move it, so that "nothing happens in twenty minutes" is
//! checked in milliseconds, at every step the test moves it by.
//!
//! Not on this clock, on purpose: times that another process or a human compares with its own
//! wall clock (the lease and the create horizon other instances fence on, `/healthz`'s ages,
//! audit and session times, console lock-outs, OAuth timestamps the MBG checks). Moving those in a test would prove nothing
//! about the real fences.
//!
//! A manual clock does not pause tokio: the database, the simulator and the MBG calls run in
//! real time (sqlx's SQLite thread could not be paused anyway). Only the waits that go through
//! this clock stand still until [`Clock::advance`] moves them on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::Instant;

/// The system's clock (the default), or a manual one that moves only when told.
#[derive(Debug, Clone, Default)]
pub struct Clock(Option<Arc<Manual>>);

#[derive(Debug)]
struct Manual {
    start_utc: DateTime<Utc>,
    start: Instant,
    /// How far the clock has been moved since `start`.
    moved: watch::Sender<Duration>,
    /// The deadlines of the waits parked on this clock, by wait.
    parked: Mutex<Vec<(u64, Instant)>>,
    next_wait: AtomicU64,
}

impl Clock {
    pub fn system() -> Clock {
        Clock(None)
    }

    /// A clock that starts at the present moment and stands still until [`Clock::advance`].
    pub fn manual() -> Clock {
        Clock(Some(Arc::new(Manual {
            start_utc: Utc::now(),
            start: Instant::now(),
            moved: watch::Sender::new(Duration::ZERO),
            parked: Mutex::new(Vec::new()),
            next_wait: AtomicU64::new(0),
        })))
    }

    /// Epoch seconds: what the tool stores and compares.
    pub fn now(&self) -> i64 {
        self.utc().timestamp()
    }

    pub fn utc(&self) -> DateTime<Utc> {
        match &self.0 {
            None => Utc::now(),
            Some(manual) => manual.start_utc + manual.elapsed(),
        }
    }

    /// The instant timers are set against.
    pub fn instant(&self) -> Instant {
        match &self.0 {
            None => Instant::now(),
            Some(manual) => manual.start + manual.elapsed(),
        }
    }

    /// A deadline of the real world (a lease, a create that may still land) on this clock's
    /// timeline: as far ahead of [`Clock::instant`] as it is ahead of the real present.
    pub(crate) fn instant_of_real(&self, at: std::time::Instant) -> Instant {
        self.instant() + at.saturating_duration_since(std::time::Instant::now())
    }

    pub async fn sleep(&self, wait: Duration) {
        self.sleep_until(self.instant() + wait).await;
    }

    pub async fn sleep_until(&self, deadline: Instant) {
        match &self.0 {
            None => tokio::time::sleep_until(deadline).await,
            Some(manual) => manual.sleep_until(deadline).await,
        }
    }

    /// Moves a manual clock on, waking the waits that fall due.
    ///
    /// # Panics
    /// On the system clock, which nobody moves.
    pub fn advance(&self, by: Duration) {
        self.as_manual().moved.send_modify(|moved| *moved += by);
    }

    /// Waits (in real time, at most `limit`) until whatever waits on this manual clock has
    /// done what the last [`Clock::advance`] woke it for: something is parked on the clock
    /// again, and nothing parked is due. Meant for one waiter, the leader's loop, which waits
    /// on one timer at a time: with a second waiter parked, the first may still be busy. Wakes
    /// that do not come from the clock (a PostgreSQL notification, a signal) are not seen.
    ///
    /// # Panics
    /// On the system clock, or when `limit` passes first (naming what is parked).
    pub async fn settled(&self, limit: Duration) {
        let manual = self.as_manual();
        let started = std::time::Instant::now();
        loop {
            let (parked, due) = manual.parked_and_due();
            if parked > 0 && due == 0 {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "the clock's waits did not settle within {limit:?}: {parked} parked, {due} of them due"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn as_manual(&self) -> &Manual {
        self.0
            .as_deref()
            .expect("only a manual clock is moved or settled")
    }
}

impl Manual {
    fn elapsed(&self) -> Duration {
        *self.moved.borrow()
    }

    fn parked_and_due(&self) -> (usize, usize) {
        let now = self.start + self.elapsed();
        let parked = self
            .parked
            .lock()
            .expect("the parked list is never poisoned");
        let due = parked.iter().filter(|(_, at)| *at <= now).count();
        (parked.len(), due)
    }

    async fn sleep_until(&self, deadline: Instant) {
        let mut moved = self.moved.subscribe();
        if self.start + *moved.borrow_and_update() >= deadline {
            return;
        }
        let _parked = Parked::new(self, deadline);
        loop {
            // The sender lives as long as `self`: `changed` cannot fail while we borrow it.
            if moved.changed().await.is_err() || self.start + *moved.borrow_and_update() >= deadline
            {
                return;
            }
        }
    }
}

/// A wait listed as parked on a manual clock for as long as it lives (until it ends, or the
/// `select!` that held it drops it).
struct Parked<'a> {
    clock: &'a Manual,
    id: u64,
}

impl<'a> Parked<'a> {
    fn new(clock: &'a Manual, deadline: Instant) -> Parked<'a> {
        let id = clock.next_wait.fetch_add(1, Ordering::Relaxed);
        clock
            .parked
            .lock()
            .expect("the parked list is never poisoned")
            .push((id, deadline));
        Parked { clock, id }
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        if let Ok(mut parked) = self.clock.parked.lock() {
            parked.retain(|(id, _)| *id != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_wakes_a_wait_when_moved_past_its_deadline_and_not_before() {
        let clock = Clock::manual();
        let (epoch, instant) = (clock.now(), clock.instant());
        let waiting = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.sleep(Duration::from_secs(60)).await })
        };
        clock.settled(Duration::from_secs(5)).await;
        // Real time passes; the clock does not.
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(clock.instant(), instant);
        clock.advance(Duration::from_secs(59));
        clock.settled(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished(), "woken a second early");
        clock.advance(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken at its deadline")
            .unwrap();
        assert_eq!(clock.now(), epoch + 60);
        assert_eq!(clock.instant(), instant + Duration::from_secs(60));
    }

    #[tokio::test]
    async fn a_dropped_wait_is_no_longer_parked_and_a_past_deadline_does_not_park() {
        let clock = Clock::manual();
        clock.sleep_until(clock.instant()).await;
        let (parked, _) = clock.as_manual().parked_and_due();
        assert_eq!(parked, 0);
        tokio::select! {
            () = clock.sleep(Duration::from_secs(1)) => unreachable!("the clock stands still"),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        assert_eq!(clock.as_manual().parked_and_due(), (0, 0));
    }

    #[tokio::test]
    #[should_panic(expected = "did not settle")]
    async fn settling_with_nothing_parked_fails_naming_it() {
        Clock::manual().settled(Duration::from_millis(50)).await;
    }

    #[test]
    fn a_real_deadline_keeps_its_distance_on_a_manual_clock() {
        let clock = Clock::manual();
        clock.advance(Duration::from_secs(3_600));
        let at = clock.instant_of_real(std::time::Instant::now() + Duration::from_secs(10));
        let ahead = at - clock.instant();
        assert!(ahead <= Duration::from_secs(10) && ahead > Duration::from_secs(9));
    }
}
