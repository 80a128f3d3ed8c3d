//! Reconcile: make the MBG hold what the database says. [`plan`] decides (pure), [`apply`] acts,
//! [`run_pass`] ties them to the database and the MBG.

pub mod apply;
pub mod plan;

use std::collections::HashMap;

use tracing::info;

use crate::config::Config;
use crate::credentials;
use crate::mbg::{MbgClient, MbgError};
use crate::store::{Extension, Store, StoreError};
pub use apply::{ApplyOptions, ApplyReport, Outcome, Status};
pub use plan::{Action, Plan, Problem};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plan only: no database write, no MBG write (credentials are drawn in memory, not stored).
    DryRun,
    Apply,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("cannot read the MBG's state: {0}")]
    Mbg(#[from] MbgError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Default)]
pub struct PassReport {
    pub plan: Plan,
    pub applied: Option<ApplyReport>,
    /// Extensions by id, as planned (for printing node names and such).
    pub extensions: HashMap<i64, Extension>,
}

impl PassReport {
    pub fn needs_attention(&self) -> bool {
        match &self.applied {
            Some(report) => report
                .outcomes
                .iter()
                .any(|o| o.status == Status::NeedsAttention),
            None => self.plan.problems().next().is_some(),
        }
    }

    /// Everything applied worked, or there was nothing to apply.
    pub fn succeeded(&self) -> bool {
        self.applied.as_ref().is_none_or(|report| {
            report.token_refused.is_none()
                && report
                    .outcomes
                    .iter()
                    .all(|o| matches!(o.status, Status::Done | Status::NeedsAttention))
        })
    }
}

/// One full reconcile: credentials first (committed before any MBG call), then the MBG's state,
/// the plan, and in [`Mode::Apply`] its execution. Changes recorded before the pass are
/// acknowledged after it, because a full pass covers them.
pub async fn run_pass(
    store: &Store,
    client: &MbgClient,
    config: &Config,
    mode: Mode,
    now: i64,
) -> Result<PassReport, ReconcileError> {
    let new_credentials = || {
        (
            credentials::random_auth_name(config.credentials.name_length),
            credentials::random_password(config.credentials.password_length),
        )
    };
    if mode == Mode::Apply {
        for extension in store
            .extensions()
            .await?
            .iter()
            .filter(|e| needs_credentials(e))
        {
            let (name, password) = new_credentials();
            store
                .fill_remote_credentials(extension.id, &name, &password)
                .await?;
            info!(extension = %extension.number, "remote credentials generated and stored");
        }
    }
    // Read after our own credential writes and before the extensions: every change recorded
    // so far is then reflected in what this pass plans, and can be acknowledged after it.
    let covered_changes = match mode {
        Mode::Apply => store.pending_changes(u32::MAX).await?,
        Mode::DryRun => Vec::new(),
    };
    let mut extensions = store.extensions().await?;
    if mode == Mode::DryRun {
        for extension in extensions.iter_mut().filter(|e| needs_credentials(e)) {
            let (name, password) = new_credentials();
            extension.remote_auth_name.get_or_insert(name);
            extension.remote_auth_password.get_or_insert(password);
        }
    }
    let released = store.released_devices().await?;
    let icps = client.icps().await?;
    let devices = client.devices().await?;
    let plan = plan::plan(
        &extensions,
        &released,
        &icps,
        &devices,
        config.mbg.teleworker_licences,
    );
    let by_id: HashMap<i64, Extension> = extensions.into_iter().map(|e| (e.id, e)).collect();
    let mut report = PassReport {
        plan,
        applied: None,
        extensions: by_id,
    };
    if mode == Mode::DryRun {
        return Ok(report);
    }

    for settled in &report.plan.settled {
        let Some(extension) = report.extensions.get(&settled.extension_id) else {
            continue;
        };
        if extension.state != settled.state || extension.last_error.is_some() {
            store
                .set_state(
                    settled.extension_id,
                    &crate::store::StateUpdate {
                        state: settled.state,
                        last_error: None,
                        attempts: 0,
                        next_attempt_at: None,
                    },
                )
                .await?;
        }
    }
    let options = ApplyOptions {
        max_in_flight: config.mbg.max_in_flight,
        max_retry_after: config.mbg.max_retry_after,
        now,
    };
    let applied = apply::apply(store, client, &report.plan, &options).await?;
    if applied.token_refused.is_none() {
        let seqs: Vec<i64> = covered_changes.iter().map(|c| c.seq).collect();
        store.acknowledge_changes(&seqs).await?;
    }
    report.applied = Some(applied);
    Ok(report)
}

fn needs_credentials(extension: &Extension) -> bool {
    extension.use_remote_auth
        && (extension.remote_auth_name.is_none() || extension.remote_auth_password.is_none())
}
