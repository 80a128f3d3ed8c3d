//! The promises under stress, with the real binary: concurrent `sync`s, SIGKILL during creates,
//! SIGINT, and the pass lock. Against a simulator that lets duplicate set-side names through, as
//! a real MBG may, so that a duplicate shows up as a second SIP user rather than a 400.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mbg_provision::sim::{Faults, SimConfig};
use mbg_provision::store::{ExtensionSpec, ExtensionState, LeaseTerms, NewNode, Store};
use secrecy::SecretString;
use sqlx::Connection;

use crate::mbg::{Harness, sim_config};
use crate::support::TestDb;

crate::on_both_backends!(
    three_syncs_at_once_make_one_sip_user_per_extension,
    sigkill_during_creates_then_off_or_deleted_leaves_no_sip_user,
    sigkill_during_creates_then_a_node_move_ends_with_one_sip_user_each,
    a_second_sync_waits_then_names_the_holder,
    sigint_finishes_and_records_the_calls_in_flight,
    sync_says_which_failed_extensions_were_waiting_and_retries_them,
    sigkill_during_a_10000_extension_sync_then_converge,
    late_creates_are_found_and_removed_before_sync_reports_success,
    a_sync_right_after_a_killed_one_leaves_no_late_copy,
);

pub(crate) fn lenient_sim(latency_ms: u64) -> SimConfig {
    let mut config = sim_config();
    config.duplicate_setside_names = true;
    config.faults = Faults {
        latency_ms,
        ..Faults::default()
    };
    config
}

async fn setup(db: TestDb, sim: SimConfig, count: usize) -> Harness {
    with_extensions(db, sim, 2000, count, true).await
}

/// A token, nodes pbx1 (10.0.0.20) and pbx2 (10.0.0.21), and `count` extensions on pbx1
/// numbered from `first`, with the remote flag as given.
pub(crate) async fn with_extensions(
    db: TestDb,
    sim: SimConfig,
    first: usize,
    count: usize,
    remote: bool,
) -> Harness {
    let h = Harness::new(db, sim).await.with_token().await;
    let store = &h.db.store;
    for (name, address) in [("pbx1", "10.0.0.20"), ("pbx2", "10.0.0.21")] {
        store
            .add_node(&NewNode {
                name: name.into(),
                address: address.into(),
                nat_address: None,
                nat_sip_port: None,
            })
            .await
            .unwrap();
    }
    let specs: Vec<ExtensionSpec> = (first..first + count)
        .map(|number| ExtensionSpec {
            number: number.to_string(),
            node: "pbx1".into(),
            kind: None,
            use_remote_auth: Some(remote),
            sip_password: None,
        })
        .collect();
    store
        .set_extensions(&specs, || SecretString::from("pbx-sip-password"))
        .await
        .unwrap();
    h
}

/// The lease terms of a pass lock taken by a test itself.
const TERMS: LeaseTerms = LeaseTerms {
    lease: Duration::from_secs(2),
    mbg_timeout: Duration::from_secs(2),
};

pub(crate) fn command(h: &Harness, dir: &Path, args: &[&str]) -> Command {
    let mut command = crate::support::binary();
    command
        .current_dir(dir)
        .env("MBG_PROVISION_DATABASE__URL", &h.db.url)
        .env("MBG_PROVISION_SECRETS__KEY_FILE", &h.db.key_file)
        .env("MBG_PROVISION_MBG__BASE_URL", h.sim.base_url())
        .env("MBG_PROVISION_MBG__MAX_IN_FLIGHT", "8")
        // Short, so that a run after a killed one waits seconds, not a quarter of a minute.
        .env("MBG_PROVISION_MBG__TIMEOUT", "2s")
        .env("MBG_PROVISION_LEADER__LEASE", "2s")
        .env_remove("RUST_LOG")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// A child whose pipes are drained from the start (a child blocked on a full pipe would stall,
/// holding the pass lock), waited for without blocking the runtime that serves the simulator.
pub(crate) struct Running {
    pub(crate) pid: u32,
    pub(crate) output: tokio::task::JoinHandle<Output>,
}

pub(crate) fn start(mut command: Command) -> Running {
    let child = command.spawn().unwrap();
    Running {
        pid: child.id(),
        output: tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()),
    }
}

impl Running {
    pub(crate) async fn finish(self) -> Output {
        self.output.await.unwrap()
    }

    pub(crate) fn signal(&self, signal: &str) {
        assert!(self.try_signal(signal), "the process is gone");
    }

