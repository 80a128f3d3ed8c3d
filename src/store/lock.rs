//! One pass at a time per database. Two passes that plan from the same state both create the
//! same SIP users (duplicates on an MBG that allows them) and overwrite each other's outcomes, so
//! whatever changes the MBG first takes this lock.
//!
//! The lock dies with its holder, whatever kills it: on PostgreSQL it is a session advisory lock
//! on a connection of its own (released when the connection ends), on SQLite an exclusive
//! `flock` on a file beside the database (released when the process ends). The `pass_holder`
//! row only names the holder for whoever waits; it is not the lock.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use sqlx::{AnyConnection, Connection, Row};

use super::transaction::Transaction;
use super::{Backend, Store, StoreError, now};
use crate::lease::Lease;

/// The advisory lock key: any constant, since advisory locks are per database.
const ADVISORY_KEY: i64 = 0x6d62_675f_7061_7373; // "mbg_pass"
const POLL: Duration = Duration::from_millis(200);

/// What a holder promises the next one: it calls the MBG only while its lease holds, and each
/// call ends within the MBG timeout. A holder that does not release cleanly is waited out for
/// both before the next one's first call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTerms {
    /// `leader.lease`: how long the holder goes on calling without a confirmed lock.
    pub lease: Duration,
    /// `mbg.timeout`: how long one of its calls may last.
    pub mbg_timeout: Duration,
}

impl LeaseTerms {
    pub fn of(config: &crate::config::Config) -> LeaseTerms {
        LeaseTerms {
            lease: config.leader.lease,
            mbg_timeout: config.mbg.timeout,
        }
    }

    /// How often a held PostgreSQL lock checks that its connection still answers: several
    /// times per lease, so that one slow answer does not let the lease lapse.
    fn liveness_interval(&self) -> Duration {
        (self.lease / 6).max(Duration::from_millis(50))
    }

    /// How long a check waits for its answer before the lock counts as lost: the bound on
    /// noticing a half-open connection, within the lease. A slow answer meanwhile only lets the
    /// lease lapse (no call goes out) until it comes.
    fn liveness_timeout(&self) -> Duration {
        self.lease.max(Duration::from_millis(100))
    }
}

/// What a holder that stopped without releasing the lock may still do.
#[derive(Debug, Clone, Copy)]
struct Unclean {
    /// Its calls have ended by then: its lease, then one MBG timeout.
    calls_end_within: Duration,
    /// A create it posted may land on the MBG until then, if it was creating.
    creates_land_within: Option<Duration>,
}

/// Who holds the pass lock, as it recorded itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub host: String,
    pub pid: i64,
    pub since: i64,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = chrono::DateTime::from_timestamp(self.since, 0)
            .map_or(self.since.to_string(), |t| {
                t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
            });
        write!(
            f,
            "process {} on host {} (since {since})",
            self.pid, self.host
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another mbg-provision pass is running on this database, held by {}; gave up after waiting {} s",
        .holder.as_ref().map_or("an unknown process".to_string(), Holder::to_string),
        .waited.as_secs()
    )]
    Busy {
        holder: Option<Holder>,
        waited: Duration,
    },
    #[error("cannot take the pass lock {path}: {error}")]
    File {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot take the pass lock: {0}")]
    Store(#[from] StoreError),
}

/// Held while a pass may change the MBG. Dropping it releases the lock too; [`PassLock::release`]
/// also clears the holder row.
pub struct PassLock {
    store: Store,
    hold: Hold,
    terms: LeaseTerms,
    /// When [`PassLock::lost`] next checks the connection.
    next_check: tokio::time::Instant,
    /// Extended by each confirmed check; asked by the MBG client before each call.
    lease: Lease,
    /// This holder's number in `pass_epoch`.
    epoch: i64,
    /// Until when a create of a previous holder that stopped uncleanly may still land.
    previous_uncertain_until: Option<std::time::Instant>,
}

enum Hold {
    File(std::fs::File),
    Postgres(AnyConnection),
    /// An in-memory SQLite database: only this process can reach it.
    Nothing,
}

impl fmt::Debug for PassLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PassLock")
    }
}

