//! `mbg-provision bench`: the whole system in one process, measured against its bounds.
//!
//! A temporary database (a SQLite file in a temporary folder, or a fresh database created on a
//! PostgreSQL server and dropped at the end), the MBG simulator in-process with injected latency,
//! the token exchange, then: an import of N extensions through the import path, a `sync` that
//! creates them all, a `sync` with nothing to do, and the same creating `sync` at
//! `max_in_flight = 1` on a database of its own, so that the speed-up of concurrency shows.
//! With latency, the creating sync is also compared with a bare HTTP loop over several rounds,
//! each on a database and simulator of its own (see [`floor`]).
//!
//! The bound of a creating sync is what the MBG's latency alone allows: (N + 3) requests (the ICP
//! list, the device count that bounds the device list's answer, the device list, one create per
//! extension) × latency / `max_in_flight`. The targets are
//! those of issue 9, stated for 10,000 extensions and scaled linearly above that.

mod floor;
mod latency;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use serde::Serialize;
use sqlx::{Connection, Executor};

use crate::config::{Config, DatabaseUrl};
use crate::credentials;
use crate::import::{self, ImportError};
use crate::reconcile::{self, Mode, ReconcileError, Status};
use crate::secrets::SecretKey;
use crate::shutdown::Shutdown;
use crate::sim::{SimConfig, SimConsumer};
use crate::store::{
    ExtensionFilter, ExtensionState, LeaseTerms, LockError, NewNode, Store, StoreError,
};
use crate::token::{self, TokenError};

const CONSUMER: &str = "MiVOAppSuite";
const NODE: &str = "pbx1";
const NODE_ADDRESS: &str = "10.0.0.20";
const ICP: &str = "MiVO250-1";
/// The CPU a creating sync may spend per SIP user it creates (this process, the simulator's
/// thread excepted), as a multiple of the bare loop's per request in the same run (the HTTP
/// stack's share): a figure in milliseconds moved with the machine's state by half between two
/// days. See BENCHMARKS.md for the profile it comes from.
const CPU_PER_CREATE_OVER_BARE: f64 = 4.0;
/// How much longer than the bare loop a creating sync may take (the engine-at-scale issue).
const SYNC_OVER_BARE: f64 = 1.05;
/// The first extension number; N extensions are numbered from here.
const FIRST_NUMBER: u64 = 100_000;
/// The one-at-a-time comparison is cut to this much bound time (N × L), so that a 10,000-extension
/// bench at 20 ms does not spend 200 s on it.
const SERIAL_BOUND_BUDGET_MS: u64 = 10_000;
/// ... and to this many extensions when there is no latency to bound it.
const SERIAL_MAX_WITHOUT_LATENCY: usize = 1_000;

/// Which database the bench creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BenchDatabase {
    /// A SQLite file in a temporary folder.
    Sqlite,
    /// A fresh database on the server of this URL (its path names the database to connect to
    /// while creating and dropping), dropped at the end.
    Postgres(String),
}

impl std::str::FromStr for BenchDatabase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "sqlite" {
            Ok(BenchDatabase::Sqlite)
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            url::Url::parse(s).map_err(|e| format!("\"{s}\" is not a URL ({e})"))?;
            Ok(BenchDatabase::Postgres(s.to_string()))
        } else {
            Err(format!("\"{s}\" must be `sqlite` or a postgres://… URL"))
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub extensions: usize,
    pub latency_ms: u64,
    pub in_flight: usize,
    pub database: BenchDatabase,
    /// Extensions for the `max_in_flight = 1` run [default: N, cut so that N × L ≤ 10 s, and to
    /// 1,000 without latency]; 0 skips it.
    pub serial_extensions: Option<usize>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            extensions: 10_000,
            latency_ms: 20,
            in_flight: 32,
            database: BenchDatabase::Sqlite,
            serial_extensions: None,
        }
    }
}

