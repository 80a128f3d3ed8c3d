//! The leader's work: one loop that waits for the first of its reasons to act (a change, a due
//! retry, the full reconcile, the renewal job, a token check, SIGHUP), then acts, one pass at a
//! time. Every pass is raced against the leader lock: losing the lock drops the pass, and with it
//! every MBG call in flight.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::rows::RowIndex;
use crate::app::App;
use crate::config::Config;
use crate::console::Link;
use crate::health::{Concern, HealthState, Severity};
use crate::mbg::{MbgClient, MbgError, MbgErrorKind};
use crate::reconcile::{self, MbgView, Mode, PassReport, Progress, ReconcileError, Scope};
use crate::shutdown::Shutdown;
use crate::store::{PassLock, RecordedIcp};
use crate::token::{self, TokenStatus};
use crate::{systemd, telemetry};

/// After a full pass fails (the MBG unreachable past `mbg.retry_deadline`), try again this soon.
const FULL_PASS_RETRY: Duration = Duration::from_secs(30);

/// The wait before the next pass after `failed_in_a_row` failed ones: the poll interval, doubled
/// for each failure after the first, at most [`FULL_PASS_RETRY`]. A failed pass takes the MBG
/// view with it, so the next one reads the MBG's lists afresh (100,000 SIP users at a large
/// site): while the database cannot be written (a full disk) or the MBG fails, that must not
/// happen at every poll.
fn pass_backoff(poll: Duration, failed_in_a_row: u32) -> Duration {
    let doublings = failed_in_a_row.saturating_sub(1).min(16);
    poll.saturating_mul(1 << doublings).min(FULL_PASS_RETRY)
}

/// How often a running pass's progress reaches `queue_depth`.
const QUEUE_DEPTH_EVERY: Duration = Duration::from_millis(500);
/// A timer that is not set.
const NEVER: Duration = Duration::from_secs(365 * 86_400);
/// How often the extensions are counted by state for `/metrics`, at most.
const STATE_COUNT_EVERY: Duration = Duration::from_secs(10);
/// Most changes taken into one targeted pass; the rest wait for the next.
const BATCH: u32 = 10_000;
/// A pass of this many actions or more leaves memory in the database connections worth handing
/// back (see [`crate::store::Store::release_idle_memory`]).
const LARGE_PASS: usize = 1_000;

pub(crate) enum Ended {
    Stopped,
    LostLeadership,
}

pub(crate) struct Worker {
    pub app: App,
    health: HealthState,
    shutdown: Shutdown,
    wake: Arc<Notify>,
    /// To the console in this process: its new token, our reloaded configuration.
    link: Link,
    /// The MBG as last seen; `None` until a full pass read it.
    view: Option<MbgView>,
    /// The extension rows as last read, to catch changes the change log never heard of.
    rows: RowIndex,
    /// The client and the token generation it signs with.
    client: Option<(i64, MbgClient)>,
    /// The lease of the lock held (see [`crate::lease`]).
    lease: Option<crate::lease::Lease>,
    /// When a create whose answer was lost can no longer land: a full pass is due then.
    settle_at: Option<Instant>,
    next_full: Instant,
    /// When the next failed extension is due; recomputed after each pass, since only passes
    /// (this leader's) write retry times.
    retry_at: Instant,
    /// When the idle check next runs (see [`Worker::probe`]).
    next_probe: Instant,
    /// The renewal job's next scheduled run. Kept, not worked out afresh at each wait: a wait
    /// that begins after the scheduled second (a pass was running at 03:00) must still run it,
    /// not skip to the next day.
    renewal_due: Option<DateTime<Utc>>,
    /// Set after a 401: the generation refused, and when to look for a new token.
    blocked: Option<(i64, Instant)>,
    /// The last pass failed on the database: a successful read does not clear that.
    database_writes_failing: bool,
    /// Why the last pass failed, if it did.
    last_failure: Option<String>,
    /// Passes failed in a row, and no pass before the instant (see [`pass_backoff`]).
    failed_in_a_row: u32,
    no_pass_before: Instant,
    /// When the extensions were last counted by state (see [`Worker::report_queue`]).
    states_counted: Option<Instant>,
}

