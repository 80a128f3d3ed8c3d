//! `bench`: the library's bench ([`mbg_provision::bench`]) and its table. Exits 0 when the bench
//! ran, whether or not the targets were met: the table says which were missed.

use std::process::ExitCode;

use anyhow::{Context, Result};
use mbg_provision::bench::{self, BenchDatabase, BenchOptions, Figure, SyncFigure};

use super::args::BenchArgs;
use super::output::print_json;

pub async fn run(args: BenchArgs) -> Result<ExitCode> {
    let options = BenchOptions {
        extensions: args.extensions,
        latency_ms: args.latency_ms,
        in_flight: args.in_flight,
        database: args.database,
        serial_extensions: args.serial_extensions,
    };
    if !args.output.json {
        let database = match &options.database {
            BenchDatabase::Sqlite => "SQLite (a temporary file)".to_string(),
            BenchDatabase::Postgres(_) => "PostgreSQL (a database created for the bench)".into(),
        };
        println!(
            "bench: {} extensions, {} ms MBG latency, max_in_flight {}, {database}",
            options.extensions, options.latency_ms, options.in_flight
        );
        let serial = options.serial_size();
        if serial > 0 && serial < options.extensions {
            println!(
                "the max_in_flight = 1 comparison runs on {serial} extensions: {} would take about {:.0} s",
                options.extensions,
                options.extensions as f64 * options.latency_ms as f64 / 1000.0
            );
        }
    }
    let report = bench::run(&options).await.context("the bench failed")?;
    if args.output.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!();
    println!(
        "{:<34} {:>10} {:>10} {:>8} {:>10}  target",
        "", "measured", "bound", "ratio", "target"
    );
    row(
        &format!("import, {} rows", report.import.rows),
        &report.import.figure,
    );
    sync_row("sync, new extensions", &report.sync);
    sync_row("no-change sync", &report.no_change_sync);
    if let Some(serial) = &report.serial_sync {
        sync_row("sync, new extensions", serial);
    }
    row(
        &format!("console page, {} rows", report.console_page.extensions),
        &report.console_page.figure,
    );
    println!("{:<34} slowest: {}", "", report.console_page.slowest);
    if let Some(floor) = &report.floor {
        let seconds = |runs: &[f64]| {
            let runs: Vec<String> = runs.iter().map(|s| format!("{s:.2}")).collect();
            runs.join(", ")
        };
        println!(
            "\n{} rounds, each on a fresh database and simulator, alternating which runs first:",
            floor.runs
        );
        println!(
            "  creating sync, s: {}\n  bare HTTP loop ({} POSTs at C={}), s: {}",
            seconds(&floor.sync_runs),
            floor.requests,
            report.in_flight,
            seconds(&floor.bare_runs),
        );
        println!(
            "the creating sync's median is {:.3} × the bare loop's median ({:.2} s; each round's own ratio, median: {:.3} ×); target ≤ {} ×: {}",
            floor.sync_ratio,
            floor.seconds,
            floor.paired_ratio,
            floor.sync_ratio_target,
            met(floor.sync_ratio_met)
        );
        println!(
            "CPU of the creating sync (simulator excepted), medians: {:.3} ms per created extension, {} × the bare loop's {:.3} ms per request; target ≤ {} ×: {}",
            floor.cpu_ms_per_create,
            floor
                .cpu_ratio
                .map_or("-".to_string(), |r| format!("{r:.2}")),
            floor.bare_cpu_ms_per_request,
            floor.cpu_ratio_target,
            floor.cpu_target_met.map_or("not measured (too short)", met)
        );
        println!(
            "CPU of the simulator: {:.3} ms per create, {:.3} ms per refused bare POST",
            floor.simulator_cpu_ms_per_create, floor.simulator_cpu_ms_per_bare_request
        );
    }
    if let Some(speedup) = report.speedup {
        println!(
            "\nspeed-up of max_in_flight = {} over 1, per extension: {speedup:.1} ×",
            report.in_flight
        );
    }
    let floor = report.floor.as_ref();
    let missed: Vec<&str> = [
        ("import", report.import.figure.target_met),
        ("sync", report.sync.figure.target_met),
        ("no-change sync", report.no_change_sync.figure.target_met),
        ("console page", report.console_page.figure.target_met),
        (
            "sync over the bare loop",
            floor.is_none_or(|f| f.sync_ratio_met),
        ),
        (
            "CPU per create",
            floor.is_none_or(|f| f.cpu_target_met != Some(false)),
        ),
    ]
    .into_iter()
    .filter(|(_, met)| !met)
    .map(|(name, _)| name)
    .collect();
    if missed.is_empty() {
        println!("every target met");
    } else {
        println!("targets missed: {}", missed.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

fn sync_row(what: &str, sync: &SyncFigure) {
    row(
        &format!("{what}, {} at C={}", sync.extensions, sync.max_in_flight),
        &sync.figure,
    );
    println!(
        "{:<34} {} MBG requests, {} created",
        "", sync.mbg_requests, sync.created
    );
    if let Some(span) = &sync.creates {
        println!(
            "{:<34} {:.0} ms before the first create, {:.2} s of creates, {:.0} ms after the last answer",
            "", span.before_first_ms, span.creating_seconds, span.after_last_ms
        );
    }
}

fn row(what: &str, figure: &Figure) {
    let seconds = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{s:.2} s"));
    println!(
        "{what:<34} {:>10} {:>10} {:>8} {:>10}  {} ({})",
        seconds(Some(figure.seconds)),
        seconds(figure.bound_seconds),
        figure
            .ratio_to_bound
            .map_or("-".to_string(), |r| format!("{r:.2} ×")),
        seconds(Some(figure.target_seconds)),
        met(figure.target_met),
        figure.target,
    );
}

fn met(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}
