//! Transactions that cannot outlive a failure.
//!
//! sqlx's own `Transaction` hands its connection back to the pool whatever happened: after a
//! COMMIT that failed (a full disk), the ROLLBACK it queues may fail too, and SQLite then keeps
//! the transaction open on a pooled connection. Every later read on that connection sees writes
//! the database never kept (remote credentials sent to the MBG, then lost), and every other
//! writer is locked out for as long as the process lives. Here a transaction that did not commit
//! takes its connection with it: closing a connection rolls back whatever it held, on both
//! backends, and the pool opens a fresh one.

use std::ops::{Deref, DerefMut};

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool};

use super::{Backend, Result, StoreError};

/// How hard a commit must reach the disk before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// The pool's default: on SQLite (WAL, `synchronous = NORMAL`), a power loss may drop it.
    Normal,
    /// On disk when `commit` returns, power loss included: for what the MBG will be told next
    /// (write-ahead credentials), which must never be lost once a call carried them.
    Synced,
}

pub(crate) struct Transaction {
    connection: Option<PoolConnection<Any>>,
    /// `synchronous` to restore on SQLite after a [`Durability::Synced`] commit.
    restore_normal: bool,
}

impl Transaction {
    pub(crate) async fn begin(
        pool: &AnyPool,
        backend: Backend,
        durability: Durability,
    ) -> Result<Transaction> {
        let mut connection = pool.acquire().await.map_err(StoreError::Database)?;
        let synced = backend == Backend::Sqlite && durability == Durability::Synced;
        if synced {
            // Per connection, so set before BEGIN and put back after COMMIT.
            let result = sqlx::raw_sql("PRAGMA synchronous = FULL")
                .execute(&mut *connection)
                .await;
            if let Err(e) = result {
                connection.close_on_drop();
                return Err(StoreError::Database(e));
            }
        }
        let mut transaction = Transaction {
            connection: Some(connection),
            restore_normal: synced,
        };
        // Every transaction here writes. On SQLite one that read first and wrote later would
        // fail outright (SQLITE_BUSY_SNAPSHOT, no busy wait) when another connection wrote in
        // between; taking the write lock at BEGIN waits for it instead.
        let begin = match backend {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        };
        sqlx::raw_sql(begin)
            .execute(&mut *transaction)
            .await
            .map_err(StoreError::Database)?;
        Ok(transaction)
    }

    /// Commits; on any failure the connection is closed (which rolls back), never reused.
    pub(crate) async fn commit(mut self) -> Result<()> {
        sqlx::raw_sql("COMMIT")
            .execute(&mut *self)
            .await
            .map_err(StoreError::Database)?;
        if self.restore_normal {
            sqlx::raw_sql("PRAGMA synchronous = NORMAL")
                .execute(&mut *self)
                .await
                .map_err(StoreError::Database)?;
        }
        // Committed and back to the pool's settings: the connection may be reused.
        drop(self.connection.take());
        Ok(())
    }
}

impl Deref for Transaction {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        self.connection.as_ref().expect("open until commit or drop")
    }
}

impl DerefMut for Transaction {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        self.connection.as_mut().expect("open until commit or drop")
    }
}

impl Drop for Transaction {
    /// Not committed (an error, a failed COMMIT, a pass dropped mid-way): the connection goes,
    /// and its transaction with it.
    fn drop(&mut self) {
        if let Some(connection) = self.connection.as_mut() {
            connection.close_on_drop();
        }
    }
}