/// What the loop woke up for.
enum Wake {
    Work,
    TokenStored,
    Renew,
    Reload,
    Watchdog,
    Probe,
}

impl Worker {
    pub(crate) fn new(
        app: App,
        health: HealthState,
        shutdown: Shutdown,
        wake: Arc<Notify>,
        link: Link,
    ) -> Worker {
        let now = app.clock.instant();
        Worker {
            app,
            health,
            shutdown,
            wake,
            link,
            view: None,
            rows: RowIndex::default(),
            client: None,
            lease: None,
            settle_at: None,
            next_full: now,
            retry_at: now,
            next_probe: now,
            renewal_due: None,
            blocked: None,
            database_writes_failing: false,
            last_failure: None,
            failed_in_a_row: 0,
            no_pass_before: now,
            states_counted: None,
        }
    }

    pub(crate) async fn lead(&mut self, lock: &mut PassLock, hangups: &mut Hangups) -> Ended {
        // A new leader trusts nothing it saw before: full pass first, with a client that calls
        // only while this lock's lease holds.
        self.view = None;
        // What a previous term found is no longer watched: found again by this one's passes.
        self.rows = RowIndex::default();
        self.health.update(|h| h.clear(Concern::UnloggedChanges));
        self.next_full = self.app.clock.instant();
        self.retry_passes_now();
        self.lease = Some(lock.lease());
        self.client = None;
        // The first pass checks both; the idle check comes after it.
        self.next_probe = self.app.clock.instant() + self.health.grace() / 2;
        self.renewal_due = next_renewal(&self.app.config, self.app.clock.utc());
        // After a holder that stopped while creating: a full pass again once its late creates
        // cannot land any more, to delete their copies.
        self.settle_at = lock
            .previous_uncertain_until()
            .map(|at| self.app.clock.instant_of_real(at));
        loop {
            let wake = {
                let (at, timer) = self.next_timer();
                tokio::select! {
                    _ = self.shutdown.triggered() => return Ended::Stopped,
                    _ = lock.lost() => return Ended::LostLeadership,
                    _ = self.wake.notified() => Wake::Work,
                    _ = self.link.token_stored.notified() => Wake::TokenStored,
                    _ = hangup(hangups) => Wake::Reload,
                    _ = self.app.clock.sleep_until(at) => timer,
                }
            };
            let step = async {
                match wake {
                    Wake::Work => self.work().await,
                    Wake::TokenStored => {
                        // Look at the token now, not at the next recheck.
                        if let Some((refused, _)) = self.blocked {
                            self.blocked = Some((refused, self.app.clock.instant()));
                        }
                        self.work().await
                    }
                    Wake::Renew => {
                        // After the run due, even if the wall clock is a hair behind the timer.
                        let now = self.app.clock.utc();
                        let ran = self.renewal_due.map_or(now, |due| due.max(now));
                        self.renewal_due = next_renewal(&self.app.config, ran);
                        self.renew().await;
                    }
                    Wake::Reload => self.reload().await,
                    Wake::Watchdog => {}
                    Wake::Probe => {
                        self.next_probe = self.app.clock.instant() + self.health.grace() / 2;
                        self.probe().await;
                    }
                }
            };
            tokio::select! {
                _ = step => {}
                _ = lock.lost() => return Ended::LostLeadership,
            }
            systemd::watchdog_ping();
            if self.shutdown.is_triggered() {
                return Ended::Stopped;
            }
        }
    }

    /// The first of the loop's timers, and what it wakes the loop for. One wait rather than one
    /// per timer: on a manual clock, a test tells an idle loop (its one wait parked, not due)
    /// from a busy one.
    fn next_timer(&self) -> (Instant, Wake) {
        let clock = &self.app.clock;
        let now = clock.instant();
        // While blocked, only the recheck: a past `next_full` would spin the loop. Likewise
        // nothing is due before the backoff after a failed pass ends.
        let due = match self.blocked {
            Some((_, recheck)) => recheck,
            None => self.next_full.min(self.retry_at).max(self.no_pass_before),
        };
        // Pinged from this loop, not from a timer of its own: a loop that hangs must get the
        // daemon restarted.
        let watchdog = now + systemd::watchdog_interval().unwrap_or(Duration::from_secs(86_400));
        // Due now when its second has passed.
        let renewal = self.renewal_due.map_or(now + NEVER, |at| {
            now + (at - clock.utc()).to_std().unwrap_or_default()
        });
        [
            (now + self.app.config.watch.poll_interval, Wake::Work),
            (due, Wake::Work),
            (renewal, Wake::Renew),
            (watchdog, Wake::Watchdog),
            (self.next_probe, Wake::Probe),
        ]
        .into_iter()
        .min_by_key(|(at, _)| *at)
        .expect("the loop has timers")
    }

