//! The daemon in-process against the simulator, on SQLite and PostgreSQL: another program's SQL
//! reaches the MBG, drift is repaired, a node move follows, a refused token stops the calls
//! until a new one is stored, and the renewal job renews. The last two run on a manual clock:
//! what must not happen is watched for hours of the daemon's time, not for a few real seconds.

use std::time::{Duration, Instant};

use mbg_provision::app::App;
use mbg_provision::clock::Clock;
use mbg_provision::daemon;
use mbg_provision::health::{HealthState, Role};
use mbg_provision::shutdown::Shutdown;
use mbg_provision::store::{ExtensionSpec, ExtensionState, NewNode};
use secrecy::{ExposeSecret, SecretString};
use sqlx::Connection;

use crate::mbg::{Harness, sim_config};
use crate::support::TestDb;

crate::on_both_backends!(
    sql_flips_drift_and_node_moves_reach_the_mbg,
    a_change_costs_no_read_of_the_mbgs_device_list_and_still_sees_its_neighbours,
    a_refused_token_stops_the_calls_until_a_new_one_is_stored,
    the_renewal_job_renews_at_its_scheduled_time_and_not_before,
    a_change_behind_the_logs_back_is_applied_by_the_full_reconcile_and_named,
    a_late_create_of_a_pass_whose_fill_failed_is_not_left_as_a_copy,
    failing_passes_back_off_with_the_loop_parked_between_them,
);

/// How long the daemon may take, in real time, to finish what a move of its clock woke it for.
const SETTLE: Duration = Duration::from_secs(30);

/// A daemon beside the test body. Not spawned: the pass futures are not provably `Send` for
/// every lifetime (rust-lang/rust#102211); the binary awaits `run` on its main task likewise.
struct Running {
    health: HealthState,
}

/// Runs `body` while the daemon runs, then stops the daemon with SIGTERM's path and checks that
/// it ends cleanly.
async fn with_daemon<F: std::future::Future<Output = ()>>(
    h: &Harness,
    clock: Clock,
    tune: impl FnOnce(&mut mbg_provision::config::Config),
    body: impl FnOnce(Running) -> F,
) {
    let mut config = h.config.clone();
    config.watch.poll_interval = Duration::from_millis(200);
    config.reconcile.interval = Duration::from_secs(600);
    tune(&mut config);
    let app = App {
        config,
        config_path: None,
        store: h.db.store.clone(),
        clock,
    };
    let shutdown = Shutdown::new();
    let health = HealthState::default();
    let daemon = daemon::run_with(app, shutdown.clone(), health.clone(), Default::default());
    let running = Running { health };
    let test = async move {
        body(running).await;
        shutdown.trigger(mbg_provision::shutdown::SIGTERM);
    };
    let (ended, ()) = tokio::join!(
        async { tokio::time::timeout(Duration::from_secs(120), daemon).await },
        test
    );
    ended.expect("the daemon stops").expect("and exits cleanly");
}

/// Waits up to `limit` for `done`, checking every 20 ms.
async fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

async fn sql(db: &TestDb, statement: &str) {
    let mut other = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
        .execute(&mut other)
        .await
        .unwrap();
    other.close().await.unwrap();
}

async fn node_and_extensions(h: &Harness, numbers: &[&str]) {
    let store = &h.db.store;
    store
        .add_node(&NewNode {
            name: "pbx1".into(),
            address: "10.0.0.20".into(),
            nat_address: None,
            nat_sip_port: None,
        })
        .await
        .unwrap();
    for number in numbers {
        let spec = ExtensionSpec {
            number: number.to_string(),
            node: "pbx1".into(),
            kind: None,
            use_remote_auth: Some(false),
            sip_password: None,
        };
        store
            .set_extension(&spec, &SecretString::from("pbx-sip-password"))
            .await
            .unwrap();
    }
}

/// How many times the MBG's whole SIP user list was read.
fn device_list_reads(h: &Harness) -> usize {
    h.sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/devices/sip/all/"))
        .count()
}

fn has(h: &Harness, number: &str) -> bool {
    h.sim.devices().iter().any(|d| d.icpside_username == number)
}

