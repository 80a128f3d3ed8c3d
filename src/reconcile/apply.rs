//! Carries out a plan on the MBG, at most `mbg.max_in_flight` calls at a time, writing each
//! outcome to the extension's state and to the audit log.
//!
//! Write-ahead: credentials are committed before a pass plans anything (see `run_pass`), and a
//! created device's guid is committed with the outcome writer's next group, milliseconds after the
//! MBG answers (see `recorder`). If the process dies between the two, the next pass finds the
//! device by the credentials it carries and takes it back: no duplicate, no orphan.
//!
//! Calls that fail for a passing reason (429, 503, a timeout, a dropped connection) are retried
//! within the pass, in rounds, while `mbg.retry_deadline` allows; only then is the extension
//! recorded as `failed` with its `next_attempt_at`. A create whose answer was lost may have gone
//! through: before it is posted again, one device list per round (not one per create: the MBG is
//! already struggling) shows which did.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::RngExt;
use tokio::sync::Semaphore;
use tracing::{Instrument, info, warn};

use super::plan::{Action, Adoption, Owner, Plan};
use super::recorder::{self, Recorder};
use super::view::MbgChanges;
use crate::mbg::{MbgClient, MbgError, MbgErrorKind, NewSipDevice, SipDevice, SipDevicePatch};
use crate::shutdown::Shutdown;
use crate::store::{
    AuditEntry, DeviceFact, ExtensionState, OutcomeWrite, PassWrite, StateUpdate, Store, StoreError,
};
use crate::telemetry::{self, ActionKind, ActionOutcome};

/// First retry delay of a later pass after a failure; doubled per attempt up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Within a pass: the first retry after this, doubled per round.
const IN_PASS_BACKOFF: Duration = Duration::from_millis(500);
/// Calls of one action within a pass, at most.
const IN_PASS_ATTEMPTS: u32 = 4;
/// Per MBG call in flight, how many answered calls may wait for the outcome writer before no
/// new call starts: enough for the writer's groups to fill, and a bound on memory.
const OUTCOMES_WAITING_PER_CALL: usize = 8;

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub max_in_flight: usize,
    /// A longer `Retry-After` is shortened to this.
    pub max_retry_after: Duration,
    /// No retry round starts after this instant.
    pub retry_until: Instant,
    pub now: i64,
    /// `mbg.timeout`: how long after its sending an unanswered create may still land.
    pub mbg_timeout: Duration,
    /// See [`super::Scope::count_done_only`].
    pub keep_done: bool,
}

/// How one action ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Done,
    /// Will be retried at `next_attempt_at`.
    Failed,
    /// A human must fix something first.
    NeedsAttention,
    /// Not attempted: the token was refused, or a stop was asked, earlier in this pass.
    Skipped,
    /// Done on the MBG, but the row changed after the plan was made: its state is left for the
    /// next pass, which plans from the new row.
    Stale,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub extension_id: Option<i64>,
    pub number: String,
    pub verb: &'static str,
    pub status: Status,
    /// What happened, for humans: the guid, the MBG's message, the fix. Never a secret.
    pub detail: String,
    /// What the MBG now holds differently, until [`ApplyReport::take`] moves it to the view's
    /// changes (boxed: most outcomes carry none by then).
    pub effect: Option<Box<DeviceEffect>>,
}

impl Status {
    /// The `outcome` label of the actions metric.
    fn metric(&self) -> ActionOutcome {
        match self {
            Status::Done => ActionOutcome::Done,
            Status::Failed => ActionOutcome::Failed,
            Status::NeedsAttention => ActionOutcome::NeedsAttention,
            Status::Skipped => ActionOutcome::Skipped,
            Status::Stale => ActionOutcome::Stale,
        }
    }
}

/// Counts every outcome of an apply in the actions metric. An unknown verb is counted as
/// `problem` with a warning rather than dropped, so the totals still add up.
pub fn count_outcomes(outcomes: &[Outcome]) {
    for outcome in outcomes {
        let kind = ActionKind::from_verb(outcome.verb).unwrap_or_else(|| {
            tracing::warn!(verb = outcome.verb, "unknown action verb in metrics");
            ActionKind::Problem
        });
        telemetry::action(kind, outcome.status.metric());
    }
}

/// A change the MBG confirmed (or, for `Removed`, showed by a 404).
#[derive(Debug, Clone)]
pub enum DeviceEffect {
    Created(SipDevice),
    Patched { guid: String, patch: SipDevicePatch },
    Removed(String),
}

