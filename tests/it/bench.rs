//! `mbg-provision bench` through the real binary: the report's shape and its counts. No timing
//! is asserted: the figures depend on the machine.

use std::process::Stdio;

use serde_json::Value;

use crate::support::POSTGRES_ENV;

/// Runs a small bench in an empty folder (no configuration, no database) and returns its JSON
/// report and the process id it ran as.
fn bench(database: &str) -> (Value, u32, tempfile::TempDir) {
    bench_with(database, "200", "0")
}

fn bench_with(
    database: &str,
    extensions: &str,
    latency_ms: &str,
) -> (Value, u32, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let child = crate::support::binary()
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .args([
            "bench",
            "--extensions",
            extensions,
            "--latency-ms",
            latency_ms,
            "--in-flight",
            "8",
            "--database",
            database,
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mbg-provision bench");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");
    assert!(
        !stderr.contains("INFO"),
        "the bench logs at warn only: {stderr}"
    );
    let report: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"));
    (report, pid, dir)
}

fn check(report: &Value, database: &str) {
    assert_eq!(report["database"], database);
    assert_eq!(report["extensions"], 200);
    assert_eq!(report["latency_ms"], 0);
    assert_eq!(report["in_flight"], 8);

    let import = &report["import"];
    assert_eq!(import["rows"], 200);
    assert_eq!(import["created"], 200);

    let sync = &report["sync"];
    assert_eq!(sync["created"], 200);
    assert_eq!(sync["max_in_flight"], 8);
    assert_eq!(
        sync["mbg_requests"], 203,
        "the two lists, the device count and one create each"
    );

    let idle = &report["no_change_sync"];
    assert_eq!(
        idle["mbg_requests"], 3,
        "a no-change sync only reads the lists (and the device count)"
    );
    assert_eq!(idle["changes"], 0);
    assert_eq!(idle["created"], 0);

    let serial = &report["serial_sync"];
    assert_eq!(serial["max_in_flight"], 1);
    assert_eq!(serial["extensions"], 200, "200 × 0 ms needs no cut");
    assert_eq!(serial["created"], 200);
    assert_eq!(serial["mbg_requests"], 203);

    let page = &report["console_page"];
    assert_eq!(page["extensions"], 200);
    assert!(
        [
            "first page",
            "last page",
            "number prefix",
            "state needs_attention",
            "node"
        ]
        .contains(&page["slowest"].as_str().unwrap()),
        "{page}"
    );
    assert_eq!(page["target_seconds"], 0.1);

    for figure in [import, sync, idle, serial, page] {
        for key in ["seconds", "target_seconds", "ratio_to_target"] {
            assert!(figure[key].as_f64().is_some(), "{key} in {figure}");
        }
        assert!(figure["target_met"].is_boolean(), "{figure}");
        assert!(figure["target"].is_string(), "{figure}");
        // A bound exists only where latency does; at 0 ms it and its ratio are null.
        assert!(figure.get("bound_seconds").is_some(), "{figure}");
        assert!(figure.get("ratio_to_bound").is_some(), "{figure}");
    }
    assert!(idle["ratio_to_bound"].is_null(), "no bound at 0 ms");
    assert!(
        report["floor"].is_null(),
        "no bare loop to compare with at 0 ms"
    );
    assert!(
        sync["cpu_seconds"].as_f64().is_some_and(|s| s >= 0.0),
        "{sync}"
    );
    assert!(report["speedup"].as_f64().is_some());
}

#[test]
fn bench_on_sqlite_reports_every_figure_and_leaves_nothing_behind() {
    let (report, _, dir) = bench("sqlite");
    check(&report, "sqlite");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "the bench writes only to a temporary folder"
    );
}