async fn sql_flips_drift_and_node_moves_reach_the_mbg(db: TestDb) {
    let h = Harness::new(db, sim_config()).await.with_token().await;
    node_and_extensions(&h, &["1001", "1002"]).await;
    let h = &h;
    with_daemon(
        h,
        Clock::system(),
        |c| c.reconcile.interval = Duration::from_secs(2),
        |daemon| async move {
            eventually("leading", Duration::from_secs(10), || {
                daemon.health.snapshot().role == Role::Leader
            })
            .await;

            sql(
                &h.db,
                "UPDATE extensions SET use_remote_auth = true WHERE number = '1001'",
            )
            .await;
            let took = eventually("the SIP user appears", Duration::from_secs(10), || {
                has(h, "1001")
            })
            .await;
            eprintln!("flag set to SIP user: {took:?}");
            sql(
                &h.db,
                "UPDATE extensions SET use_remote_auth = false WHERE number = '1001'",
            )
            .await;
            eventually("the SIP user goes", Duration::from_secs(10), || {
                !has(h, "1001")
            })
            .await;

            // Drift: a SIP user of ours deleted by hand on the MBG comes back with the full reconcile.
            sql(
                &h.db,
                "UPDATE extensions SET use_remote_auth = true WHERE number = '1002'",
            )
            .await;
            eventually("1002 appears", Duration::from_secs(10), || has(h, "1002")).await;
            let guid = h.sim.devices()[0].guid.clone();
            h.client().await.delete_device(&guid).await.unwrap();
            assert!(!has(h, "1002"));
            eventually(
                "restored by the full reconcile",
                Duration::from_secs(15),
                || has(h, "1002"),
            )
            .await;

            // The node's address changes to the other ICP's: its SIP users follow.
            sql(
                &h.db,
                "UPDATE nodes SET address = '10.0.0.21' WHERE name = 'pbx1'",
            )
            .await;
            eventually("moved to MiVO250-2", Duration::from_secs(10), || {
                h.sim
                    .devices()
                    .iter()
                    .any(|d| d.icpside_username == "1002" && d.icp == "MiVO250-2")
            })
            .await;
            assert_eq!(h.sim.devices().len(), 1, "moved, not copied");
            let health = daemon.health.snapshot();
            assert!(health.is_healthy(), "{health:?}");
            assert!(health.last_full_reconcile.is_some());
        },
    )
    .await;
    assert!(h.db.store.pending_changes(10).await.unwrap().is_empty());
}

/// After the first full pass, a flipped flag is planned from the rows and SIP users near it
/// (`reconcile::near`) against the view the daemon keeps: no request lists the MBG's SIP users
/// (at 100,000 that list is what a real MBG should not be asked for per click). The neighbours
/// still count: a SIP user made by hand with the number is adopted, not doubled, and a set-side
/// name another wanted row holds is refused.
async fn a_change_costs_no_read_of_the_mbgs_device_list_and_still_sees_its_neighbours(db: TestDb) {
    let h = Harness::new(db, sim_config()).await.with_token().await;
    let numbers: Vec<String> = (2000..2050).map(|n| n.to_string()).collect();
    let refs: Vec<&str> = numbers.iter().map(String::as_str).collect();
    node_and_extensions(&h, &refs).await;
    sql(
        &h.db,
        "UPDATE extensions SET use_remote_auth = true WHERE number < '2040'",
    )
    .await;
    let foreign = h
        .sim
        .add_device(mbg_provision::sim::DeviceFields {
            icp: Some("MiVO250-1".into()),
            setside_username: Some("frontdesk".into()),
            setside_password: Some("hand-made-pass".into()),
            icpside_username: Some("2045".into()),
            icpside_password: Some("whatever-it-was".into()),
            description: Some("made by hand".into()),
            enabled: Some(true),
        })
        .unwrap();
    let h = &h;
    with_daemon(
        h,
        Clock::system(),
        |_| {},
        |daemon| async move {
            eventually("the first full pass", Duration::from_secs(20), || {
                daemon.health.snapshot().last_full_reconcile.is_some()
            })
            .await;
            assert_eq!(h.sim.devices().len(), 41, "40 created beside the hand-made one");
            let before = h.sim.request_count();

            sql(
                &h.db,
                "UPDATE extensions SET use_remote_auth = true WHERE number = '2041'",
            )
            .await;
            eventually("2041 appears", Duration::from_secs(10), || has(h, "2041")).await;
            sql(
                &h.db,
                "UPDATE extensions SET use_remote_auth = true WHERE number = '2045'",
            )
            .await;
            eventually("2045 is adopted", Duration::from_secs(10), || {
                h.sim
                    .devices()
                    .iter()
                    .any(|d| d.guid == foreign && d.setside_username != "frontdesk")
            })
            .await;
            let taken = h.db.store.extension_by_number("2000").await.unwrap();
            sql(
                &h.db,
                &format!(
                    "UPDATE extensions SET use_remote_auth = true, remote_auth_name = '{}' WHERE number = '2046'",
                    taken.remote_auth_name.unwrap()
                ),
            )
            .await;
            let asked = Instant::now();
            loop {
                let state = h.db.store.extension_by_number("2046").await.unwrap().state;
                if state == ExtensionState::NeedsAttention {
                    break;
                }
                assert!(asked.elapsed() < Duration::from_secs(10), "2046 is {state}, not refused");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }

            let requests = h.sim.requests_after(before);
            let listed: Vec<_> = requests
                .iter()
                .filter(|r| r.method == "GET" && r.path.contains("devices/sip"))
                .collect();
            assert!(listed.is_empty(), "a change read the device list: {listed:?}");
            assert_eq!(
                h.sim.devices().iter().filter(|d| d.icpside_username == "2045").count(),
                1,
                "adopted, not doubled"
            );
            let adopted = h.db.store.extension_by_number("2045").await.unwrap();
            assert_eq!(adopted.mbg_device_id.as_deref(), Some(foreign.as_str()));
            assert!(!has(h, "2046"), "a shared set-side login is never sent");
        },
    )
    .await;
}

