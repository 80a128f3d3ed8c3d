//! The proof suites: each promise under attack, with the real binary, trace-level logs captured,
//! and a figures line per suite appended to `target/tmp/proof-figures.txt` (`.ci/run` prints the
//! file). Random choices come from a seed printed with the figures; `PROOF_SEED=N` repeats a run.
//!
//! After every kill or fault storm the same invariants are checked ([`Convergence`]): no SIP user
//! created twice, none with our credentials that no extension wants, none whose credentials differ
//! from the database's, no wanted extension without its SIP user, no change row left. And no
//! secret (generated password, shared secret, token, token secret) in any text that left a
//! process: logs, outputs, `/healthz`, `/metrics`.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use mbg_provision::sim::{Faults, Injected};
use mbg_provision::store::ExtensionSpec;
use secrecy::{ExposeSecret, SecretString};

use crate::guarantees::{command, lenient_sim, raw_sql, start, text, with_extensions};
use crate::mbg::Harness;
use crate::service::{Daemon, eventually};
use crate::support::TestDb;

/// splitmix64: a seeded, dependency-free source of the suites' random choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() as f64 / u64::MAX as f64) < p
    }

    /// `k` distinct items of `from`.
    fn sample(&mut self, from: &[usize], k: usize) -> Vec<usize> {
        let mut pool = from.to_vec();
        let k = k.min(pool.len());
        for i in 0..k {
            let j = i + self.below(pool.len() - i);
            pool.swap(i, j);
        }
        pool.truncate(k);
        pool
    }
}

fn seed() -> u64 {
    std::env::var("PROOF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

fn backend(h: &Harness) -> &'static str {
    if h.db.url.starts_with("postgres") {
        "postgres"
    } else {
        "sqlite"
    }
}

/// The secrets seen during a suite, and every text that left a process.
#[derive(Default)]
struct Exposure {
    secrets: HashSet<String>,
    texts: Vec<(String, String)>,
}

impl Exposure {
    /// Everything secret that the database and the simulator hold right now.
    async fn collect(&mut self, h: &Harness) {
        let mut add = |s: &SecretString| {
            let s = s.expose_secret();
            if s.len() >= 8 {
                self.secrets.insert(s.to_string());
            }
        };
        let rows = h.db.store.extension_rows().await.unwrap();
        for e in &rows.good {
            add(&e.sip_password);
            if let Some(p) = &e.remote_auth_password {
                add(p);
            }
        }
        for r in h.db.store.released().await.unwrap() {
            if let Some(p) = &r.remote_auth_password {
                add(p);
            }
        }
        if let Ok(settings) = h.db.store.mbg_settings().await {
            for s in [
                &settings.consumer_secret,
                &settings.access_token,
                &settings.access_token_secret,
                &settings.temp_token,
                &settings.temp_token_secret,
            ]
            .into_iter()
            .flatten()
            {
                add(s);
            }
        }
        add(&SecretString::from(crate::mbg::SECRET));
        for d in h.sim.devices() {
            add(&SecretString::from(d.setside_password));
            add(&SecretString::from(d.icpside_password));
        }
    }

    fn text(&mut self, place: impl Into<String>, text: impl Into<String>) {
        self.texts.push((place.into(), text.into()));
    }

    fn bytes(&self) -> usize {
        self.texts.iter().map(|(_, t)| t.len()).sum()
    }

    /// Where a secret appeared, at most a few, never the secret itself.
    fn leaks(&self) -> Vec<String> {
        let secrets: Vec<&String> = self.secrets.iter().collect();
        let finder = aho_corasick::AhoCorasick::new(&secrets).unwrap();
        let mut found = Vec::new();
        for (place, text) in &self.texts {
            if let Some(m) = finder.find(text) {
                let line_start = text[..m.start()].rfind('\n').map_or(0, |i| i + 1);
                found.push(format!(
                    "{place}: a secret of {} characters at byte {} (line starting {:?})",
                    m.len(),
                    m.start(),
                    &text[line_start..m.start().min(line_start + 60)]
                ));
            }
        }
        found
    }
}

/// What the MBG holds against what the database wants.
#[derive(Debug, Default, PartialEq, Eq)]
struct Convergence {
    /// SIP users beyond the first for one extension number.
    duplicates: usize,
    /// SIP users that no extension wants.
    orphans: usize,
    /// SIP users of wanted extensions whose guid, ICP or credentials differ from the row's.
    mismatched: usize,
    /// Wanted extensions without a SIP user.
    missing: usize,
    /// Change rows and released rows not handled yet.
    pending: usize,
}

impl Convergence {
    async fn of(h: &Harness) -> Convergence {
        let rows = h.db.store.extension_rows().await.unwrap().good;
        let by_number: HashMap<&str, _> = rows.iter().map(|e| (e.number.as_str(), e)).collect();
        let mut per_number: HashMap<&str, usize> = HashMap::new();
        let devices = h.sim.devices();
        let mut c = Convergence::default();
        for d in &devices {
            *per_number.entry(d.icpside_username.as_str()).or_default() += 1;
            match by_number.get(d.icpside_username.as_str()) {
                Some(e) if e.use_remote_auth => {
                    let same = e.mbg_device_id.as_deref() == Some(d.guid.as_str())
                        && d.icp == "MiVO250-1"
                        && e.remote_auth_name.as_deref() == Some(d.setside_username.as_str())
                        && e.remote_auth_password.as_ref().map(|p| p.expose_secret())
                            == Some(d.setside_password.as_str());
                    if !same {
                        c.mismatched += 1;
                    }
                }
                _ => c.orphans += 1,
            }
        }
        c.duplicates = per_number.values().map(|n| n.saturating_sub(1)).sum();
        c.missing = rows
            .iter()
            .filter(|e| e.use_remote_auth && !per_number.contains_key(e.number.as_str()))
            .count();
        c.pending = h.db.store.pending_changes(100_000).await.unwrap().len()
            + h.db.store.released().await.unwrap().len();
        c
    }

    fn is_clean(&self) -> bool {
        *self == Convergence::default()
    }
}

/// One suite's figures, printed and appended to `target/tmp/proof-figures.txt`.
struct Figures<'a> {
    suite: &'a str,
    backend: &'a str,
    seed: u64,
    runs: usize,
    kills: usize,
    faults: Injected,
    requests: usize,
    end: &'a Convergence,
    leaks: usize,
    log_bytes: usize,
    note: String,
}

