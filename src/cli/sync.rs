//! `sync`, `status` and `icps`: what an operator reads. Also used by `demo`.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mbg_provision::config::Config;
use mbg_provision::mbg::{MbgClient, MbgError};
use mbg_provision::reconcile::{
    self, Action, Adoption, Mode, Owner, PassReport, ReconcileError, Status,
};
use mbg_provision::shutdown::{self, Shutdown};
use mbg_provision::store::Store;
use mbg_provision::token::{self, TokenStatus};
use serde_json::json;

use super::output::{now, print_bad_rows, print_json};

/// Exit code of `sync` when something needs a human; 1 is for errors.
pub const NEEDS_ATTENTION: u8 = 2;

/// The client with the stored token, or an error that says how to get one.
pub async fn client(store: &Store, config: &Config) -> Result<MbgClient> {
    Ok(signed_client(store, config).await?.0)
}

/// The client and the generation of its token, which a 401 marks rejected. Refuses a token that
/// is rejected or missing, but not one whose stored expiry has passed: the MBG may have renewed
/// it (its *Renew* button), and only its 401 says otherwise.
async fn signed_client(store: &Store, config: &Config) -> Result<(MbgClient, i64)> {
    let settings = store.mbg_settings().await?;
    let status = TokenStatus::of(&settings, now());
    if !status.is_usable() {
        bail!("the MBG access token is {status}");
    }
    warn_about_token(&status, config);
    Ok((token::client(config, &settings)?, settings.token_generation))
}

fn warn_about_token(status: &TokenStatus, config: &Config) {
    if let Some(warning) = status.warning(config.token.renew_within_days) {
        eprintln!("warning: {warning}");
    }
}

/// Marks the token rejected when `error` is the MBG's 401.
async fn record_refusal(store: &Store, generation: i64, error: &MbgError) -> Result<()> {
    token::record_refusal(store, generation, error, now()).await?;
    Ok(())
}