/// A new access token, as `token request` + approval + `token verify` from another shell.
async fn new_token(h: &Harness) {
    let now = chrono::Utc::now().timestamp();
    let temporary = mbg_provision::token::request(
        &h.db.store,
        &h.config,
        "test",
        crate::mbg::CONSUMER,
        crate::mbg::SECRET.into(),
        now,
    )
    .await
    .unwrap();
    let verifier = h.sim.approve(temporary.expose_secret()).unwrap();
    mbg_provision::token::verify(&h.db.store, &h.config, &verifier, now)
        .await
        .unwrap();
}

async fn a_refused_token_stops_the_calls_until_a_new_one_is_stored(db: TestDb) {
    let h = Harness::new(db, sim_config()).await.with_token().await;
    node_and_extensions(&h, &["1001", "1002"]).await;
    let h = &h;
    let clock = Clock::manual();
    let recheck = Duration::from_secs(30);
    with_daemon(
        h,
        clock.clone(),
        |c| c.token.recheck_interval = recheck,
        |daemon| async move {
            eventually("leading", Duration::from_secs(10), || {
                daemon.health.snapshot().role == Role::Leader
            })
            .await;
            clock.settled(SETTLE).await;
            let token =
                h.db.store
                    .mbg_settings()
                    .await
                    .unwrap()
                    .access_token
                    .unwrap();
            assert!(h.sim.revoke(token.expose_secret()));
            sql(
                &h.db,
                "UPDATE extensions SET use_remote_auth = true WHERE number = '1001'",
            )
            .await;
            // PostgreSQL's notification wakes the daemon at once; SQLite's change waits for the
            // next poll.
            clock.advance(Duration::from_millis(200));
            eventually(
                "unhealthy, naming the token",
                Duration::from_secs(10),
                || {
                    let health = daemon.health.snapshot();
                    !health.is_healthy()
                        && health.unhealthy().iter().any(|u| u.starts_with("token:"))
                },
            )
            .await;
            clock.settled(SETTLE).await;
            let calls = h.sim.requests().len();
            // Twenty minutes of the daemon's time, one token recheck at a time: forty rechecks,
            // two full reconciles due (every 600 s), the idle checks, the polls.
            for minute in 0..40 {
                clock.advance(recheck);
                clock.settled(SETTLE).await;
                assert_eq!(
                    h.sim.requests().len(),
                    calls,
                    "an MBG call with a refused token, {} s on",
                    (minute + 1) * recheck.as_secs()
                );
            }
            assert!(
                !h.db.store.pending_changes(10).await.unwrap().is_empty(),
                "the change is kept"
            );
            assert!(!has(h, "1001"));

            // Found at the next recheck.
            new_token(h).await;
            clock.advance(recheck);
            clock.settled(SETTLE).await;
            assert!(has(h, "1001"), "applied with the new token");
            eventually("healthy again", Duration::from_secs(5), || {
                daemon.health.snapshot().is_healthy()
            })
            .await;
        },
    )
    .await;
}

