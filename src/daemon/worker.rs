//! The leader's work: one loop that waits for the first of its reasons to act (a change, a due
//! retry, the full reconcile, the renewal job, a token check, SIGHUP), then acts, one pass at a
//! time. Every pass is raced against the leader lock: losing the lock drops the pass, and with it
//! every MBG call in flight.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::app::App;
use crate::config::Config;
use crate::health::HealthState;
use crate::mbg::{MbgClient, MbgError, MbgErrorKind};
use crate::reconcile::{self, MbgView, Mode, PassReport, ReconcileError, Scope};
use crate::shutdown::Shutdown;
use crate::store::PassLock;
use crate::token::{self, TokenStatus};
use crate::{systemd, telemetry};

/// After a full pass fails (the MBG unreachable past `mbg.retry_deadline`), try again this soon.
const FULL_PASS_RETRY: Duration = Duration::from_secs(30);
/// Most changes taken into one targeted pass; the rest wait for the next.
const BATCH: u32 = 10_000;
/// The view of the MBG is kept between passes only up to this many SIP users. A larger site's
/// targeted passes read the device list afresh instead (one request): 100,000 SIP users take
/// some 50 MB to keep, for a daemon that is idle most of its life.
const VIEW_CACHE_MAX_DEVICES: usize = 20_000;

pub enum Ended {
    Stopped,
    LostLeadership,
}

pub struct Worker {
    pub app: App,
    health: HealthState,
    shutdown: Shutdown,
    wake: Arc<Notify>,
    /// The MBG as last seen; `None` until a full pass read it.
    view: Option<MbgView>,
    /// The client and the token generation it signs with.
    client: Option<(i64, MbgClient)>,
    next_full: Instant,
    /// When the next failed extension is due; recomputed after each pass, since only passes
    /// (this leader's) write retry times.
    retry_at: Instant,
    /// Set after a 401: the generation refused, and when to look for a new token.
    blocked: Option<(i64, Instant)>,
}

/// What the loop woke up for.
enum Wake {
    Work,
    Renew,
    Reload,
    Watchdog,
}

impl Worker {
    pub fn new(app: App, health: HealthState, shutdown: Shutdown, wake: Arc<Notify>) -> Worker {
        Worker {
            app,
            health,
            shutdown,
            wake,
            view: None,
            client: None,
            next_full: Instant::now(),
            retry_at: Instant::now(),
            blocked: None,
        }
    }