    /// When the next failed extension is due (capped: a far retry must not park the loop).
    async fn next_retry(&self) -> Instant {
        let cap = self.app.clock.instant() + self.app.config.reconcile.interval;
        let Ok(Some(at)) = self.app.store.next_retry_at().await else {
            return cap;
        };
        let wait = (at - self.app.clock.now()).max(0) as u64;
        // +1 s: `next_attempt_at` is in whole seconds; waking early would find nothing due.
        (self.app.clock.instant() + Duration::from_secs(wait + 1)).min(cap)
    }

    async fn work(&mut self) {
        let now = self.app.clock.now();
        if let Some((refused, recheck)) = self.blocked {
            if self.app.clock.instant() < recheck {
                return;
            }
            if !self.token_replaced(refused).await {
                self.blocked = Some((
                    refused,
                    self.app.clock.instant() + self.app.config.token.recheck_interval,
                ));
                return;
            }
            info!("a new access token is stored: resuming");
            self.blocked = None;
            self.client = None;
            self.next_full = self.app.clock.instant();
            self.retry_passes_now();
        }
        if self.app.clock.instant() < self.no_pass_before {
            return;
        }
        let full = self.app.clock.instant() >= self.next_full;
        // The common case, every poll: one query, and nothing to do.
        let targets = if full {
            None
        } else {
            let targets = self.targets(now).await;
            if self.app.clock.instant() >= self.retry_at {
                self.retry_at = self.next_retry().await;
            }
            match targets {
                Ok(ids) if ids.is_empty() => return,
                Ok(ids) => Some(ids),
                Err(e) => {
                    self.database_failed(&e.to_string());
                    return;
                }
            }
        };
        let Some((generation, client)) = self.client().await else {
            if full {
                self.next_full = self.app.clock.instant() + FULL_PASS_RETRY;
            }
            return;
        };
        let progress = Arc::new(Progress::default());
        let health = self.health.clone();
        let watched = progress.clone();
        // While a pass runs, `queue_depth` is what it has left to do, not the count from before.
        let show_progress = async move {
            loop {
                tokio::time::sleep(QUEUE_DEPTH_EVERY).await;
                if watched.total() > 0 {
                    let left = watched.total().saturating_sub(watched.finished());
                    health.update(|h| h.queue_depth = left);
                }
            }
        };
        let pass = async {
            match targets {
                None => self.full_pass(&client, now, progress).await,
                Some(ids) => self.targeted_pass(&client, now, ids, progress).await,
            }
        };
        let result = tokio::select! {
            result = pass => result,
            () = show_progress => unreachable!("the display never ends"),
        };
        // Not after every change: a cleared statement cache costs the next passes a prepare.
        let large = full || matches!(&result, Ok(r) if r.plan.actions.len() >= LARGE_PASS);
        match result {
            Ok(report) => {
                if let Some(applied) = &report.applied {
                    reconcile::count_outcomes(&applied.outcomes);
                }
                self.note_unlogged_changes(&report, full);
                let settle_at = report
                    .uncertain_until()
                    .map(|at| self.app.clock.instant_of_real(at));
                if let Some(at) = settle_at.max(self.settle_at.take()) {
                    self.next_full = self.next_full.min(at);
                }
                self.failed_in_a_row = 0;
                // The pass read and wrote the database: it works, writes included.
                if self.last_failure.take().is_some() {
                    info!("passes work again");
                }
                self.database_writes_failing = false;
                self.health.update(|h| h.database.succeeded(wall_clock()));
                if let Some(refused) = report
                    .applied
                    .as_ref()
                    .and_then(|a| a.token_refused.clone())
                {
                    self.token_refused(generation, &refused).await;
                }
            }
            Err(ReconcileError::Interrupted) => {}
            Err(e) => {
                if let Some(at) = e.uncertain_until() {
                    let at = self.app.clock.instant_of_real(at);
                    self.settle_at = self.settle_at.max(Some(at));
                }
                if let Some(mbg) = e.mbg()
                    && matches!(mbg.kind, MbgErrorKind::Unauthorized(_))
                {
                    self.token_refused(generation, mbg).await;
                    return;
                }
                self.failed_in_a_row += 1;
                self.no_pass_before = self.app.clock.instant()
                    + pass_backoff(self.app.config.watch.poll_interval, self.failed_in_a_row);
                // Once per kind of failure, not once per poll while it lasts.
                let message = e.to_string();
                if self.last_failure.as_deref() == Some(message.as_str()) {
                    tracing::debug!(error = %e, "pass failed again");
                } else {
                    error!(error = %e, "pass failed");
                }
                self.last_failure = Some(message);
                // Whether the MBG answered, the client told the health as it went.
                if let Some(store) = e.store() {
                    self.database_writes_failing = true;
                    self.database_failed(&store.to_string());
                }
                if full {
                    self.next_full = self.app.clock.instant() + FULL_PASS_RETRY;
                }
            }
        }
        self.retry_at = self.next_retry().await;
        self.report_queue().await;
        // The pass's rows, plan and report are dropped by now: what they held goes back to the
        // system rather than staying in an idle daemon's resident size.
        if large {
            self.app.store.release_idle_memory().await;
        }
        crate::memory::release_free_heap();
    }