fn renewals(h: &Harness) -> usize {
    h.sim
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with("/managetoken/"))
        .count()
}

async fn token_expires_at(h: &Harness) -> i64 {
    h.db.store
        .mbg_settings()
        .await
        .unwrap()
        .token_expires_at
        .unwrap()
}

/// The default schedule, 03:00 UTC daily: no renewal before it, one at it, the next a day on.
async fn the_renewal_job_renews_at_its_scheduled_time_and_not_before(db: TestDb) {
    // A token issued two days "ago" by the MBG's clock: 363 days left, inside a 364-day window.
    let h = Harness::new(db, sim_config()).await;
    h.sim.advance_clock(-2 * 86_400);
    let h = h.with_token().await;
    node_and_extensions(&h, &[]).await;
    let before = token_expires_at(&h).await;
    let h = &h;
    let clock = Clock::manual();
    let now = clock.utc();
    let mut three = now.date_naive().and_hms_opt(3, 0, 0).unwrap().and_utc();
    if three <= now {
        three += chrono::Duration::days(1);
    }
    let tune = |c: &mut mbg_provision::config::Config| {
        assert_eq!(c.token.renew_schedule.expression(), "0 0 3 * * *");
        c.token.renew_within_days = 364;
    };
    with_daemon(h, clock.clone(), tune, |daemon| async move {
        eventually("leading", Duration::from_secs(10), || {
            daemon.health.snapshot().role == Role::Leader
        })
        .await;
        clock.settled(SETTLE).await;
        // Up to a second before 03:00, an hour at a time (hours of full reconciles and idle
        // checks on the daemon's clock).
        let mut left = (three - clock.utc()).to_std().unwrap() - Duration::from_secs(1);
        while !left.is_zero() {
            let step = left.min(Duration::from_secs(3_600));
            clock.advance(step);
            left -= step;
            clock.settled(SETTLE).await;
            assert_eq!(renewals(h), 0, "renewed before 03:00, at {}", clock.utc());
        }
        assert_eq!(token_expires_at(h).await, before);

        // The MBG's clock keeps the daemon's date, so that the renewed expiry is later.
        h.sim.advance_clock((clock.utc() - now).num_seconds());
        clock.advance(Duration::from_secs(2));
        clock.settled(SETTLE).await;
        assert_eq!(renewals(h), 1, "renewed at 03:00");
        assert!(token_expires_at(h).await > before);
        // The run that renewed is in the audit log, for the console's dashboard.
        let entry =
            h.db.store
                .latest_audit_of(&[mbg_provision::token::RENEWAL_JOB])
                .await
                .unwrap()
                .expect("the renewal is audited");
        assert_eq!(entry.outcome, "ok");
        assert!(entry.detail.unwrap().starts_with("renewed"));

        // Daily: not again until the next 03:00 (the token is still inside the window then).
        clock.advance(Duration::from_secs(86_400 - 60));
        clock.settled(SETTLE).await;
        assert_eq!(renewals(h), 1, "renewed again before the next 03:00");
        clock.advance(Duration::from_secs(120));
        clock.settled(SETTLE).await;
        assert_eq!(renewals(h), 2, "the next day's run");
    })
    .await;
}

