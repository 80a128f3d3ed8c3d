//! `sync`: one reconcile pass, under the pass lock, then exit.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mbg_provision::app::App;
use mbg_provision::reconcile::{self, Mode, PassReport, Progress, ReconcileError, Scope, Status};
use mbg_provision::shutdown::{self, Shutdown};
use mbg_provision::store::{BadRow, LeaseTerms};
use mbg_provision::token;
use serde::Serialize;

use super::context::{record_refusal, signed_client};
use super::output::{NEEDS_ATTENTION, print_bad_rows, print_json};
use super::report::{describe, print_plan, print_results};

/// `sync --json`: the pass's plan and how each action ended.
#[derive(Serialize)]
pub struct SyncOutput<'a> {
    /// `true` for `--dry-run`: nothing was changed and `results` is `null`.
    dry_run: bool,
    /// Every action the pass planned, problems included, in the order they were planned.
    plan: Vec<PlannedAction<'a>>,
    /// How each action applied ended; `null` on a dry run.
    results: Option<Vec<ActionResult<'a>>>,
    /// Extension rows that cannot be used (see `status --json`); their SIP users are left alone.
    bad_rows: &'a [BadRow],
    /// Something needs a human: a problem in the plan, an action that needs attention, a bad row
    /// (exit code 2).
    needs_attention: bool,
    /// No action failed (exit code 1 otherwise).
    succeeded: bool,
}

/// One planned action of `sync --json`.
#[derive(Serialize)]
struct PlannedAction<'a> {
    /// `create`, `update`, `adopt`, `delete`, `forget` or `problem`.
    action: &'static str,
    /// The extension number.
    extension: &'a str,
    /// The SIP user acted on, when there is one already (not for `create`).
    guid: Option<&'a str>,
    /// For people: where it goes, what changes, or how to fix the problem.
    detail: String,
}

/// How one action ended, in `sync --json`.
#[derive(Serialize)]
struct ActionResult<'a> {
    /// The action's verb, as in `plan`.
    action: &'static str,
    /// The extension number.
    extension: &'a str,
    /// `done`, `failed` (retried later), `needsattention`, `skipped` (not attempted: the token
    /// was refused or a stop was asked) or `stale` (done, but the row changed meanwhile; the
    /// next pass plans from the new row).
    status: &'static str,
    /// What happened: the guid, the MBG's message, the fix. Never a secret.
    detail: &'a str,
}

impl<'a> SyncOutput<'a> {
    fn of(report: &'a PassReport) -> Self {
        SyncOutput {
            dry_run: report.applied.is_none(),
            plan: report
                .plan
                .actions
                .iter()
                .map(|a| PlannedAction {
                    action: a.verb(),
                    extension: a.number(),
                    guid: a.target_guid(),
                    detail: describe(report, a),
                })
                .collect(),
            results: report.applied.as_ref().map(|applied| {
                applied
                    .outcomes
                    .iter()
                    .map(|o| ActionResult {
                        action: o.verb,
                        extension: &o.number,
                        status: status_name(&o.status),
                        detail: &o.detail,
                    })
                    .collect()
            }),
            bad_rows: &report.bad_rows,
            needs_attention: report.needs_attention(),
            succeeded: report.succeeded(),
        }
    }
}

fn status_name(status: &Status) -> &'static str {
    match status {
        Status::Done => "done",
        Status::Failed => "failed",
        Status::NeedsAttention => "needsattention",
        Status::Skipped => "skipped",
        Status::Stale => "stale",
    }
}

/// Passes with more changes than this show their progress.
const PROGRESS_FROM: usize = 50;

/// How a pass's progress is shown.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Display {
    None,
    /// A bar on the terminal.
    Bar,
    /// A line to stderr at each tenth (logs, CI, systemd).
    Lines,
}

/// Shows `progress` until dropped (the pass it watches has ended).
async fn show_progress(progress: &Progress, display: Display) {
    if display == Display::None {
        // Never ends: the pass it races against does.
        return std::future::pending().await;
    }
    let mut tenths = 0;
    let mut bar: Option<indicatif::ProgressBar> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (finished, total) = (progress.finished(), progress.total());
        if total <= PROGRESS_FROM {
            continue;
        }
        match display {
            Display::None => unreachable!("waited above"),
            Display::Bar => {
                let bar = bar.get_or_insert_with(|| {
                    indicatif::ProgressBar::new(total as u64).with_style(
                        indicatif::ProgressStyle::with_template(
                            "sync {bar:40} {pos}/{len} changes, {eta} left",
                        )
                        .expect("a valid template"),
                    )
                });
                bar.set_position(finished as u64);
            }
            Display::Lines => {
                let now = finished * 10 / total;
                if now > tenths {
                    tenths = now;
                    eprintln!("sync: {finished}/{total} changes finished");
                }
            }
        }
    }
}

