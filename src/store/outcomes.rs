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
use super::transaction::{Durability, Transaction};
use super::{AuditEntry, Backend, DeviceFact, Extension, OutcomeWrite, Result, Store, StoreError};

/// Rows per multi-row credential statement. Small enough that a statement stays well under
/// 16 KB: sqlx 0.9 does not set `TCP_NODELAY`, and a larger message leaves the socket in two
/// writes (the kernel's initial send buffer is 16 KB), the second of which waits for the
/// server's delayed ACK, 40 ms. Measured on PostgreSQL: 500-row statements made a group of 256
/// outcomes take 60 to 170 ms, 100-row ones 25 to 35 ms.
const FILL_CHUNK: usize = 100;

/// Remote credentials for an extension that lacks one or both, as its row was read: the fields
/// it had, and drawn ones for the others. Stored only if the row is still as read.
#[derive(Debug, Clone)]
pub struct CredentialFill {
    pub extension_id: i64,
    /// The row's version when it was read.
    pub read_version: i64,
    pub name: String,
    pub password: SecretString,
    /// Whether `name` / `password` are the row's own (read), not drawn.
    pub(crate) name_was_stored: bool,
    pub(crate) password_was_stored: bool,
}

impl CredentialFill {
    /// What `row` holds, with `name` and `password` where it holds none.
    pub(crate) fn for_row(row: &Extension, name: String, password: SecretString) -> Self {
        CredentialFill {
            extension_id: row.id,
            read_version: row.version,
            name_was_stored: row.remote_auth_name.is_some(),
            password_was_stored: row.remote_auth_password.is_some(),
            name: row.remote_auth_name.clone().unwrap_or(name),
            password: row.remote_auth_password.clone().unwrap_or(password),
        }
    }
}