/// With latency, the bench also times a bare HTTP loop of the same creates, in rounds beside
/// creating syncs: no loop can beat what the latency allows (N × L / C), and the sync's ratio is
/// taken between the medians of the rounds.
#[test]
fn with_latency_the_bench_times_a_bare_loop_and_the_cpu_per_create() {
    let (report, _, _dir) = bench_with("sqlite", "100", "4");
    let floor = &report["floor"];
    assert_eq!(floor["requests"], 100, "{floor}");
    assert_eq!(floor["runs"], 5);
    let runs = |key: &str| -> Vec<f64> {
        let runs: Vec<f64> = floor[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} in {floor}"))
            .iter()
            .map(|s| s.as_f64().unwrap())
            .collect();
        assert_eq!(runs.len(), 5, "one per round: {floor}");
        runs
    };
    let median = |mut runs: Vec<f64>| {
        runs.sort_by(f64::total_cmp);
        runs[2]
    };
    let (bare_runs, sync_runs) = (runs("bare_runs"), runs("sync_runs"));
    let bound = 100.0 * 0.004 / 8.0;
    for seconds in &bare_runs {
        assert!(
            *seconds >= bound,
            "a bare loop took {seconds} s, below N × L / C = {bound} s"
        );
    }
    let seconds = floor["seconds"].as_f64().unwrap();
    assert_eq!(seconds, median(bare_runs.clone()), "{floor}");
    assert_eq!(
        report["sync"]["seconds"].as_f64().unwrap(),
        median(sync_runs.clone()),
        "the report's creating sync is the median round's"
    );
    let paired: Vec<f64> = sync_runs
        .iter()
        .zip(&bare_runs)
        .map(|(s, b)| s / b)
        .collect();
    assert!(
        (floor["paired_ratio"].as_f64().unwrap() - median(paired)).abs() < 1e-9,
        "{floor}"
    );
    for key in [
        "simulator_cpu_ms_per_create",
        "simulator_cpu_ms_per_bare_request",
    ] {
        assert!(
            floor[key].as_f64().is_some_and(|ms| ms >= 0.0),
            "{key}: {floor}"
        );
    }
    let sync = report["sync"]["seconds"].as_f64().unwrap();
    // The three parts of the creating sync, as the simulator saw its creates: with 4 ms per
    // answer the creates take at least N × L / C, and the parts add up to the whole.
    let span = &report["sync"]["creates"];
    let part = |name: &str| span[name].as_f64().unwrap_or_else(|| panic!("{span}"));
    let creating = part("creating_seconds");
    assert!(creating >= bound, "{span}");
    let parts = part("before_first_ms") / 1000.0 + creating + part("after_last_ms") / 1000.0;
    assert!(
        parts <= sync + 1e-6 && parts >= sync - 0.004 - 1e-3,
        "the parts ({parts} s) are not the sync's {sync} s: {span}"
    );
    assert!(
        report["no_change_sync"]["creates"].is_null(),
        "a pass that creates nothing has no creates span"
    );
    let ratio = floor["sync_ratio"].as_f64().unwrap();
    assert!((ratio - sync / seconds).abs() < 1e-9, "{floor}");
    assert_eq!(
        floor["sync_ratio_met"].as_bool(),
        Some(ratio <= floor["sync_ratio_target"].as_f64().unwrap()),
        "{floor}"
    );
    // CPU time counts in 10 ms ticks: a loop this short may not register any.
    let cpu = floor["cpu_ms_per_create"].as_f64().unwrap();
    let bare = floor["bare_cpu_ms_per_request"].as_f64().unwrap();
    assert!(cpu >= 0.0 && bare >= 0.0, "{floor}");
    let cpu_ratio = floor["cpu_ratio"].as_f64();
    assert_eq!(cpu_ratio.is_some(), bare > 0.0, "{floor}");
    if let Some(cpu_ratio) = cpu_ratio {
        assert!((cpu_ratio - cpu / bare).abs() < 1e-9, "{floor}");
    }
    assert_eq!(
        floor["cpu_target_met"].as_bool(),
        cpu_ratio.map(|r| r <= floor["cpu_ratio_target"].as_f64().unwrap()),
        "{floor}"
    );
}

#[test]
fn bench_on_postgres_creates_and_drops_its_database() {
    let Ok(url) = std::env::var(POSTGRES_ENV) else {
        eprintln!("SKIPPED bench on PostgreSQL: {POSTGRES_ENV} is not set");
        return;
    };
    let (report, pid, _dir) = bench(&url);
    check(&report, "postgres");
    let left = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use sqlx::Connection;
            let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname LIKE $1")
                    .bind(format!("mbgp_bench_{pid}_%"))
                    .fetch_one(&mut admin)
                    .await
                    .unwrap();
            admin.close().await.ok();
            left
        });
    assert_eq!(left, 0, "the bench drops the databases it created");
}