    /// The extensions named by recorded changes, and the failed (or pending) ones now due.
    async fn targets(&self, now: i64) -> Result<HashSet<i64>, crate::store::StoreError> {
        let store = &self.app.store;
        let changes = store.pending_changes(BATCH).await?;
        telemetry::changes_seen(changes.len() as u64);
        let mut ids: HashSet<i64> = changes.iter().map(|c| c.extension_id).collect();
        if self.app.clock.instant() >= self.retry_at {
            ids.extend(store.due_retries(now).await?);
        }
        Ok(ids)
    }

    /// Reads the MBG afresh and reconciles every extension (failed ones only when due).
    async fn full_pass(
        &mut self,
        client: &MbgClient,
        now: i64,
        progress: Arc<Progress>,
    ) -> Result<PassReport, ReconcileError> {
        let kept = self.view.take();
        let (mut view, full) = reconcile::read_full(
            &self.app.store,
            client,
            &self.app.config,
            &self.shutdown,
            Mode::Apply,
        )
        .await?;
        self.record_icps(&view).await;
        if let Some(kept) = kept {
            let drift = view.drift_from(&kept);
            if drift > 0 {
                info!(
                    sip_users = drift,
                    "SIP users changed on the MBG by someone else since the last full reconcile"
                );
            }
            telemetry::mbg_drift(drift as u64);
        }
        let config = &self.app.config;
        let scope = Scope {
            only: None,
            honour_backoff: true,
            progress: Some(progress),
            count_done_only: true,
        };
        let report = reconcile::run_pass_with(
            &self.app.store,
            client,
            config,
            Mode::Apply,
            &self.shutdown,
            now,
            &mut view,
            &scope,
            Some(full),
        )
        .await;
        let interval = config.reconcile.interval;
        let report = self.keep_if_current(view, report)?;
        self.next_full = self.app.clock.instant() + interval;
        if report.succeeded() {
            self.health.update(|h| h.last_full_reconcile = Some(now));
            telemetry::full_reconcile_done(now);
        }
        self.prune_audit(now).await;
        log_pass("full reconcile", &report);
        Ok(report)
    }