impl PassLock {
    /// Returns when the lock is lost: on PostgreSQL, when its connection stops answering (the
    /// server then releases it, and another instance may take over at once). A file lock is
    /// never lost while the process lives.
    pub async fn lost(&mut self) {
        let Hold::Postgres(connection) = &mut self.hold else {
            return std::future::pending().await;
        };
        loop {
            // The schedule lives in the lock: a caller that polls this in a loop of shorter
            // turns must not put the check off for ever.
            tokio::time::sleep_until(self.next_check).await;
            let started = std::time::Instant::now();
            let alive = tokio::time::timeout(self.terms.liveness_timeout(), async {
                sqlx::query("SELECT 1").execute(&mut *connection).await
            })
            .await;
            if !matches!(alive, Ok(Ok(_))) {
                return;
            }
            self.lease.extend_from(started);
            self.next_check = tokio::time::Instant::now() + self.terms.liveness_interval();
        }
    }

    /// What the MBG client asks before each call (see [`crate::lease`]).
    pub fn lease(&self) -> Lease {
        self.lease.clone()
    }

    /// The previous holder stopped without releasing the lock while it was creating SIP users:
    /// one of its creates may land on the MBG until then (its last one + 2 × its MBG timeout).
    /// A pass that plans before then reads the MBG again after it (see `reconcile`).
    pub fn previous_uncertain_until(&self) -> Option<std::time::Instant> {
        self.previous_uncertain_until
    }

    /// Releases the lock, saying that no call of ours is in flight any more: the next holder
    /// starts at once.
    pub async fn release(self) {
        self.store.fence.store(0, Ordering::Release);
        let _ = sqlx::query("UPDATE pass_epoch SET released = TRUE WHERE id = 1 AND epoch = $1")
            .bind(self.epoch)
            .execute(&self.store.pool)
            .await;
        let _ = sqlx::query("DELETE FROM pass_holder WHERE id = 1")
            .execute(&self.store.pool)
            .await;
        match self.hold {
            Hold::Postgres(mut connection) => {
                let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(ADVISORY_KEY)
                    .execute(&mut connection)
                    .await;
                let _ = connection.close().await;
            }
            Hold::File(file) => drop(file),
            Hold::Nothing => {}
        }
    }
}

impl Store {
    /// Takes the pass lock, waiting up to `wait`; `on_wait` is called once, when the lock is
    /// found taken, with its holder.
    pub async fn lock_passes(
        &self,
        terms: LeaseTerms,
        wait: Duration,
        on_wait: impl FnOnce(Option<&Holder>),
    ) -> Result<PassLock, LockError> {
        let started = Instant::now();
        let mut on_wait = Some(on_wait);
        loop {
            if let Some(lock) = self.try_lock_passes(terms).await? {
                return Ok(lock);
            }
            let holder = self.pass_holder().await?;
            if started.elapsed() >= wait {
                return Err(LockError::Busy {
                    holder,
                    waited: started.elapsed(),
                });
            }
            if let Some(on_wait) = on_wait.take() {
                on_wait(holder.as_ref());
            }
            tokio::time::sleep(POLL.min(wait.saturating_sub(started.elapsed()))).await;
        }
    }

