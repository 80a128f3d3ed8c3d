//! `mbg-provision run` as a service runs: the real binary, `/healthz`, SIGTERM, SIGKILL in the
//! middle of a batch, two instances on one PostgreSQL, and the latency from an SQL commit to
//! the SIP user on the MBG.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mbg_provision::sim::{Faults, SimConfig};
use sqlx::Connection;

use crate::mbg::{Harness, sim_config};
use crate::support::TestDb;

crate::on_both_backends!(
    flips_reach_the_mbg_healthz_answers_and_sigterm_exits_0,
    a_daemon_killed_mid_batch_converges_on_restart,
    a_switch_off_during_a_long_pass_stops_its_creates,
    healthz_follows_the_mbg_without_traffic,
);

async fn setup(db: TestDb, sim: SimConfig, count: usize) -> Harness {
    crate::guarantees::with_extensions(db, sim, 3000, count, false).await
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A daemon process; killed (SIGKILL) if the test ends without stopping it.
pub(crate) struct Daemon {
    child: Option<Child>,
    pub(crate) port: u16,
}

impl Daemon {
    pub(crate) fn start(h: &Harness, dir: &std::path::Path) -> Daemon {
        Daemon::start_with(h, dir, &[])
    }

    /// With extra arguments; its log goes to `dir/daemon-PORT.log`.
    fn start_with(h: &Harness, dir: &std::path::Path, args: &[&str]) -> Daemon {
        Daemon::start_env(h, dir, args, &[])
    }

    /// With extra arguments and variables (set last, so they win).
    pub(crate) fn start_env(
        h: &Harness,
        dir: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let (mut command, port) = Daemon::command(h, dir, args, env);
        Daemon::spawn(&mut command, port, dir)
    }

    /// The command [`Daemon::start_env`] runs, and its HTTP port, for a test that changes how
    /// the process starts.
    pub(crate) fn command(
        h: &Harness,
        dir: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Command, u16) {
        let port = free_port();
        let log = std::fs::File::create(dir.join(format!("daemon-{port}.log"))).unwrap();
        let mut command = crate::support::binary();
        command
            .args(args)
            .arg("run")
            .current_dir(dir)
            .env("MBG_PROVISION_DATABASE__URL", &h.db.url)
            .env("MBG_PROVISION_SECRETS__KEY_FILE", &h.db.key_file)
            .env("MBG_PROVISION_MBG__BASE_URL", h.sim.base_url())
            .env("MBG_PROVISION_MBG__MAX_IN_FLIGHT", "8")
            .env("MBG_PROVISION_WATCH__POLL_INTERVAL", "200ms")
            .env("MBG_PROVISION_MBG__TIMEOUT", "2s")
            .env("MBG_PROVISION_LEADER__LEASE", "2s")
            .env("MBG_PROVISION_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log);
        (command, port)
    }

    /// Spawns `command`. A stderr the caller made a pipe is copied to the log file by this
    /// process, so that the log survives limits put on the daemon's own writes.
    pub(crate) fn spawn(command: &mut Command, port: u16, dir: &std::path::Path) -> Daemon {
        let mut child = command.spawn().unwrap();
        if let Some(mut stderr) = child.stderr.take() {
            let mut log = std::fs::File::create(dir.join(format!("daemon-{port}.log"))).unwrap();
            std::thread::spawn(move || std::io::copy(&mut stderr, &mut log));
        }
        Daemon {
            child: Some(child),
            port,
        }
    }

    pub(crate) fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub(crate) fn log(&self, dir: &std::path::Path) -> String {
        std::fs::read_to_string(dir.join(format!("daemon-{}.log", self.port))).unwrap_or_default()
    }

    pub(crate) async fn health(&self) -> Option<(u16, serde_json::Value)> {
        let url = format!("http://127.0.0.1:{}/healthz", self.port);
        let response = reqwest::get(url).await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.ok()?))
    }

    /// Waits (20 s at most) until this daemon leads, healthy, with a full reconcile done.
    pub(crate) async fn leading_after_a_full_pass(&self) {
        eventually("leading after a full pass", Duration::from_secs(20), async || {
            matches!(self.health().await, Some((200, body)) if body["role"] == "leader" && body["last_full_reconcile"].is_i64())
        })
        .await;
    }

    pub(crate) async fn role(&self) -> Option<String> {
        let (_, body) = self.health().await?;
        Some(body["role"].as_str()?.to_string())
    }

    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits for the process to end; its exit code.
    pub(crate) async fn wait(mut self) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        tokio::task::spawn_blocking(move || child.wait().unwrap().code())
            .await
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) async fn eventually(
    what: &str,
    limit: Duration,
    mut done: impl AsyncFnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    started.elapsed()
}