/// A row changed with the change log bypassed (PostgreSQL's replica role, which turns the
/// triggers off; on SQLite the version put back and the change deleted, as a restore leaves it)
/// is not seen by the targeted passes; the next full reconcile applies it and names it in the
/// health until a full reconcile finds none. A change made the ordinary way is not named.
async fn a_change_behind_the_logs_back_is_applied_by_the_full_reconcile_and_named(db: TestDb) {
    let h = Harness::new(db, sim_config()).await.with_token().await;
    node_and_extensions(&h, &["3001", "3002"]).await;
    let h = &h;
    let clock = Clock::manual();
    let named = |daemon: &Running| -> Vec<String> {
        let health = daemon.health.snapshot();
        let degraded = health.degraded().iter();
        degraded
            .filter(|d| d.starts_with("change log:"))
            .cloned()
            .collect()
    };
    with_daemon(h, clock.clone(), |_| {}, |daemon| async move {
        eventually("leading", Duration::from_secs(10), || {
            daemon.health.snapshot().role == Role::Leader
        })
        .await;
        clock.settled(SETTLE).await;
        sql(&h.db, "UPDATE extensions SET use_remote_auth = true").await;
        clock.advance(Duration::from_millis(200));
        eventually("both appear", Duration::from_secs(10), || {
            has(h, "3001") && has(h, "3002")
        })
        .await;
        clock.settled(SETTLE).await;

        let off = "UPDATE extensions SET use_remote_auth = false WHERE number = '3001'";
        let behind_the_log = if h.db.url.starts_with("postgres") {
            format!("BEGIN; SET LOCAL session_replication_role = replica; {off}; COMMIT;")
        } else {
            format!(
                "BEGIN; {off}; UPDATE extensions SET version = version - 1 WHERE number = '3001'; \
                 DELETE FROM extension_changes; COMMIT;"
            )
        };
        sql(&h.db, &behind_the_log).await;
        for _ in 0..10 {
            clock.advance(Duration::from_millis(200));
            clock.settled(SETTLE).await;
        }
        assert!(has(h, "3001"), "a targeted pass heard of it");
        assert_eq!(named(&daemon), Vec::<String>::new());

        // The full reconcile, every 600 s.
        clock.advance(Duration::from_secs(600));
        clock.settled(SETTLE).await;
        assert!(!has(h, "3001"), "removed by the full reconcile");
        assert!(has(h, "3002"));
        let named_now = named(&daemon);
        assert_eq!(named_now.len(), 1, "{named_now:?}");
        assert!(
            named_now[0].contains("1 extension rows changed without the change log")
                && named_now[0].ends_with("3001 on pbx1; changes like these reach the MBG only at the full reconcile"),
            "{named_now:?}"
        );

        // An ordinary change is no concern, and the next full reconcile, finding none, clears it.
        sql(&h.db, "UPDATE extensions SET use_remote_auth = false WHERE number = '3002'").await;
        clock.advance(Duration::from_millis(200));
        eventually("3002 goes", Duration::from_secs(10), || !has(h, "3002")).await;
        clock.settled(SETTLE).await;
        assert_eq!(named(&daemon), named_now, "an ordinary change named");
        clock.advance(Duration::from_secs(600));
        clock.settled(SETTLE).await;
        assert_eq!(named(&daemon), Vec::<String>::new());
    })
    .await;
}