#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Every outcome, or with [`ApplyOptions::keep_done`] off all but those done.
    pub outcomes: Vec<Outcome>,
    /// The outcomes done that were counted in the actions metric and not kept.
    pub done_not_kept: usize,
    keep_done: bool,
    /// What the MBG confirmed, for the view (see [`super::MbgView::absorb`]).
    pub mbg_changes: MbgChanges,
    /// Set when the MBG answered 401: the token is gone and the pass stopped calling it.
    pub token_refused: Option<MbgError>,
    /// Set when a stop was asked: actions not yet started were skipped.
    pub interrupted: bool,
    /// MBG calls made, retries included.
    pub calls: usize,
    /// A create whose answer was lost may still land on the MBG until then (its sending + 2 ×
    /// `mbg.timeout`): a second copy, if it was posted again. Whoever reports the pass a success
    /// reads the MBG again after it.
    pub uncertain_until: Option<Instant>,
}

impl ApplyReport {
    /// Keeps an outcome, its effect moved into [`ApplyReport::mbg_changes`] as it comes: a
    /// first pass of 100,000 creates would otherwise hold as many parsed SIP users to its end.
    fn take(&mut self, mut outcome: Outcome) {
        if let Some(effect) = outcome.effect.take() {
            self.mbg_changes.take(*effect);
        }
        if outcome.status == Status::Done && !self.keep_done {
            count_outcomes(std::slice::from_ref(&outcome));
            self.done_not_kept += 1;
        } else {
            self.outcomes.push(outcome);
        }
    }
}

/// Delay before a later pass tries again: `Retry-After` when the MBG gave one, else exponential
/// backoff with jitter so that many failed extensions do not all retry in the same second.
pub(crate) fn retry_delay(attempts: u32, retry_after: Option<Duration>, cap: Duration) -> Duration {
    backoff(BASE_BACKOFF, MAX_BACKOFF, attempts, retry_after, cap)
}

/// Delay before the next round within a pass.
pub(crate) fn in_pass_delay(round: u32, retry_after: Option<Duration>, cap: Duration) -> Duration {
    backoff(IN_PASS_BACKOFF, cap, round, retry_after, cap)
}

fn backoff(
    base: Duration,
    max: Duration,
    attempts: u32,
    retry_after: Option<Duration>,
    cap: Duration,
) -> Duration {
    if let Some(after) = retry_after {
        return after.min(cap);
    }
    let exponential = base.saturating_mul(1 << attempts.min(16)).min(max);
    exponential.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// What the pass knows that apply needs: the rows as planned, and the stop signal.
pub struct Context<'a> {
    pub store: &'a Store,
    pub client: &'a MbgClient,
    pub planned: &'a super::Planned,
    pub shutdown: &'a Shutdown,
    pub options: &'a ApplyOptions,
    pub progress: Option<&'a super::Progress>,
    pub superseded: &'a Superseded,
    pub covered: &'a Covered,
    /// When the credentials drawn for an extension are stored: its call waits for that.
    pub fill: &'a super::fill::Gate,
}

/// The changes recorded before a pass that it covers. An outcome takes its extension's as its
/// row write is made, and they are acknowledged in the transaction that writes it: the pass's
/// end acknowledges only what is left (extensions with nothing to call), instead of every
/// change once the last MBG answer is in.
#[derive(Debug, Default)]
pub struct Covered {
    /// (extension id, seq, taken), sorted by extension.
    changes: std::sync::Mutex<Vec<(i64, i64, bool)>>,
}

impl Covered {
    pub(crate) fn new(changes: &[crate::store::Change]) -> Covered {
        let mut changes: Vec<(i64, i64, bool)> = changes
            .iter()
            .map(|c| (c.extension_id, c.seq, false))
            .collect();
        changes.sort_unstable();
        Covered {
            changes: std::sync::Mutex::new(changes),
        }
    }

    /// `f` over `extension_id`'s entries, under the lock.
    fn of<R>(&self, extension_id: i64, f: impl FnOnce(&mut [(i64, i64, bool)]) -> R) -> R {
        let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let from = changes.partition_point(|c| c.0 < extension_id);
        let to = from + changes[from..].partition_point(|c| c.0 == extension_id);
        f(&mut changes[from..to])
    }

    /// The seqs of `extension_id`'s changes not yet taken.
    fn take(&self, extension_id: i64) -> Vec<i64> {
        self.of(extension_id, |entries| {
            entries
                .iter_mut()
                .filter_map(|c| (!std::mem::replace(&mut c.2, true)).then_some(c.1))
                .collect()
        })
    }

    /// Puts back what `extension_id`'s outcome took: its write failed, and its changes are
    /// left to the pass's end, as those of any outcome the database could not take.
    fn give_back(&self, extension_id: i64) {
        self.of(extension_id, |entries| {
            for change in entries {
                change.2 = false;
            }
        });
    }