pub(crate) async fn sql(url: &str, statement: &str) {
    // A test may run this before any store is opened in its process (nextest runs each test
    // in a process of its own).
    sqlx::any::install_default_drivers();
    let mut other = sqlx::AnyConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
        .execute(&mut other)
        .await
        .unwrap();
    other.close().await.unwrap();
}

fn per_number(h: &Harness) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for device in h.sim.devices() {
        *counts.entry(device.icpside_username).or_insert(0) += 1;
    }
    counts
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn flips_reach_the_mbg_healthz_answers_and_sigterm_exits_0(db: TestDb) {
    let flips: usize = std::env::var("MBGP_FLIPS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    let h = setup(db, sim_config(), flips).await;
    let backend = format!("{:?}", h.db.store.backend());
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&h, dir.path());
    eventually("leading, healthy", Duration::from_secs(20), async || {
        matches!(daemon.health().await, Some((200, body)) if body["role"] == "leader" && body["last_full_reconcile"].is_i64())
    })
    .await;

    // One flip at a time: the time from the UPDATE's commit to the SIP user on the MBG.
    let mut latencies = Vec::new();
    for i in 0..flips {
        let number = (3000 + i).to_string();
        sql(
            &h.db.url,
            &format!("UPDATE extensions SET use_remote_auth = true WHERE number = '{number}'"),
        )
        .await;
        let took = eventually(
            "the SIP user appears",
            Duration::from_secs(10),
            async || h.sim.devices().iter().any(|d| d.icpside_username == number),
        )
        .await;
        latencies.push(took);
    }
    latencies.sort();
    eprintln!(
        "{backend}: SQL commit to SIP user over {flips} flips: median {:?}, p95 {:?}, max {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.95),
        latencies[latencies.len() - 1]
    );
    // Cleared: gone.
    sql(&h.db.url, "UPDATE extensions SET use_remote_auth = false").await;
    eventually("all gone", Duration::from_secs(20), async || {
        h.sim.devices().is_empty()
    })
    .await;
    let (status, body) = daemon.health().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", daemon.port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("mbg_provision_leader 1"), "{metrics}");
    assert!(metrics.contains("mbg_provision_actions_total"), "{metrics}");

    daemon.signal("-TERM");
    assert_eq!(daemon.wait().await, Some(0), "SIGTERM exits 0");
}