/// Whether a credential fill removes the change records it makes (see
/// [`Store::store_drawn_credentials`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnChanges {
    Remove,
    Keep,
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
    /// Write-ahead for provisioning: stores remote credentials a pass drew for rows that lack
    /// them, in one transaction, before any MBG call for those rows. A row is written only if it
    /// is still as the pass read it (its version, and its credential fields, which a write with
    /// the triggers off changes without a new version), and for a pass holder only while its
    /// epoch is the current one; only fields still empty are filled: credentials already stored
    /// (typed by an admin, from an earlier attempt) are never replaced. Returns the ids written; any
    /// other row changed after the pass read it, which must then not act on what it read.
    ///
    /// The change records the write makes are removed with it: the pass that stores the
    /// credentials is the one that acts on them, and its watch for rows changed meanwhile must
    /// not take its own write for someone else's.
    pub(crate) async fn store_drawn_credentials(
        &self,
        fills: &[CredentialFill],
    ) -> Result<Vec<i64>> {
        self.fill_in_one_transaction(fills, OwnChanges::Remove)
            .await
    }

    /// Stores remote credentials for one extension as another program would (its change is
    /// recorded), but only into fields that are empty: see [`Store::store_drawn_credentials`].
    /// Returns the row as stored.
    pub async fn fill_remote_credentials(
        &self,
        id: i64,
        name: &str,
        password: &SecretString,
    ) -> Result<Extension> {
        let read = self.extension(id).await?;
        self.fill_in_one_transaction(
            &[CredentialFill::for_row(
                &read,
                name.to_string(),
                password.clone(),
            )],
            OwnChanges::Keep,
        )
        .await?;
        self.extension(id).await
    }

    async fn fill_in_one_transaction(
        &self,
        fills: &[CredentialFill],
        own_changes: OwnChanges,
    ) -> Result<Vec<i64>> {
        if fills.is_empty() {
            return Ok(Vec::new());
        }
        let fenced = fenced_by(self.fence());
        let mut tx = Transaction::begin(&self.pool, self.backend, Durability::Synced).await?;
        let before: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM extension_changes")
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::Database)?;
        let mut written = Vec::with_capacity(fills.len());
        for chunk in fills.chunks(FILL_CHUNK) {
            // UPDATE … FROM (VALUES …): one statement per chunk on both backends.
            let sql = format!(
                "WITH fill (id, version, name, password, read_name, read_password) AS (VALUES {})
                 UPDATE extensions
                    SET remote_auth_name = COALESCE(NULLIF(extensions.remote_auth_name, ''), fill.name),
                        remote_auth_password =
                            COALESCE(NULLIF(extensions.remote_auth_password, ''), fill.password)
                   FROM fill
                  WHERE extensions.id = fill.id AND extensions.version = fill.version
                    AND COALESCE(extensions.remote_auth_name, '') = COALESCE(fill.read_name, '')
                    AND COALESCE(extensions.remote_auth_password, '')
                        = COALESCE(fill.read_password, ''){fenced}
                 RETURNING extensions.id",
                values(
                    self.backend,
                    chunk.len(),
                    &["BIGINT", "BIGINT", "TEXT", "TEXT", "TEXT", "TEXT"]
                )
            );
            let mut query = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql))
                .persistent(self.backend.keeps_list_statements());
            for fill in chunk {
                query = query
                    .bind(fill.extension_id)
                    .bind(fill.read_version)
                    .bind(fill.name.as_str())
                    .bind(fill.password.expose_secret())
                    // As read: a write that bypassed the version trigger (triggers off) is
                    // caught here, so the MBG never gets credentials the row does not hold.
                    .bind(fill.name_was_stored.then_some(fill.name.as_str()))
                    .bind(
                        fill.password_was_stored
                            .then_some(fill.password.expose_secret()),
                    );
            }
            let ids = query
                .fetch_all(&mut *tx)
                .await
                .map_err(StoreError::Database)?;
            if own_changes == OwnChanges::Remove && !ids.is_empty() {
                let after = match self.backend {
                    Backend::Sqlite => "?".to_string(),
                    Backend::Postgres => format!("${}::BIGINT", ids.len() + 1),
                };
                let sql = format!(
                    "DELETE FROM extension_changes
                      WHERE extension_id IN (VALUES {}) AND seq > {after}",
                    values(self.backend, ids.len(), &["BIGINT"])
                );
                let mut query = sqlx::query(AssertSqlSafe(sql))
                    .persistent(self.backend.keeps_list_statements());
                for id in &ids {
                    query = query.bind(*id);
                }
                query
                    .bind(before)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::Database)?;
            }
            written.extend(ids);
        }
        tx.commit().await?;
        Ok(written)
    }

    /// Writes an outcome of a pass in one transaction. Returns `false` when the row changed
    /// after the plan was made (or is gone): its state is then left for the next pass.
    pub async fn write_outcome(&self, outcome: &OutcomeWrite) -> Result<bool> {
        let written = self
            .write_group(&[PassWrite::Outcome(outcome.clone())])
            .await?;
        Ok(written[0])
    }

    /// Writes `writes` in one transaction: all or none. One `bool` per write: for an outcome,
    /// whether its state was written (the row still had the planned version), and with it the
    /// changes it acknowledges removed; `true` for the others.
    ///
    /// A few multi-row statements per [`GROUP_CHUNK`] writes rather than three per outcome: on
    /// PostgreSQL every statement is a round trip, and those, not the MBG, bounded a pass.
    /// A group that names one extension twice is written statement by statement, in order.
    pub async fn write_group(&self, writes: &[PassWrite]) -> Result<Vec<bool>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = Transaction::begin(&self.pool, self.backend, Durability::Normal).await?;
        let mut seen = std::collections::HashSet::new();
        let distinct = writes.iter().all(|w| match w {
            PassWrite::Outcome(o) => seen.insert(o.extension_id),
            _ => true,
        });
        let mut written = Vec::with_capacity(writes.len());
        if distinct {
            for chunk in writes.chunks(GROUP_CHUNK) {
                written.extend(write_chunk(&mut tx, self.backend, self.fence(), chunk).await?);
            }
        } else {
            for write in writes {
                written.extend(
                    write_chunk(
                        &mut tx,
                        self.backend,
                        self.fence(),
                        std::slice::from_ref(write),
                    )
                    .await?,
                );
            }
        }
        tx.commit().await?;
        Ok(written)
    }
}

/// Writes per multi-row statement in [`Store::write_group`], at most; see [`FILL_CHUNK`].
const GROUP_CHUNK: usize = 100;

/// `rows` parenthesised tuples of placeholders, for a `VALUES` list: `?` on SQLite (see
/// `extensions::write_batch` for why), `$N::TYPE` on PostgreSQL, which cannot infer the types
/// of parameters in a `VALUES` list.
///
/// See [`Backend::keeps_list_statements`] for whether the statement is kept prepared.
fn values(backend: Backend, rows: usize, types: &[&str]) -> String {
    let mut next = 0;
    let tuples: Vec<String> = (0..rows)
        .map(|_| {
            let fields: Vec<String> = types
                .iter()
                .map(|ty| match backend {
                    Backend::Sqlite => "?".to_string(),
                    Backend::Postgres => {
                        next += 1;
                        format!("${next}::{ty}")
                    }
                })
                .collect();
            format!("({})", fields.join(", "))
        })
        .collect();
    tuples.join(", ")
}