    /// How many changes outcomes took.
    pub(crate) fn taken(&self) -> usize {
        let changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        changes.iter().filter(|c| c.2).count()
    }

    /// The changes no outcome took, as (extension id, seq).
    pub(crate) fn rest(self) -> Vec<(i64, i64)> {
        let changes = self.changes.into_inner().unwrap_or_else(|e| e.into_inner());
        changes
            .into_iter()
            .filter(|c| !c.2)
            .map(|(extension_id, seq, _)| (extension_id, seq))
            .collect()
    }
}

/// Extensions changed in the database since the pass planned them, as the pass learns of them.
/// A call not yet sent for one of them is dropped: switched off five seconds into a pass that
/// creates 5,000 SIP users, the rest are not created only to be deleted by the next pass.
#[derive(Debug, Default)]
pub struct Superseded(std::sync::Mutex<std::collections::HashSet<i64>>);

impl Superseded {
    pub(crate) fn extend(&self, ids: impl IntoIterator<Item = i64>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend(ids);
    }

    fn contains(&self, id: i64) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
    }
}

/// Where one action stands after a round.
enum Step<'p> {
    Recorded(Outcome),
    /// Failed for a passing reason: another round may retry it.
    Retry(&'p Action, MbgError),
    /// The MBG answered 401: the token is gone.
    Refused(Outcome, MbgError),
}

/// Carries the plan out, its outcomes committed in groups by one writer running beside the
/// calls (see [`recorder`]); returns once every outcome is committed.
pub async fn apply(cx: &Context<'_>, plan: &Plan) -> Result<ApplyReport, StoreError> {
    let (recorder, writer) = recorder::recorder(cx.store);
    // A task of its own: in one task with the calls, the writer's statements and their answers
    // took some two fifths of the pass's samples on the thread that also turns each MBG answer
    // into the next call (`perf`, a 10,000-create sync); on a runtime with more than one thread
    // the two now go on side by side. It still lives and dies with the pass (see `WriterTask`).
    let mut writer = WriterTask(tokio::spawn(writer));
    let calls = async move {
        let report = call_and_record(cx, &recorder, plan).await;
        drop(recorder); // lets the writer finish
        report
    };
    let (report, ()) = tokio::join!(calls, writer.finished());
    report
}

/// The outcome writer's task, tied to the pass as if it ran in the pass's own task: a pass
/// dropped midway (the daemon's lease lost) aborts it, rolling back the group it was writing
/// rather than committing it for a holder that may no longer lead; and a panic in it unwinds
/// the pass at once, before more calls are made whose outcomes nothing would record.
struct WriterTask(tokio::task::JoinHandle<()>);

impl WriterTask {
    async fn finished(&mut self) {
        if let Err(failed) = (&mut self.0).await
            && failed.is_panic()
        {
            std::panic::resume_unwind(failed.into_panic());
        }
    }
}

