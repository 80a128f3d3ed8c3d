//! The extension database, on SQLite (embedded default) or PostgreSQL, behind one type.
//!
//! All queries are runtime queries with `$N` placeholders on sqlx's `Any` driver, which both
//! backends accept, so there is one implementation of every query rather than one per backend.
//! What differs (schema, triggers, `LISTEN`) lives in `migrations/<backend>` and [`Backend`].
//! Times are epoch seconds (`i64`) because `Any` carries no date types.

mod changes;
mod console;
mod error;
mod extensions;
mod lock;
mod model;
mod nodes;
mod outcomes;
mod settings;
mod transaction;

#[cfg(test)]
pub(crate) mod testing;

use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;
use sqlx::ConnectOptions;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, Connection, Executor, Row, SqlSafeStr};

use crate::config::DatabaseUrl;
use crate::secrets::{self, SecretKey};

pub use console::{ConsoleUser, Role, Session, SessionUse, validate_user_name};
pub use error::{NotFound, StoreError, quote};
pub use extensions::validate_number;
pub use lock::{Holder, LeaseTerms, LockError, PassLock};
pub use model::*;
pub use nodes::validate_address;
pub use outcomes::{CredentialFill, PassWrite};

/// Each schema version in both dialects: a version cannot be added for one backend only.
/// Embedded with `include_str!` so the binary carries its schema (no `macros` feature needed).
/// How long a statement may take before sqlx warns of it (see [`Store::open`]).
const SLOW_STATEMENT: Duration = Duration::from_secs(10);

const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "schema",
        include_str!("../../migrations/sqlite/0001_schema.sql"),
        include_str!("../../migrations/postgres/0001_schema.sql"),
    ),
    (
        2,
        "ownership",
        include_str!("../../migrations/sqlite/0002_ownership.sql"),
        include_str!("../../migrations/postgres/0002_ownership.sql"),
    ),
    (
        3,
        "node changes",
        include_str!("../../migrations/sqlite/0003_node_changes.sql"),
        include_str!("../../migrations/postgres/0003_node_changes.sql"),
    ),
    (
        4,
        "token rejected",
        include_str!("../../migrations/sqlite/0004_token_rejected.sql"),
        include_str!("../../migrations/postgres/0004_token_rejected.sql"),
    ),
    (
        5,
        "statement triggers",
        include_str!("../../migrations/sqlite/0005_statement_triggers.sql"),
        include_str!("../../migrations/postgres/0005_statement_triggers.sql"),
    ),
    (
        6,
        "pass epoch",
        include_str!("../../migrations/sqlite/0006_pass_epoch.sql"),
        include_str!("../../migrations/postgres/0006_pass_epoch.sql"),
    ),
    (
        7,
        "database id",
        include_str!("../../migrations/sqlite/0007_database_id.sql"),
        include_str!("../../migrations/postgres/0007_database_id.sql"),
    ),
    (
        8,
        "console",
        include_str!("../../migrations/sqlite/0008_console.sql"),
        include_str!("../../migrations/postgres/0008_console.sql"),
    ),
    (
        9,
        "mbg icps",
        include_str!("../../migrations/sqlite/0009_mbg_icps.sql"),
        include_str!("../../migrations/postgres/0009_mbg_icps.sql"),
    ),
    (
        10,
        "audit growth",
        include_str!("../../migrations/sqlite/0010_audit_growth.sql"),
        include_str!("../../migrations/postgres/0010_audit_growth.sql"),
    ),
    (
        11,
        "targeted reads",
        include_str!("../../migrations/sqlite/0011_targeted_reads.sql"),
        include_str!("../../migrations/postgres/0011_targeted_reads.sql"),
    ),
    (
        12,
        "fill reads rows",
        include_str!("../../migrations/sqlite/0012_fill_reads_rows.sql"),
        include_str!("../../migrations/postgres/0012_fill_reads_rows.sql"),
    ),
    (
        13,
        "version trigger columns",
        include_str!("../../migrations/sqlite/0013_version_trigger_columns.sql"),
        include_str!("../../migrations/postgres/0013_version_trigger_columns.sql"),
    ),
];

