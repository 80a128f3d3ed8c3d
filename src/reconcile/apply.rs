//! Carries out a plan on the MBG, at most `mbg.max_in_flight` calls at a time, writing each
//! outcome to the extension's state and to the audit log.
//!
//! Write-ahead: credentials are committed before a pass plans anything (see `run_pass`), and a
//! created device's guid is committed right after the MBG answers. If the process dies between the
//! two, the next pass finds the device by number and ICP and adopts it: no duplicate, no orphan.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use rand::RngExt;
use tracing::{Instrument, info, warn};

use super::plan::{Action, Plan};
use crate::mbg::{MbgClient, MbgError, MbgErrorKind};
use crate::store::{AuditEntry, ExtensionState, StateUpdate, Store, StoreError};

/// First retry delay after a failure; doubled per attempt up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub max_in_flight: usize,
    /// A longer `Retry-After` is shortened to this.
    pub max_retry_after: Duration,
    pub now: i64,
}

/// How one action ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Done,
    /// Will be retried at `next_attempt_at`.
    Failed,
    /// A human must fix something first.
    NeedsAttention,
    /// Not attempted: the token was refused earlier in this pass.
    Skipped,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub number: String,
    pub verb: &'static str,
    pub status: Status,
    /// What happened, for humans: the guid, the MBG's message, the fix. Never a secret.
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct ApplyReport {
    pub outcomes: Vec<Outcome>,
    /// Set when the MBG answered 401: the token is gone and the pass stopped calling it.
    pub token_refused: Option<MbgError>,
}

/// Delay before the next attempt: `Retry-After` when the MBG gave one, else exponential
/// backoff with jitter so that many failed extensions do not all retry in the same second.
pub fn retry_delay(attempts: u32, retry_after: Option<Duration>, cap: Duration) -> Duration {
    if let Some(after) = retry_after {
        return after.min(cap);
    }
    let exponential = BASE_BACKOFF
        .saturating_mul(1 << attempts.min(16))
        .min(MAX_BACKOFF);
    exponential.mul_f64(rand::rng().random_range(0.5..=1.0))
}

pub async fn apply(
    store: &Store,
    client: &MbgClient,
    plan: &Plan,
    options: &ApplyOptions,
) -> Result<ApplyReport, StoreError> {
    let refused = AtomicBool::new(false);
    let first_refusal = std::sync::Mutex::new(None);
    let results: Vec<Result<Outcome, StoreError>> = futures_util::stream::iter(&plan.actions)
        .map(|action| {
            let span =
                tracing::info_span!("apply", extension = %action.number(), action = action.verb());
            let (refused, first_refusal) = (&refused, &first_refusal);
            async move {
                if action.is_change() && refused.load(Ordering::SeqCst) {
                    return Ok(outcome(
                        action,
                        Status::Skipped,
                        "the MBG refused the token".into(),
                    ));
                }
                let result = apply_one(store, client, action, options).await;
                if let Err(Refusal(error)) = &result {
                    refused.store(true, Ordering::SeqCst);
                    first_refusal.lock().unwrap().get_or_insert(error.clone());
                }
                match result {
                    Ok(done) => Ok(done),
                    Err(Refusal(error)) => Ok(outcome(action, Status::Skipped, error.to_string())),
                }
            }
            .instrument(span)
        })
        .buffer_unordered(options.max_in_flight.max(1))
        .collect()
        .await;
    let outcomes = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(ApplyReport {
        outcomes,
        token_refused: first_refusal.into_inner().unwrap(),
    })
}

/// A 401: the token is gone. Not an outcome of the action but of the whole pass.
struct Refusal(MbgError);

fn outcome(action: &Action, status: Status, detail: String) -> Outcome {
    Outcome {
        number: action.number().to_string(),
        verb: action.verb(),
        status,
        detail,
    }
}

async fn apply_one(
    store: &Store,
    client: &MbgClient,
    action: &Action,
    options: &ApplyOptions,
) -> Result<Outcome, Refusal> {
    let result = call(client, action).await;
    match record(store, action, result, options).await {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(refusal)) => Err(refusal),
        // The MBG call happened but its outcome could not be stored: say so loudly; the next
        // pass reads the MBG again and converges (a created device is adopted).
        Err(e) => {
            warn!(error = %e, "cannot record the outcome in the database");
            Ok(outcome(action, Status::Failed, format!("database: {e}")))
        }
    }
}