impl Drop for WriterTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn call_and_record(
    cx: &Context<'_>,
    rec: &Recorder,
    plan: &Plan,
) -> Result<ApplyReport, StoreError> {
    let mut report = ApplyReport {
        outcomes: Vec::with_capacity(if cx.options.keep_done {
            plan.actions.len()
        } else {
            0
        }),
        mbg_changes: MbgChanges::expecting(plan.creates()),
        keep_done: cx.options.keep_done,
        ..ApplyReport::default()
    };
    let refused = std::sync::atomic::AtomicBool::new(false);
    let deposed = std::sync::atomic::AtomicBool::new(false);
    let horizon = CreateHorizon::default();
    let uncertain: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    // Bounds the MBG calls in flight, not the bookkeeping after them: a call's slot is free as
    // soon as the MBG answers, while its outcome waits for the writer's next group.
    let in_flight = Semaphore::new(cx.options.max_in_flight.max(1));
    for mut pending in in_call_order(plan) {
        for round in 1.. {
            let throttled: std::sync::Mutex<Option<MbgError>> = std::sync::Mutex::new(None);
            let mut steps = futures_util::stream::iter(pending)
            .map(|action| {
                let span = tracing::info_span!("apply", extension = %action.number(), action = action.verb());
                let (refused, deposed, throttled, in_flight) = (&refused, &deposed, &throttled, &in_flight);
                let (horizon, uncertain) = (&horizon, &uncertain);
                async move {
                    let stored = match action.extension_id() {
                        Some(id) => cx.fill.stored(id).await,
                        None => true,
                    };
                    let called = action.is_mbg_call();
                    let slot = if called {
                        Some(in_flight.acquire().await.expect("the semaphore is never closed"))
                    } else {
                        None
                    };
                    if action.is_change() || !stored {
                        let why = if refused.load(std::sync::atomic::Ordering::SeqCst) {
                            Some("not attempted: the MBG refused the token")
                        } else if deposed.load(std::sync::atomic::Ordering::SeqCst) {
                            Some("not attempted: this instance's lease lapsed (another may lead)")
                        } else if cx.shutdown.is_triggered() {
                            Some("not attempted: stopped by a signal")
                        } else if !stored || cx.fill.halted() {
                            Some("not attempted: the database could not store the remote credentials drawn for this pass")
                        } else {
                            None
                        };
                        if let Some(why) = why {
                            return (Step::Recorded(outcome(action, Status::Skipped, why.into())), false);
                        }
                    }
                    // A report too: its outcome write might meet the changed row at the very
                    // version the plan expected (a fill not stored, then one change by another).
                    if action.extension_id().is_some_and(|id| cx.superseded.contains(id)) {
                        if let Some(progress) = cx.progress.filter(|_| action.is_change()) {
                            progress.step();
                        }
                        let why = "not sent: the extension changed after the pass planned it; the next pass acts on what it is now";
                        return (Step::Recorded(outcome(action, Status::Stale, why.into())), false);
                    }
                    // The MBG asked us to slow down: what has not started waits for the next
                    // round (after its Retry-After) instead of meeting the same 429.
                    if called
                        && let Some(limited) = throttled.lock().unwrap_or_else(|e| e.into_inner()).clone()
                    {
                        return (Step::Retry(action, limited), false);
                    }
                    if matches!(action, Action::Create { .. })
                        && let Err(e) = horizon.before_post(cx.store).await
                    {
                        return (Step::Recorded(recorded(cx, action, Err(e))), false);
                    }
                    let sent_at = Instant::now();
                    let answer = call(cx, action).await;
                    drop(slot);
                    if let (Action::Create { .. }, Err(error)) = (action, &answer)
                        && answer_may_be_lost(error)
                    {
                        let until = sent_at + 2 * cx.options.mbg_timeout;
                        let mut uncertain = uncertain.lock().unwrap_or_else(|e| e.into_inner());
                        *uncertain = Some(uncertain.map_or(until, |u| u.max(until)));
                    }
                    // Recorded as soon as the MBG answers: a guid must reach the database even
                    // if the process dies before the rest of the round is done.
                    let step = match answer {
                        Ok(created) => Step::Recorded(recorded(cx, action, record_success(cx, rec, action, created).await)),
                        Err(error) => {
                            if let MbgErrorKind::NotLeading(_) = error.kind {
                                // Nothing was sent, and the row may be another leader's now:
                                // no bookkeeping, and nothing more from this pass.
                                deposed.store(true, std::sync::atomic::Ordering::SeqCst);
                                Step::Recorded(outcome(action, Status::Skipped, error.to_string()))
                            } else if let MbgErrorKind::Unauthorized(_) = error.kind {
                                refused.store(true, std::sync::atomic::Ordering::SeqCst);
                                warn!(error = %error, "the MBG refused the token; no more calls this pass");
                                record(rec, RowWrite::Nothing, Some(audit(cx, action, "failed", &error.to_string()))).await.ok();
                                Step::Refused(outcome(action, Status::Skipped, error.to_string()), error)
                            } else if error.is_retryable() || refused_create(action, &error) {
                                if let MbgErrorKind::RateLimited(Some(_)) = error.kind {
                                    throttled
                                        .lock()
                                        .unwrap_or_else(|e| e.into_inner())
                                        .get_or_insert_with(|| error.clone());
                                }
                                Step::Retry(action, error)
                            } else {
                                Step::Recorded(recorded(cx, action, record_failure(cx, rec, action, &error).await))
                            }
                        }
                    };
                    if action.is_change()
                        && !matches!(step, Step::Retry(..))
                        && let Some(progress) = cx.progress
                    {
                        progress.step();
                    }
                    (step, called)
                }
                .instrument(span)
            })
            // Futures are made as slots free up, a few per slot: one per action up front would
            // hold 100,000 of them (hundreds of MB) for a large first pass.
            .buffer_unordered(cx.options.max_in_flight.max(1) * OUTCOMES_WAITING_PER_CALL);
            let mut retry: Vec<(&Action, MbgError)> = Vec::new();
            // Taken in as they finish, not collected first: 100,000 steps held at once were
            // some 50 MB of a large first pass's peak.
            while let Some((step, called)) = steps.next().await {
                report.calls += usize::from(called);
                match step {
                    Step::Recorded(outcome) => {
                        report.interrupted |= outcome.status == Status::Skipped
                            && (cx.shutdown.is_triggered()
                                || deposed.load(std::sync::atomic::Ordering::SeqCst));
                        report.take(outcome);
                    }
                    Step::Retry(action, error) => retry.push((action, error)),
                    Step::Refused(outcome, error) => {
                        report.take(outcome);
                        report.token_refused.get_or_insert(error);
                    }
                }
            }
            if retry.is_empty() {
                break;
            }
            let delay = retry
                .iter()
                .map(|(_, e)| in_pass_delay(round - 1, retry_after(e), cx.options.max_retry_after))
                .max()
                .unwrap_or_default();
            // A refused create needs no delay: it is looked up at once, never posted again.
            let delay = if retry.iter().all(|(a, e)| refused_create(a, e)) {
                Duration::ZERO
            } else {
                delay
            };
            let give_up = report.token_refused.is_some()
                || deposed.load(std::sync::atomic::Ordering::SeqCst)
                || cx.shutdown.is_triggered()
                || round >= IN_PASS_ATTEMPTS
                || Instant::now() + delay > cx.options.retry_until;
            if !give_up {
                info!(
                    actions = retry.len(),
                    delay_ms = delay.as_millis() as u64,
                    round,
                    "retrying what the MBG could not do"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cx.shutdown.triggered() => {}
                }
            }
            if give_up || cx.shutdown.is_triggered() {
                for (action, error) in retry {
                    report.take(recorded(
                        cx,
                        action,
                        record_failure(cx, rec, action, &error).await,
                    ));
                }
                break;
            }
            let mut again = Vec::new();
            let lost: Vec<&(&Action, MbgError)> = retry
                .iter()
                .filter(|(a, e)| {
                    matches!(a, Action::Create { .. })
                        && (answer_may_be_lost(e) || refused_create(a, e))
                })
                .collect();
            let found = if lost.is_empty() {
                Ok(Vec::new())
            } else {
                report.calls += 1;
                // Retried like the pass's opening reads: one busy answer must not fail them all.
                super::read_with_retry(
                    cx.options.max_retry_after,
                    cx.shutdown,
                    cx.options.retry_until,
                    || cx.client.devices(),
                )
                .await
            };
            for (action, error) in &retry {
                let lost_create = lost.iter().any(|(a, _)| std::ptr::eq(*a, *action));
                if !lost_create {
                    again.push(*action);
                    continue;
                }
                let device = new_device(cx, action);
                match &found {
                    Ok(devices) => match devices.iter().find(|d| carries(d, &device)) {
                        Some(made) => {
                            info!(extension = %action.number(), guid = %made.guid, "the SIP user this create asked for is on the MBG already: taken as ours");
                            let result =
                                record_success(cx, rec, action, Some(made.guid.clone())).await;
                            report.take(recorded(cx, action, result));
                        }
                        // Refused, and not there with our credentials: the MBG's reason stands.
                        None if refused_create(action, error) => report.take(recorded(
                            cx,
                            action,
                            record_failure(cx, rec, action, error).await,
                        )),
                        None => again.push(*action),
                    },
                    // Unknown whether it went through: never post twice. The next pass sees the
                    // device, if there is one, and takes it back by its credentials.
                    Err(_) => report.take(recorded(
                        cx,
                        action,
                        record_failure(cx, rec, action, error).await,
                    )),
                }
            }
            if again.is_empty() {
                break;
            }
            pending = again;
        }
    }
    report.uncertain_until = uncertain.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(report)
}