fn migrator(backend: Backend) -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|&(version, description, sqlite, postgres)| {
                let sql = match backend {
                    Backend::Sqlite => sqlite,
                    Backend::Postgres => postgres,
                };
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    AssertSqlSafe(sql).into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Whether a statement built over a list of rows (its text changes with their count) is
    /// kept in the connection's statement cache. Not on SQLite: a large pass's groups filled
    /// every connection's cache (100 statements each), some 3 MB that an idle daemon held on
    /// to, and preparing one again costs microseconds. On PostgreSQL, where the cache is the
    /// server's and a statement not kept costs a round trip for its parameter types, yes.
    pub(crate) fn keeps_list_statements(self) -> bool {
        self == Backend::Postgres
    }
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    url: DatabaseUrl,
    /// Seals the token secrets in `mbg_settings` (see [`crate::secrets`]).
    secret_key: std::sync::Arc<SecretKey>,
    /// The `pass_epoch` of the pass lock this process holds (0: none). Outcome writes carry it,
    /// so that a deposed holder's writes land nowhere.
    fence: std::sync::Arc<std::sync::atomic::AtomicI64>,
    /// What opening did to the schema, for `migrate` to say.
    schema_change: Option<SchemaChange>,
    /// Set while a vacuum after a large pass runs (see [`Store::acknowledge_changes`]): one at
    /// a time, never a queue of them each holding a pooled connection.
    vacuuming: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// The schema version before and after [`Store::open`] brought it up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaChange {
    /// `None`: there was no schema (a new database).
    pub from: Option<i64>,
    pub to: i64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .field("url", &self.url)
            .field("secret_key", &self.secret_key)
            .finish()
    }
}

pub(crate) type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What [`Store::migration_status`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MigrationStatus {
    pub applied: usize,
    /// `NNNN description` of each migration not applied yet.
    pub pending: Vec<String>,
    /// Applied versions this program does not have.
    pub unknown: Vec<i64>,
}

/// How [`Store::open_with`] opens the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    /// How long a database server may take to accept a connection.
    pub connect_timeout: Duration,
    /// Create a missing SQLite file. Commands that only read or act on existing data leave it
    /// off, so that one run in the wrong folder cannot start from an empty database.
    pub create: bool,
    /// Bring the schema up to date. Off for `preflight`, which reports what is missing and
    /// changes nothing.
    pub migrate: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            create: true,
            migrate: true,
        }
    }
}

impl Store {
    /// Opens the database (creating a SQLite file if needed) and brings its schema up to date.
    pub async fn open(url: &DatabaseUrl) -> Result<Store> {
        Self::open_with(url, &OpenOptions::default()).await
    }