/// A failed attempt of the engine's own (not a person's action) for one extension: the kind of
/// entry that repeats while an MBG is down, and is kept as a streak.
fn is_engine_failure(entry: &AuditEntry) -> bool {
    entry.actor.is_none() && entry.outcome != "ok" && entry.extension.is_some()
}

/// Counts each engine failure that repeats the newest entry of its extension (same action,
/// outcome and detail) as one more repeat of that entry, instead of a new row: an MBG down for
/// a week costs one row per extension, not one per retry. Returns the extensions so counted.
async fn extend_failure_streaks(
    conn: &mut AnyConnection,
    backend: Backend,
    audits: &[&AuditEntry],
) -> Result<std::collections::HashSet<String>> {
    let failures: Vec<&AuditEntry> = audits
        .iter()
        .copied()
        .filter(|a| is_engine_failure(a))
        .collect();
    if failures.is_empty() {
        return Ok(Default::default());
    }
    let sql = format!(
        "WITH failure (extension, action, outcome, detail, at) AS (VALUES {})
         UPDATE audit_log
            SET repeats = audit_log.repeats + 1, last_at = failure.at
           FROM failure
          WHERE audit_log.id = (SELECT max(newest.id) FROM audit_log newest
                                 WHERE newest.extension = failure.extension)
            AND audit_log.action = failure.action AND audit_log.outcome = failure.outcome
            AND audit_log.detail = failure.detail AND audit_log.actor IS NULL
         RETURNING audit_log.extension",
        values(
            backend,
            failures.len(),
            &["TEXT", "TEXT", "TEXT", "TEXT", "BIGINT"]
        )
    );
    let mut query = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql))
        .persistent(backend.keeps_list_statements());
    for entry in &failures {
        query = query
            .bind(entry.extension.as_deref())
            .bind(entry.action.as_str())
            .bind(entry.outcome.as_str())
            .bind(entry.detail.as_deref())
            .bind(entry.at);
    }
    Ok(query
        .fetch_all(&mut *conn)
        .await
        .map_err(StoreError::Database)?
        .into_iter()
        .collect())
}

/// A condition on an `UPDATE … FROM` of extensions: only while this process's epoch is the
/// current one, so that a deposed holder's writes land nowhere (as a stale version's do). An
/// integer of ours, so written into the statement; none when this process holds no lock.
fn fenced_by(fence: i64) -> String {
    match fence {
        0 => String::new(),
        epoch => format!(" AND EXISTS (SELECT 1 FROM pass_epoch WHERE id = 1 AND epoch = {epoch})"),
    }
}