async fn a_daemon_killed_mid_batch_converges_on_restart(db: TestDb) {
    let mut sim = sim_config();
    sim.duplicate_setside_names = true;
    sim.faults = Faults {
        latency_ms: 20,
        ..Faults::default()
    };
    let h = setup(db, sim, 300).await;
    let dir = tempfile::tempdir().unwrap();
    let first = Daemon::start(&h, dir.path());
    eventually("leading", Duration::from_secs(20), async || {
        first.role().await.as_deref() == Some("leader")
    })
    .await;
    sql(&h.db.url, "UPDATE extensions SET use_remote_auth = true").await;
    let started = Instant::now();
    while h.sim.devices().len() < 60 {
        if started.elapsed() > Duration::from_secs(30) {
            let log = first.log(dir.path());
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "not within 30 s: the batch under way; the daemon's log ends:\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.signal("-KILL");
    first.wait().await;
    let at_kill = h.sim.devices().len();

    let second = Daemon::start(&h, dir.path());
    eventually("converged", Duration::from_secs(60), async || {
        per_number(&h).len() == 300
    })
    .await;
    let twice = per_number(&h).into_iter().filter(|(_, n)| *n > 1).count();
    assert_eq!(
        twice, 0,
        "SIP users created twice (killed with {at_kill} made)"
    );
    eventually(
        "every row provisioned",
        Duration::from_secs(30),
        async || {
            h.db.store
                .extensions()
                .await
                .unwrap()
                .iter()
                .all(|e| e.state == mbg_provision::store::ExtensionState::Provisioned)
        },
    )
    .await;
    sql(&h.db.url, "UPDATE extensions SET use_remote_auth = false").await;
    eventually("no orphan", Duration::from_secs(60), async || {
        h.sim.devices().is_empty()
    })
    .await;
    second.signal("-TERM");
    assert_eq!(second.wait().await, Some(0));
}

#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "PostgreSQL: set TEST_POSTGRES_URL (CI does)"
)]
async fn two_daemons_on_postgres_fail_over_without_duplicates() {
    let Some(db) = TestDb::postgres("two_daemons_on_postgres_fail_over_without_duplicates").await
    else {
        return;
    };
    let mut sim = sim_config();
    sim.duplicate_setside_names = true;
    let h = setup(db, sim, 200).await;
    let dir = tempfile::tempdir().unwrap();
    let a = Daemon::start(&h, dir.path());
    let b = Daemon::start(&h, dir.path());
    let mut roles = Vec::new();
    eventually(
        "one leader, one standby",
        Duration::from_secs(20),
        async || {
            roles = vec![a.role().await, b.role().await];
            roles.contains(&Some("leader".into())) && roles.contains(&Some("standby".into()))
        },
    )
    .await;
    let (leader, standby) = if roles[0].as_deref() == Some("leader") {
        (a, b)
    } else {
        (b, a)
    };
    // 200 flips, one statement each; the leader dies a third of the way through.
    let flip = |i: usize| {
        let url = h.db.url.clone();
        async move {
            sql(
                &url,
                &format!(
                    "UPDATE extensions SET use_remote_auth = true WHERE number = '{}'",
                    3000 + i
                ),
            )
            .await
        }
    };
    for i in 0..66 {
        flip(i).await;
    }
    leader.signal("-KILL");
    let killed = Instant::now();
    drop(leader);
    // The next flip after the kill: applied by the standby within 10 s.
    flip(66).await;
    eventually(
        "the next flip, by the standby",
        Duration::from_secs(10),
        async || per_number(&h).contains_key("3066"),
    )
    .await;
    let next_flip = killed.elapsed();
    assert_eq!(standby.role().await.as_deref(), Some("leader"));
    for i in 67..200 {
        flip(i).await;
    }
    eventually("every flip applied", Duration::from_secs(30), async || {
        per_number(&h).len() == 200
    })
    .await;
    eprintln!(
        "leader killed: the next flip applied by the standby {next_flip:?} after the kill; all 200 applied {:?} after it",
        killed.elapsed()
    );
    let twice = per_number(&h).into_iter().filter(|(_, n)| *n > 1).count();
    assert_eq!(twice, 0, "a SIP user created twice");
    // The next flip after the takeover is applied within 10 s.
    sql(
        &h.db.url,
        "UPDATE extensions SET use_remote_auth = false WHERE number = '3000'",
    )
    .await;
    eventually("the next flip", Duration::from_secs(10), async || {
        !per_number(&h).contains_key("3000")
    })
    .await;
    standby.signal("-TERM");
    assert_eq!(standby.wait().await, Some(0));
}