    pub async fn open_with(url: &DatabaseUrl, options: &OpenOptions) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let (backend, connect_url) = if url.is_postgres() {
            probe(url, options.connect_timeout).await?;
            (Backend::Postgres, url.expose().to_string())
        } else if options.create {
            if let Some(file) = url.sqlite_file() {
                crate::file_owner::check(&file)?;
            }
            create_private_file(url).map_err(|e| {
                StoreError::Database(sqlx::Error::Configuration(
                    format!("cannot create the SQLite file of {url}: {e}").into(),
                ))
            })?;
            (Backend::Sqlite, sqlite_url(url.expose()))
        } else {
            if let Some(path) = url.sqlite_file() {
                if !path.exists() {
                    return Err(StoreError::MissingDatabase(
                        std::path::absolute(&path).unwrap_or(path),
                    ));
                }
                crate::file_owner::check(&path)?;
            }
            (Backend::Sqlite, url.expose().to_string())
        };
        if backend == Backend::Sqlite {
            probe_sqlite(&connect_url, options.connect_timeout).await?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 10 })
            // A big pass opens several; an idle daemon needs one (its poll), and each SQLite
            // connection keeps a page cache of its own.
            .idle_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // With WAL, NORMAL syncs at checkpoints instead of at every commit: a
                        // power loss may drop the last commits, never corrupts the file. See
                        // `outcomes` for why losing an outcome is healed by the next pass.
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                    }
                    Ok(())
                })
            })
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(
                AnyConnectOptions::from_str(&connect_url)
                    .map_err(StoreError::Database)?
                    // A full read streams its rows and decodes each as it comes, so its
                    // statement lasts as long as the decoding: over a second at 100,000 rows,
                    // which is no sign of trouble. Slower than this still is.
                    .log_slow_statements(log::LevelFilter::Warn, SLOW_STATEMENT),
            )
            .await
            .map_err(StoreError::Database)?;
        let mut store = Store {
            pool,
            backend,
            url: url.clone(),
            secret_key: std::sync::Arc::new(SecretKey::new(secrets::default_key_file(url))),
            fence: Default::default(),
            vacuuming: Default::default(),
            schema_change: None,
        };
        if options.migrate {
            let from = store.applied_versions().await?.into_iter().max();
            store.migrate().await?;
            store.schema_change = Some(SchemaChange {
                from,
                to: MIGRATIONS.iter().map(|m| m.0).max().unwrap_or(0),
            });
        }
        Ok(store)
    }

    /// Hands back what the idle connections hold from the pass that just ended: their prepared
    /// statements and, on SQLite, their page caches (up to 2 MB each). The pool reuses its idle
    /// connections in turn, so an idle daemon's one-second poll keeps every one of them open
    /// and `idle_timeout` never closes one. Best effort, and bounded in time: on PostgreSQL
    /// clearing statements is a round trip, and a frozen server must not hold the leader here.
    pub(crate) async fn release_idle_memory(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.release_idle_connections()).await;
    }

    async fn release_idle_connections(&self) {
        for _ in 0..self.pool.num_idle() {
            let Some(mut connection) = self.pool.try_acquire() else {
                break;
            };
            if connection.clear_cached_statements().await.is_err() {
                continue;
            }
            if self.backend == Backend::Sqlite {
                let _ = connection.execute("PRAGMA shrink_memory").await;
            }
            connection.shrink_buffers();
        }
    }

    /// The epoch of the pass lock held by this process, or 0.
    fn fence(&self) -> i64 {
        self.fence.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// Uses `key` instead of the default key file ([`secrets::default_key_file`]).
    pub fn with_secret_key(mut self, key: SecretKey) -> Store {
        self.secret_key = std::sync::Arc::new(key);
        self
    }

    pub(crate) fn secret_key_path(&self) -> &std::path::Path {
        self.secret_key.path()
    }

    pub(crate) async fn migrate(&self) -> Result<()> {
        if self.backend == Backend::Sqlite {
            // WAL lets the phone system's tools and `sqlite3` read while we write.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&self.pool)
                .await
                .map_err(StoreError::Database)?;
        }
        migrator(self.backend).run(&self.pool).await?;
        Ok(())
    }

    /// Which of this program's migrations the database lacks, and which versions it has that
    /// this program does not know (a newer program migrated it).
    pub(crate) async fn migration_status(&self) -> Result<MigrationStatus> {
        let applied = self.applied_versions().await?;
        let known: Vec<(i64, &str)> = MIGRATIONS.iter().map(|m| (m.0, m.1)).collect();
        Ok(MigrationStatus {
            pending: known
                .iter()
                .filter(|(version, _)| !applied.contains(version))
                .map(|(version, description)| format!("{version:04} {description}"))
                .collect(),
            unknown: applied
                .iter()
                .copied()
                .filter(|version| !known.iter().any(|(v, _)| v == version))
                .collect(),
            applied: applied.len(),
        })
    }

    /// One `SELECT 1`: whether the database answers at all.
    pub(crate) async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(StoreError::Database)
    }

    /// What opening did to the schema (`None` when it was opened without migrating).
    pub fn schema_change(&self) -> Option<SchemaChange> {
        self.schema_change
    }

    async fn applied_versions(&self) -> Result<Vec<i64>> {
        match sqlx::query_scalar::<_, i64>(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await
        {
            Ok(applied) => Ok(applied),
            // No table: nothing was ever migrated.
            Err(sqlx::Error::Database(e)) if e.message().contains("_sqlx_migrations") => {
                Ok(Vec::new())
            }
            Err(e) => Err(StoreError::Database(e)),
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// One SQLite connection and one read first: a file that is not a database, or one in a folder
/// this user cannot write (WAL needs its `-shm` file there), fails here at once with SQLite's
/// own words, where the pool would retry it for its whole acquire timeout.
async fn probe_sqlite(url: &str, timeout: Duration) -> Result<()> {
    let attempt = async {
        let mut connection = sqlx::AnyConnection::connect(url).await?;
        sqlx::query("SELECT count(*) FROM sqlite_master")
            .fetch_one(&mut connection)
            .await?;
        connection.close().await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result.map_err(StoreError::Database),
        Err(_) => Err(StoreError::Database(sqlx::Error::PoolTimedOut)),
    }
}

/// One connection first, with its own deadline: the pool would retry a refused connection until
/// its acquire timeout and then say only "pool timed out".
async fn probe(url: &DatabaseUrl, timeout: Duration) -> Result<()> {
    let parsed = url::Url::parse(url.expose()).ok();
    let host = parsed.as_ref().and_then(|u| u.host_str()).unwrap_or("?");
    let port = parsed.as_ref().and_then(|u| u.port()).unwrap_or(5432);
    let unreachable = |reason: String| StoreError::Unreachable {
        address: format!("{host}:{port}"),
        reason,
    };
    match tokio::time::timeout(timeout, AnyConnection::connect(url.expose())).await {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            Ok(())
        }
        Ok(Err(sqlx::Error::Io(e))) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(unreachable("connection refused".into()))
        }
        Ok(Err(sqlx::Error::Io(e))) => Err(unreachable(e.to_string())),
        // invalid_catalog_name: the server is there, the database is not.
        Ok(Err(sqlx::Error::Database(e))) if e.code().as_deref() == Some("3D000") => {
            let name = parsed
                .as_ref()
                .map(|u| u.path().trim_start_matches('/').to_string())
                .unwrap_or_default();
            let user = parsed.as_ref().map_or("", |u| u.username());
            let user = if user.is_empty() {
                String::new()
            } else {
                format!(" -U {user}")
            };
            Err(StoreError::NoSuchDatabase {
                createdb: format!("createdb -h {host} -p {port}{user} {name}"),
                name,
                address: format!("{host}:{port}"),
            })
        }
        Ok(Err(other)) => Err(StoreError::Database(other)),
        Err(_) => Err(unreachable(format!(
            "no answer within {} (database.connect_timeout)",
            crate::config::human_duration::format(&timeout)
        ))),
    }
}

/// The file of a SQLite URL; `None` for an in-memory database.
/// Creates a missing SQLite file readable by its owner only: it will hold the MBG access token
/// and every SIP password. An existing file keeps the permissions its admin gave it.
fn create_private_file(url: &DatabaseUrl) -> std::io::Result<()> {
    let Some(path) = url.sqlite_file().filter(|p| !p.exists()) else {
        return Ok(());
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other.map(|_| ()),
    }
}

/// Adds `mode=rwc` so a missing SQLite file is created, as an embedded default should.
fn sqlite_url(url: &str) -> String {
    if url.contains("mode=") || url.contains(":memory:") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// SQLite hands booleans back as integers through `Any`, PostgreSQL as booleans. Only 0 and 1
/// are booleans: SQLite stores whatever a writer with its checks off gives it, and a 2 taken as
/// "on" would provision an extension nobody switched on.
fn get_bool(row: &AnyRow, column: &str) -> Result<bool, sqlx::Error> {
    row.try_get::<bool, _>(column)
        .or_else(|_| match row.try_get::<i64, _>(column)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(sqlx::Error::Decode(
                format!("{other}, not a boolean (0 or 1)").into(),
            )),
        })
}

fn get_secret(row: &AnyRow, column: &str) -> Result<Option<SecretString>, sqlx::Error> {
    Ok(row
        .try_get::<Option<String>, _>(column)?
        .filter(|s| !s.is_empty())
        .map(SecretString::from))
}

fn get_parsed<T: FromStr<Err = String>>(row: &AnyRow, column: &str) -> Result<T, sqlx::Error> {
    row.try_get::<String, _>(column)?
        .parse()
        .map_err(|e: String| sqlx::Error::Decode(e.into()))
}
