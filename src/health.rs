//! The daemon's health as `/healthz` reports it. The daemon writes it as things happen; the
//! HTTP side only reads a snapshot, so a slow scrape never holds up the work.
//!
//! What is wrong is kept as one reason per [`Concern`], set and cleared by whoever watches that
//! concern, never as free text matched by prefix. The two dependencies (the MBG, the database)
//! are judged at read time: failing for less than `health.grace` is degraded, longer is
//! unhealthy, so one refused connection does not page anyone and a dead one always does.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;

/// What a standby shows for what only the leader checks.
pub(crate) const NOT_CHECKED: &str = "standby: not checked";

/// What this instance is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    Starting,
    /// Holds the leader lock and does the work.
    Leader,
    /// Does not lead: another instance does, or this one is trying to take the lock (the
    /// database says which). Healthy unless the database fails.
    Standby,
    Stopping,
}

/// One thing that can be wrong, each with at most one reason at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Concern {
    /// The access token cannot be used (none, expired, refused).
    Token,
    /// The token is usable but expires soon.
    TokenExpiry,
    /// The renewal job needs a human (this MBG does not renew through the API).
    TokenRenewal,
    /// Keys changed in the file that only a restart applies.
    RestartPending,
    /// Extension rows changed without the change log (see `daemon::rows`).
    UnloggedChanges,
}

impl Concern {
    fn label(self) -> &'static str {
        match self {
            Concern::Token => "token",
            Concern::TokenExpiry => "token expiry",
            Concern::TokenRenewal => "token renewal",
            Concern::RestartPending => "configuration",
            Concern::UnloggedChanges => "change log",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// A human should look soon; the work goes on (200).
    Degraded,
    /// The service cannot do its job (503).
    Unhealthy,
}

/// How something the daemon depends on answered last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Reachability {
    pub ok: bool,
    /// Why not, in words; never a secret.
    pub error: Option<String>,
    /// When it was last checked (epoch seconds).
    pub checked_at: Option<i64>,
    /// Since when it has failed without a success in between (epoch seconds).
    pub failing_since: Option<i64>,
}

impl Reachability {
    pub(crate) fn succeeded(&mut self, now: i64) {
        *self = Reachability {
            ok: true,
            error: None,
            checked_at: Some(now),
            failing_since: None,
        };
    }

    pub(crate) fn failed(&mut self, now: i64, why: impl Into<String>) {
        self.ok = false;
        self.error = Some(why.into());
        self.checked_at = Some(now);
        self.failing_since.get_or_insert(now);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct TokenHealth {
    /// `none`, `pending`, `valid`, `valid_past_stored_expiry`, `rejected`, ...
    pub state: String,
    pub days_left: Option<i64>,
    /// Why the token needs a human, if it does.
    pub problem: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Health {
    /// The random name of the database this daemon works on (`Store::database_id`), for
    /// `preflight` to tell whether the daemon it reaches is this installation's.
    pub database_id: Option<String>,
    pub role: Role,
    pub token: TokenHealth,
    pub database: Reachability,
    pub mbg: Reachability,
    /// Extensions with a change not yet applied, plus those waiting for a retry.
    pub queue_depth: usize,
    /// When the last full reconcile finished without error (epoch seconds).
    pub last_full_reconcile: Option<i64>,
    /// Reasons the service cannot do its job: `/healthz` answers 503. Filled by
    /// [`HealthState::snapshot`] from the concerns set and the dependencies' failures.
    unhealthy: Vec<String>,
    /// Reasons a human should look soon, while the work goes on (200).
    degraded: Vec<String>,
    #[serde(skip)]
    reasons: BTreeMap<Concern, (Severity, String)>,
}

impl Health {
    pub fn unhealthy(&self) -> &[String] {
        &self.unhealthy
    }

    pub fn degraded(&self) -> &[String] {
        &self.degraded
    }

    pub fn is_healthy(&self) -> bool {
        self.unhealthy.is_empty()
    }

    /// One word for dashboards and alerts, from the two reason lists.
    pub(crate) fn status(&self) -> HealthStatus {
        if !self.unhealthy.is_empty() {
            HealthStatus::Unhealthy
        } else if !self.degraded.is_empty() {
            HealthStatus::Degraded
        } else {
            HealthStatus::Ok
        }
    }

    /// Sets (replaces) the reason for `concern`.
    pub fn set(&mut self, concern: Concern, severity: Severity, why: impl Into<String>) {
        self.reasons.insert(concern, (severity, why.into()));
    }

    pub fn clear(&mut self, concern: Concern) {
        self.reasons.remove(&concern);
    }

    /// The reason lists as of `now`: the set reasons, and each dependency failing for longer
    /// than `grace` (unhealthy) or less (degraded).
    fn judged(mut self, now: i64, grace: Duration) -> Health {
        // A standby checks neither the token nor the MBG: say so rather than show blanks.
        if self.role == Role::Standby {
            if self.token.state.is_empty() {
                self.token.state = NOT_CHECKED.into();
            }
            if self.mbg.checked_at.is_none() {
                self.mbg.error = Some(NOT_CHECKED.into());
            }
        }
        let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        for (label, dependency) in [("database", &self.database), ("MBG", &self.mbg)] {
            let Some(since) = dependency.failing_since else {
                continue;
            };
            let failing = now - since;
            let why = dependency.error.as_deref().unwrap_or("not answering");
            let line = format!("{label}: {why} (failing for {failing} s)");
            if failing >= grace {
                self.unhealthy.push(line);
            } else {
                self.degraded.push(line);
            }
        }
        for (concern, (severity, why)) in &self.reasons {
            let line = format!("{}: {why}", concern.label());
            match severity {
                Severity::Unhealthy => self.unhealthy.push(line),
                Severity::Degraded => self.degraded.push(line),
            }
        }
        self
    }
}

/// The summary `/healthz` puts first: `ok` and `degraded` answer 200, `unhealthy` 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HealthStatus {
    Ok,
    Degraded,
    Unhealthy,
}

/// Shared between the daemon (writer) and the HTTP endpoints (readers).
#[derive(Debug, Clone)]
pub struct HealthState {
    health: Arc<RwLock<Health>>,
    grace: Arc<RwLock<Duration>>,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState::new(crate::config::HealthConfig::default().grace)
    }
}

impl HealthState {
    pub(crate) fn new(grace: Duration) -> HealthState {
        HealthState {
            health: Arc::default(),
            grace: Arc::new(RwLock::new(grace)),
        }
    }

