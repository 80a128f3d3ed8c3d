//! The daemon's health as `/healthz` reports it. The daemon writes it as things happen; the
//! HTTP side only reads a snapshot, so a slow scrape never holds up the work.

use std::sync::{Arc, RwLock};

use serde::Serialize;

/// What this instance is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    Starting,
    /// Holds the leader lock and does the work.
    Leader,
    /// Another instance leads; this one waits to take over. Healthy.
    Standby,
    Stopping,
}

/// How something the daemon depends on answered last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Reachability {
    pub ok: bool,
    /// Why not, in words; never a secret.
    pub error: Option<String>,
    /// When it was last checked (epoch seconds).
    pub checked_at: Option<i64>,
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
    pub role: Role,
    pub token: TokenHealth,
    pub database: Reachability,
    pub mbg: Reachability,
    /// Extensions with a change not yet applied, plus those waiting for a retry.
    pub queue_depth: usize,
    /// When the last full reconcile finished without error (epoch seconds).
    pub last_full_reconcile: Option<i64>,
    /// Reasons the service cannot do its job: `/healthz` answers 503.
    pub unhealthy: Vec<String>,
    /// Reasons a human should look soon, while the work goes on (200).
    pub degraded: Vec<String>,
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        self.unhealthy.is_empty()
    }

    /// One word for dashboards and alerts, from the two reason lists.
    pub fn status(&self) -> HealthStatus {
        if !self.unhealthy.is_empty() {
            HealthStatus::Unhealthy
        } else if !self.degraded.is_empty() {
            HealthStatus::Degraded
        } else {
            HealthStatus::Ok
        }
    }
}

/// The summary `/healthz` puts first: `ok` and `degraded` answer 200, `unhealthy` 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
    Degraded,
    Unhealthy,
}

/// Shared between the daemon (writer) and the HTTP endpoints (readers).
#[derive(Debug, Clone, Default)]
pub struct HealthState(Arc<RwLock<Health>>);

impl HealthState {
    pub fn snapshot(&self) -> Health {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn update(&self, change: impl FnOnce(&mut Health)) {
        change(&mut self.0.write().unwrap_or_else(|e| e.into_inner()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_reason_lists() {
        let state = HealthState::default();
        assert_eq!(state.snapshot().status(), HealthStatus::Ok);
        state.update(|h| h.degraded.push("token renewal needs a human".into()));
        assert_eq!(state.snapshot().status(), HealthStatus::Degraded);
        assert!(state.snapshot().is_healthy());
        state.update(|h| h.unhealthy.push("token rejected".into()));
        assert_eq!(state.snapshot().status(), HealthStatus::Unhealthy);
        assert!(!state.snapshot().is_healthy());
    }
}