/// The outcomes of a chunk, in one statement: the device fact of each (whatever the row's
/// version: it is a fact about the MBG), and its state where the row still has the planned
/// version. Returns the ids whose state was written.
async fn write_outcomes(
    conn: &mut AnyConnection,
    backend: Backend,
    fenced: &str,
    outcomes: &[&OutcomeWrite],
) -> Result<std::collections::HashSet<i64>> {
    if outcomes.is_empty() {
        return Ok(Default::default());
    }
    let sql =
        format!(
        "WITH outcome (id, version, has_fact, guid, state, last_error, attempts, next_attempt_at)
              AS (VALUES {})
         UPDATE extensions
            SET mbg_device_id =
                    CASE WHEN outcome.has_fact THEN outcome.guid ELSE extensions.mbg_device_id END,
                provisioned_by_us = CASE WHEN outcome.has_fact THEN outcome.guid IS NOT NULL
                                         ELSE extensions.provisioned_by_us END,
                state = CASE WHEN extensions.version = outcome.version THEN outcome.state
                             ELSE extensions.state END,
                last_error = CASE WHEN extensions.version = outcome.version
                                  THEN outcome.last_error ELSE extensions.last_error END,
                attempts = CASE WHEN extensions.version = outcome.version THEN outcome.attempts
                                ELSE extensions.attempts END,
                next_attempt_at = CASE WHEN extensions.version = outcome.version
                                       THEN outcome.next_attempt_at
                                       ELSE extensions.next_attempt_at END
           FROM outcome
          WHERE extensions.id = outcome.id
            AND (outcome.has_fact OR extensions.version = outcome.version){fenced}
         RETURNING extensions.id, extensions.version",
        values(
            backend,
            outcomes.len(),
            &["BIGINT", "BIGINT", "BOOLEAN", "TEXT", "TEXT", "TEXT", "BIGINT", "BIGINT"]
        )
    );
    let mut query = sqlx::query_as::<_, (i64, i64)>(AssertSqlSafe(sql))
        .persistent(backend.keeps_list_statements());
    for outcome in outcomes {
        let (has_fact, guid) = match &outcome.device {
            DeviceFact::Unchanged => (false, None),
            DeviceFact::Holds(guid) => (true, Some(guid.as_str())),
            DeviceFact::Gone => (true, None),
        };
        let update = &outcome.state;
        query = query
            .bind(outcome.extension_id)
            .bind(outcome.planned_version)
            .bind(has_fact)
            .bind(guid)
            .bind(update.state.as_str())
            .bind(update.last_error.as_deref())
            .bind(i64::from(update.attempts))
            .bind(update.next_attempt_at);
    }
    let rows = query.fetch_all(&mut *conn).await.map_err(|e| {
        // Which row a constraint refused is known only for a group of one; the outcome writer
        // writes a failed group again outcome by outcome, which names the guid.
        classify(e, |_| match outcomes {
            [one] => match &one.device {
                DeviceFact::Holds(guid) => guid.clone(),
                _ => String::new(),
            },
            _ => format!("(one of {} in this group)", outcomes.len()),
        })
    })?;
    let planned: std::collections::HashMap<i64, i64> = outcomes
        .iter()
        .map(|o| (o.extension_id, o.planned_version))
        .collect();
    Ok(rows
        .into_iter()
        .filter(|(id, version)| planned.get(id) == Some(version))
        .map(|(id, _)| id)
        .collect())
}

