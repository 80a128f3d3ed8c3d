//! The write path of a pass, in groups: many extensions' outcomes in one transaction, generated
//! credentials in a few multi-row statements. One transaction per outcome made every extension
//! cost several serial round trips (on SQLite, each waiting for the one writer's lock and an
//! fsync); a group pays that once.
//!
//! Durability: on SQLite the connections run WAL with `synchronous = NORMAL` (see
//! [`super::Store::open_with`]): a committed group may be lost on power loss (not on a crash of
//! this process), and the file is never corrupted. What such a loss can drop is an outcome whose
//! MBG call did happen; the next pass heals it: a created SIP user carries the credentials that
//! were committed before its create (write-ahead), so the ownership rule takes it back instead of
//! creating a second one.

use secrecy::{ExposeSecret, SecretString};
use sqlx::{AnyConnection, AssertSqlSafe};

use super::error::classify;
use super::{AuditEntry, Backend, DeviceFact, OutcomeWrite, Result, Store, StoreError};

/// Rows per multi-row credential statement: 3 parameters each, well under both backends' limits.
const FILL_CHUNK: usize = 500;

/// Generated remote credentials for an extension that lacks them.
#[derive(Debug, Clone)]
pub struct CredentialFill {
    pub extension_id: i64,
    pub name: String,
    pub password: SecretString,
}

/// One write of a pass's bookkeeping. A group of them commits together.
#[derive(Debug, Clone)]
pub enum PassWrite {
    Outcome(OutcomeWrite),
    Audit(AuditEntry),
    /// A deleted extension's last SIP user is gone: its released row is done with.
    ForgetReleased(i64),
}

impl Store {
    /// Write-ahead for provisioning: stores generated remote credentials before any MBG call, in
    /// one transaction, but only into fields that are empty, so credentials already in the
    /// database (typed by an admin, or from an earlier attempt) are never replaced.
    pub async fn fill_remote_credentials_all(&self, fills: &[CredentialFill]) -> Result<()> {
        if fills.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(StoreError::Database)?;
        for chunk in fills.chunks(FILL_CHUNK) {
            // UPDATE … FROM (VALUES …): one statement per chunk on both backends. `?` on SQLite,
            // which binds `$N` by scanning every name (quadratic in the parameters).
            let values: Vec<String> = (0..chunk.len())
                .map(|row| match self.backend {
                    Backend::Sqlite => "(?, ?, ?)".to_string(),
                    Backend::Postgres => {
                        let p = row * 3;
                        format!("(${}::BIGINT, ${}, ${})", p + 1, p + 2, p + 3)
                    }
                })
                .collect();
            let sql = format!(
                "WITH fill (id, name, password) AS (VALUES {})
                 UPDATE extensions
                    SET remote_auth_name = COALESCE(NULLIF(extensions.remote_auth_name, ''), fill.name),
                        remote_auth_password =
                            COALESCE(NULLIF(extensions.remote_auth_password, ''), fill.password)
                   FROM fill
                  WHERE extensions.id = fill.id",
                values.join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for fill in chunk {
                query = query
                    .bind(fill.extension_id)
                    .bind(fill.name.as_str())
                    .bind(fill.password.expose_secret());
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(StoreError::Database)?;
        }
        tx.commit().await.map_err(StoreError::Database)
    }

    /// Writes an outcome of a pass in one transaction. Returns `false` when the row changed
    /// after the plan was made (or is gone): its state is then left for the next pass.
    pub async fn write_outcome(&self, outcome: &OutcomeWrite) -> Result<bool> {
        let written = self
            .write_group(&[PassWrite::Outcome(outcome.clone())])
            .await?;
        Ok(written[0])
    }

    /// Writes `writes` in one transaction, in order: all or none. One `bool` per write: for an
    /// outcome, whether its state was written (the row still had the planned version); `true`
    /// for the others.
    pub async fn write_group(&self, writes: &[PassWrite]) -> Result<Vec<bool>> {
        let mut tx = self.pool.begin().await.map_err(StoreError::Database)?;
        let mut written = Vec::with_capacity(writes.len());
        for write in writes {
            written.push(write_one(&mut tx, write).await?);
        }
        tx.commit().await.map_err(StoreError::Database)?;
        Ok(written)
    }
}

async fn write_one(conn: &mut AnyConnection, write: &PassWrite) -> Result<bool> {
    match write {
        PassWrite::Outcome(outcome) => write_outcome_in(conn, outcome).await,
        PassWrite::Audit(entry) => {
            sqlx::query(
                "INSERT INTO audit_log (at, extension, action, outcome, detail)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(entry.at)
            .bind(entry.extension.as_deref())
            .bind(&entry.action)
            .bind(&entry.outcome)
            .bind(entry.detail.as_deref())
            .execute(&mut *conn)
            .await
            .map_err(StoreError::Database)?;
            Ok(true)
        }
        PassWrite::ForgetReleased(id) => {
            sqlx::query("DELETE FROM released_extensions WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await
                .map_err(StoreError::Database)?;
            Ok(true)
        }
    }
}

async fn write_outcome_in(conn: &mut AnyConnection, outcome: &OutcomeWrite) -> Result<bool> {
    let id = outcome.extension_id;
    match &outcome.device {
        DeviceFact::Unchanged => {}
        DeviceFact::Holds(guid) => {
            sqlx::query(
                "UPDATE extensions SET mbg_device_id = $2, provisioned_by_us = $3 WHERE id = $1",
            )
            .bind(id)
            .bind(guid)
            .bind(true)
            .execute(&mut *conn)
            .await
            .map_err(|e| classify(e, |_| guid.clone()))?;
        }
        DeviceFact::Gone => {
            sqlx::query(
                "UPDATE extensions SET mbg_device_id = NULL, provisioned_by_us = $2 WHERE id = $1",
            )
            .bind(id)
            .bind(false)
            .execute(&mut *conn)
            .await
            .map_err(StoreError::Database)?;
        }
    }
    let update = &outcome.state;
    let written = sqlx::query(
        "UPDATE extensions SET state = $3, last_error = $4, attempts = $5, next_attempt_at = $6
          WHERE id = $1 AND version = $2",
    )
    .bind(id)
    .bind(outcome.planned_version)
    .bind(update.state.as_str())
    .bind(update.last_error.as_deref())
    .bind(i64::from(update.attempts))
    .bind(update.next_attempt_at)
    .execute(&mut *conn)
    .await
    .map_err(StoreError::Database)?
    .rows_affected();
    Ok(written > 0)
}