    /// `health.grace` changed (a reload).
    pub(crate) fn set_grace(&self, grace: Duration) {
        *self.grace.write().unwrap_or_else(|e| e.into_inner()) = grace;
    }

    pub(crate) fn grace(&self) -> Duration {
        *self.grace.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The health as of now, with its reason lists.
    pub fn snapshot(&self) -> Health {
        let health = self
            .health
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        health.judged(chrono::Utc::now().timestamp(), self.grace())
    }

    pub fn update(&self, change: impl FnOnce(&mut Health)) {
        change(&mut self.health.write().unwrap_or_else(|e| e.into_inner()));
    }

    /// What one MBG request showed: answered (whatever it said), or not (no connection, a
    /// timeout, a 5xx). Called by the client for every attempt.
    pub(crate) fn mbg_answered(&self, answered: Result<(), &str>) {
        let now = chrono::Utc::now().timestamp();
        self.update(|h| match answered {
            Ok(()) => h.mbg.succeeded(now),
            Err(why) => h.mbg.failed(now, why),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_reasons() {
        let state = HealthState::new(Duration::from_secs(30));
        assert_eq!(state.snapshot().status(), HealthStatus::Ok);
        state.update(|h| {
            h.set(
                Concern::TokenRenewal,
                Severity::Degraded,
                "press Renew on the MBG",
            )
        });
        assert_eq!(state.snapshot().status(), HealthStatus::Degraded);
        assert!(state.snapshot().is_healthy());
        state.update(|h| h.set(Concern::Token, Severity::Unhealthy, "rejected"));
        assert_eq!(state.snapshot().status(), HealthStatus::Unhealthy);
        assert_eq!(state.snapshot().unhealthy(), ["token: rejected"]);
        // One reason per concern: setting it again replaces it.
        state.update(|h| h.set(Concern::Token, Severity::Unhealthy, "expired"));
        assert_eq!(state.snapshot().unhealthy(), ["token: expired"]);
        state.update(|h| h.clear(Concern::Token));
        assert!(state.snapshot().is_healthy());
    }

    #[test]
    fn a_standby_says_what_it_does_not_check() {
        let state = HealthState::new(Duration::from_secs(30));
        state.update(|h| h.role = Role::Standby);
        let health = state.snapshot();
        assert_eq!(health.token.state, NOT_CHECKED);
        assert_eq!(health.mbg.error.as_deref(), Some(NOT_CHECKED));
        assert_eq!(health.status(), HealthStatus::Ok, "not a failure");
    }

    #[test]
    fn a_dependency_is_degraded_within_the_grace_and_unhealthy_after_it() {
        let state = HealthState::new(Duration::from_secs(30));
        let now = chrono::Utc::now().timestamp();
        state.update(|h| h.database.failed(now - 5, "disk full"));
        let health = state.snapshot();
        assert_eq!(health.status(), HealthStatus::Degraded);
        assert!(
            health.degraded[0].starts_with("database: disk full"),
            "{health:?}"
        );
        // Failing again keeps the first failure's time.
        state.update(|h| h.database.failed(now, "disk full"));
        state.update(|h| h.database.failing_since = Some(now - 31));
        let health = state.snapshot();
        assert_eq!(health.status(), HealthStatus::Unhealthy);
        assert!(
            health.unhealthy[0].contains("failing for 31 s"),
            "{health:?}"
        );
        state.update(|h| h.database.succeeded(now));
        assert_eq!(state.snapshot().status(), HealthStatus::Ok);
        state.mbg_answered(Err("connection refused"));
        assert_eq!(state.snapshot().status(), HealthStatus::Degraded);
        assert!(!state.snapshot().mbg.ok);
        state.mbg_answered(Ok(()));
        assert_eq!(state.snapshot().status(), HealthStatus::Ok);
    }
}