impl BenchOptions {
    /// The size of the `max_in_flight = 1` run.
    pub fn serial_size(&self) -> usize {
        self.serial_extensions.unwrap_or_else(|| {
            let cap = match self.latency_ms {
                0 => SERIAL_MAX_WITHOUT_LATENCY,
                l => usize::try_from(SERIAL_BOUND_BUDGET_MS / l).unwrap_or(usize::MAX),
            };
            self.extensions.min(cap.max(1))
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("--extensions must be at least 1")]
    NoExtensions,
    #[error("--in-flight must be at least 1")]
    NoConcurrency,
    #[error("cannot make a temporary folder: {0}")]
    TempDir(#[source] std::io::Error),
    #[error("cannot start the MBG simulator: {0}")]
    Simulator(#[source] std::io::Error),
    #[error("cannot create or drop the bench database on PostgreSQL: {0}")]
    Postgres(#[source] sqlx::Error),
    #[error("the bench database URL is not usable: {0}")]
    Url(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("the token exchange failed: {0}")]
    Token(#[from] TokenError),
    #[error("the simulator did not approve the temporary token")]
    NotApproved,
    #[error("the import failed: {0}")]
    Import(#[from] ImportError),
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error("{phase}: {detail}")]
    Wrong { phase: &'static str, detail: String },
}

/// One measured figure beside its bound and target.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub seconds: f64,
    /// What the MBG's latency alone allows; `None` where there is none (an import) or it is 0.
    pub bound_seconds: Option<f64>,
    /// `seconds / bound_seconds`.
    pub ratio_to_bound: Option<f64>,
    pub target_seconds: f64,
    /// `seconds / target_seconds`: at most 1 when the target is met.
    pub ratio_to_target: f64,
    pub target_met: bool,
    /// How the target is set, for humans.
    pub target: String,
}

impl Figure {
    fn new(elapsed: Duration, bound: Option<f64>, target_seconds: f64, target: String) -> Figure {
        let seconds = elapsed.as_secs_f64();
        let bound_seconds = bound.filter(|b| *b > 0.0);
        Figure {
            seconds,
            bound_seconds,
            ratio_to_bound: bound_seconds.map(|b| seconds / b),
            target_seconds,
            ratio_to_target: seconds / target_seconds,
            target_met: seconds <= target_seconds,
            target,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportFigure {
    pub rows: usize,
    pub created: usize,
    #[serde(flatten)]
    pub figure: Figure,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncFigure {
    pub extensions: usize,
    pub max_in_flight: usize,
    /// CPU seconds (user + system) of this process's threads but the simulator's.
    pub cpu_seconds: f64,
    /// CPU seconds of the simulator's thread during the pass.
    pub simulator_cpu_seconds: f64,
    /// Requests the simulator received during the pass.
    pub mbg_requests: usize,
    pub created: usize,
    /// Actions that changed something (0 for a no-change pass).
    pub changes: usize,
    /// Where the time went, as the simulator saw the creates; `None` when there were none.
    pub creates: Option<CreateSpan>,
    #[serde(flatten)]
    pub figure: Figure,
}

/// A creating pass's time in three parts: before the MBG received its first create (the
/// reads, the credentials, the plan), the creates themselves, and after the MBG answered the
/// last (the last outcomes and acknowledgements). What a pass costs beyond a bare loop is in
/// the first and the last, or in creates sent more slowly than the loop sends its POSTs.
#[derive(Debug, Clone, Serialize)]
pub struct CreateSpan {
    pub before_first_ms: f64,
    pub creating_seconds: f64,
    pub after_last_ms: f64,
}

impl CreateSpan {
    /// From the simulator's log of the pass's requests, the pass having run from `started` to
    /// `ended`.
    fn of(
        requests: &[crate::sim::LoggedRequest],
        started: Instant,
        ended: Instant,
    ) -> Option<Self> {
        let creates = requests
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/devices/sip/"));
        let first = creates.clone().filter_map(|r| r.received_at).min()?;
        let last = creates.filter_map(|r| r.answered_at).max()?;
        Some(CreateSpan {
            before_first_ms: first.saturating_duration_since(started).as_secs_f64() * 1000.0,
            creating_seconds: last.saturating_duration_since(first).as_secs_f64(),
            after_last_ms: ended.saturating_duration_since(last).as_secs_f64() * 1000.0,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// `sqlite` or `postgres`.
    pub database: &'static str,
    pub extensions: usize,
    pub latency_ms: u64,
    pub in_flight: usize,
    pub import: ImportFigure,
    pub sync: SyncFigure,
    pub no_change_sync: SyncFigure,
    /// The creating sync at `max_in_flight = 1`; `None` when skipped.
    pub serial_sync: Option<SyncFigure>,
    /// Seconds per extension at `max_in_flight = 1` over seconds per extension at `in_flight`.
    pub speedup: Option<f64>,
    /// The console's slowest extension-list query over the bench's extensions.
    pub console_page: PageFigure,
    /// The same creates as a bare HTTP loop; `None` without latency (nothing to compare).
    pub floor: Option<FloorFigure>,
}

/// The creating sync against the bare loop of [`floor`], over [`floor::FLOOR_RUNS`] rounds.
#[derive(Debug, Clone, Serialize)]
pub struct FloorFigure {
    pub requests: usize,
    /// Rounds, each one sync and one bare loop.
    pub runs: usize,
    /// The bare loop's median, in seconds.
    pub seconds: f64,
    /// Each round's bare loop and creating sync, in seconds, in the order run.
    pub bare_runs: Vec<f64>,
    pub sync_runs: Vec<f64>,
    /// The creating sync's median over the bare loop's: the judged ratio.
    pub sync_ratio: f64,
    /// The median of each round's sync over its own loop, beside it: drift between rounds
    /// moves it less.
    pub paired_ratio: f64,
    pub sync_ratio_target: f64,
    pub sync_ratio_met: bool,
    /// The creating sync's CPU per created extension, in milliseconds (median of the rounds).
    pub cpu_ms_per_create: f64,
    /// The bare loop's CPU per request, in milliseconds: the HTTP stack's share (median).
    pub bare_cpu_ms_per_request: f64,
    /// `cpu_ms_per_create` over `bare_cpu_ms_per_request`; `None` when the bare loop ran too
    /// briefly for its CPU time to register (counted in 10 ms ticks).
    pub cpu_ratio: Option<f64>,
    pub cpu_ratio_target: f64,
    /// `None` with no ratio: not measured, neither met nor missed.
    pub cpu_target_met: Option<bool>,
    /// The simulator's CPU per create, and per refused bare POST, in milliseconds (medians).
    pub simulator_cpu_ms_per_create: f64,
    pub simulator_cpu_ms_per_bare_request: f64,
}

impl FloorFigure {
    fn of(n: usize, rounds: &[(SyncFigure, BareRun)]) -> FloorFigure {
        let per = |seconds: f64, count: usize| seconds * 1000.0 / count.max(1) as f64;
        let bare_runs: Vec<f64> = rounds.iter().map(|(_, b)| b.seconds).collect();
        let sync_runs: Vec<f64> = rounds.iter().map(|(s, _)| s.figure.seconds).collect();
        let seconds = floor::median(bare_runs.clone());
        let sync_ratio = floor::median(sync_runs.clone()) / seconds;
        let paired_ratio = floor::median(
            rounds
                .iter()
                .map(|(s, b)| s.figure.seconds / b.seconds)
                .collect(),
        );
        let cpu_ms_per_create = floor::median(
            rounds
                .iter()
                .map(|(s, _)| per(s.cpu_seconds, s.created))
                .collect(),
        );
        let bare_cpu_ms_per_request =
            floor::median(rounds.iter().map(|(_, b)| per(b.cpu.client, n)).collect());
        let cpu_ratio =
            (bare_cpu_ms_per_request > 0.0).then(|| cpu_ms_per_create / bare_cpu_ms_per_request);
        FloorFigure {
            requests: n,
            runs: rounds.len(),
            seconds,
            bare_runs,
            sync_runs,
            sync_ratio,
            paired_ratio,
            sync_ratio_target: SYNC_OVER_BARE,
            sync_ratio_met: sync_ratio <= SYNC_OVER_BARE,
            cpu_ms_per_create,
            bare_cpu_ms_per_request,
            cpu_ratio,
            cpu_ratio_target: CPU_PER_CREATE_OVER_BARE,
            cpu_target_met: cpu_ratio.map(|r| r <= CPU_PER_CREATE_OVER_BARE),
            simulator_cpu_ms_per_create: floor::median(
                rounds
                    .iter()
                    .map(|(s, _)| per(s.simulator_cpu_seconds, s.created))
                    .collect(),
            ),
            simulator_cpu_ms_per_bare_request: floor::median(
                rounds
                    .iter()
                    .map(|(_, b)| per(b.cpu.simulator, n))
                    .collect(),
            ),
        }
    }
}

/// One run of the bare loop.
struct BareRun {
    seconds: f64,
    cpu: floor::CpuSpent,
}

/// The console's extension list at the bench's size: the slowest of its page queries (the
/// first page, the last, a number prefix, a state, a node), each the median of 5 runs.
#[derive(Debug, Clone, Serialize)]
pub struct PageFigure {
    pub extensions: usize,
    /// Which query was the slowest.
    pub slowest: &'static str,
    #[serde(flatten)]
    pub figure: Figure,
}

/// Runs the whole bench. Logs nothing itself; the caller chooses what tracing shows.
pub async fn run(options: &BenchOptions) -> Result<BenchReport, BenchError> {
    if options.extensions == 0 {
        return Err(BenchError::NoExtensions);
    }
    if options.in_flight == 0 {
        return Err(BenchError::NoConcurrency);
    }
    let n = options.extensions;
    let l = options.latency_ms;
    let c = options.in_flight;

    let (import, first, no_change_sync, console_page) =
        with_database(&options.database, |store| async move {
            let world = World::start(&store, l, c).await?;
            let import = world.import(n).await?;
            let first = world.round(n, 0).await?;
            let no_change_sync = world.sync(n, false).await?;
            let console_page = world.console_page(n).await?;
            Ok((import, first, no_change_sync, console_page))
        })
        .await?;
    let (sync, floor) = match first {
        Round::Sync(sync) => (sync, None),
        Round::Compared(sync, bare) => {
            let mut rounds = vec![(sync, bare)];
            for index in 1..floor::FLOOR_RUNS {
                let round = with_database(&options.database, |store| async move {
                    let world = World::start(&store, l, c).await?;
                    world.import(n).await?;
                    world.round(n, index).await
                })
                .await?;
                if let Round::Compared(sync, bare) = round {
                    rounds.push((sync, bare));
                }
            }
            let floor = FloorFigure::of(n, &rounds);
            // The report's sync is the round whose time is the median.
            rounds.sort_by(|a, b| a.0.figure.seconds.total_cmp(&b.0.figure.seconds));
            let (sync, _) = rounds.swap_remove(rounds.len() / 2);
            (sync, Some(floor))
        }
    };

    let serial_n = options.serial_size();
    let serial_sync = if serial_n == 0 {
        None
    } else {
        Some(
            with_database(&options.database, |store| async move {
                let world = World::start(&store, l, 1).await?;
                world.import(serial_n).await?;
                world.sync(serial_n, true).await
            })
            .await?,
        )
    };
    let speedup = serial_sync.as_ref().map(|serial| {
        (serial.figure.seconds / serial.extensions as f64) / (sync.figure.seconds / n as f64)
    });
    Ok(BenchReport {
        database: match options.database {
            BenchDatabase::Sqlite => "sqlite",
            BenchDatabase::Postgres(_) => "postgres",
        },
        extensions: n,
        latency_ms: l,
        in_flight: c,
        import,
        sync,
        no_change_sync,
        serial_sync,
        speedup,
        console_page,
        floor,
    })
}

/// Creates a temporary database, runs `body` on it, and removes the database whatever happened.
async fn with_database<T, F, Fut>(database: &BenchDatabase, body: F) -> Result<T, BenchError>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = Result<T, BenchError>>,
{
    let dir = tempfile::tempdir().map_err(BenchError::TempDir)?;
    let key = SecretKey::new(dir.path().join("bench.key"));
    match database {
        BenchDatabase::Sqlite => {
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            let store = Store::open(&parse_url(&url)?).await?.with_secret_key(key);
            let result = body(store.clone()).await;
            store.close().await;
            result
        }
        BenchDatabase::Postgres(admin_url) => {
            let name = format!(
                "mbgp_bench_{}_{}",
                std::process::id(),
                chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
            );
            admin(admin_url, &format!("CREATE DATABASE {name}")).await?;
            let result = async {
                let mut url =
                    url::Url::parse(admin_url).map_err(|e| BenchError::Url(e.to_string()))?;
                url.set_path(&name);
                let store = Store::open(&parse_url(url.as_str())?)
                    .await?
                    .with_secret_key(key);
                let result = body(store.clone()).await;
                store.close().await;
                result
            }
            .await;
            let dropped = admin(
                admin_url,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )
            .await;
            let value = result?;
            dropped?;
            Ok(value)
        }
    }
}

fn parse_url(url: &str) -> Result<DatabaseUrl, BenchError> {
    url.parse().map_err(BenchError::Url)
}

async fn admin(url: &str, statement: &str) -> Result<(), BenchError> {
    let mut connection = sqlx::PgConnection::connect(url)
        .await
        .map_err(BenchError::Postgres)?;
    connection
        .execute(sqlx::AssertSqlSafe(statement.to_string()))
        .await
        .map_err(BenchError::Postgres)?;
    connection.close().await.map_err(BenchError::Postgres)?;
    Ok(())
}

/// What one round of the bench measured.
enum Round {
    /// Without latency there is no floor to compare with.
    Sync(SyncFigure),
    Compared(SyncFigure, BareRun),
}

/// One database with a node and a token, and the simulator it talks to.
struct World<'a> {
    store: &'a Store,
    sim: floor::SimThread,
    config: Config,
    latency_ms: u64,
}

impl<'a> World<'a> {
    async fn start(
        store: &'a Store,
        latency_ms: u64,
        in_flight: usize,
    ) -> Result<World<'a>, BenchError> {
        let secret = credentials::random_password(24);
        let mut sim_config = SimConfig {
            consumers: vec![SimConsumer::new(CONSUMER, secret.expose_secret())],
            auto_approve: true,
            icps: vec![(ICP.into(), NODE_ADDRESS.into())],
            ..SimConfig::default()
        };
        sim_config.faults.latency_ms = latency_ms;
        let sim = floor::SimThread::start(sim_config)?;
        let mut config = Config::default();
        config.mbg.base_url = Some(sim.base_url().parse().map_err(BenchError::Url)?);
        config.mbg.max_in_flight = in_flight;
        config.mbg.timeout = Duration::from_secs(60);
        store
            .add_node(&NewNode {
                name: NODE.into(),
                address: NODE_ADDRESS.into(),
                nat_address: None,
                nat_sip_port: None,
            })
            .await?;
        let temporary = token::request(store, &config, "bench", CONSUMER, secret, now()).await?;
        let verifier = sim
            .approve(temporary.expose_secret())
            .ok_or(BenchError::NotApproved)?;
        token::verify(store, &config, &verifier, now()).await?;
        Ok(World {
            store,
            sim,
            config,
            latency_ms,
        })
    }

    /// The console's list queries on N extensions: each page query's median of 5 runs, and the
    /// slowest of them against the console's 100 ms bound.
    async fn console_page(&self, n: usize) -> Result<PageFigure, BenchError> {
        const PAGE: u32 = 100;
        let all = ExtensionFilter::default();
        // The row before the last page, found without timing it.
        let mut after = None;
        loop {
            let page = self
                .store
                .extension_page(
                    &all,
                    after
                        .as_ref()
                        .map(|(n, id): &(String, i64)| (n.as_str(), *id)),
                    10_000,
                )
                .await?;
            match page.len() {
                len if len < 10_000 => {
                    let cut = page.len().saturating_sub(PAGE as usize + 1);
                    after = page.get(cut).map(|e| (e.number.clone(), e.id)).or(after);
                    break;
                }
                _ => after = page.last().map(|e| (e.number.clone(), e.id)),
            }
        }
        let last_number = (FIRST_NUMBER + n as u64 - 1).to_string();
        let prefix = last_number[..last_number.len().saturating_sub(2)].to_string();
        let queries: [(&'static str, ExtensionFilter, bool); 5] = [
            ("first page", all.clone(), false),
            ("last page", all.clone(), true),
            (
                "number prefix",
                ExtensionFilter {
                    prefix: Some(prefix),
                    ..Default::default()
                },
                false,
            ),
            (
                "state needs_attention",
                ExtensionFilter {
                    state: Some(ExtensionState::NeedsAttention),
                    ..Default::default()
                },
                false,
            ),
            (
                "node",
                ExtensionFilter {
                    node: Some(NODE.into()),
                    ..Default::default()
                },
                true,
            ),
        ];
        let mut slowest = ("", Duration::ZERO);
        for (name, filter, from_the_end) in &queries {
            let mut runs = Vec::new();
            for _ in 0..5 {
                let started = Instant::now();
                let after = after.as_ref().filter(|_| *from_the_end);
                self.store
                    .extension_page(filter, after.map(|(n, id)| (n.as_str(), *id)), PAGE)
                    .await?;
                runs.push(started.elapsed());
            }
            runs.sort();
            if runs[2] > slowest.1 {
                slowest = (name, runs[2]);
            }
        }
        Ok(PageFigure {
            extensions: n,
            slowest: slowest.0,
            figure: Figure::new(slowest.1, None, 0.1, "any page < 100 ms".into()),
        })
    }

    /// N extensions through the import path, from a CSV built in memory.
    async fn import(&self, n: usize) -> Result<ImportFigure, BenchError> {
        let mut csv = String::with_capacity(n * 24 + 32);
        csv.push_str(import::HEADER);
        csv.push('\n');
        for i in 0..n as u64 {
            csv.push_str(&format!("{},{NODE},sip,on\n", FIRST_NUMBER + i));
        }
        let started = Instant::now();
        let nodes: HashSet<String> = self
            .store
            .nodes()
            .await?
            .into_iter()
            .map(|n| n.name)
            .collect();
        let rows = import::parse(csv.as_bytes(), &nodes)?;
        let specs: Vec<_> = rows.iter().map(|r| r.spec.clone()).collect();
        let length = self.config.credentials.password_length;
        let created = self
            .store
            .set_extensions(&specs, || credentials::random_password(length))
            .await
            .map_err(|(index, error)| ImportError::Store {
                line: rows.get(index).map_or(0, |r| r.line),
                error,
            })?;
        let elapsed = started.elapsed();
        if created != n {
            return Err(wrong("import", format!("{created} of {n} rows created")));
        }
        let target = 1.0_f64.max(3.0 * n as f64 / 100_000.0);
        Ok(ImportFigure {
            rows: n,
            created,
            figure: Figure::new(
                elapsed,
                None,
                target,
                "< 1 s for 10,000 rows; linear, 100,000 < 3 s".into(),
            ),
        })
    }

    /// A creating sync of the `n` extensions just imported and, with latency, a bare loop of
    /// `n` POSTs against the same simulator: the loop first in odd rounds, last in even ones.
    async fn round(&self, n: usize, index: usize) -> Result<Round, BenchError> {
        if self.latency_ms == 0 {
            return Ok(Round::Sync(self.sync(n, true).await?));
        }
        let loop_first = index % 2 == 1;
        let before = match loop_first {
            true => Some(self.bare_loop(n).await?),
            false => None,
        };
        let sync = self.sync(n, true).await?;
        let bare = match before {
            Some(bare) => bare,
            None => self.bare_loop(n).await?,
        };
        Ok(Round::Compared(sync, bare))
    }

    async fn bare_loop(&self, n: usize) -> Result<BareRun, BenchError> {
        let settings = self.store.mbg_settings().await?;
        let client = token::client(&self.config, &settings)?;
        let url = self
            .config
            .mbg
            .base_url
            .as_ref()
            .map(|base| base.join("mbg/v1/devices/sip/"))
            .ok_or_else(|| wrong("bare loop", "no mbg.base_url".into()))?;
        let (seconds, cpu) = floor::cpu_spent(
            &self.sim,
            floor::bare_loop(client.http(), &url, n, self.config.mbg.max_in_flight),
        )
        .await;
        Ok(BareRun {
            seconds: seconds?.as_secs_f64(),
            cpu,
        })
    }

    /// One `sync` under the pass lock: `creating` = every extension is new, else nothing to do.
    async fn sync(&self, n: usize, creating: bool) -> Result<SyncFigure, BenchError> {
        let phase = if creating { "sync" } else { "no-change sync" };
        let settings = self.store.mbg_settings().await?;
        let client = token::client(&self.config, &settings)?;
        self.sim.clear_requests();
        let started = Instant::now();
        let lock = self
            .store
            .lock_passes(
                LeaseTerms::of(&self.config),
                Duration::from_secs(60),
                |_| {},
            )
            .await?;
        let (pass, cpu) = floor::cpu_spent(
            &self.sim,
            reconcile::run_pass(
                self.store,
                &client,
                &self.config,
                Mode::Apply,
                &Shutdown::new(),
                now(),
            ),
        )
        .await;
        lock.release().await;
        let pass = pass?;
        let ended = Instant::now();
        let elapsed = ended - started;
        // From a log that kept every request of the pass; the first creates of a pass larger
        // than the simulator's ring have left it.
        let requests = self.sim.requests();
        let whole_log = u64::try_from(requests.len()).is_ok_and(|n| n == self.sim.request_count());
        let creates = whole_log
            .then(|| CreateSpan::of(&requests, started, ended))
            .flatten();
        drop(requests);
        let mbg_requests = usize::try_from(self.sim.request_count()).unwrap_or(usize::MAX);
        let changes = pass.plan.changes().count();
        let outcomes = pass.applied.as_ref().map_or(&[][..], |a| &a.outcomes[..]);
        let created = outcomes
            .iter()
            .filter(|o| o.verb == "create" && o.status == Status::Done)
            .count();
        if !pass.succeeded() || pass.needs_attention() {
            let failed = outcomes.iter().filter(|o| o.status != Status::Done).count();
            return Err(wrong(
                phase,
                format!("the pass did not succeed ({failed} actions not done)"),
            ));
        }
        if creating && created != n {
            return Err(wrong(phase, format!("{created} of {n} SIP users created")));
        }
        if !creating && changes != 0 {
            return Err(wrong(
                phase,
                format!("{changes} changes where none were expected"),
            ));
        }
        if creating && self.sim.devices().len() != n {
            return Err(wrong(
                phase,
                format!(
                    "the MBG holds {} SIP users, not {n}",
                    self.sim.devices().len()
                ),
            ));
        }
        let c = self.config.mbg.max_in_flight;
        let figure = if creating {
            let bound = (n as f64 + 3.0) * self.latency_ms as f64 / 1000.0 / c as f64;
            if self.latency_ms == 0 {
                Figure::new(
                    elapsed,
                    None,
                    2.0_f64.max(2.0 * n as f64 / 10_000.0),
                    "no latency: < 2 s for 10,000, the local work must not be the bottleneck"
                        .into(),
                )
            } else {
                Figure::new(
                    elapsed,
                    Some(bound),
                    1.25 * bound,
                    "≤ 1.25 × the bound (N + 3) × L / C".into(),
                )
            }
        } else {
            Figure::new(
                elapsed,
                Some(3.0 * self.latency_ms as f64 / 1000.0),
                1.0_f64.max(5.0 * n as f64 / 100_000.0),
                "< 1 s for 10,000; 100,000 < 5 s (3 requests)".into(),
            )
        };
        Ok(SyncFigure {
            extensions: n,
            max_in_flight: c,
            cpu_seconds: cpu.client,
            simulator_cpu_seconds: cpu.simulator,
            mbg_requests,
            created,
            changes,
            creates,
            figure,
        })
    }
}

pub use latency::{BurstFigure, LatencyFigure, change_latency};

fn wrong(phase: &'static str, detail: String) -> BenchError {
    BenchError::Wrong { phase, detail }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}
