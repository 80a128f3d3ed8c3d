//! `preflight`: prints the report of [`mbg_provision::preflight`] and turns its worst status
//! into the exit code (0 pass, 2 warn, 1 fail).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use mbg_provision::config::{Config, ConfigError};
use mbg_provision::preflight::network::Client;
use mbg_provision::preflight::{self, Options, Report, Status};
use serde::Serialize;

use super::output::{NEEDS_ATTENTION, print_json};

/// `preflight --json`: every check, the firewall rules when `--clients` is given, and the
/// outcome the exit code follows.
#[derive(Serialize)]
struct PreflightOutput<'a> {
    /// `pass`, `warn` or `fail`: the worst check (a `skip` counts as a pass).
    outcome: Status,
    #[serde(flatten)]
    report: &'a Report,
}

pub async fn run(
    config: Result<Config, ConfigError>,
    source: Option<PathBuf>,
    clients: Vec<Client>,
    stun: Option<String>,
    json: bool,
) -> Result<ExitCode> {
    let options = Options {
        clients,
        stun,
        now: chrono::Utc::now().timestamp(),
    };
    let report = match config {
        Err(e) => {
            let mut report = Report::bad_configuration(&e);
            preflight::network_checks(None, &[], &options, &mut report).await;
            report
        }
        Ok(config) => {
            let source = source.map_or_else(
                || "the built-in defaults and MBG_PROVISION_* variables".to_string(),
                |path| path.display().to_string(),
            );
            preflight::run(&config, &source, &options).await
        }
    };
    let outcome = match report.outcome() {
        Status::Skip => Status::Pass,
        other => other,
    };
    if json {
        print_json(&PreflightOutput {
            outcome,
            report: &report,
        })?;
    } else {
        print_text(&report, outcome);
    }
    Ok(match outcome {
        Status::Pass | Status::Skip => ExitCode::SUCCESS,
        Status::Warn => ExitCode::from(NEEDS_ATTENTION),
        Status::Fail => ExitCode::FAILURE,
    })
}

fn print_text(report: &Report, outcome: Status) {
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    for check in &report.checks {
        let status = match check.status {
            Status::Pass => "pass",
            Status::Skip => "skip",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        println!("{status}  {:width$}  {}", check.name, check.detail);
        if let Some(fix) = &check.fix {
            println!("      {:width$}  fix: {fix}", "");
        }
    }
    if let Some(firewall) = &report.firewall {
        println!();
        println!("On the MBG's Port Forwarding page (to the application server, SNAT on):");
        for rule in &firewall.rules {
            let ports = rule
                .ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            println!("  {} {ports:<12}  {}", rule.protocol, rule.purpose);
        }
        for note in firewall.notes {
            println!("  - {note}");
        }
        println!();
        println!(
            "On the site firewall, from the internet to the MBG's external address (the nodes' NAT address; internally {}):",
            firewall
                .destination
                .as_deref()
                .unwrap_or("see mbg.base_url, not set")
        );
        for rule in &firewall.site {
            println!(
                "  {} {}: {} [{}]",
                rule.protocol, rule.ports, rule.purpose, rule.source
            );
        }
        if let Some(rule) = firewall.rules.first() {
            println!("  (Port Forwarding figures: {})", rule.source);
        }
    }
    let count = |status| report.checks.iter().filter(|c| c.status == status).count();
    println!();
    println!(
        "preflight: {} passed, {} warnings, {} failed, {} skipped: {}",
        count(Status::Pass),
        count(Status::Warn),
        count(Status::Fail),
        count(Status::Skip),
        match outcome {
            Status::Pass | Status::Skip => "ready",
            Status::Warn => "ready, with warnings to look at (exit 2)",
            Status::Fail => "not ready (exit 1)",
        }
    );
}