impl Figures<'_> {
    fn report(&self) {
        let f = &self.faults;
        let line = format!(
            "{:<12} {:<8} seed={} runs={} kills={} faults: 5xx={} 429={} dropped={} lost_answers={} spikes={} | requests={} | duplicates={} orphans={} mismatched={} missing={} pending={} | leaks={} in {} KB of logs and outputs | {}",
            self.suite,
            self.backend,
            self.seed,
            self.runs,
            self.kills,
            f.errors_5xx,
            f.rate_limited,
            f.dropped,
            f.lost_answers,
            f.spikes,
            self.requests,
            self.end.duplicates,
            self.end.orphans,
            self.end.mismatched,
            self.end.missing,
            self.end.pending,
            self.leaks,
            self.log_bytes / 1024,
            self.note
        );
        record_figures(&line);
    }
}

/// Prints a line of figures and appends it to `target/tmp/proof-figures.txt`, which `.ci/run`
/// prints at the end.
pub(crate) fn record_figures(line: &str) {
    eprintln!("PROOF {line}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("proof-figures.txt");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(file, "{line}");
    }
}

/// Prints a suite's figures (the simulator's counts as they stand) and fails it on any leak.
fn conclude(
    h: &Harness,
    exposure: &Exposure,
    suite: &str,
    seed: u64,
    (runs, kills): (usize, usize),
    end: &Convergence,
    note: String,
) {
    let leaks = exposure.leaks();
    Figures {
        suite,
        backend: backend(h),
        seed,
        runs,
        kills,
        faults: h.sim.injected(),
        requests: h.sim.requests().len(),
        end,
        leaks: leaks.len(),
        log_bytes: exposure.bytes(),
        note,
    }
    .report();
    assert!(leaks.is_empty(), "seed {seed}: {leaks:#?}");
}

/// SQL that flips the remote flag of `numbers` (a boolean on PostgreSQL, 0/1 on SQLite).
fn flip_sql(numbers: &[usize]) -> String {
    let list = numbers
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(",");
    format!("UPDATE extensions SET use_remote_auth = NOT use_remote_auth WHERE number IN ({list})")
}