    /// Rows changed behind the change log's back (see [`RowIndex`]): counted, logged, and shown
    /// in the health until a full reconcile finds none.
    fn note_unlogged_changes(&mut self, report: &PassReport, full: bool) {
        let unlogged = self.rows.fold(&report.extensions, &report.changed, full);
        telemetry::unexpected_row_changes(unlogged.len() as u64);
        if unlogged.is_empty() {
            if full {
                self.health.update(|h| h.clear(Concern::UnloggedChanges));
            }
            return;
        }
        const NAMED: usize = 10;
        let mut named = String::new();
        for (i, row) in unlogged.iter().take(NAMED).enumerate() {
            let comma = if i == 0 { "" } else { ", " };
            let _ = write!(named, "{comma}{} on {}", row.number, row.node_name);
        }
        if unlogged.len() > NAMED {
            let _ = write!(named, " and {} more", unlogged.len() - NAMED);
        }
        let why = format!(
            "{} extension rows changed without the change log recording it (a write with the triggers off, or a restore?): {named}; changes like these reach the MBG only at the full reconcile",
            unlogged.len()
        );
        warn!("{why}");
        self.health
            .update(|h| h.set(Concern::UnloggedChanges, Severity::Degraded, why));
    }

    /// Reads the MBG afresh, and records its ICPs (see [`Worker::record_icps`]).
    async fn read_view(&self, client: &MbgClient) -> Result<MbgView, ReconcileError> {
        let view = reconcile::MbgView::read(client, &self.app.config, &self.shutdown).await?;
        self.record_icps(&view).await;
        Ok(view)
    }

    /// Records the MBG's ICPs for the console (a standby's too, which never asks the MBG). A
    /// failed record costs the console its ICP column, not the pass.
    async fn record_icps(&self, view: &MbgView) {
        let seen_at = self.app.clock.now();
        let icps: Vec<RecordedIcp> = view
            .icps
            .iter()
            .map(|icp| RecordedIcp {
                guid: icp.guid.clone(),
                name: icp.name.clone(),
                address: icp.address.clone(),
                seen_at,
            })
            .collect();
        if let Err(e) = self.app.store.record_icps(&icps).await {
            warn!(error = %e, "cannot record the MBG's ICPs for the console");
        }
    }

    /// Deletes audit entries past `audit.keep` / `audit.keep_security`. A failure is logged and
    /// tried again at the next full reconcile; it never stops the work.
    async fn prune_audit(&self, now: i64) {
        let audit = &self.app.config.audit;
        let age =
            |keep: Duration| now.saturating_sub(i64::try_from(keep.as_secs()).unwrap_or(i64::MAX));
        match self
            .app
            .store
            .prune_audit(age(audit.keep), age(audit.keep_security))
            .await
        {
            Ok(0) => {}
            Ok(deleted) => info!(
                deleted,
                "audit entries past audit.keep / audit.keep_security deleted"
            ),
            Err(e) => {
                warn!(error = %e, "cannot prune the audit log; trying again at the next full reconcile")
            }
        }
    }

    /// Keeps the view for the next targeted pass if the pass succeeded (a failed one may have
    /// changed the MBG without the view hearing of it): a change then costs no read of the
    /// MBG's device list, whatever its size.
    fn keep_if_current(
        &mut self,
        view: MbgView,
        report: Result<PassReport, ReconcileError>,
    ) -> Result<PassReport, ReconcileError> {
        self.view = report.is_ok().then_some(view);
        report
    }

    /// Reconciles the extensions named by recorded changes and the failed ones now due, against
    /// the cached view of the MBG (read afresh when there is none).
    async fn targeted_pass(
        &mut self,
        client: &MbgClient,
        now: i64,
        ids: HashSet<i64>,
        progress: Arc<Progress>,
    ) -> Result<PassReport, ReconcileError> {
        let scope = Scope {
            only: Some(ids),
            honour_backoff: false,
            progress: Some(progress),
            count_done_only: true,
        };
        let mut view = match self.view.take() {
            Some(view) => view,
            None => self.read_view(client).await?,
        };
        let report = reconcile::run_pass_with(
            &self.app.store,
            client,
            &self.app.config,
            Mode::Apply,
            &self.shutdown,
            now,
            &mut view,
            &scope,
            None,
        )
        .await;
        let report = self.keep_if_current(view, report)?;
        log_pass("changes applied", &report);
        Ok(report)
    }