/// The plan's actions in the order they are sent: removals finish before anything else starts,
/// because the copy a pass deletes may hold the set-side name that the SIP user it keeps is
/// given, and an MBG that refuses a name in use would refuse the update sent while the delete
/// is still in flight.
fn in_call_order(plan: &Plan) -> [Vec<&Action>; 2] {
    let (removals, rest) = plan
        .actions
        .iter()
        .partition(|a| matches!(a, Action::Delete { .. }));
    [removals, rest]
}

/// Each extension's place in the order its first call is sent: the credential fill stores
/// them in this order, so that no call waits long for its own.
pub(crate) fn call_order(plan: &Plan) -> HashMap<i64, usize> {
    let mut order = HashMap::with_capacity(plan.actions.len());
    for (position, action) in in_call_order(plan).iter().flatten().enumerate() {
        if let Some(id) = action.extension_id() {
            order.entry(id).or_insert(position);
        }
    }
    order
}

/// Keeps `pass_epoch.creating_until_ms` ahead of every create posted, a write every
/// [`HORIZON_STEP`] at most rather than one per create: after an unclean stop, the next holder
/// learns from it until when a create of ours may still land on the MBG.
#[derive(Default)]
struct CreateHorizon(tokio::sync::Mutex<i64>);

/// How far ahead of now the horizon is written, and how close it may come before it is moved.
const HORIZON_STEP: i64 = 2_000;
const HORIZON_MARGIN: i64 = 500;

