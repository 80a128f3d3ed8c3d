//! Change latency: the daemon running on N provisioned extensions, one flag switched on at a
//! time by another connection's SQL, timed from that COMMIT to the simulator receiving the
//! create; then a burst of flips in one statement against an MBG with latency, timed until the
//! last create is answered. What a telecom engineer feels when they tick the box.

use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::Connection;

use super::{BenchDatabase, BenchError, FIRST_NUMBER, NODE, World, with_database, wrong};
use crate::app::App;
use crate::clock::Clock;
use crate::daemon;
use crate::health::HealthState;
use crate::shutdown::{SIGTERM, Shutdown};
use crate::sim::Faults;
use crate::store::ExtensionSpec;

/// The creates in flight during the burst, and the MBG's latency then.
const BURST_IN_FLIGHT: usize = 32;
const BURST_LATENCY_MS: u64 = 20;
/// How long one flip may take before the bench calls it lost.
const GIVE_UP: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize)]
pub struct LatencyFigure {
    pub extensions: usize,
    pub samples: usize,
    /// `watch.poll_interval`: on SQLite a change is seen at the next poll.
    pub poll_interval_ms: u128,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub max_ms: f64,
    pub burst: Option<BurstFigure>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BurstFigure {
    pub flips: usize,
    pub latency_ms: u64,
    pub in_flight: usize,
    pub seconds: f64,
    /// flips × L / C: what the MBG's latency alone allows.
    pub bound_seconds: f64,
    pub ratio_to_bound: f64,
}

/// `n` provisioned extensions, then `samples` single flips and a burst of `burst` flips (0: none).
pub async fn change_latency(
    database: &BenchDatabase,
    n: usize,
    samples: usize,
    burst: usize,
) -> Result<LatencyFigure, BenchError> {
    with_database(database, |store| async move {
        let world = World::start(&store, 0, BURST_IN_FLIGHT).await?;
        seed(&world, n, samples + burst).await?;
        world.sync(n, true).await?;
        let app = App {
            config: world.config.clone(),
            config_path: None,
            store: store.clone(),
            clock: Clock::system(),
        };
        let shutdown = Shutdown::new();
        let health = HealthState::default();
        let running = daemon::run_with(app, shutdown.clone(), health.clone(), Default::default());
        let measured = async {
            let figure = measure(&world, &health, n, samples, burst).await;
            shutdown.trigger(SIGTERM);
            figure
        };
        let (ended, figure) = tokio::join!(running, measured);
        ended.map_err(|e| wrong("daemon", e.to_string()))?;
        figure
    })
    .await
}

/// `on` extensions wanted (numbered from [`FIRST_NUMBER`]), then `off` more not wanted yet.
async fn seed(world: &World<'_>, on: usize, off: usize) -> Result<(), BenchError> {
    let specs: Vec<ExtensionSpec> = (0..on + off)
        .map(|i| ExtensionSpec {
            number: (FIRST_NUMBER + i as u64).to_string(),
            node: NODE.into(),
            kind: None,
            use_remote_auth: Some(i < on),
            sip_password: None,
        })
        .collect();
    let length = world.config.credentials.password_length;
    world
        .store
        .set_extensions(&specs, || crate::credentials::random_password(length))
        .await
        .map_err(|(_, e)| BenchError::Store(e))?;
    Ok(())
}

async fn measure(
    world: &World<'_>,
    health: &HealthState,
    n: usize,
    samples: usize,
    burst: usize,
) -> Result<LatencyFigure, BenchError> {
    let started = Instant::now();
    while health.snapshot().last_full_reconcile.is_none() {
        if started.elapsed() > GIVE_UP * 4 {
            return Err(wrong(
                "latency",
                "the daemon's first full pass did not end".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut other = sqlx::AnyConnection::connect(world.store.url().expose())
        .await
        .map_err(|e| wrong("latency", e.to_string()))?;
    let mut took = Vec::with_capacity(samples);
    for i in 0..samples {
        let number = (FIRST_NUMBER + (n + i) as u64).to_string();
        // A change comes at any moment of the daemon's poll cycle, not just after a pass.
        let poll = world.config.watch.poll_interval.as_millis() as u64;
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..poll.max(1)))).await;
        let before = world.sim.request_count();
        sql(
            &mut other,
            &format!("UPDATE extensions SET use_remote_auth = TRUE WHERE number = '{number}'"),
        )
        .await?;
        let committed = Instant::now();
        let creates = creates_after(world, before, 1).await?;
        took.push(creates[0].0.saturating_duration_since(committed));
        // The pass writes its outcome after the create: let it end before the next flip.
        wait_provisioned(&mut other, &number).await?;
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let burst = if burst > 0 {
        let first = FIRST_NUMBER + (n + samples) as u64;
        let last = first + burst as u64 - 1;
        world.sim.set_faults(Faults {
            latency_ms: BURST_LATENCY_MS,
            ..Faults::default()
        });
        let before = world.sim.request_count();
        sql(
            &mut other,
            &format!(
                "UPDATE extensions SET use_remote_auth = TRUE
                  WHERE CAST(number AS BIGINT) BETWEEN {first} AND {last}"
            ),
        )
        .await?;
        let committed = Instant::now();
        let creates = creates_after(world, before, burst).await?;
        let answered = creates.iter().map(|c| c.1).max().unwrap_or(committed);
        let seconds = answered.saturating_duration_since(committed).as_secs_f64();
        let bound = burst as f64 * BURST_LATENCY_MS as f64 / 1000.0 / BURST_IN_FLIGHT as f64;
        Some(BurstFigure {
            flips: burst,
            latency_ms: BURST_LATENCY_MS,
            in_flight: BURST_IN_FLIGHT,
            seconds,
            bound_seconds: bound,
            ratio_to_bound: seconds / bound,
        })
    } else {
        None
    };
    other.close().await.ok();
    Ok(LatencyFigure {
        extensions: n,
        samples,
        poll_interval_ms: world.config.watch.poll_interval.as_millis(),
        p50_ms: ms(took[took.len() / 2]),
        p90_ms: ms(took[took.len() * 9 / 10]),
        max_ms: ms(took[took.len() - 1]),
        burst,
    })
}

async fn sql(connection: &mut sqlx::AnyConnection, statement: &str) -> Result<(), BenchError> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
        .execute(connection)
        .await
        .map_err(|e| wrong("latency", e.to_string()))?;
    Ok(())
}

/// Waits for `count` creates logged after the first `before` requests: when each arrived and
/// when it was answered.
async fn creates_after(
    world: &World<'_>,
    before: u64,
    count: usize,
) -> Result<Vec<(Instant, Instant)>, BenchError> {
    let started = Instant::now();
    loop {
        let creates: Vec<(Instant, Instant)> = world
            .sim
            .requests_after(before)
            .iter()
            .filter(|r| r.method == "POST" && r.path.contains("devices/sip") && r.status < 300)
            .filter_map(|r| Some((r.received_at?, r.answered_at?)))
            .collect();
        if creates.len() >= count {
            return Ok(creates);
        }
        if started.elapsed() > GIVE_UP {
            return Err(wrong(
                "latency",
                format!("{} of {count} creates reached the MBG", creates.len()),
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn wait_provisioned(
    connection: &mut sqlx::AnyConnection,
    number: &str,
) -> Result<(), BenchError> {
    let started = Instant::now();
    loop {
        let state: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT state FROM extensions WHERE number = '{number}'"
        )))
        .fetch_one(&mut *connection)
        .await
        .map_err(|e| wrong("latency", e.to_string()))?;
        if state == "provisioned" {
            return Ok(());
        }
        if started.elapsed() > GIVE_UP {
            return Err(wrong(
                "latency",
                format!("{number} is {state}, not provisioned"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