/// The MBG call of an action; `Ok(Some(guid))` for a created device.
async fn call(client: &MbgClient, action: &Action) -> Result<Option<String>, MbgError> {
    match action {
        Action::Create { number, device, .. } => match client.create_device(device).await {
            Ok(guid) => Ok(Some(guid)),
            // The POST may have reached the MBG before the connection failed: look before the
            // next attempt posts again, so there is never a duplicate.
            Err(e) if matches!(e.kind, MbgErrorKind::Unavailable(_)) => {
                let devices = client.devices().await.map_err(|_| e.clone())?;
                match devices.into_iter().find(|d| {
                    d.icpside_username == *number
                        && d.icp == device.icp
                        && d.setside_username == device.setside_username
                }) {
                    Some(found) => {
                        info!(guid = %found.guid, "the create went through before the connection failed");
                        Ok(Some(found.guid))
                    }
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        },
        Action::Update { guid, patch, .. } | Action::Adopt { guid, patch, .. } => {
            if !patch.is_empty() {
                client.update_device(guid, patch).await?;
            }
            Ok(None)
        }
        Action::Delete { guid, .. } => match client.delete_device(guid).await {
            Err(e) if e.kind == MbgErrorKind::NotFound => Ok(None),
            other => other.map(|_| None),
        },
        Action::Forget { .. } | Action::Report { .. } => Ok(None),
    }
}

async fn record(
    store: &Store,
    action: &Action,
    result: Result<Option<String>, MbgError>,
    options: &ApplyOptions,
) -> Result<Result<Outcome, Refusal>, StoreError> {
    let now = options.now;
    let settled = |state| StateUpdate {
        state,
        last_error: None,
        attempts: 0,
        next_attempt_at: None,
    };
    let error = match result {
        Ok(created) => {
            let detail = match action {
                Action::Create { extension_id, .. } => {
                    let guid = created.expect("a create returns its guid");
                    store
                        .record_device(*extension_id, Some(&guid), true)
                        .await?;
                    store
                        .set_state(*extension_id, &settled(ExtensionState::Provisioned))
                        .await?;
                    format!("created SIP user {guid}")
                }
                Action::Update {
                    extension_id,
                    guid,
                    changes,
                    ..
                } => {
                    store
                        .set_state(*extension_id, &settled(ExtensionState::Provisioned))
                        .await?;
                    format!("updated SIP user {guid}: {}", changes.join(", "))
                }
                Action::Adopt {
                    extension_id,
                    guid,
                    changes,
                    ..
                } => {
                    store.record_device(*extension_id, Some(guid), true).await?;
                    store
                        .set_state(*extension_id, &settled(ExtensionState::Provisioned))
                        .await?;
                    format!("adopted SIP user {guid}, overwrote: {}", changes.join(", "))
                }
                Action::Delete {
                    extension_id, guid, ..
                }
                | Action::Forget {
                    extension_id, guid, ..
                } => {
                    match extension_id {
                        Some(id) => {
                            store.record_device(*id, None, false).await?;
                            store.set_state(*id, &settled(ExtensionState::Idle)).await?;
                        }
                        None => store.forget_released_device(guid).await?,
                    }
                    match action {
                        Action::Delete { .. } => format!("deleted SIP user {guid}"),
                        _ => format!("SIP user {guid} was already gone from the MBG"),
                    }
                }
                Action::Report {
                    extension_id,
                    problem,
                    ..
                } => {
                    let needs = StateUpdate {
                        state: ExtensionState::NeedsAttention,
                        last_error: Some(problem.fix()),
                        attempts: 0,
                        next_attempt_at: None,
                    };
                    store.set_state(*extension_id, &needs).await?;
                    warn!(problem = %problem, "needs attention");
                    return Ok(Ok(outcome(action, Status::NeedsAttention, problem.fix())));
                }
            };
            audit(store, action, "ok", &detail, now).await?;
            info!("{detail}");
            return Ok(Ok(outcome(action, Status::Done, detail)));
        }
        Err(error) => error,
    };

    let detail = format!("extension {}: {error}", action.number());
    audit(store, action, "failed", &detail, now).await?;
    if let MbgErrorKind::Unauthorized(_) = error.kind {
        warn!(error = %error, "the MBG refused the token; no more calls this pass");
        return Ok(Err(Refusal(error)));
    }
    let Some(extension_id) = action.extension_id() else {
        warn!(error = %error, "cannot remove a released SIP user; retried next pass");
        return Ok(Ok(outcome(action, Status::Failed, detail)));
    };
    let (status, update) = match &error.kind {
        MbgErrorKind::NotFound => {
            // The device vanished under us (removed by hand): forget it, create anew next pass.
            store.record_device(extension_id, None, false).await?;
            (
                Status::Failed,
                StateUpdate {
                    state: ExtensionState::Pending,
                    last_error: Some(detail.clone()),
                    attempts: 0,
                    next_attempt_at: Some(now),
                },
            )
        }
        MbgErrorKind::RateLimited(_)
        | MbgErrorKind::Unavailable(_)
        | MbgErrorKind::Malformed(_) => {
            let attempts = store.extension(extension_id).await?.attempts + 1;
            let retry_after = match error.kind {
                MbgErrorKind::RateLimited(after) => after,
                _ => None,
            };
            let delay = retry_delay(attempts, retry_after, options.max_retry_after);
            (
                Status::Failed,
                StateUpdate {
                    state: ExtensionState::Failed,
                    last_error: Some(detail.clone()),
                    attempts,
                    next_attempt_at: Some(now + delay.as_secs().max(1) as i64),
                },
            )
        }
        _ => (
            Status::NeedsAttention,
            StateUpdate {
                state: ExtensionState::NeedsAttention,
                last_error: Some(detail.clone()),
                attempts: 0,
                next_attempt_at: None,
            },
        ),
    };
    store.set_state(extension_id, &update).await?;
    warn!(error = %error, "failed");
    Ok(Ok(outcome(action, status, detail)))
}

async fn audit(
    store: &Store,
    action: &Action,
    outcome: &str,
    detail: &str,
    at: i64,
) -> Result<(), StoreError> {
    store
        .audit(&AuditEntry {
            at,
            extension: Some(action.number().to_string()),
            action: action.verb().to_string(),
            outcome: outcome.to_string(),
            detail: Some(detail.to_string()),
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_honours_retry_after() {
        for attempts in 1..6 {
            let full = BASE_BACKOFF * (1 << attempts);
            let delay = retry_delay(attempts, None, MAX_BACKOFF);
            assert!(delay <= full && delay >= full / 2, "{attempts}: {delay:?}");
        }
        assert!(retry_delay(40, None, MAX_BACKOFF) <= MAX_BACKOFF);
        let cap = Duration::from_secs(300);
        assert_eq!(
            retry_delay(1, Some(Duration::from_secs(7)), cap),
            Duration::from_secs(7)
        );
        assert_eq!(retry_delay(1, Some(Duration::from_secs(9999)), cap), cap);
    }
}