    /// The renewal job: renews when the stored expiry is inside `token.renew_within_days`.
    async fn renew(&mut self) {
        if self.blocked.is_some() {
            return;
        }
        let config = &self.app.config;
        let now = self.app.clock.now();
        let generation = self
            .app
            .store
            .mbg_settings()
            .await
            .map(|s| s.token_generation);
        match token::renew_if_due(
            &self.app.store,
            config,
            now,
            Some(config.token.renew_within_days),
        )
        .await
        {
            Ok(renewal) => {
                info!(%renewal, "token renewal job");
                let outcome = match &renewal {
                    token::Renewal::NotDue { .. } => None,
                    token::Renewal::Renewed { .. } => Some("ok"),
                    token::Renewal::NotOffered { .. } => Some("needs a human"),
                };
                if let Some(outcome) = outcome {
                    self.audit_renewal(now, outcome, &renewal.to_string()).await;
                }
                let needs_human = renewal.needs_human().then(|| renewal.to_string());
                self.health.update(|h| match needs_human {
                    Some(why) => h.set(
                        Concern::TokenRenewal,
                        Severity::Degraded,
                        format!("needs a human: {why}"),
                    ),
                    None => h.clear(Concern::TokenRenewal),
                });
                self.client = None;
            }
            Err(token::TokenError::Mbg(e)) if matches!(e.kind, MbgErrorKind::Unauthorized(_)) => {
                if let Ok(generation) = generation {
                    self.token_refused(generation, &e).await;
                }
            }
            Err(e) => {
                warn!(error = %e, "token renewal job failed; it runs again at its next time");
                self.audit_renewal(now, "failed", &e.to_string()).await;
            }
        }
        self.report_token().await;
    }

    /// Records a run of the renewal job that did something (renewed, failed, or found that a
    /// person must renew), for the console's dashboard and the audit page.
    async fn audit_renewal(&self, now: i64, outcome: &str, detail: &str) {
        let entry = crate::store::AuditEntry {
            at: now,
            actor: None,
            extension: None,
            action: token::RENEWAL_JOB.to_string(),
            outcome: outcome.to_string(),
            detail: Some(detail.to_string()),
            repeats: 1,
            last_at: None,
        };
        if let Err(e) = self.app.store.audit(&entry).await {
            warn!(error = %e, "cannot record the renewal job's run in the audit log");
        }
    }