pub async fn sync(
    store: &Store,
    config: &Config,
    dry_run: bool,
    wait: Duration,
    json: bool,
) -> Result<ExitCode> {
    let (client, generation) = signed_client(store, config).await?;
    let shutdown = Shutdown::new();
    shutdown
        .on_signals()
        .context("cannot listen for SIGINT/SIGTERM")?;
    let mode = if dry_run { Mode::DryRun } else { Mode::Apply };
    // A dry run changes nothing, so it needs no lock and never waits.
    let lock = match mode {
        Mode::DryRun => None,
        Mode::Apply => {
            let waiting = store.lock_passes(wait, |holder| {
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
    let result = reconcile::run_pass(store, &client, config, mode, &shutdown, now()).await;
    if let Some(lock) = lock {
        lock.release().await;
    }
    let report = match result {
        Ok(report) => report,
        Err(ReconcileError::Interrupted) => return Ok(signal_exit(&shutdown)),
        Err(e) => {
            if let Some(error) = e.mbg() {
                record_refusal(store, generation, error).await?;
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
    if json {
        print_json(&report_json(&report))?;
    } else {
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
        record_refusal(store, generation, refused).await?;
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

pub fn exit_code(report: &PassReport) -> ExitCode {
    if !report.succeeded() {
        ExitCode::FAILURE
    } else if report.needs_attention() {
        ExitCode::from(NEEDS_ATTENTION)
    } else {
        ExitCode::SUCCESS
    }
}

fn sign(action: &Action) -> &'static str {
    match action {
        Action::Create { .. } => "+",
        Action::Update { .. } => "~",
        Action::Adopt { .. } => "<",
        Action::Delete { .. } => "-",
        Action::Forget { .. } => ".",
        Action::Report { .. } => "!",
    }
}

fn describe(report: &PassReport, action: &Action) -> String {
    let node = |id: &i64| {
        report
            .extensions
            .get(id)
            .map_or(String::new(), |e| e.node_name.clone())
    };
    match action {
        Action::Create {
            extension_id,
            device,
            ..
        } => format!("node {} -> ICP {}", node(extension_id), device.icp),
        Action::Update { guid, changes, .. } => {
            format!("SIP user {guid}: {}", changes.join(", "))
        }
        Action::Adopt {
            guid,
            changes,
            proof,
            ..
        } => format!(
            "SIP user {guid} {}: take it over, overwrite {}",
            match proof {
                Adoption::ExactMatch => "has this number under the right ICP",
                Adoption::OwnCredentials => "carries this extension's credentials (ours)",
            },
            if changes.is_empty() {
                "nothing".to_string()
            } else {
                changes.join(", ")
            }
        ),
        Action::Delete { guid, owner, .. } => match owner {
            Owner::Extension(_) => format!("SIP user {guid}"),
            Owner::Released { .. } => format!("SIP user {guid} of a deleted extension"),
            Owner::Duplicate => {
                format!("SIP user {guid}: a second copy with this extension's credentials")
            }
        },
        Action::Forget { guid, .. } => format!(
            "{} is not on the MBG (or is another row's): clear the record",
            guid.as_deref()
                .map_or("no SIP user".to_string(), |g| format!("SIP user {g}"))
        ),
        Action::Report { problem, .. } => problem.fix(),
    }
}

pub fn print_plan(report: &PassReport) {
    let plan = &report.plan;
    if plan.actions.is_empty() {
        println!("No changes: the MBG matches the database.");
        return;
    }
    for action in &plan.actions {
        println!(
            "  {} {:<8} {:<11} {}",
            sign(action),
            action.verb(),
            action.number(),
            describe(report, action)
        );
    }
    let count = |verb: &str| plan.actions.iter().filter(|a| a.verb() == verb).count();
    println!(
        "Plan: {} to create, {} to update, {} to adopt, {} to delete, {} problem(s) to fix.",
        count("create"),
        count("update"),
        count("adopt"),
        count("delete"),
        count("problem")
    );
}

pub fn print_results(report: &PassReport) {
    let Some(applied) = &report.applied else {
        println!("(dry run: nothing was changed)");
        return;
    };
    let count = |status: Status| {
        applied
            .outcomes
            .iter()
            .filter(|o| o.status == status)
            .count()
    };
    for outcome in applied
        .outcomes
        .iter()
        .filter(|o| !matches!(o.status, Status::Done | Status::NeedsAttention))
    {
        println!(
            "  {:?} {} {}: {}",
            outcome.status, outcome.verb, outcome.number, outcome.detail
        );
    }
    println!(
        "Applied: {} done, {} failed (retried later), {} need attention, {} skipped, {} changed meanwhile (left for the next pass); {} MBG calls.",
        count(Status::Done),
        count(Status::Failed),
        count(Status::NeedsAttention),
        count(Status::Skipped),
        count(Status::Stale),
        applied.calls
    );
}

fn report_json(report: &PassReport) -> serde_json::Value {
    let plan: Vec<_> = report
        .plan
        .actions
        .iter()
        .map(|a| {
            json!({
                "action": a.verb(),
                "extension": a.number(),
                "guid": a.target_guid(),
                "detail": describe(report, a),
            })
        })
        .collect();
    let results: Option<Vec<_>> = report.applied.as_ref().map(|applied| {
        applied
            .outcomes
            .iter()
            .map(|o| {
                json!({
                    "action": o.verb,
                    "extension": o.number,
                    "status": format!("{:?}", o.status).to_lowercase(),
                    "detail": o.detail,
                })
            })
            .collect()
    });
    json!({
        "dry_run": report.applied.is_none(),
        "plan": plan,
        "results": results,
        "bad_rows": report.bad_rows,
        "needs_attention": report.needs_attention(),
        "succeeded": report.succeeded(),
    })
}

pub async fn status(store: &Store, config: &Config, json: bool) -> Result<ExitCode> {
    let rows = store.extension_rows().await?;
    let token = TokenStatus::of(&store.mbg_settings().await?, now());
    warn_about_token(&token, config);
    let code = if rows.bad.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(NEEDS_ATTENTION)
    };
    if json {
        let extensions: Vec<_> = rows
            .good
            .iter()
            .map(|e| {
                json!({
                    "extension": e.number,
                    "node": e.node_name,
                    "wanted": e.use_remote_auth,
                    "provisioned": e.mbg_device_id.is_some() && e.provisioned_by_us,
                    "mbg_guid": e.mbg_device_id,
                    "state": e.state.as_str(),
                    "last_error": e.last_error,
                    "next_retry": e.next_attempt_at,
                })
            })
            .collect();
        print_json(&json!({ "token": token, "extensions": extensions, "bad_rows": rows.bad }))?;
        return Ok(code);
    }
    println!("token: {token}");
    println!(
        "{:<11} {:<12} {:<7} {:<38} {:<16} {:<20} LAST ERROR",
        "EXTENSION", "NODE", "WANTED", "MBG GUID", "STATE", "NEXT RETRY"
    );
    for e in &rows.good {
        println!(
            "{:<11} {:<12} {:<7} {:<38} {:<16} {:<20} {}",
            e.number,
            e.node_name,
            if e.use_remote_auth { "yes" } else { "no" },
            e.mbg_device_id.as_deref().unwrap_or("-"),
            e.state.as_str(),
            e.next_attempt_at.map_or("-".into(), token::date),
            e.last_error.as_deref().unwrap_or("")
        );
    }
    print_bad_rows(&rows.bad);
    Ok(code)
}

pub async fn icps(store: &Store, config: &Config, json: bool) -> Result<ExitCode> {
    let (client, generation) = signed_client(store, config).await?;
    let icps = match client.icps().await {
        Ok(icps) => icps,
        Err(e) => {
            record_refusal(store, generation, &e).await?;
            return Err(e.into());
        }
    };
    let nodes = store.nodes().await?;
    let rows: Vec<_> = nodes
        .iter()
        .map(|node| {
            let icp = icps.iter().find(|icp| icp.address == node.address);
            (node, icp)
        })
        .collect();
    let used: HashSet<&str> = rows
        .iter()
        .filter_map(|(_, icp)| icp.map(|i| i.guid.as_str()))
        .collect();
    let orphans: Vec<_> = icps
        .iter()
        .filter(|i| !used.contains(i.guid.as_str()))
        .collect();
    let unmapped = rows.iter().filter(|(_, icp)| icp.is_none()).count();
    if json {
        let nodes: Vec<_> = rows
            .iter()
            .map(|(node, icp)| {
                json!({
                    "node": node.name,
                    "address": node.address,
                    "icp": icp.map(|i| &i.name),
                    "icp_guid": icp.map(|i| &i.guid),
                })
            })
            .collect();
        let orphans: Vec<_> = orphans
            .iter()
            .map(|i| json!({ "icp": i.name, "address": i.address, "guid": i.guid }))
            .collect();
        print_json(&json!({ "nodes": nodes, "icps_without_node": orphans }))?;
    } else {
        for (node, icp) in &rows {
            match icp {
                Some(icp) => println!("{:<16} {:<20} -> ICP {}", node.name, node.address, icp.name),
                None => println!(
                    "{:<16} {:<20} -> no ICP with this address: add one on the MBG or correct the node address",
                    node.name, node.address
                ),
            }
        }
        for icp in &orphans {
            println!(
                "ICP {} ({}) has no node: add one with `mbg-provision node add NAME --address {}`",
                icp.name, icp.address, icp.address
            );
        }
    }
    Ok(if unmapped > 0 {
        ExitCode::from(NEEDS_ATTENTION)
    } else {
        ExitCode::SUCCESS
    })
}