/// One chunk of a group, whose outcomes name distinct extensions.
pub(super) async fn write_chunk(
    conn: &mut AnyConnection,
    backend: Backend,
    fence: i64,
    chunk: &[PassWrite],
) -> Result<Vec<bool>> {
    let fenced = fenced_by(fence);
    let outcomes: Vec<&OutcomeWrite> = chunk
        .iter()
        .filter_map(|w| match w {
            PassWrite::Outcome(o) => Some(o),
            _ => None,
        })
        .collect();
    let written_ids = write_outcomes(conn, backend, &fenced, &outcomes).await?;
    let answered: Vec<i64> = outcomes
        .iter()
        .filter(|o| written_ids.contains(&o.extension_id))
        .flat_map(|o| o.acknowledges.iter().copied())
        .collect();
    for seqs in answered.chunks(GROUP_CHUNK) {
        let sql = format!(
            "DELETE FROM extension_changes WHERE seq IN (VALUES {})",
            values(backend, seqs.len(), &["BIGINT"])
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(backend.keeps_list_statements());
        for seq in seqs {
            query = query.bind(*seq);
        }
        query
            .execute(&mut *conn)
            .await
            .map_err(StoreError::Database)?;
    }
    let audits: Vec<&AuditEntry> = chunk
        .iter()
        .filter_map(|w| match w {
            PassWrite::Audit(a) => Some(a),
            _ => None,
        })
        .collect();
    let repeated = extend_failure_streaks(conn, backend, &audits).await?;
    let audits: Vec<&AuditEntry> = audits
        .into_iter()
        .filter(|a| {
            !(is_engine_failure(a) && a.extension.as_ref().is_some_and(|e| repeated.contains(e)))
        })
        .collect();
    if !audits.is_empty() {
        let sql = format!(
            "INSERT INTO audit_log (at, extension, action, outcome, detail, actor) VALUES {}",
            values(
                backend,
                audits.len(),
                &["BIGINT", "TEXT", "TEXT", "TEXT", "TEXT", "TEXT"]
            )
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(backend.keeps_list_statements());
        for entry in &audits {
            query = query
                .bind(entry.at)
                .bind(entry.extension.as_deref())
                .bind(entry.action.as_str())
                .bind(entry.outcome.as_str())
                .bind(entry.detail.as_deref())
                .bind(entry.actor.as_deref());
        }
        query
            .execute(&mut *conn)
            .await
            .map_err(StoreError::Database)?;
    }
    let released: Vec<i64> = chunk
        .iter()
        .filter_map(|w| match w {
            PassWrite::ForgetReleased(id) => Some(*id),
            _ => None,
        })
        .collect();
    if !released.is_empty() {
        let sql = format!(
            "DELETE FROM released_extensions WHERE id IN (VALUES {})",
            values(backend, released.len(), &["BIGINT"])
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(backend.keeps_list_statements());
        for id in &released {
            query = query.bind(*id);
        }
        query
            .execute(&mut *conn)
            .await
            .map_err(StoreError::Database)?;
    }
    Ok(chunk
        .iter()
        .map(|w| match w {
            PassWrite::Outcome(o) => written_ids.contains(&o.extension_id),
            _ => true,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ExtensionSpec;

    fn fill(extension: &Extension, name: &str) -> CredentialFill {
        CredentialFill::for_row(
            extension,
            name.into(),
            SecretString::from(format!("{name}-password")),
        )
    }

    /// Credentials drawn for a row as read land only on that version of it, never over stored
    /// ones; the write's own change records go with it, and nobody else's.
    #[tokio::test]
    async fn drawn_credentials_land_only_on_the_row_as_read() {
        let dir = tempfile::tempdir().unwrap();
        let (store, rows) = crate::store::testing::store_with_three_extensions(dir.path()).await;
        let pending_seqs = async || -> Vec<i64> {
            store
                .pending_changes(u32::MAX)
                .await
                .unwrap()
                .iter()
                .map(|c| c.seq)
                .collect()
        };
        let pending_before = pending_seqs().await;
        // 1002 changes after the pass read it; 1003 already has a name someone typed.
        let changed = ExtensionSpec {
            number: "1002".into(),
            node: "pbx1".into(),
            kind: None,
            use_remote_auth: Some(true),
            sip_password: Some(SecretString::from("changed")),
        };
        store
            .set_extension(&changed, &SecretString::from("pw"))
            .await
            .unwrap();
        let typed = store
            .fill_remote_credentials(rows[2].id, "typedname", &SecretString::from(""))
            .await
            .unwrap();
        let after_others = pending_seqs().await;

        let written = store
            .store_drawn_credentials(&[
                fill(&rows[0], "drawnone"),
                fill(&rows[1], "drawntwo"),
                fill(&typed, "drawnthree"),
            ])
            .await
            .unwrap();
        assert_eq!(
            written,
            vec![rows[0].id, typed.id],
            "1002 changed after the read"
        );

        let one = store.extension(rows[0].id).await.unwrap();
        assert_eq!(one.remote_auth_name.as_deref(), Some("drawnone"));
        assert_eq!(
            one.version,
            rows[0].version + 1,
            "the outcome is planned on this"
        );
        let two = store.extension(rows[1].id).await.unwrap();
        assert_eq!(two.remote_auth_name, None, "nothing lands on a changed row");
        let three = store.extension(typed.id).await.unwrap();
        assert_eq!(
            three.remote_auth_name.as_deref(),
            Some("typedname"),
            "a stored name is never replaced"
        );
        assert_eq!(
            three
                .remote_auth_password
                .as_ref()
                .map(|p| p.expose_secret().to_string()),
            Some("drawnthree-password".to_string()),
            "the empty field is filled"
        );
        let pending = pending_seqs().await;
        assert!(pending_before.len() == 3 && after_others.len() == 5);
        assert_eq!(
            pending, after_others,
            "the fill's own change records are gone; the earlier ones (answered by outcomes) stay"
        );

        // A password written with the triggers off (the version stays): the row is not as
        // read, and the drawn password must not reach the MBG as if it were stored.
        let (behind, _) = store
            .set_extension(
                &ExtensionSpec {
                    number: "1004".into(),
                    node: "pbx1".into(),
                    kind: None,
                    use_remote_auth: Some(true),
                    sip_password: None,
                },
                &SecretString::from("pw"),
            )
            .await
            .unwrap();
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP TRIGGER extensions_record_update;
             UPDATE extensions SET remote_auth_password = 'typed-behind-1' WHERE id = {}",
            behind.id
        )))
        .execute(&store.pool)
        .await
        .unwrap();
        assert_eq!(
            store.extension(behind.id).await.unwrap().version,
            behind.version
        );
        let written = store
            .store_drawn_credentials(&[fill(&behind, "drawnfour")])
            .await
            .unwrap();
        assert!(written.is_empty(), "not the row as read");
        let four = store.extension(behind.id).await.unwrap();
        assert_eq!(four.remote_auth_name, None);
        assert_eq!(
            four.remote_auth_password
                .as_ref()
                .map(|p| p.expose_secret().to_string()),
            Some("typed-behind-1".to_string())
        );
    }
}