    /// Takes the pass lock if it is free.
    pub(crate) async fn try_lock_passes(
        &self,
        terms: LeaseTerms,
    ) -> Result<Option<PassLock>, LockError> {
        let hold = match self.backend {
            Backend::Postgres => {
                // A pooled connection: a new one would cost a TCP and TLS handshake before the
                // first call. It leaves the pool once it holds the lock, which lasts as long as
                // its session; one that did not get it goes back.
                let mut connection = self.pool.acquire().await.map_err(StoreError::Database)?;
                let taken: bool = sqlx::query("SELECT pg_try_advisory_lock($1) AS taken")
                    .bind(ADVISORY_KEY)
                    .fetch_one(&mut *connection)
                    .await
                    .and_then(|row| row.try_get("taken"))
                    .map_err(StoreError::Database)?;
                if !taken {
                    return Ok(None);
                }
                Hold::Postgres(connection.detach())
            }
            Backend::Sqlite => match self.url.sqlite_file() {
                None => Hold::Nothing,
                Some(db) => {
                    // The real file: two URLs naming it through a link must share one lock.
                    let db = std::fs::canonicalize(&db).unwrap_or(db);
                    let mut path = db.into_os_string();
                    path.push(".lock");
                    let path = PathBuf::from(path);
                    let failed = |error| LockError::File {
                        path: path.clone(),
                        error,
                    };
                    let mut options = std::fs::OpenOptions::new();
                    options.read(true).write(true).create(true).truncate(false);
                    #[cfg(unix)]
                    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                    let file = options.open(&path).map_err(failed)?;
                    match file.try_lock() {
                        Ok(()) => Hold::File(file),
                        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                        Err(std::fs::TryLockError::Error(error)) => return Err(failed(error)),
                    }
                }
            },
        };
        sqlx::query(
            "INSERT INTO pass_holder (id, host, pid, since) VALUES (1, $1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,
                                            since = excluded.since",
        )
        .bind(host_name())
        .bind(i64::from(std::process::id()))
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(StoreError::Database)?;
        // A file lock is never lost while this process lives: its lease never lapses.
        let lease_length = matches!(hold, Hold::Postgres(_)).then_some(terms.lease);
        let (epoch, previous) = self.take_epoch(lease_length, terms.mbg_timeout).await?;
        let quiet_for = previous.map_or(Duration::ZERO, |p| p.calls_end_within);
        let previous_uncertain_until = previous
            .and_then(|p| p.creates_land_within)
            .map(|within| std::time::Instant::now() + within);
        if !quiet_for.is_zero() {
            tracing::warn!(
                wait_ms = quiet_for.as_millis() as u64,
                "the previous holder of the pass lock did not release it cleanly: waiting out its lease and MBG timeout before the first MBG call, so that no call of the two overlaps"
            );
        }
        self.fence.store(epoch, Ordering::Release);
        Ok(Some(PassLock {
            store: self.clone(),
            hold,
            terms,
            next_check: tokio::time::Instant::now() + terms.liveness_interval(),
            lease: Lease::new(lease_length, std::time::Instant::now() + quiet_for),
            epoch,
            previous_uncertain_until,
        }))
    }

    /// Bumps the epoch for a new holder; returns it and what the previous holder may still do
    /// (`None` when it released cleanly).
    async fn take_epoch(
        &self,
        lease: Option<Duration>,
        mbg_timeout: Duration,
    ) -> Result<(i64, Option<Unclean>), StoreError> {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let mut tx = Transaction::begin(
            &self.pool,
            self.backend,
            super::transaction::Durability::Normal,
        )
        .await?;
        let previous = sqlx::query(
            "SELECT lease_ms, mbg_timeout_ms, released, creating_until_ms FROM pass_epoch
              WHERE id = 1",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::Database)?;
        let released = super::get_bool(&previous, "released").map_err(StoreError::Database)?;
        let field = |name: &str| {
            previous
                .try_get::<i64, _>(name)
                .map_err(StoreError::Database)
        };
        let (previous_lease, previous_timeout) = (field("lease_ms")?, field("mbg_timeout_ms")?);
        let creating_until = field("creating_until_ms")?;
        let epoch: i64 = sqlx::query_scalar(
            "UPDATE pass_epoch
                SET epoch = epoch + 1, lease_ms = $1, mbg_timeout_ms = $2, released = FALSE,
                    taken_at = $3
              WHERE id = 1
             RETURNING epoch",
        )
        .bind(lease.map_or(0, ms))
        .bind(ms(mbg_timeout))
        .bind(now())
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::Database)?;
        tx.commit().await?;
        let millis = |ms: i64| Duration::from_millis(u64::try_from(ms).unwrap_or_default());
        let late_creates_until = creating_until + 2 * previous_timeout;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let previous = (!released).then(|| Unclean {
            calls_end_within: millis(previous_lease + previous_timeout),
            creates_land_within: (late_creates_until > now_ms)
                .then(|| millis(late_creates_until - now_ms)),
        });
        Ok((epoch, previous))
    }

    /// Written before creates are posted: `until_ms` (wall clock) is later than each of them.
    pub(crate) async fn note_creating_until(&self, until_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE pass_epoch SET creating_until_ms = $1
              WHERE id = 1 AND epoch = $2 AND creating_until_ms < $1",
        )
        .bind(until_ms)
        .bind(self.fence())
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(StoreError::Database)
    }

    /// Who holds the pass lock, as it recorded itself (`None` between its taking the lock and
    /// writing the row, or after a holder that died).
    pub(crate) async fn pass_holder(&self) -> Result<Option<Holder>, StoreError> {
        let row = sqlx::query("SELECT host, pid, since FROM pass_holder WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::Database)?;
        row.map(|row| {
            Ok(Holder {
                host: row.try_get("host")?,
                pid: row.try_get("pid")?,
                since: row.try_get("since")?,
            })
        })
        .transpose()
        .map_err(StoreError::Database)
    }
}

fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "an unknown host".to_string())
}