impl CreateHorizon {
    async fn before_post(&self, store: &Store) -> Result<(), StoreError> {
        let mut until = self.0.lock().await;
        let now = chrono::Utc::now().timestamp_millis();
        if *until < now + HORIZON_MARGIN {
            let next = now + HORIZON_STEP;
            store.note_creating_until(next).await?;
            *until = next;
        }
        Ok(())
    }
}

fn retry_after(error: &MbgError) -> Option<Duration> {
    match error.kind {
        MbgErrorKind::RateLimited(after) => after,
        _ => None,
    }
}

/// A create refused with a 400 other than the licence one: perhaps because the SIP user it asks
/// for is there already, made by a holder of the pass lock before us (whose answer we never
/// saw). The MBG's wording is not part of its contract, so it is not matched: one device list
/// read tells whether a SIP user with exactly this extension's credentials is there.
fn refused_create(action: &Action, error: &MbgError) -> bool {
    matches!(action, Action::Create { .. }) && matches!(error.kind, MbgErrorKind::BadRequest(_))
}

/// A 429 says the request was not carried out; a timeout, a reset or a 5xx may hide a success.
fn answer_may_be_lost(error: &MbgError) -> bool {
    matches!(error.kind, MbgErrorKind::Unavailable(_))
}

/// Whether `device` is what `wanted` asked the MBG to create.
fn carries(device: &crate::mbg::SipDevice, wanted: &NewSipDevice) -> bool {
    device.icp == wanted.icp
        && super::plan::carries_credentials(
            device,
            &wanted.icpside_username,
            Some(&wanted.setside_username),
            Some(&wanted.setside_password),
        )
}

/// An outcome, or the database error that kept it from being stored: said loudly; the next pass
/// reads the MBG again and converges (a created device is taken back by its credentials).
fn recorded(cx: &Context<'_>, action: &Action, result: Result<Outcome, StoreError>) -> Outcome {
    result.unwrap_or_else(|e| {
        if let Some(id) = action.extension_id() {
            cx.covered.give_back(id);
        }
        warn!(extension = %action.number(), error = %e, "cannot record the outcome in the database");
        outcome(action, Status::Failed, format!("database: {e}"))
    })
}

fn outcome(action: &Action, status: Status, detail: String) -> Outcome {
    Outcome {
        extension_id: action.extension_id(),
        number: action.number().to_string(),
        verb: action.verb(),
        status,
        detail,
        effect: None,
    }
}

/// The SIP user a create asks for, made from the row the plan was made from.
///
/// # Panics
/// When `action` is not a create of a row in [`Context::planned`]: every plan is made from the
/// rows its pass then applies it with.
fn new_device(cx: &Context<'_>, action: &Action) -> NewSipDevice {
    let Action::Create {
        extension_id, icp, ..
    } = action
    else {
        unreachable!("only a create makes a SIP user")
    };
    let extension = cx
        .planned
        .get(extension_id)
        .expect("a create's row is among the rows planned");
    super::plan::wanted_device(extension, icp)
}

/// What a successful action changed on the MBG.
fn effect_of(cx: &Context<'_>, action: &Action, created: Option<&str>) -> Option<DeviceEffect> {
    match action {
        Action::Create { .. } => {
            created.map(|guid| DeviceEffect::Created(new_device(cx, action).created(guid)))
        }
        Action::Update { guid, patch, .. } | Action::Adopt { guid, patch, .. }
            if !patch.is_empty() =>
        {
            Some(DeviceEffect::Patched {
                guid: guid.clone(),
                patch: (**patch).clone(),
            })
        }
        Action::Delete { guid, .. } => Some(DeviceEffect::Removed(guid.clone())),
        _ => None,
    }
}

/// The MBG call of an action; `Ok(Some(guid))` for a created device.
async fn call(cx: &Context<'_>, action: &Action) -> Result<Option<String>, MbgError> {
    let client = cx.client;
    match action {
        Action::Create { .. } => client
            .create_device(&new_device(cx, action))
            .await
            .map(Some),
        Action::Update { guid, patch, .. } | Action::Adopt { guid, patch, .. } => {
            if patch.is_empty() {
                Ok(None)
            } else {
                client.update_device(guid, patch).await.map(|_| None)
            }
        }
        Action::Delete { guid, .. } => match client.delete_device(guid).await {
            Err(e) if e.kind == MbgErrorKind::NotFound => Ok(None),
            other => other.map(|_| None),
        },
        Action::Forget { .. } | Action::Report { .. } => Ok(None),
    }
}

