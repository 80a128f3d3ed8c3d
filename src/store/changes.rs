use sqlx::{AssertSqlSafe, Row};

use super::{Change, Released, Result, Store, StoreError, get_secret};

impl Store {
    /// The oldest `limit` recorded changes, in `seq` order.
    pub async fn pending_changes(&self, limit: u32) -> Result<Vec<Change>> {
        let rows = sqlx::query(
            "SELECT seq, extension_id, changed_at FROM extension_changes ORDER BY seq LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::Database)?;
        rows.iter()
            .map(|row| {
                Ok(Change {
                    seq: row.try_get("seq")?,
                    extension_id: row.try_get("extension_id")?,
                    changed_at: row.try_get("changed_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::Database)
    }

    /// The extensions with a change recorded after `seq`: what a pass planned before them no
    /// longer stands. (A lower seq that commits late on PostgreSQL is missed here; the pass
    /// then makes a call that the next pass undoes, as before this check existed.)
    pub(crate) async fn changed_after(&self, seq: i64) -> Result<Vec<i64>> {
        sqlx::query_scalar("SELECT DISTINCT extension_id FROM extension_changes WHERE seq > $1")
            .bind(seq)
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::Database)
    }

    /// Removes exactly the changes handled (and on PostgreSQL, after [`VACUUM_AFTER`] or more,
    /// starts a vacuum of the tables such a pass leaves dead rows in). Never "everything up to seq N": on PostgreSQL a
    /// lower seq can commit after a higher one, and it must not be lost.
    pub async fn acknowledge_changes(&self, seqs: &[i64]) -> Result<()> {
        self.delete_changes(seqs).await?;
        self.vacuum_after(seqs.len());
        Ok(())
    }

    /// [`Store::acknowledge_changes`] without the vacuum: for a pass, most of whose changes were
    /// acknowledged with their outcomes (see `write_chunk`), which then calls
    /// [`Store::vacuum_after`] with them all.
    pub(crate) async fn delete_changes(&self, seqs: &[i64]) -> Result<()> {
        for chunk in seqs.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "DELETE FROM extension_changes WHERE seq IN ({})",
                placeholders.join(", ")
            );
            let mut query =
                sqlx::query(AssertSqlSafe(sql)).persistent(self.backend.keeps_list_statements());
            for seq in chunk {
                query = query.bind(*seq);
            }
            query
                .execute(&self.pool)
                .await
                .map_err(StoreError::Database)?;
        }
        Ok(())
    }

    /// Starts a vacuum on PostgreSQL when `acknowledged` changes were just removed (see
    /// [`VACUUM_AFTER`]) and none is running.
    pub(crate) fn vacuum_after(&self, acknowledged: usize) {
        let idle = || {
            !self
                .vacuuming
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        };
        if self.backend == super::Backend::Postgres && acknowledged >= VACUUM_AFTER && idle() {
            // A pass that handled this many left dead rows behind: the deleted changes. Until
            // autovacuum comes by (a minute or more), every change query walked them: 1 to 6 ms
            // each at 100,000 extensions. Vacuumed now, beside the work (it blocks no read or
            // write); a failed vacuum costs only that time.
            let (pool, vacuuming) = (self.pool.clone(), self.vacuuming.clone());
            tokio::spawn(async move {
                if let Err(e) = sqlx::raw_sql("VACUUM (ANALYZE) extension_changes, extensions")
                    .execute(&pool)
                    .await
                {
                    tracing::debug!(error = %e, "cannot vacuum after a large pass");
                }
                vacuuming.store(false, std::sync::atomic::Ordering::Release);
            });
        }
    }

    pub async fn released(&self) -> Result<Vec<Released>> {
        let rows = sqlx::query(
            "SELECT id, number, mbg_device_id, remote_auth_name, remote_auth_password, released_at
               FROM released_extensions ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::Database)?;
        rows.iter()
            .map(|row| {
                Ok(Released {
                    id: row.try_get("id")?,
                    number: row.try_get("number")?,
                    mbg_device_id: row
                        .try_get::<Option<String>, _>("mbg_device_id")?
                        .filter(|s| !s.is_empty()),
                    remote_auth_name: row
                        .try_get::<Option<String>, _>("remote_auth_name")?
                        .filter(|s| !s.is_empty()),
                    remote_auth_password: get_secret(row, "remote_auth_password")?,
                    released_at: row.try_get("released_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::Database)
    }

    /// Called once no SIP user of the released row is left on the MBG.
    pub async fn forget_released(&self, id: i64) -> Result<()> {
        sqlx::query("DELETE FROM released_extensions WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(StoreError::Database)?;
        Ok(())
    }

    /// Failed (or pending) extensions whose retry is due at `now`. Pending: a SIP user that
    /// vanished under an update, to be created anew.
    pub(crate) async fn due_retries(&self, now: i64) -> Result<Vec<i64>> {
        sqlx::query_scalar(
            "SELECT id FROM extensions
              WHERE state IN ('failed', 'pending') AND COALESCE(next_attempt_at, 0) <= $1
              ORDER BY id",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::Database)
    }

    /// When the next failed extension is due for a retry, if any is waiting.
    pub(crate) async fn next_retry_at(&self) -> Result<Option<i64>> {
        sqlx::query_scalar(
            "SELECT MIN(COALESCE(next_attempt_at, 0)) FROM extensions
              WHERE state IN ('failed', 'pending')",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::Database)
    }

    /// Extensions with a change not yet applied, and failed ones waiting for a retry.
    pub(crate) async fn queue_depth(&self) -> Result<i64> {
        sqlx::query_scalar(
            "SELECT (SELECT COUNT(DISTINCT extension_id) FROM extension_changes)
                  + (SELECT COUNT(*) FROM extensions WHERE state = 'failed')",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::Database)
    }

    /// How many extensions are in each state, for the metrics. The count reads an index entry
    /// per row, which on SQLite fills the connection's page cache (2 MB at 100,000 rows); an
    /// idle daemon counts every 10 s, so the cache is handed back at once rather than kept by
    /// each connection the count lands on (4 MB of an idle daemon's 20 MB of heap).
    pub(crate) async fn count_by_state(&self) -> Result<Vec<(super::ExtensionState, u64)>> {
        let mut connection = self.pool.acquire().await.map_err(StoreError::Database)?;
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM extensions GROUP BY state")
                .fetch_all(&mut *connection)
                .await
                .map_err(StoreError::Database)?;
        if self.backend == super::Backend::Sqlite {
            let _ = sqlx::query("PRAGMA shrink_memory")
                .execute(&mut *connection)
                .await;
        }
        Ok(rows
            .into_iter()
            .filter_map(|(state, n)| Some((state.parse().ok()?, u64::try_from(n).ok()?)))
            .collect())
    }
}

/// Acknowledged changes that make it worth vacuuming straight away.
const VACUUM_AFTER: usize = 1_000;