    /// SIGHUP, whatever the role: reads the configuration file again (off the runtime: a slow
    /// disk must not stall the work), applies what can be applied and names in a warning, and
    /// in `/healthz` until a restart, each changed key that needs one. A bad file is refused and
    /// the running configuration kept.
    pub(crate) async fn reload(&mut self) {
        let path = self.app.config_path.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(path.as_deref())).await;
        let config = match loaded {
            Ok(Ok(config)) => config,
            Ok(Err(e)) => {
                error!(error = %e, "the new configuration is refused; keeping the old one");
                return;
            }
            Err(e) => {
                error!(error = %e, "cannot read the configuration again; keeping the old one");
                return;
            }
        };
        let schedule = self.app.config.token.renew_schedule.clone();
        let needs_restart = self.app.config.reload(config);
        self.renewal_due = renewal_after_reload(
            self.renewal_due,
            &schedule,
            &self.app.config,
            self.app.clock.utc(),
        );
        self.link
            .config
            .send_replace(Arc::new(self.app.config.clone()));
        self.health.set_grace(self.app.config.health.grace);
        self.client = None;
        // What the operator changed may be what the failed passes needed.
        self.retry_passes_now();
        if needs_restart.is_empty() {
            info!("configuration reloaded");
            self.health.update(|h| h.clear(Concern::RestartPending));
        } else {
            let keys = needs_restart.join(", ");
            warn!(
                keys = %keys,
                "configuration reloaded, except keys that apply only at the next restart: {keys}"
            );
            self.health.update(|h| {
                h.set(
                    Concern::RestartPending,
                    Severity::Degraded,
                    format!("changed in the file, applied only after a restart: {keys}"),
                )
            });
        }
    }

    /// Forgets the failed passes' backoff: something changed that they may have been waiting for.
    fn retry_passes_now(&mut self) {
        (self.failed_in_a_row, self.no_pass_before) = (0, self.app.clock.instant());
    }

    /// The client for the stored token, rebuilt when the token changes.
    async fn client(&mut self) -> Option<(i64, MbgClient)> {
        let settings = match self.app.store.mbg_settings().await {
            Ok(settings) => settings,
            Err(e) => {
                self.database_failed(&e.to_string());
                return None;
            }
        };
        self.report_token_of(&settings);
        let status = TokenStatus::of(&settings, self.app.clock.now());
        if !status.is_usable() {
            self.blocked = Some((
                settings.token_generation,
                self.app.clock.instant() + self.app.config.token.recheck_interval,
            ));
            return None;
        }
        if let Some((generation, client)) = &self.client
            && *generation == settings.token_generation
        {
            return Some((*generation, client.clone()));
        }
        match token::client(&self.app.config, &settings) {
            Ok(client) => {
                let mut client = client.with_observer(self.health.clone());
                if let Some(lease) = &self.lease {
                    client = client.with_lease(lease.clone());
                }
                self.client = Some((settings.token_generation, client.clone()));
                Some((settings.token_generation, client))
            }
            Err(e) => {
                error!(error = %e, "cannot build the MBG client");
                self.health
                    .update(|h| h.mbg.failed(wall_clock(), e.to_string()));
                None
            }
        }
    }

    /// A 401: stop calling the MBG, keep every pending change, and wait for a new token.
    async fn token_refused(&mut self, generation: i64, error: &MbgError) {
        warn!(error = %error, "the MBG refused the access token: no more MBG calls until a new token is stored");
        if let Err(e) =
            token::record_refusal(&self.app.store, generation, error, self.app.clock.now()).await
        {
            warn!(error = %e, "cannot record the refusal");
        }
        self.blocked = Some((
            generation,
            self.app.clock.instant() + self.app.config.token.recheck_interval,
        ));
        self.client = None;
        self.report_token().await;
    }

    /// Whether a token other than the refused one is stored and usable.
    async fn token_replaced(&mut self, refused: i64) -> bool {
        match self.app.store.mbg_settings().await {
            Ok(settings) => {
                self.report_token_of(&settings);
                settings.token_generation != refused
                    && TokenStatus::of(&settings, self.app.clock.now()).is_usable()
            }
            Err(e) => {
                self.database_failed(&e.to_string());
                false
            }
        }
    }

    async fn report_token(&self) {
        if let Ok(settings) = self.app.store.mbg_settings().await {
            self.report_token_of(&settings);
        }
    }

    fn report_token_of(&self, settings: &crate::store::MbgSettings) {
        let now = self.app.clock.now();
        let status = TokenStatus::of(settings, now);
        let warning = status.warning(self.app.config.token.renew_within_days);
        let usable = status.is_usable();
        let days_left = settings.token_expires_at.map(|at| (at - now) / 86_400);
        if let Some(expires_at) = settings.token_expires_at {
            telemetry::token_expiry(expires_at, now);
        }
        telemetry::token_needs_attention(!usable || warning.is_some());
        let state = serde_json::to_value(&status)
            .ok()
            .and_then(|v| v.get("state").and_then(|s| s.as_str().map(str::to_string)))
            .unwrap_or_default();
        self.health.update(|h| {
            h.token.state = state;
            h.token.days_left = days_left;
            h.token.problem = (!usable).then(|| status.to_string());
            match usable {
                true => h.clear(Concern::Token),
                false => h.set(Concern::Token, Severity::Unhealthy, status.to_string()),
            }
            match warning {
                Some(warning) => h.set(Concern::TokenExpiry, Severity::Degraded, warning),
                None => h.clear(Concern::TokenExpiry),
            }
        });
    }

    async fn report_queue(&mut self) {
        // Counting every row by state costs in proportion to the database: at most once per
        // STATE_COUNT_EVERY, not after each change (a scrape is 15 s or more apart anyway).
        if self
            .states_counted
            .is_none_or(|at| self.app.clock.instant() - at >= STATE_COUNT_EVERY)
            && let Ok(counts) = self.app.store.count_by_state().await
        {
            telemetry::extensions_by_state(&counts);
            self.states_counted = Some(self.app.clock.instant());
        }
        match self.app.store.queue_depth().await {
            Ok(depth) => self
                .health
                .update(|h| h.queue_depth = usize::try_from(depth).unwrap_or(0)),
            Err(e) => self.database_failed(&e.to_string()),
        }
    }

    fn database_failed(&self, why: &str) {
        self.health
            .update(|h| h.database.failed(wall_clock(), why.to_string()));
    }

    /// The idle check: one `SELECT 1` and one signed GET, so that a database or an MBG that
    /// went away shows in `/healthz` within `health.grace` even when nothing changes. A
    /// `SELECT 1` does not prove that writes work: while a pass fails to write, only the next
    /// pass that writes may clear the failure.
    async fn probe(&mut self) {
        match self.app.store.ping().await {
            Err(e) => self.database_failed(&e.to_string()),
            Ok(()) if !self.database_writes_failing => {
                self.health.update(|h| h.database.succeeded(wall_clock()));
            }
            Ok(()) => {}
        }
        if self.blocked.is_none()
            && let Some((_, client)) = self.client().await
        {
            // The client reports the answer, or its absence, to the health itself.
            let _ = client.ping().await;
        }
        self.report_queue().await;
        // Code run once (a large pass, a statement prepared again after the pass cleared the
        // caches) or every few seconds stays mapped, counted in the resident size, until
        // unmapped: an idle daemon keeps mapped only what its polls run between two checks.
        // The pages stay in the OS's cache (charged to the service's cgroup all the same);
        // short of memory, the kernel may drop them sooner than mapped code, and the next
        // check reads back from the disk what it runs.
        crate::memory::release_code_pages();
        crate::memory::release_free_heap();
    }
}