fn settled(state: ExtensionState) -> StateUpdate {
    StateUpdate {
        state,
        last_error: None,
        attempts: 0,
        next_attempt_at: None,
    }
}

/// The extension row's part of an outcome.
enum RowWrite {
    Write(PassWrite),
    /// Nothing to write; the outcome stands.
    Nothing,
    /// The extension is not among the planned rows: its state is left for the next pass.
    NotPlanned,
}

/// An extension's outcome, conditional on the row being as planned.
fn row_write(
    cx: &Context<'_>,
    extension_id: i64,
    device: DeviceFact,
    state: StateUpdate,
) -> RowWrite {
    match cx.planned.get(&extension_id) {
        Some(planned) => RowWrite::Write(PassWrite::Outcome(OutcomeWrite {
            extension_id,
            planned_version: planned.version,
            device,
            state,
            acknowledges: cx.covered.take(extension_id),
        })),
        None => RowWrite::NotPlanned,
    }
}

/// Commits an outcome's row write and audit row together. `false` when the row changed after
/// the plan was made: its state is then left for the next pass.
async fn record(
    rec: &Recorder,
    row: RowWrite,
    audit: Option<AuditEntry>,
) -> Result<bool, StoreError> {
    let mut writes: Vec<PassWrite> = audit.into_iter().map(PassWrite::Audit).collect();
    let current = match row {
        RowWrite::Write(write) => {
            writes.push(write);
            None
        }
        RowWrite::Nothing => Some(true),
        RowWrite::NotPlanned => Some(false),
    };
    if writes.is_empty() {
        return Ok(current.unwrap_or(true));
    }
    let written = rec.record(writes).await?;
    Ok(current.unwrap_or_else(|| written.last().copied().unwrap_or(false)))
}

async fn record_success(
    cx: &Context<'_>,
    rec: &Recorder,
    action: &Action,
    created: Option<String>,
) -> Result<Outcome, StoreError> {
    let effect = effect_of(cx, action, created.as_deref());
    let provisioned = settled(ExtensionState::Provisioned);
    let (row, detail) = match action {
        Action::Create { extension_id, .. } => {
            let guid = created.expect("a create returns its guid");
            let row = row_write(
                cx,
                *extension_id,
                DeviceFact::Holds(guid.clone()),
                provisioned,
            );
            (row, format!("created SIP user {guid}"))
        }
        Action::Update {
            extension_id,
            guid,
            changes,
            ..
        } => (
            row_write(cx, *extension_id, DeviceFact::Unchanged, provisioned),
            format!("updated SIP user {guid}: {}", changes.join(", ")),
        ),
        Action::Adopt {
            extension_id,
            guid,
            changes,
            proof,
            ..
        } => {
            let why = match proof {
                Adoption::ExactMatch => "adopted",
                Adoption::OwnCredentials => "took back (it carries this extension's credentials)",
            };
            let changed = if changes.is_empty() {
                "nothing".to_string()
            } else {
                changes.join(", ")
            };
            (
                row_write(
                    cx,
                    *extension_id,
                    DeviceFact::Holds(guid.clone()),
                    provisioned,
                ),
                format!("{why} SIP user {guid}, overwrote: {changed}"),
            )
        }
        Action::Delete { owner, guid, .. } => {
            (forget(cx, *owner), format!("deleted SIP user {guid}"))
        }
        Action::Forget { owner, guid, .. } => {
            let what = guid
                .as_deref()
                .map_or("no SIP user".to_string(), |g| format!("SIP user {g}"));
            (
                forget(cx, *owner),
                format!("cleared the record: {what} is not on the MBG (or is another row's)"),
            )
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
            let row = row_write(cx, *extension_id, DeviceFact::Unchanged, needs);
            let current = record(rec, row, None).await?;
            warn!(extension = %action.number(), problem = %problem, "needs attention");
            let status = if current {
                Status::NeedsAttention
            } else {
                Status::Stale
            };
            return Ok(outcome(action, status, problem.fix()));
        }
    };
    let current = record(rec, row, Some(audit(cx, action, "ok", &detail))).await?;
    info!(extension = %action.number(), "{detail}");
    let mut done = if current {
        outcome(action, Status::Done, detail)
    } else {
        outcome(
            action,
            Status::Stale,
            format!("{detail}; the extension changed meanwhile: the next pass takes it from here"),
        )
    };
    done.effect = effect.map(Box::new);
    Ok(done)
}