/// A pass whose credential fill fails midway while one of its creates is held by the MBG beyond
/// the client's timeout (carried out later, with no answer seen): after the fill works again,
/// the daemon must end with one SIP user per extension, the one the database records, even on an
/// MBG that takes a second SIP user with the same set-side name. While the fill fails, the
/// passes that retry it back off rather than read the MBG at every poll. (Here the passes after
/// the failure read the MBG afresh and see the late create; the settle time the failed pass
/// hands on is not what this test exercises.)
async fn a_late_create_of_a_pass_whose_fill_failed_is_not_left_as_a_copy(db: TestDb) {
    let h = Harness::new(db, crate::guarantees::lenient_sim(0))
        .await
        .with_token()
        .await;
    let numbers: Vec<String> = (2000..2040).map(|n| n.to_string()).collect();
    let refs: Vec<&str> = numbers.iter().map(String::as_str).collect();
    node_and_extensions(&h, &refs).await;
    let (plant, unplant) = crate::reconcile::planted_fill_failure(h.db.store.backend(), "2030");
    let h = &h;
    with_daemon(
        h,
        Clock::system(),
        |c| {
            c.mbg.max_in_flight = 4;
            c.mbg.timeout = Duration::from_secs(2);
        },
        |daemon| async move {
            eventually("leading", Duration::from_secs(10), || {
                daemon.health.snapshot().role == Role::Leader
            })
            .await;
            sql(&h.db, &plant).await;
            h.sim.set_faults(mbg_provision::sim::Faults {
                slow_changes_next: 1,
                spike_ms: 3_000,
                ..Default::default()
            });
            sql(
                &h.db,
                "UPDATE extensions SET use_remote_auth = true WHERE number >= '2000'",
            )
            .await;
            eventually("the first create", Duration::from_secs(10), || {
                h.sim.requests().iter().any(|r| r.method == "POST")
            })
            .await;
            let before = device_list_reads(h);
            // The held create lands 3 s after it was sent.
            tokio::time::sleep(Duration::from_secs(6)).await;
            // Each failed pass takes the MBG view with it, so the pass that retries reads the
            // whole list again. Polled every 200 ms, that was 17 reads in 6 s here (measured with
            // the backoff taken out); backing off from the poll interval (0.2 + 0.4 + 0.8 + 1.6
            // + 3.2 s), 5.
            assert_eq!(h.sim.injected().spikes, 1, "a create was held");
            let read = device_list_reads(h) - before;
            assert!(
                read <= 7,
                "{read} reads of the device list in 6 s while the database failed"
            );
            assert!(
                daemon
                    .health
                    .snapshot()
                    .database
                    .error
                    .is_some_and(|e| e.contains("planted")),
                "the database's failure is what the health says"
            );
            sql(&h.db, &unplant).await;
            eventually(
                "one SIP user per extension",
                Duration::from_secs(30),
                || {
                    let devices = h.sim.devices();
                    let mut numbers: Vec<String> =
                        devices.into_iter().map(|d| d.icpside_username).collect();
                    numbers.sort();
                    numbers.dedup();
                    numbers.len() == 40 && h.sim.devices().len() == 40
                },
            )
            .await;
        },
    )
    .await;
    crate::support::assert_every_sip_user_recorded(&h.db.store, &h.sim.devices()).await;
}

/// Passes that keep failing (the database refuses the credentials, as a full disk would) wait
/// longer after each failure, and the loop sleeps meanwhile rather than spin on a retry time
/// that falls inside the backoff: on a manual clock, the loop must park after each step. Once
/// the database takes the credentials again, the extension is provisioned.
async fn failing_passes_back_off_with_the_loop_parked_between_them(db: TestDb) {
    let h = Harness::new(db, sim_config()).await.with_token().await;
    node_and_extensions(&h, &["1001"]).await;
    let (plant, unplant) = crate::reconcile::planted_fill_failure(h.db.store.backend(), "1001");
    let h = &h;
    let clock = Clock::manual();
    with_daemon(
        h,
        clock.clone(),
        // A full reconcile falls due while the targeted passes back off.
        |c| c.reconcile.interval = Duration::from_secs(5),
        |daemon| async move {
            eventually("leading", Duration::from_secs(10), || {
                daemon.health.snapshot().role == Role::Leader
            })
            .await;
            clock.settled(SETTLE).await;
            sql(&h.db, &plant).await;
            sql(
                &h.db,
                "UPDATE extensions SET use_remote_auth = true WHERE number = '1001'",
            )
            .await;
            let before = device_list_reads(h);
            // 30 s of the daemon's time, a second at a time. Without the backoff each step
            // retried and read the whole list (30 reads, measured); backing off, 7. (A loop
            // that spins on a retry time inside the backoff never settles: the test hangs.)
            for _ in 0..30 {
                clock.advance(Duration::from_secs(1));
                clock.settled(SETTLE).await;
            }
            let read = device_list_reads(h) - before;
            assert!(
                (3..=10).contains(&read),
                "{read} reads of the device list in 30 s of failing passes"
            );
            assert!(!has(h, "1001"));
            let health = daemon.health.snapshot();
            assert!(
                health.database.error.is_some_and(|e| e.contains("planted")),
                "the database's failure is what the health says"
            );

            sql(&h.db, &unplant).await;
            clock.advance(Duration::from_secs(31));
            clock.settled(SETTLE).await;
            eventually("provisioned", Duration::from_secs(10), || has(h, "1001")).await;
        },
    )
    .await;
}