/// Health times are the wall clock's, as `/healthz` judges them (not the app's clock, which
/// tests move).
fn wall_clock() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The renewal job's next run (UTC) strictly after `after`; `None` for a schedule that never
/// runs.
fn next_renewal(config: &Config, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    config.token.renew_schedule.schedule().after(&after).next()
}

/// The renewal run to wait for once the configuration is read again: a run already due stays
/// due (a SIGHUP during a pass that crossed 03:00 must not skip the day's run), unless the
/// schedule itself changed.
fn renewal_after_reload(
    due: Option<DateTime<Utc>>,
    schedule_before: &crate::config::CronSchedule,
    config: &Config,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if config.token.renew_schedule.expression() == schedule_before.expression() {
        due
    } else {
        next_renewal(config, now)
    }
}

/// SIGHUP, when it could be subscribed to.
pub(crate) type Hangups = Option<tokio::signal::unix::Signal>;

pub(crate) async fn hangup(signal: &mut Hangups) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

fn log_pass(what: &str, report: &PassReport) {
    let Some(applied) = &report.applied else {
        return;
    };
    let outcomes = applied.outcomes.len() + applied.done_not_kept;
    if outcomes == 0 && report.bad_rows.is_empty() {
        return;
    }
    info!(
        outcomes,
        done = applied.done_not_kept,
        calls = applied.calls,
        bad_rows = report.bad_rows.len(),
        "{what}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn a_reload_keeps_a_renewal_run_already_due_unless_the_schedule_changed() {
        let mut config = Config::default();
        let daily = config.token.renew_schedule.clone();
        let due = Some(at("2026-12-02T03:00:00Z"));
        // A pass ran across 03:00; the SIGHUP comes at 03:00:05, before the leader's loop ran
        // the job. Recomputing from "now" would give tomorrow's 03:00.
        let now = at("2026-12-02T03:00:05Z");
        assert_eq!(renewal_after_reload(due, &daily, &config, now), due);
        assert_eq!(
            next_renewal(&config, now),
            Some(at("2026-12-03T03:00:00Z")),
            "what a recomputation would have waited for"
        );
        config.token.renew_schedule = "0 30 4 * * *".parse().unwrap();
        assert_eq!(
            renewal_after_reload(due, &daily, &config, now),
            Some(at("2026-12-02T04:30:00Z")),
            "a new schedule runs at its own next time"
        );
    }

    #[test]
    fn failed_passes_in_a_row_wait_longer_up_to_the_full_pass_retry() {
        let poll = Duration::from_secs(1);
        let waits: Vec<u64> = (1..=8).map(|n| pass_backoff(poll, n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(pass_backoff(poll, u32::MAX), FULL_PASS_RETRY);
        assert_eq!(
            pass_backoff(Duration::from_millis(200), 1),
            Duration::from_millis(200),
            "the first retry comes at the next poll, as before"
        );
    }
}