#[tokio::test]
async fn a_second_daemon_on_one_sqlite_file_refuses_to_start() {
    let h = setup(TestDb::sqlite().await, sim_config(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let first = Daemon::start(&h, dir.path());
    eventually("leading", Duration::from_secs(20), async || {
        first.role().await.as_deref() == Some("leader")
    })
    .await;
    let second = Daemon::start(&h, dir.path());
    let port = second.port;
    assert_eq!(second.wait().await, Some(1));
    let log = std::fs::read_to_string(dir.path().join(format!("daemon-{port}.log"))).unwrap();
    assert!(
        log.contains("another mbg-provision daemon or sync runs on this SQLite database")
            && log.contains(&format!("process {}", first.child.as_ref().unwrap().id())),
        "{log}"
    );
    first.signal("-TERM");
    assert_eq!(first.wait().await, Some(0));
}

#[tokio::test]
async fn sighup_reloads_the_configuration_and_keeps_it_when_the_new_one_is_bad() {
    let h = setup(TestDb::sqlite().await, sim_config(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[reconcile]\ninterval = \"10m\"\n").unwrap();
    let daemon = Daemon::start_with(&h, dir.path(), &["--config", config.to_str().unwrap()]);
    eventually("leading", Duration::from_secs(20), async || {
        daemon.role().await.as_deref() == Some("leader")
    })
    .await;
    std::fs::write(&config, "[reconcile]\ninterval = \"0s\"\n").unwrap();
    daemon.signal("-HUP");
    eventually(
        "the bad file refused",
        Duration::from_secs(10),
        async || {
            daemon
                .log(dir.path())
                .contains("the new configuration is refused; keeping the old one")
        },
    )
    .await;
    assert!(
        daemon.log(dir.path()).contains("reconcile.interval"),
        "names the key"
    );
    std::fs::write(&config, "[reconcile]\ninterval = \"7m\"\n").unwrap();
    daemon.signal("-HUP");
    eventually("the good file taken", Duration::from_secs(10), async || {
        daemon.log(dir.path()).contains("configuration reloaded")
    })
    .await;
    assert_eq!(
        daemon.role().await.as_deref(),
        Some("leader"),
        "still running"
    );
    // A key that only a restart applies: named in a warning and in /healthz, the old value
    // kept (the log stays text), the rest of the file applied.
    std::fs::write(
        &config,
        "[reconcile]\ninterval = \"8m\"\n[log]\nformat = \"json\"\n",
    )
    .unwrap();
    daemon.signal("-HUP");
    eventually(
        "the restart-only key named",
        Duration::from_secs(10),
        async || {
            daemon
                .log(dir.path())
                .contains("except keys that apply only at the next restart: log.format")
        },
    )
    .await;
    let (code, body) = daemon.health().await.expect("still served on the old port");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "degraded", "{body}");
    assert!(
        body["degraded"]
            .to_string()
            .contains("applied only after a restart: log.format"),
        "{body}"
    );
    // Put back: nothing pending any more.
    std::fs::write(&config, "[reconcile]\ninterval = \"8m\"\n").unwrap();
    daemon.signal("-HUP");
    eventually(
        "nothing pending after the file is put back",
        Duration::from_secs(10),
        async || matches!(daemon.health().await, Some((200, body)) if body["status"] == "ok"),
    )
    .await;
    daemon.signal("-TERM");
    assert_eq!(daemon.wait().await, Some(0));
}

/// SIGHUP reaches a standby too: it reloads (and warns about restart-only keys) without
/// leading, and leads with the new configuration after a takeover.
#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "PostgreSQL: set TEST_POSTGRES_URL (CI does)"
)]
async fn a_standby_reloads_on_sighup() {
    let Some(db) = TestDb::postgres("a_standby_reloads_on_sighup").await else {
        return;
    };
    let h = setup(db, sim_config(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[reconcile]\ninterval = \"10m\"\n").unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let leader = Daemon::start_with(&h, dir.path(), &args);
    eventually("leading", Duration::from_secs(20), async || {
        leader.role().await.as_deref() == Some("leader")
    })
    .await;
    let standby = Daemon::start_with(&h, dir.path(), &args);
    eventually("standing by", Duration::from_secs(20), async || {
        standby.role().await.as_deref() == Some("standby")
    })
    .await;
    std::fs::write(
        &config,
        "[reconcile]\ninterval = \"9m\"\n[database]\nconnect_timeout = \"3s\"\n",
    )
    .unwrap();
    standby.signal("-HUP");
    eventually(
        "the standby reloaded",
        Duration::from_secs(10),
        async || {
            standby.log(dir.path()).contains(
                "except keys that apply only at the next restart: database.connect_timeout",
            )
        },
    )
    .await;
    assert!(
        !leader.log(dir.path()).contains("configuration reloaded"),
        "only the signalled instance reloads"
    );
    assert_eq!(
        standby.role().await.as_deref(),
        Some("standby"),
        "still standing by"
    );
    leader.signal("-KILL");
    leader.wait().await;
    eventually("the standby leads", Duration::from_secs(20), async || {
        matches!(standby.health().await, Some((200 | 503, body)) if body["role"] == "leader"
            && body["degraded"].to_string().contains("database.connect_timeout"))
    })
    .await;
    standby.signal("-TERM");
    assert_eq!(standby.wait().await, Some(0));
}

/// `/healthz` tells the truth without traffic: an MBG that stops answering is noticed by the
/// idle probe, degraded first and unhealthy after `health.grace`, and healthy again once it
/// answers; the role stays what it is.
async fn healthz_follows_the_mbg_without_traffic(db: TestDb) {
    let h = setup(db, sim_config(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_env(
        &h,
        dir.path(),
        &[],
        &[("MBG_PROVISION_HEALTH__GRACE", "2s")],
    );
    daemon.leading_after_a_full_pass().await;
    h.sim.set_faults(Faults {
        fail_rate: 1.0,
        ..Faults::default()
    });
    let mut saw_degraded = false;
    eventually(
        "unhealthy, naming the MBG",
        Duration::from_secs(15),
        async || {
            let Some((code, body)) = daemon.health().await else {
                return false;
            };
            saw_degraded |= code == 200 && body["degraded"].to_string().contains("MBG:");
            code == 503
                && body["unhealthy"].to_string().contains("MBG:")
                && body["mbg"]["ok"] == false
                && body["role"] == "leader"
        },
    )
    .await;
    assert!(saw_degraded, "degraded within the grace before unhealthy");
    h.sim.set_faults(Faults::default());
    eventually("healthy again", Duration::from_secs(15), async || {
        matches!(daemon.health().await, Some((200, body)) if body["status"] == "ok" && body["mbg"]["ok"] == true)
    })
    .await;
    daemon.signal("-TERM");
    assert_eq!(daemon.wait().await, Some(0));
}

/// The database refusing connections (PostgreSQL: connections to it disallowed and the existing
/// ones ended): 503 naming the database after the grace, the role standby (it lost its lock),
/// never "stopping"; back to leading once connections are allowed again.
#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "PostgreSQL: set TEST_POSTGRES_URL (CI does)"
)]
async fn healthz_follows_a_database_that_refuses_connections() {
    let Some(db) = TestDb::postgres("healthz_follows_a_database_that_refuses_connections").await
    else {
        return;
    };
    let h = setup(db, sim_config(), 1).await;
    let name = url::Url::parse(&h.db.url)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_string();
    let admin = std::env::var(crate::support::POSTGRES_ENV).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_env(
        &h,
        dir.path(),
        &[],
        &[("MBG_PROVISION_HEALTH__GRACE", "2s")],
    );
    daemon.leading_after_a_full_pass().await;
    h.db.store.close().await;
    sql(
        &admin,
        &format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ),
    )
    .await;
    let mut roles = std::collections::HashSet::new();
    eventually(
        "unhealthy, naming the database",
        Duration::from_secs(20),
        async || {
            let Some((code, body)) = daemon.health().await else {
                return false;
            };
            roles.insert(body["role"].as_str().unwrap_or_default().to_string());
            code == 503 && body["unhealthy"].to_string().contains("database:")
        },
    )
    .await;
    assert!(!roles.contains("stopping"), "{roles:?}");
    sql(
        &admin,
        &format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"),
    )
    .await;
    eventually("leading and healthy again", Duration::from_secs(30), async || {
        matches!(daemon.health().await, Some((200, body)) if body["role"] == "leader" && body["database"]["ok"] == true)
    })
    .await;
    daemon.signal("-TERM");
    assert_eq!(daemon.wait().await, Some(0));
}