fn in_list(numbers: &[usize]) -> String {
    numbers
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Half the time after a kill, some of what the killed process was working on (up to 40 of the
/// extensions changed for it) are switched off, and as many deleted, by another program before
/// the restart. Returns the numbers deleted.
async fn switch_off_or_delete(h: &Harness, rng: &mut Rng, touched: &[usize]) -> Vec<usize> {
    if touched.is_empty() || !rng.chance(0.5) {
        return Vec::new();
    }
    let chosen = rng.sample(touched, 80);
    let (off, gone) = chosen.split_at(chosen.len() / 2);
    let mut statements = Vec::new();
    if !off.is_empty() {
        statements.push(format!(
            "UPDATE extensions SET use_remote_auth = false WHERE number IN ({})",
            in_list(off)
        ));
    }
    if !gone.is_empty() {
        statements.push(format!(
            "DELETE FROM extensions WHERE number IN ({})",
            in_list(gone)
        ));
    }
    raw_sql(&h.db.url, &statements.join(";\n")).await;
    gone.to_vec()
}

/// Puts deleted numbers back, wanted: new rows, new credentials, while the old SIP user may
/// still be on the MBG.
async fn recreate(h: &Harness, numbers: &[usize]) {
    if numbers.is_empty() {
        return;
    }
    let specs: Vec<ExtensionSpec> = numbers
        .iter()
        .map(|n| ExtensionSpec {
            number: n.to_string(),
            node: "pbx1".into(),
            kind: None,
            use_remote_auth: Some(true),
            sip_password: None,
        })
        .collect();
    h.db.store
        .set_extensions(&specs, || SecretString::from("pbx-sip-password"))
        .await
        .unwrap();
}

crate::on_both_backends!(
    faults_1000_flips_under_run_converge_without_a_retry_storm,
    token_loss_mid_run_loses_nothing,
);

// 30 kills each, and a restart after each waits out the killed holder's calls: minutes.
crate::on_both_backends!(
    long: crash_sync_killed_at_30_random_points,
    crash_run_killed_at_30_random_points_while_500_flips_stream_in,
);

const CRASH_EXTENSIONS: usize = 1000;
const CRASH_FIRST: usize = 10_000;

/// Suite 1a: a 1,000-extension `sync`, SIGKILLed at 30 random points (a random delay within
/// the length of the previous pass; a round whose pass ended first does not count).
async fn crash_sync_killed_at_30_random_points(db: TestDb) {
    let seed = seed();
    let mut rng = Rng(seed);
    let h = with_extensions(db, lenient_sim(1), CRASH_FIRST, CRASH_EXTENSIONS, false).await;
    let dir = tempfile::tempdir().unwrap();
    let mut exposure = Exposure::default();
    let mut alive: Vec<usize> = (CRASH_FIRST..CRASH_FIRST + CRASH_EXTENSIONS).collect();
    let mut deleted: Vec<usize> = Vec::new();
    let mut window_ms = 400u64;
    let (mut runs, mut kills) = (0, 0);
    // Until 30 kills have landed: a kill point past the end of a pass finds it finished.
    let mut round = 0;
    while kills < 30 {
        round += 1;
        assert!(
            round <= 60,
            "seed {seed}: 30 kills did not land in 60 rounds"
        );
        let how_many = 150 + rng.below(300);
        let flips = rng.sample(&alive, how_many);
        raw_sql(&h.db.url, &flip_sql(&flips)).await;
        let how_many = rng.below(40);
        let back = rng.sample(&deleted, how_many);
        recreate(&h, &back).await;
        deleted.retain(|n| !back.contains(n));
        alive.extend(&back);
        exposure.collect(&h).await;

        let mut sync = command(&h, dir.path(), &["sync"]);
        sync.env("RUST_LOG", "trace");
        let running = start(sync);
        tokio::time::sleep(Duration::from_millis(rng.below(window_ms as usize) as u64)).await;
        // A sync that ends between the look and the signal was not killed.
        let was_running = !running.output.is_finished() && running.try_signal("-KILL");
        if was_running {
            kills += 1;
        }
        let output = running.finish().await;
        runs += 1;
        exposure.text(
            format!("round {round} killed sync stdout"),
            text(&output.stdout),
        );
        exposure.text(
            format!("round {round} killed sync stderr"),
            text(&output.stderr),
        );
        exposure.collect(&h).await;

        let mut touched = flips.clone();
        touched.extend(&back);
        let gone = switch_off_or_delete(&h, &mut rng, &touched).await;
        alive.retain(|n| !gone.contains(n));
        deleted.extend(&gone);

        let started = Instant::now();
        // Every other restart prints JSON, which the secrets scan reads too.
        let args: &[&str] = if round % 2 == 1 {
            &["sync", "--json"]
        } else {
            &["sync"]
        };
        let mut sync = command(&h, dir.path(), args);
        sync.env("RUST_LOG", "trace");
        let output = start(sync).finish().await;
        runs += 1;
        exposure.text(
            format!("round {round} restart stdout"),
            text(&output.stdout),
        );
        exposure.text(
            format!("round {round} restart stderr"),
            text(&output.stderr),
        );
        assert!(
            output.status.success(),
            "round {round} (seed {seed}): the restart failed ({:?})\n{}\n{}",
            output.status.code(),
            text(&output.stdout),
            text(&output.stderr)
                .lines()
                .filter(|l| !l.contains("TRACE") && !l.contains("DEBUG"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        // The next kill lands anywhere in a pass as long as this one.
        window_ms = started.elapsed().as_millis().max(50) as u64;
        exposure.collect(&h).await;
        let state = Convergence::of(&h).await;
        assert!(
            state.is_clean(),
            "round {round} (seed {seed}), after {} kills: {state:?}",
            kills
        );
    }
    for args in [&["status", "--json"][..], &["extension", "list", "--json"]] {
        let output = start(command(&h, dir.path(), args)).finish().await;
        exposure.text(args.join(" "), text(&output.stdout));
    }
    let end = Convergence::of(&h).await;
    conclude(
        &h,
        &exposure,
        "crash-sync",
        seed,
        (runs, kills),
        &end,
        format!(
            "{} secrets watched; {} extensions deleted and {} alive at the end",
            exposure.secrets.len(),
            deleted.len(),
            alive.len()
        ),
    );
}

/// Suite 1b: the daemon, SIGKILLed at 30 random points while 500 raw-SQL flips stream in.
async fn crash_run_killed_at_30_random_points_while_500_flips_stream_in(db: TestDb) {
    let seed = seed();
    let mut rng = Rng(seed);
    let first = CRASH_FIRST + 5000;
    let h = with_extensions(db, lenient_sim(1), first, CRASH_EXTENSIONS, false).await;
    let dir = tempfile::tempdir().unwrap();
    let mut exposure = Exposure::default();
    let mut alive: Vec<usize> = (first..first + CRASH_EXTENSIONS).collect();
    let env = [("RUST_LOG", "trace")];
    let (mut runs, mut kills, mut flips_done) = (0, 0, 0);
    let mut daemons = Vec::new();
    for round in 0..30 {
        let daemon = Daemon::start_env(&h, dir.path(), &[], &env);
        runs += 1;
        // 500 flips in all: about 17 per life, one statement each, while the daemon works.
        let mut touched = Vec::new();
        let lifetime = Duration::from_millis(100 + rng.below(700) as u64);
        let born = Instant::now();
        let due = (500 * (round + 1) / 30) - flips_done;
        for _ in 0..due {
            let number = alive[rng.below(alive.len())];
            raw_sql(&h.db.url, &flip_sql(&[number])).await;
            touched.push(number);
            flips_done += 1;
            tokio::time::sleep(lifetime / (due as u32 + 1)).await;
        }
        if let Some(left) = lifetime.checked_sub(born.elapsed()) {
            tokio::time::sleep(left).await;
        }
        daemon.signal("-KILL");
        kills += 1;
        exposure.text(format!("run {round} log"), daemon.log(dir.path()));
        daemons.push(daemon);
        let gone = switch_off_or_delete(&h, &mut rng, &touched).await;
        alive.retain(|n| !gone.contains(n));
        exposure.collect(&h).await;
    }
    assert_eq!(flips_done, 500);
    // Restart and converge.
    let last = leading_daemon(&h, dir.path(), &[]).await;
    runs += 1;
    let (state, took) = converge(&h, "convergence after 30 kills", Duration::from_secs(120)).await;
    endpoints(&last, &mut exposure).await;
    stop(last, dir.path(), &mut exposure).await;
    exposure.collect(&h).await;
    conclude(
        &h,
        &exposure,
        "crash-run",
        seed,
        (runs, kills),
        &state,
        format!("500 flips; converged {took:?} after the last restart"),
    );
}

/// Starts a daemon with trace logs and `env`, and waits until it leads.
async fn leading_daemon(h: &Harness, dir: &Path, env: &[(&str, &str)]) -> Daemon {
    let mut all = vec![("RUST_LOG", "trace")];
    all.extend_from_slice(env);
    let daemon = Daemon::start_env(h, dir, &[], &all);
    eventually("the daemon leads", Duration::from_secs(30), async || {
        daemon.role().await.as_deref() == Some("leader")
    })
    .await;
    daemon
}

/// Streams `count` flips, one statement each, `gap` apart, on random extensions of `numbers`.
async fn stream_flips(h: &Harness, rng: &mut Rng, numbers: &[usize], count: usize, gap: Duration) {
    for _ in 0..count {
        let number = numbers[rng.below(numbers.len())];
        raw_sql(&h.db.url, &flip_sql(&[number])).await;
        tokio::time::sleep(gap).await;
    }
}

/// `/healthz` and `/metrics` of a daemon, for the secrets scan.
async fn endpoints(daemon: &Daemon, exposure: &mut Exposure) {
    if let Some((_, health)) = daemon.health().await {
        exposure.text("/healthz", health.to_string());
    }
    if let Ok(answer) = reqwest::get(format!("http://127.0.0.1:{}/metrics", daemon.port)).await {
        exposure.text("/metrics", answer.text().await.unwrap_or_default());
    }
}

/// Stops a daemon with SIGTERM (it must exit 0) and keeps its log.
async fn stop(daemon: Daemon, dir: &Path, exposure: &mut Exposure) {
    let log = dir.join(format!("daemon-{}.log", daemon.port));
    daemon.signal("-TERM");
    let code = daemon.wait().await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(code, Some(0), "SIGTERM exits 0; the daemon's log:\n{text}");
    exposure.text(log.display().to_string(), text);
}

/// Waits for convergence; on time out, panics with where it stands and the failed extensions'
/// next retries.
async fn converge(h: &Harness, what: &str, limit: Duration) -> (Convergence, Duration) {
    let started = Instant::now();
    let mut most_duplicates = 0;
    loop {
        let state = Convergence::of(h).await;
        if state.duplicates > most_duplicates {
            most_duplicates = state.duplicates;
            eprintln!(
                "{what}: {most_duplicates} duplicate(s) seen on the way, at {:?}",
                started.elapsed()
            );
        }
        if state.is_clean() {
            return (state, started.elapsed());
        }
        if started.elapsed() > limit {
            let now = chrono::Utc::now().timestamp();
            let waiting: Vec<String> =
                h.db.store
                    .extensions()
                    .await
                    .unwrap()
                    .into_iter()
                    .filter(|e| e.next_attempt_at.is_some())
                    .take(10)
                    .map(|e| {
                        format!(
                            "{} {:?} attempts {} retry in {} s: {:?}",
                            e.number,
                            e.state,
                            e.attempts,
                            e.next_attempt_at.unwrap_or(now) - now,
                            e.last_error
                        )
                    })
                    .collect();
            panic!("not within {limit:?}: {what}: {state:?}; waiting for a retry: {waiting:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The retry bound the faults suite asserts: at most this many MBG requests per flip.
const REQUESTS_PER_FLIP: usize = 3;

/// Suite 2: 1,000 flips under `run` while the MBG fails 20 % of requests with 503, drops 5 % of
/// connections (3 % before the work, 2 % after it: lost answers), sends bursts of 429 with
/// Retry-After, and holds 1 % of answers beyond `mbg.timeout` (2 s: 2.5 s).
async fn faults_1000_flips_under_run_converge_without_a_retry_storm(db: TestDb) {
    let seed = seed();
    let mut rng = Rng(seed);
    let first = 40_000;
    let h = with_extensions(db, lenient_sim(1), first, 1000, false).await;
    let dir = tempfile::tempdir().unwrap();
    let mut exposure = Exposure::default();
    // A create held beyond the timeout is carried out after the client has looked for it and
    // posted again: a duplicate that no lookup could see yet. The full reconcile deletes it;
    // here it runs every 15 s instead of 5 min, so that the suite sees it healed.
    let env = [
        ("MBG_PROVISION_MBG__TIMEOUT", "2s"),
        ("MBG_PROVISION_MBG__MAX_RETRY_AFTER", "2s"),
        ("MBG_PROVISION_MBG__RETRY_DEADLINE", "20s"),
        ("MBG_PROVISION_RECONCILE__INTERVAL", "15s"),
    ];
    let daemon = leading_daemon(&h, dir.path(), &env).await;
    h.sim.clear_requests();
    h.sim.set_faults(Faults {
        latency_ms: 1,
        fail_rate: 0.20,
        drop_rate: 0.03,
        lose_answer_rate: 0.02,
        burst_rate: 0.004,
        burst_len: 5,
        retry_after_secs: 1,
        spike_rate: 0.01,
        spike_ms: 2500,
        ..Faults::default()
    });
    let numbers: Vec<usize> = (first..first + 1000).collect();
    stream_flips(&h, &mut rng, &numbers, 1000, Duration::from_millis(5)).await;
    exposure.collect(&h).await;
    let (end, took) = converge(&h, "convergence under faults", Duration::from_secs(180)).await;
    h.sim.set_faults(Faults::default());
    let requests = h.sim.requests();
    let writes = requests.iter().filter(|r| r.method != "GET").count();
    endpoints(&daemon, &mut exposure).await;
    stop(daemon, dir.path(), &mut exposure).await;
    exposure.collect(&h).await;
    conclude(
        &h,
        &exposure,
        "faults",
        seed,
        (1, 0),
        &end,
        format!(
            "1000 flips; {writes} writes, {} reads; converged {took:?} after the last flip; bound {} requests ({REQUESTS_PER_FLIP} per flip)",
            requests.len() - writes,
            REQUESTS_PER_FLIP * 1000
        ),
    );
    assert!(
        requests.len() <= REQUESTS_PER_FLIP * 1000,
        "seed {seed}: {} requests for 1000 flips: a retry storm",
        requests.len()
    );
}

/// Suite 3: the token is revoked in the middle of a run; the daemon stops calling, keeps every
/// change, and applies them all once another process stores a new token.
async fn token_loss_mid_run_loses_nothing(db: TestDb) {
    let seed = seed();
    let mut rng = Rng(seed);
    let first = 50_000;
    let h = with_extensions(db, lenient_sim(1), first, 300, false).await;
    let dir = tempfile::tempdir().unwrap();
    let mut exposure = Exposure::default();
    let env = [("MBG_PROVISION_TOKEN__RECHECK_INTERVAL", "300ms")];
    let daemon = leading_daemon(&h, dir.path(), &env).await;
    let numbers: Vec<usize> = (first..first + 300).collect();
    stream_flips(&h, &mut rng, &numbers, 100, Duration::from_millis(5)).await;
    exposure.collect(&h).await;

    let token =
        h.db.store
            .mbg_settings()
            .await
            .unwrap()
            .access_token
            .unwrap();
    assert!(h.sim.revoke(token.expose_secret()));
    // The next calls meet the 401; the daemon then says so and stops calling.
    stream_flips(&h, &mut rng, &numbers, 100, Duration::from_millis(5)).await;
    eventually(
        "unhealthy: the token",
        Duration::from_secs(30),
        async || {
            daemon
                .health()
                .await
                .is_some_and(|(code, body)| code == 503 && body["token"]["state"] == "rejected")
        },
    )
    .await;
    let refused_at = h.sim.requests().len();
    stream_flips(&h, &mut rng, &numbers, 100, Duration::from_millis(5)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let while_refused = h.sim.requests().len() - refused_at;
    endpoints(&daemon, &mut exposure).await;
    let pending = h.db.store.pending_changes(100_000).await.unwrap().len();
    assert!(pending > 0, "the changes made meanwhile are kept");

    // Another process does the exchange again.
    // Run off the test's runtime thread, which also serves the simulator.
    let cli = |args: &[&str]| {
        let mut command = crate::support::binary();
        command
            .args(args)
            .current_dir(dir.path())
            .env("MBG_PROVISION_DATABASE__URL", &h.db.url)
            .env("MBG_PROVISION_SECRETS__KEY_FILE", &h.db.key_file)
            .env("MBG_PROVISION_MBG__BASE_URL", h.sim.base_url())
            .env("MBG_PROVISION_CONSUMER_SECRET", crate::mbg::SECRET)
            .env("RUST_LOG", "trace");
        async move {
            let output = tokio::task::spawn_blocking(move || command.output().unwrap())
                .await
                .unwrap();
            let stderr = text(&output.stderr);
            assert!(
                output.status.success(),
                "{}",
                stderr
                    .lines()
                    .filter(|l| !l.contains("TRACE") && !l.contains("DEBUG"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            (text(&output.stdout), stderr)
        }
    };
    let (requested, log) = cli(&[
        "token",
        "request",
        "--name",
        "again",
        "--consumer-id",
        crate::mbg::CONSUMER,
    ])
    .await;
    exposure.text("token request log", log);
    let temporary = requested
        .lines()
        .find_map(|l| l.strip_prefix("temporary token: "))
        .unwrap()
        .to_string();
    let verifier = h.sim.approve(&temporary).unwrap();
    let (verified, log) = cli(&["token", "verify", &verifier]).await;
    exposure.text("token verify stdout", verified);
    exposure.text("token verify log", log);
    exposure.collect(&h).await;
    let stored = Instant::now();
    let (end, took) = converge(
        &h,
        "everything applied with the new token",
        Duration::from_secs(60),
    )
    .await;
    eventually("healthy again", Duration::from_secs(10), async || {
        daemon.health().await.is_some_and(|(code, _)| code == 200)
    })
    .await;
    endpoints(&daemon, &mut exposure).await;
    stop(daemon, dir.path(), &mut exposure).await;
    conclude(
        &h,
        &exposure,
        "token-loss",
        seed,
        (1, 0),
        &end,
        format!(
            "300 flips, the token revoked after 100; {while_refused} requests in the 1 s+ while refused; {pending} changes kept; all applied {took:?} after the new token ({:?} since it was stored)",
            stored.elapsed()
        ),
    );
    assert_eq!(while_refused, 0, "no MBG call with a refused token");
}

/// Suite 4 (PostgreSQL): two daemons; the leader is SIGKILLed at 10 random points during a
/// stream of flips, and a fresh one started each time. Prints the takeover times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "PostgreSQL: set TEST_POSTGRES_URL (CI does)"
)]
async fn leader_loss_10_kills_each_extension_keeps_one_sip_user() {
    let Some(db) = TestDb::postgres("leader_loss_10_kills_each_extension_keeps_one_sip_user").await
    else {
        return;
    };
    let seed = seed();
    let mut rng = Rng(seed);
    let first = 60_000;
    let h = with_extensions(db, lenient_sim(1), first, 1000, false).await;
    let dir = tempfile::tempdir().unwrap();
    let mut exposure = Exposure::default();
    let env = [("RUST_LOG", "trace")];
    let mut daemons = vec![
        leading_daemon(&h, dir.path(), &[]).await,
        Daemon::start_env(&h, dir.path(), &[], &env),
    ];
    let numbers: Vec<usize> = (first..first + 1000).collect();
    let mut takeovers = Vec::new();
    for _ in 0..10 {
        let count = 20 + rng.below(30);
        stream_flips(&h, &mut rng, &numbers, count, Duration::from_millis(3)).await;
        // Whoever leads now dies.
        let mut leader = None;
        for (i, d) in daemons.iter().enumerate() {
            if d.role().await.as_deref() == Some("leader") {
                leader = Some(i);
            }
        }
        let leader = leader.expect("a leader");
        let dead = daemons.remove(leader);
        dead.signal("-KILL");
        let killed = Instant::now();
        exposure.text("killed leader log", dead.log(dir.path()));
        drop(dead);
        let survivor = &daemons[0];
        eventually(
            "the standby takes over",
            Duration::from_secs(30),
            async || survivor.role().await.as_deref() == Some("leader"),
        )
        .await;
        takeovers.push(killed.elapsed());
        daemons.push(Daemon::start_env(&h, dir.path(), &[], &env));
    }
    exposure.collect(&h).await;
    let (end, took) = converge(
        &h,
        "convergence after 10 leader kills",
        Duration::from_secs(60),
    )
    .await;
    for d in daemons.drain(..) {
        endpoints(&d, &mut exposure).await;
        stop(d, dir.path(), &mut exposure).await;
    }
    takeovers.sort();
    conclude(
        &h,
        &exposure,
        "leader-loss",
        seed,
        (12, 10),
        &end,
        format!(
            "takeover min {:?} median {:?} max {:?}; converged {took:?} after the last",
            takeovers[0],
            takeovers[takeovers.len() / 2],
            takeovers[takeovers.len() - 1]
        ),
    );
}