/// The bookkeeping once a device of `owner` is gone.
fn forget(cx: &Context<'_>, owner: Owner) -> RowWrite {
    match owner {
        Owner::Extension(id) => row_write(cx, id, DeviceFact::Gone, settled(ExtensionState::Idle)),
        Owner::Released { id, last: true } => RowWrite::Write(PassWrite::ForgetReleased(id)),
        Owner::Released { last: false, .. } | Owner::Duplicate => RowWrite::Nothing,
    }
}

async fn record_failure(
    cx: &Context<'_>,
    rec: &Recorder,
    action: &Action,
    error: &MbgError,
) -> Result<Outcome, StoreError> {
    let now = cx.options.now;
    let detail = format!("extension {}: {error}", action.number());
    let audited = Some(audit(cx, action, "failed", &detail));
    let Some(extension_id) = action.extension_id() else {
        record(rec, RowWrite::Nothing, audited).await?;
        warn!(extension = %action.number(), error = %error, "cannot remove a SIP user of ours; retried next pass");
        return Ok(outcome(action, Status::Failed, detail));
    };
    let attempts = cx
        .planned
        .get(&extension_id)
        .map_or(0, |e| e.attempts)
        .saturating_add(1);
    let (status, device, update) = match &error.kind {
        // The device vanished under us (removed by hand): forget it, create anew next pass.
        MbgErrorKind::NotFound => (
            Status::Failed,
            DeviceFact::Gone,
            StateUpdate {
                state: ExtensionState::Pending,
                last_error: Some(detail.clone()),
                attempts: 0,
                next_attempt_at: Some(now),
            },
        ),
        MbgErrorKind::RateLimited(_)
        | MbgErrorKind::Unavailable(_)
        | MbgErrorKind::Unreachable(_)
        | MbgErrorKind::Malformed(_) => {
            let delay = retry_delay(attempts, retry_after(error), cx.options.max_retry_after);
            (
                Status::Failed,
                DeviceFact::Unchanged,
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
            DeviceFact::Unchanged,
            StateUpdate {
                state: ExtensionState::NeedsAttention,
                last_error: Some(detail.clone()),
                attempts: 0,
                next_attempt_at: None,
            },
        ),
    };
    warn!(extension = %action.number(), error = %error, "failed");
    let current = record(rec, row_write(cx, extension_id, device, update), audited).await?;
    let mut failed = outcome(action, if current { status } else { Status::Stale }, detail);
    if error.kind == MbgErrorKind::NotFound {
        failed.effect = action
            .target_guid()
            .map(|g| Box::new(DeviceEffect::Removed(g.to_string())));
    }
    Ok(failed)
}

fn audit(cx: &Context<'_>, action: &Action, outcome: &str, detail: &str) -> AuditEntry {
    AuditEntry {
        at: cx.options.now,
        actor: None,
        extension: Some(action.number().to_string()),
        action: action.verb().to_string(),
        outcome: outcome.to_string(),
        detail: Some(detail.to_string()),
        repeats: 1,
        last_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pass dropped midway takes its writer with it: nothing the writer had yet to do is done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_pass_aborts_its_writer() {
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let (wrote, written) = tokio::sync::oneshot::channel::<()>();
        let writer = WriterTask(tokio::spawn(async move {
            if wait.await.is_ok() {
                let _ = wrote.send(());
            }
        }));
        drop(writer);
        let _ = go.send(());
        let outcome = tokio::time::timeout(Duration::from_secs(1), written).await;
        assert!(
            matches!(outcome, Ok(Err(_))),
            "the writer went on after the pass was dropped: {outcome:?}"
        );
    }

    /// A writer that panics ends the pass at once, not after the calls it could not record.
    #[tokio::test]
    #[should_panic(expected = "the writer failed")]
    async fn a_panic_in_the_writer_unwinds_the_pass_at_once() {
        let mut writer = WriterTask(tokio::spawn(async { panic!("the writer failed") }));
        let calls_that_never_end = std::future::pending::<()>();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(calls_that_never_end, writer.finished())
        })
        .await;
    }

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

    #[test]
    fn in_pass_rounds_start_short_and_stay_under_the_cap() {
        let cap = Duration::from_secs(5);
        let first = in_pass_delay(0, None, cap);
        assert!(
            first <= IN_PASS_BACKOFF && first >= IN_PASS_BACKOFF / 2,
            "{first:?}"
        );
        assert!(in_pass_delay(30, None, cap) <= cap);
        assert_eq!(in_pass_delay(0, Some(Duration::from_secs(60)), cap), cap);
    }
}