/// 2,000 extensions switched on, then all off a second into the creating pass (4 calls at a
/// time, 25 ms each: the pass would take some 12 s): the creates not yet sent are dropped, the
/// few made are removed, and `queue_depth` shows the work left meanwhile.
async fn a_switch_off_during_a_long_pass_stops_its_creates(db: TestDb) {
    const COUNT: usize = 2000;
    let mut sim = sim_config();
    sim.faults = Faults {
        latency_ms: 25,
        ..Faults::default()
    };
    let h = setup(db, sim, COUNT).await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_env(
        &h,
        dir.path(),
        &[],
        &[("MBG_PROVISION_MBG__MAX_IN_FLIGHT", "4")],
    );
    daemon.leading_after_a_full_pass().await;
    sql(&h.db.url, "UPDATE extensions SET use_remote_auth = true").await;
    let mut deepest = 0;
    eventually(
        "the creating pass under way",
        Duration::from_secs(20),
        async || {
            if let Some((_, body)) = daemon.health().await {
                deepest = deepest.max(body["queue_depth"].as_u64().unwrap_or(0));
            }
            h.sim.devices().len() >= 40 && deepest > 0
        },
    )
    .await;
    assert!(
        deepest > 1000,
        "queue_depth counts the work not yet done during the pass: at most {deepest} seen"
    );
    sql(&h.db.url, "UPDATE extensions SET use_remote_auth = false").await;
    let switched_off_with = h.sim.devices().len();
    eventually(
        "every SIP user removed",
        Duration::from_secs(60),
        async || h.sim.devices().is_empty(),
    )
    .await;
    let creates = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/devices/sip/"))
        .count();
    eprintln!(
        "{:?}: {switched_off_with} SIP users when switched off, {creates} creates in all (of {COUNT})",
        h.db.store.backend()
    );
    // One poll interval (200 ms) of 4 × 40 calls/s may still go out after the switch-off.
    assert!(
        creates < switched_off_with + 200,
        "{creates} creates for {switched_off_with} wanted when the extensions were switched off"
    );
    daemon.signal("-TERM");
    assert_eq!(daemon.wait().await, Some(0));
}