    pub async fn lead(&mut self, lock: &mut PassLock) -> Ended {
        // A new leader trusts nothing it saw before: full pass first.
        self.view = None;
        self.next_full = Instant::now();
        let mut hangups =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            let wake = {
                let poll = tokio::time::sleep(self.app.config.watch.poll_interval);
                // Only timers in the future: a past one would spin the loop.
                let due = match self.blocked {
                    Some((_, recheck)) => recheck,
                    None => self.next_full.min(self.retry_at),
                };
                let renewal = next_cron(&self.app.config);
                // Pinged from this loop, not from a timer of its own: a loop that hangs must
                // get the daemon restarted.
                let watchdog = systemd::watchdog_interval()
                    .map_or(Instant::now() + Duration::from_secs(86_400), |every| {
                        Instant::now() + every
                    });
                tokio::select! {
                    _ = self.shutdown.triggered() => return Ended::Stopped,
                    _ = lock.lost() => return Ended::LostLeadership,
                    _ = self.wake.notified() => Wake::Work,
                    _ = poll => Wake::Work,
                    _ = tokio::time::sleep_until(due) => Wake::Work,
                    _ = tokio::time::sleep_until(renewal) => Wake::Renew,
                    _ = hangup(&mut hangups) => Wake::Reload,
                    _ = tokio::time::sleep_until(watchdog) => Wake::Watchdog,
                }
            };
            let step = async {
                match wake {
                    Wake::Work => self.work().await,
                    Wake::Renew => self.renew().await,
                    Wake::Reload => self.reload(),
                    Wake::Watchdog => {}
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

    /// When the next failed extension is due (capped: a far retry must not park the loop).
    async fn next_retry(&self) -> Instant {
        let cap = Instant::now() + self.app.config.reconcile.interval;
        let Ok(Some(at)) = self.app.store.next_retry_at().await else {
            return cap;
        };
        let wait = (at - self.app.clock.now()).max(0) as u64;
        // +1 s: `next_attempt_at` is in whole seconds; waking early would find nothing due.
        (Instant::now() + Duration::from_secs(wait + 1)).min(cap)
    }

    async fn work(&mut self) {
        let now = self.app.clock.now();
        if let Some((refused, recheck)) = self.blocked {
            if Instant::now() < recheck {
                return;
            }
            if !self.token_replaced(refused).await {
                self.blocked = Some((
                    refused,
                    Instant::now() + self.app.config.token.recheck_interval,
                ));
                return;
            }
            info!("a new access token is stored: resuming");
            self.blocked = None;
            self.client = None;
            self.next_full = Instant::now();
        }
        let full = Instant::now() >= self.next_full;
        // The common case, every poll: one query, and nothing to do.
        let targets = if full {
            None
        } else {
            let targets = self.targets(now).await;
            if Instant::now() >= self.retry_at {
                self.retry_at = self.next_retry().await;
            }
            match targets {
                Ok(ids) if ids.is_empty() => return,
                Ok(ids) => Some(ids),
                Err(e) => {
                    self.unhealthy_database(&e.to_string());
                    return;
                }
            }
        };
        let Some((generation, client)) = self.client().await else {
            if full {
                self.next_full = Instant::now() + FULL_PASS_RETRY;
            }
            return;
        };
        let result = match targets {
            None => self.full_pass(&client, now).await,
            Some(ids) => self.targeted_pass(&client, now, ids).await,
        };
        match result {
            Ok(report) => {
                if let Some(applied) = &report.applied {
                    reconcile::count_outcomes(&applied.outcomes);
                }
                self.health.update(|h| {
                    h.mbg.ok = true;
                    h.mbg.error = None;
                    h.mbg.checked_at = Some(now);
                });
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
                if let Some(mbg) = e.mbg()
                    && matches!(mbg.kind, MbgErrorKind::Unauthorized(_))
                {
                    self.token_refused(generation, mbg).await;
                    return;
                }
                error!(error = %e, "pass failed");
                let message = e.to_string();
                self.health.update(|h| {
                    h.mbg.ok = e.mbg().is_none();
                    h.mbg.error = Some(message);
                    h.mbg.checked_at = Some(now);
                });
                if full {
                    self.next_full = Instant::now() + FULL_PASS_RETRY;
                }
            }
        }
        self.retry_at = self.next_retry().await;
        self.report_queue().await;
        // The pass's rows, plan and report are dropped by now: what they held goes back to the
        // system rather than staying in an idle daemon's resident size.
        crate::memory::release_free_heap();
    }

    /// The extensions named by recorded changes, and the failed (or pending) ones now due.
    async fn targets(&self, now: i64) -> Result<HashSet<i64>, crate::store::StoreError> {
        let store = &self.app.store;
        let changes = store.pending_changes(BATCH).await?;
        telemetry::changes_seen(changes.len() as u64);
        let mut ids: HashSet<i64> = changes.iter().map(|c| c.extension_id).collect();
        if Instant::now() >= self.retry_at {
            ids.extend(store.due_retries(now).await?);
        }
        Ok(ids)
    }

    /// Reads the MBG afresh and reconciles every extension (failed ones only when due).
    async fn full_pass(
        &mut self,
        client: &MbgClient,
        now: i64,
    ) -> Result<PassReport, ReconcileError> {
        let config = &self.app.config;
        let mut view = MbgView::read(client, config, &self.shutdown).await?;
        let scope = Scope {
            only: None,
            honour_backoff: true,
            progress: None,
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
        )
        .await;
        let interval = config.reconcile.interval;
        let report = self.keep_if_current(view, report)?;
        self.next_full = Instant::now() + interval;
        if report.succeeded() {
            self.health.update(|h| h.last_full_reconcile = Some(now));
            telemetry::full_reconcile_done(now);
        }
        log_pass("full reconcile", &report);
        Ok(report)
    }

    /// Keeps the view for the next targeted pass if the pass succeeded (a failed one may have
    /// changed the MBG without the view hearing of it) and the view is small enough.
    fn keep_if_current(
        &mut self,
        view: MbgView,
        report: Result<PassReport, ReconcileError>,
    ) -> Result<PassReport, ReconcileError> {
        self.view =
            (report.is_ok() && view.devices.len() <= VIEW_CACHE_MAX_DEVICES).then_some(view);
        report
    }

    /// Reconciles the extensions named by recorded changes and the failed ones now due, against
    /// the cached view of the MBG (read afresh when there is none).
    async fn targeted_pass(
        &mut self,
        client: &MbgClient,
        now: i64,
        ids: HashSet<i64>,
    ) -> Result<PassReport, ReconcileError> {
        let scope = Scope {
            only: Some(ids),
            honour_backoff: false,
            progress: None,
        };
        let mut view = match self.view.take() {
            Some(view) => view,
            None => MbgView::read(client, &self.app.config, &self.shutdown).await?,
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
                let needs_human = renewal.needs_human().then(|| renewal.to_string());
                self.health.update(|h| {
                    h.degraded.retain(|d| !d.starts_with("token renewal"));
                    if let Some(why) = needs_human {
                        h.degraded
                            .push(format!("token renewal needs a human: {why}"));
                    }
                });
                self.client = None;
            }
            Err(token::TokenError::Mbg(e)) if matches!(e.kind, MbgErrorKind::Unauthorized(_)) => {
                if let Ok(generation) = generation {
                    self.token_refused(generation, &e).await;
                }
            }
            Err(e) => warn!(error = %e, "token renewal job failed; it runs again at its next time"),
        }
        self.report_token().await;
    }

    /// SIGHUP: reads the configuration file again; a bad one is refused and the old one kept.
    fn reload(&mut self) {
        match Config::load(self.app.config_path.as_deref()) {
            Ok(config) => {
                info!("configuration reloaded");
                self.app.config = config;
                self.client = None;
            }
            Err(e) => error!(error = %e, "the new configuration is refused; keeping the old one"),
        }
    }

    /// The client for the stored token, rebuilt when the token changes.
    async fn client(&mut self) -> Option<(i64, MbgClient)> {
        let settings = match self.app.store.mbg_settings().await {
            Ok(settings) => settings,
            Err(e) => {
                self.unhealthy_database(&e.to_string());
                return None;
            }
        };
        self.report_token_of(&settings);
        let status = TokenStatus::of(&settings, self.app.clock.now());
        if !status.is_usable() {
            self.blocked = Some((
                settings.token_generation,
                Instant::now() + self.app.config.token.recheck_interval,
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
                self.client = Some((settings.token_generation, client.clone()));
                Some((settings.token_generation, client))
            }
            Err(e) => {
                error!(error = %e, "cannot build the MBG client");
                self.health.update(|h| h.mbg.error = Some(e.to_string()));
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
            Instant::now() + self.app.config.token.recheck_interval,
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
                self.unhealthy_database(&e.to_string());
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
            h.unhealthy.retain(|u| !u.starts_with("token:"));
            if !usable {
                h.unhealthy.push(format!("token: {status}"));
            }
            h.degraded.retain(|d| !d.starts_with("token expiry:"));
            if let Some(warning) = warning {
                h.degraded.push(format!("token expiry: {warning}"));
            }
        });
    }

    async fn report_queue(&self) {
        if let Ok(counts) = self.app.store.count_by_state().await {
            telemetry::extensions_by_state(&counts);
        }
        match self.app.store.queue_depth().await {
            Ok(depth) => self.health.update(|h| {
                h.queue_depth = usize::try_from(depth).unwrap_or(0);
                h.database.ok = true;
                h.database.error = None;
                h.database.checked_at = Some(self.app.clock.now());
                h.unhealthy.retain(|u| !u.starts_with("database:"));
            }),
            Err(e) => self.unhealthy_database(&e.to_string()),
        }
    }

    fn unhealthy_database(&self, why: &str) {
        let now = self.app.clock.now();
        self.health.update(|h| {
            h.database.ok = false;
            h.database.error = Some(why.to_string());
            h.database.checked_at = Some(now);
            h.unhealthy.retain(|u| !u.starts_with("database:"));
            h.unhealthy.push(format!("database: {why}"));
        });
    }
}

/// The next run of the renewal job (UTC), as an instant, just after the scheduled second so
/// that the next lookup after the run finds the following time, never the same one again.
fn next_cron(config: &Config) -> Instant {
    let now = chrono::Utc::now();
    match config.token.renew_schedule.schedule().after(&now).next() {
        Some(at) => {
            let wait = (at - now).to_std().unwrap_or_default();
            Instant::now() + wait + Duration::from_millis(1)
        }
        None => Instant::now() + Duration::from_secs(365 * 86_400),
    }
}

async fn hangup(signal: &mut Option<tokio::signal::unix::Signal>) {
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
    if applied.outcomes.is_empty() && report.bad_rows.is_empty() {
        return;
    }
    info!(
        outcomes = applied.outcomes.len(),
        calls = applied.calls,
        bad_rows = report.bad_rows.len(),
        "{what}"
    );
}