    /// Sends `signal` unless the process has exited meanwhile (it may end between a look at
    /// it and the signal): whether it was delivered.
    pub(crate) fn try_signal(&self, signal: &str) -> bool {
        Command::new("kill")
            .args([signal, &self.pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    }
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// SIP users per ICP-side name (the extension number).
fn devices_per_number(h: &Harness) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for device in h.sim.devices() {
        *counts.entry(device.icpside_username).or_insert(0) += 1;
    }
    counts
}

async fn wait_for_devices(h: &Harness, at_least: usize, running: &Running) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.sim.devices().len() < at_least {
        assert!(
            !running.output.is_finished(),
            "sync ended before it was interrupted"
        );
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn sync_ok(h: &Harness, dir: &Path) -> String {
    let output = start(command(h, dir, &["sync"])).finish().await;
    assert!(
        output.status.success(),
        "sync failed: {}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

pub(crate) async fn raw_sql(url: &str, sql: &str) {
    let mut connection = sqlx::AnyConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();
}

async fn three_syncs_at_once_make_one_sip_user_per_extension(db: TestDb) {
    let h = setup(db, lenient_sim(20), 300).await;
    let dir = tempfile::tempdir().unwrap();
    let children: Vec<Running> = (0..3)
        .map(|_| start(command(&h, dir.path(), &["sync", "--wait", "120s"])))
        .collect();
    let mut waited = 0;
    for child in children {
        let output = child.finish().await;
        let stderr = text(&output.stderr);
        assert!(
            output.status.success(),
            "{}\n{stderr}",
            text(&output.stdout)
        );
        waited += usize::from(stderr.contains("waiting up to"));
    }
    assert!(waited >= 1, "the later syncs said that they waited");
    let counts = devices_per_number(&h);
    assert_eq!(counts.len(), 300);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "SIP users created twice: {twice:?}");
    let store = &h.db.store;
    for e in store.extensions().await.unwrap() {
        assert_eq!(
            e.state,
            ExtensionState::Provisioned,
            "{}: {:?}",
            e.number,
            e.last_error
        );
    }
    assert!(store.pending_changes(10).await.unwrap().is_empty());
}

/// Kills a `sync` with SIGKILL once `at_least` SIP users exist. Returns how many SIP users the
/// database did not know at that moment (creates whose guid was never stored).
async fn kill_during_creates(h: &Harness, dir: &Path, at_least: usize) -> usize {
    let running = start(command(h, dir, &["sync"]));
    wait_for_devices(h, at_least, &running).await;
    running.signal("-KILL");
    let output = running.finish().await;
    assert!(!output.status.success());
    let recorded: Vec<String> =
        h.db.store
            .extensions()
            .await
            .unwrap()
            .into_iter()
            .filter_map(|e| e.mbg_device_id)
            .collect();
    let unknown = h
        .sim
        .devices()
        .iter()
        .filter(|d| !recorded.contains(&d.guid))
        .count();
    eprintln!(
        "killed with {} SIP users on the MBG, {unknown} of them unknown to the database",
        h.sim.devices().len()
    );
    unknown
}

async fn sigkill_during_creates_then_off_or_deleted_leaves_no_sip_user(db: TestDb) {
    let h = setup(db, lenient_sim(15), 200).await;
    let dir = tempfile::tempdir().unwrap();
    kill_during_creates(&h, dir.path(), 60).await;
    // Half switched off by another program, half deleted outright.
    raw_sql(
        &h.db.url,
        "UPDATE extensions SET use_remote_auth = false;
         DELETE FROM extensions WHERE CAST(number AS INTEGER) % 2 = 1;",
    )
    .await;
    sync_ok(&h, dir.path()).await;
    let left = h.sim.devices();
    assert!(
        left.is_empty(),
        "{} SIP users left behind, e.g. {:?}",
        left.len(),
        left.first().map(|d| &d.icpside_username)
    );
    let store = &h.db.store;
    assert!(store.released().await.unwrap().is_empty());
    assert!(store.pending_changes(10).await.unwrap().is_empty());
    for e in store.extensions().await.unwrap() {
        assert_eq!(e.state, ExtensionState::Idle, "{}", e.number);
        assert!(e.mbg_device_id.is_none());
    }
}

async fn sigkill_during_creates_then_a_node_move_ends_with_one_sip_user_each(db: TestDb) {
    let h = setup(db, lenient_sim(15), 200).await;
    let dir = tempfile::tempdir().unwrap();
    kill_during_creates(&h, dir.path(), 60).await;
    raw_sql(
        &h.db.url,
        "UPDATE extensions SET node_id = (SELECT id FROM nodes WHERE name = 'pbx2');",
    )
    .await;
    sync_ok(&h, dir.path()).await;
    let counts = devices_per_number(&h);
    assert_eq!(counts.len(), 200);
    assert!(counts.values().all(|n| *n == 1), "a SIP user created twice");
    assert!(h.sim.devices().iter().all(|d| d.icp == "MiVO250-2"));
    for e in h.db.store.extensions().await.unwrap() {
        assert_eq!(
            e.state,
            ExtensionState::Provisioned,
            "{}: {:?}",
            e.number,
            e.last_error
        );
    }
}

async fn a_second_sync_waits_then_names_the_holder(db: TestDb) {
    let h = setup(db, lenient_sim(0), 3).await;
    let dir = tempfile::tempdir().unwrap();
    let lock =
        h.db.store
            .lock_passes(TERMS, Duration::ZERO, |_| {})
            .await
            .unwrap();
    let started = Instant::now();
    let output = start(command(&h, dir.path(), &["sync", "--wait", "1s"]))
        .finish()
        .await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("waiting up to 1 s"), "{stderr}");
    assert!(
        stderr.contains(&format!("process {} on host", std::process::id())),
        "names the holder: {stderr}"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(h.sim.devices().is_empty(), "changed nothing");
    // A dry run needs no lock.
    let dry = start(command(&h, dir.path(), &["sync", "--dry-run"]))
        .finish()
        .await;
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    lock.release().await;
    sync_ok(&h, dir.path()).await;
    assert_eq!(h.sim.devices().len(), 3);
}

async fn sigint_finishes_and_records_the_calls_in_flight(db: TestDb) {
    let h = setup(db, lenient_sim(150), 100).await;
    let dir = tempfile::tempdir().unwrap();
    let running = start(command(&h, dir.path(), &["sync"]));
    wait_for_devices(&h, 8, &running).await;
    running.signal("-INT");
    let output = running.finish().await;
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(130),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    assert!(stdout.contains("Applied:"), "prints its summary: {stdout}");
    let store: &Store = &h.db.store;
    let devices = h.sim.devices();
    assert!(devices.len() < 100, "stopped before the end");
    crate::support::assert_every_sip_user_recorded(store, &devices).await;
    // What was not reached is still to do.
    assert!(!store.pending_changes(1000).await.unwrap().is_empty());
    sync_ok(&h, dir.path()).await;
    assert_eq!(devices_per_number(&h).len(), 100);
    assert!(devices_per_number(&h).values().all(|n| *n == 1));
}

async fn sync_says_which_failed_extensions_were_waiting_and_retries_them(db: TestDb) {
    let h = setup(db, lenient_sim(0), 3).await;
    let dir = tempfile::tempdir().unwrap();
    let due = chrono::Utc::now().timestamp() + 3600;
    raw_sql(
        &h.db.url,
        &format!(
            "UPDATE extensions SET state = 'failed', attempts = 2, next_attempt_at = {due}
              WHERE number IN ('2000', '2001')"
        ),
    )
    .await;
    let output = start(command(&h, dir.path(), &["sync"])).finish().await;
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("2 extension(s) had failed and were waiting for their retry"),
        "{stderr}"
    );
    assert_eq!(
        devices_per_number(&h).len(),
        3,
        "retried at once all the same"
    );
}

#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "PostgreSQL: set TEST_POSTGRES_URL (CI does)"
)]
async fn a_sync_that_loses_its_lock_connection_stops_calling_the_mbg() {
    let Some(db) =
        TestDb::postgres("a_sync_that_loses_its_lock_connection_stops_calling_the_mbg").await
    else {
        return;
    };
    let h = setup(db, lenient_sim(200), 100).await;
    let dir = tempfile::tempdir().unwrap();
    let running = start(command(&h, dir.path(), &["sync"]));
    wait_for_devices(&h, 4, &running).await;
    // The server ends the session that holds the advisory lock (an idle timeout, a failover).
    raw_sql(
        &h.db.url,
        "SELECT pg_terminate_backend(pid) FROM pg_locks
          WHERE locktype = 'advisory'
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .await;
    let ended = Instant::now();
    let output = running.finish().await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("lost the pass lock"), "{stderr}");
    assert!(ended.elapsed() < Duration::from_secs(10));
    // Calls in flight at the exit are still carried out by the MBG (200 ms each); none after.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let made = h.sim.devices().len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        h.sim.devices().len(),
        made,
        "no MBG call after the lock was lost"
    );
    sync_ok(&h, dir.path()).await;
    let counts = devices_per_number(&h);
    assert_eq!(counts.len(), 100);
    assert!(counts.values().all(|n| *n == 1));
}