pub async fn run(
    app: &App,
    dry_run: bool,
    wait: Duration,
    quiet: bool,
    json: bool,
) -> Result<ExitCode> {
    let (client, generation) = signed_client(app).await?;
    let shutdown = Shutdown::new();
    shutdown
        .on_signals()
        .context("cannot listen for SIGINT/SIGTERM")?;
    let mode = if dry_run { Mode::DryRun } else { Mode::Apply };
    let store = &app.store;
    // A dry run changes nothing, so it needs no lock and never waits.
    let lock = match mode {
        Mode::DryRun => None,
        Mode::Apply => {
            let waiting = store.lock_passes(LeaseTerms::of(&app.config), wait, |holder| {
                eprintln!(
                    "waiting up to {} s for the pass running on this database ({}) to end",
                    wait.as_secs(),
                    holder.map_or("holder unknown".to_string(), |h| h.to_string())
                );
            });
            let lock = tokio::select! {
                lock = waiting => lock?,
                _ = shutdown.triggered() => return Ok(signal_exit(&shutdown)),
            };
            Some(lock)
        }
    };
    // Calls only while the lock's lease holds, and after the previous holder's have ended.
    let client = match &lock {
        Some(lock) => client.with_lease(lock.lease()),
        None => client,
    };
    let progress = Arc::new(Progress::default());
    let display = if quiet || json || dry_run {
        Display::None
    } else if std::io::stderr().is_terminal() {
        Display::Bar
    } else {
        Display::Lines
    };
    let previous_uncertain = lock.as_ref().and_then(|l| l.previous_uncertain_until());
    let one_pass = async || {
        let (mut view, full) =
            reconcile::read_full(store, &client, &app.config, &shutdown, mode).await?;
        let scope = Scope {
            progress: Some(progress.clone()),
            ..Scope::default()
        };
        let now = app.clock.now();
        let pass = reconcile::run_pass_with(
            store,
            &client,
            &app.config,
            mode,
            &shutdown,
            now,
            &mut view,
            &scope,
            Some(full),
        );
        tokio::select! {
            result = pass => result,
            () = show_progress(&progress, display) => unreachable!("shows until the pass ends"),
        }
    };
    let pass = async {
        let mut report = one_pass().await?;
        if mode == Mode::DryRun {
            return Ok(report);
        }
        // A create whose answer was lost (ours, or a killed holder's) may land after the device
        // list was read: read it again once none can, and delete the late copies, before
        // saying that the MBG holds what the database says.
        let Some(settle_at) = report.uncertain_until().max(previous_uncertain) else {
            return Ok(report);
        };
        if !quiet && !json {
            eprintln!(
                "a create's answer was lost (here or in a pass that was killed): reading the MBG again in {} s for late copies",
                settle_at
                    .saturating_duration_since(std::time::Instant::now())
                    .as_secs()
                    .max(1)
            );
        }
        tokio::select! {
            _ = tokio::time::sleep_until(settle_at.into()) => {}
            _ = shutdown.triggered() => return Err(ReconcileError::Interrupted),
        }
        report.absorb_follow_up(one_pass().await?);
        Ok(report)
    };
    let (result, lock) = match lock {
        None => (pass.await, None),
        // Losing the lock (its connection ended by the server, an idle timeout, a failover)
        // lets another pass start: stop calling the MBG at once, dropping the calls in flight.
        Some(mut lock) => tokio::select! {
            result = pass => (result, Some(lock)),
            _ = lock.lost() => bail!(
                "lost the pass lock (its database connection ended): stopped calling the MBG; run sync again"
            ),
        },
    };
    match (lock, &result) {
        // A create of the failed pass may still land: the lock is left as a killed holder
        // leaves it, so that the next holder waits for that and reads the MBG again.
        (Some(lock), Err(e)) if e.uncertain_until().is_some() => drop(lock),
        (Some(lock), _) => lock.release().await,
        (None, _) => {}
    }
    let report = match result {
        Ok(report) => report,
        Err(ReconcileError::Interrupted) => return Ok(signal_exit(&shutdown)),
        Err(e) => {
            if let Some(error) = e.mbg() {
                record_refusal(app, generation, error).await?;
            }
            return Err(e).context("sync failed");
        }
    };
    if let Some(waiting) = report.waiting {
        eprintln!(
            "{} extension(s) had failed and were waiting for their retry (due {} to {}); retrying them now",
            waiting.count,
            token::date(waiting.due_from),
            token::date(waiting.due_until)
        );
    }
    if display == Display::Lines && progress.total() > PROGRESS_FROM {
        eprintln!(
            "sync: {}/{} changes finished",
            progress.finished(),
            progress.total()
        );
    }
    let all_well = report.succeeded() && !report.needs_attention();
    if json {
        print_json(&SyncOutput::of(&report))?;
    } else if !(quiet && all_well) {
        print_plan(&report);
        print_results(&report);
        print_bad_rows(&report.bad_rows);
    }
    if shutdown.is_triggered() {
        return Ok(signal_exit(&shutdown));
    }
    if let Some(refused) = report
        .applied
        .as_ref()
        .and_then(|a| a.token_refused.as_ref())
    {
        record_refusal(app, generation, refused).await?;
        bail!("stopped calling the MBG: {refused}");
    }
    Ok(exit_code(&report))
}

/// 128 + the signal's number, as shells report a process ended by it: 130 for SIGINT, 143 for
/// SIGTERM.
fn signal_exit(shutdown: &Shutdown) -> ExitCode {
    let signal = shutdown.signal().unwrap_or(shutdown::SIGINT);
    eprintln!("stopped by signal {signal}: calls in flight were finished and recorded");
    ExitCode::from(128 + signal as u8)
}

fn exit_code(report: &PassReport) -> ExitCode {
    if !report.succeeded() {
        ExitCode::FAILURE
    } else if report.needs_attention() {
        ExitCode::from(NEEDS_ATTENTION)
    } else {
        ExitCode::SUCCESS
    }
}