#[tokio::test]
async fn a_link_to_the_database_shares_its_lock() {
    let h = setup(TestDb::sqlite().await, lenient_sim(0), 3).await;
    let real = h.db.url.trim_start_matches("sqlite://").to_string();
    let link = format!("{real}-link.db");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let lock =
        h.db.store
            .lock_passes(TERMS, Duration::ZERO, |_| {})
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut through_link = command(&h, dir.path(), &["sync", "--wait", "1s"]);
    through_link.env("MBG_PROVISION_DATABASE__URL", format!("sqlite://{link}"));
    let output = start(through_link).finish().await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    assert!(h.sim.devices().is_empty());
    lock.release().await;
}

/// The batched writer at scale: outcomes are committed in groups, so a kill loses the groups not
/// yet committed; the next sync must take those SIP users back by their credentials.
async fn sigkill_during_a_10000_extension_sync_then_converge(db: TestDb) {
    const N: usize = 10_000;
    let h = setup(db, lenient_sim(2), N).await;
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut first = command(&h, dir.path(), &["sync"]);
    first.env("MBG_PROVISION_MBG__MAX_IN_FLIGHT", "32");
    let running = start(first);
    wait_for_devices(&h, 3_000, &running).await;
    running.signal("-KILL");
    assert!(!running.finish().await.status.success());
    let made = h.sim.devices().len();
    let recorded =
        h.db.store
            .extensions()
            .await
            .unwrap()
            .iter()
            .filter(|e| e.mbg_device_id.is_some())
            .count();
    let mut second = command(&h, dir.path(), &["sync"]);
    second.env("MBG_PROVISION_MBG__MAX_IN_FLIGHT", "32");
    let output = start(second).finish().await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    eprintln!(
        "10,000: killed with {made} SIP users made, {recorded} recorded; converged in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let counts = devices_per_number(&h);
    let twice = counts.values().filter(|n| **n > 1).count();
    assert_eq!(twice, 0, "SIP users created twice");
    assert_eq!(counts.len(), N, "one SIP user per extension, none orphaned");
    let devices: HashMap<String, String> = h
        .sim
        .devices()
        .into_iter()
        .map(|d| (d.guid, d.icpside_username))
        .collect();
    for e in h.db.store.extensions().await.unwrap() {
        assert_eq!(e.state, ExtensionState::Provisioned, "{}", e.number);
        let guid = e.mbg_device_id.expect("a guid recorded");
        assert_eq!(devices.get(&guid), Some(&e.number), "{}", e.number);
    }
    assert!(h.db.store.pending_changes(10).await.unwrap().is_empty());
}

/// Issue 10, item 4: a large sync says how far it has got (plain lines when stderr is not a
/// terminal); `--quiet` prints nothing when all went well, for cron.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_sync_shows_progress_and_quiet_prints_nothing() {
    let h = setup(TestDb::sqlite().await, lenient_sim(5), 120).await;
    let dir = tempfile::tempdir().unwrap();
    let output = start(command(&h, dir.path(), &["sync"])).finish().await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("sync: 120/120 changes finished"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "no terminal codes in plain lines"
    );

    raw_sql(&h.db.url, "UPDATE extensions SET use_remote_auth = false").await;
    let quiet = start(command(&h, dir.path(), &["sync", "--quiet"]))
        .finish()
        .await;
    assert!(quiet.status.success(), "{}", text(&quiet.stderr));
    assert_eq!(text(&quiet.stdout), "", "quiet: nothing on stdout");
    assert_eq!(text(&quiet.stderr), "", "quiet: nothing on stderr");
    assert!(h.sim.devices().is_empty(), "it did the work");

    // A pass that lasts longer than the progress display's first look, with no display
    // (--json): found by the crash suite, it panicked ("shows until the pass ends").
    raw_sql(&h.db.url, "UPDATE extensions SET use_remote_auth = true").await;
    h.sim.set_faults(Faults {
        latency_ms: 30,
        ..Faults::default()
    });
    let json = start(command(&h, dir.path(), &["sync", "--json"]))
        .finish()
        .await;
    assert!(json.status.success(), "{}", text(&json.stderr));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["results"].as_array().unwrap().len(), 120);
    assert_eq!(h.sim.devices().len(), 120);
    h.sim.set_faults(Faults::default());
    raw_sql(&h.db.url, "UPDATE extensions SET use_remote_auth = false").await;
    let quiet = start(command(&h, dir.path(), &["sync", "--quiet"]))
        .finish()
        .await;
    assert!(quiet.status.success(), "{}", text(&quiet.stderr));

    // Something that needs a human is printed even with --quiet.
    raw_sql(
        &h.db.url,
        "UPDATE nodes SET address = '10.9.9.9' WHERE name = 'pbx1';
         UPDATE extensions SET use_remote_auth = true WHERE number = '2000'",
    )
    .await;
    let attention = start(command(&h, dir.path(), &["sync", "--quiet"]))
        .finish()
        .await;
    assert_eq!(
        attention.status.code(),
        Some(2),
        "{}",
        text(&attention.stderr)
    );
    assert!(
        text(&attention.stdout).contains("no ICP on the MBG has the address 10.9.9.9"),
        "{}",
        text(&attention.stdout)
    );
}

fn duplicated(h: &Harness) -> Vec<String> {
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    for device in h.sim.devices() {
        *counts.entry(device.icpside_username).or_default() += 1;
    }
    counts
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(n, _)| n)
        .collect()
}

/// Three creates are carried out by the MBG after the client gave up on them (held 2.5 s, the
/// client's timeout 2 s): posted again, each lands twice. `sync` must find the late copies and
/// delete them before it reports success, keeping the copy whose guid the database holds.
async fn late_creates_are_found_and_removed_before_sync_reports_success(db: TestDb) {
    let mut sim = lenient_sim(0);
    sim.faults.slow_changes_next = 3;
    sim.faults.spike_ms = 3_000;
    let h = setup(db, sim, 20).await;
    let dir = tempfile::tempdir().unwrap();
    let output = start(command(&h, dir.path(), &["sync"])).finish().await;
    let stderr = text(&output.stderr);
    assert!(
        output.status.success(),
        "{}\n{stderr}",
        text(&output.stdout)
    );
    // Longer than any held create may still take.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let duplicates = duplicated(&h);
    assert!(
        stderr.contains("reading the MBG again"),
        "{duplicates:?} {stderr}"
    );
    assert_eq!(duplicates, Vec::<String>::new(), "late copies left behind");
    assert_eq!(h.sim.devices().len(), 20);
    crate::support::assert_every_sip_user_recorded(&h.db.store, &h.sim.devices()).await;
}

/// Killed while its creates are held by a slow MBG, then run again at once: the new sync must
/// not read the device list before the old one's creates have landed, or it creates them a
/// second time; and whatever lands later is deleted before it reports success.
async fn a_sync_right_after_a_killed_one_leaves_no_late_copy(db: TestDb) {
    let mut sim = lenient_sim(300);
    sim.faults.slow_changes_next = 4;
    sim.faults.spike_ms = 3_500;
    let h = setup(db, sim, 40).await;
    let dir = tempfile::tempdir().unwrap();
    let running = start(command(&h, dir.path(), &["sync"]));
    // Killed as its first creates are on their way.
    eventually_requests(&h, "POST", 4).await;
    running.signal("-KILL");
    assert!(!running.finish().await.status.success());
    let output = start(command(&h, dir.path(), &["sync"])).finish().await;
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        duplicated(&h),
        Vec::<String>::new(),
        "a late copy left behind"
    );
    assert_eq!(h.sim.devices().len(), 40);
}

async fn eventually_requests(h: &Harness, method: &str, count: usize) {
    let started = Instant::now();
    while h
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == method)
        .count()
        < count
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no {count} {method}s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A one-off command prints its results on stdout; its log on stderr holds only warnings and
/// errors unless `-v` asks for more.
#[tokio::test]
async fn one_off_commands_log_info_only_with_verbose() {
    let h = setup(TestDb::sqlite().await, lenient_sim(0), 3).await;
    let dir = tempfile::tempdir().unwrap();
    let output = start(command(&h, dir.path(), &["sync"])).finish().await;
    assert!(output.status.success());
    assert!(
        text(&output.stdout).contains("create"),
        "{}",
        text(&output.stdout)
    );
    assert!(
        !text(&output.stderr).contains(" INFO "),
        "info lines repeat stdout: {}",
        text(&output.stderr)
    );
    raw_sql(
        &h.db.url,
        "UPDATE extensions SET use_remote_auth = false WHERE number = '2000'",
    )
    .await;
    let output = start(command(&h, dir.path(), &["-v", "sync"]))
        .finish()
        .await;
    assert!(output.status.success());
    assert!(
        text(&output.stderr).contains(" INFO "),
        "{}",
        text(&output.stderr)
    );
}
