//! `mbg_settings`: one targeted, conditional write per step of the token's life, never a
//! rewrite of the whole row from a copy read before a network call (which let a slow
//! `token renew` put back the token that a concurrent `token verify` had just replaced).

use secrecy::{ExposeSecret, SecretString};
use sqlx::Row;

use super::transaction::{Durability, Transaction};
use super::{
    AuditEntry, MbgSettings, Result, Store, StoreError, TemporaryToken, get_parsed, get_secret, now,
};

/// We talk to one MBG; its settings are the row with this id.
const MBG_SETTINGS_ID: i64 = 1;

impl Store {
    /// This database's random name (see `migrations/*/0007_database_id.sql`): what `/healthz`
    /// and `preflight` compare, never the URL.
    pub async fn database_id(&self) -> Result<String> {
        sqlx::query_scalar("SELECT database_id FROM installation WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::Database)
    }

    /// The MBG's settings, secrets decrypted; all empty before the first `token request`.
    pub async fn mbg_settings(&self) -> Result<MbgSettings> {
        let row = sqlx::query(
            "SELECT base_url, internal_address, ca_certificate, consumer_name, consumer_id,
                    consumer_secret, temp_token, temp_token_secret, temp_token_created_at,
                    access_token, access_token_secret, token_issued_at, token_expires_at,
                    token_state, token_rejected_at, token_rejected_reason, token_generation
               FROM mbg_settings WHERE id = $1",
        )
        .bind(MBG_SETTINGS_ID)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::Database)?;
        let Some(row) = row else {
            return Ok(MbgSettings::default());
        };
        let secret = |column: &'static str| -> Result<Option<SecretString>> {
            get_secret(&row, column)
                .map_err(StoreError::Database)?
                .map(|sealed| self.secret_key.open(column, sealed.expose_secret()))
                .transpose()
                .map_err(StoreError::from)
        };
        let read = || -> Result<MbgSettings, sqlx::Error> {
            Ok(MbgSettings {
                base_url: row.try_get("base_url")?,
                internal_address: row.try_get("internal_address")?,
                ca_certificate: row.try_get("ca_certificate")?,
                consumer_name: row.try_get("consumer_name")?,
                consumer_id: row.try_get("consumer_id")?,
                consumer_secret: None,
                temp_token: None,
                temp_token_secret: None,
                temp_token_created_at: row.try_get("temp_token_created_at")?,
                access_token: None,
                access_token_secret: None,
                token_issued_at: row.try_get("token_issued_at")?,
                token_expires_at: row.try_get("token_expires_at")?,
                token_state: get_parsed(&row, "token_state")?,
                token_rejected_at: row.try_get("token_rejected_at")?,
                token_rejected_reason: row.try_get("token_rejected_reason")?,
                token_generation: row.try_get("token_generation")?,
            })
        };
        Ok(MbgSettings {
            consumer_secret: secret("consumer_secret")?,
            temp_token: secret("temp_token")?,
            temp_token_secret: secret("temp_token_secret")?,
            access_token: secret("access_token")?,
            access_token_secret: secret("access_token_secret")?,
            ..read().map_err(StoreError::Database)?
        })
    }

    /// Step 1 of the exchange: the consumer and the temporary token. A working access token is
    /// kept (it serves until the new one is verified), unless `discard_access_token`: then its
    /// secrets, which this key cannot open, are dropped with it.
    pub async fn save_temporary_token(
        &self,
        t: &TemporaryToken,
        discard_access_token: bool,
    ) -> Result<()> {
        let key = &self.secret_key;
        let consumer_secret = key.seal("consumer_secret", &t.consumer_secret)?;
        let token = key.seal("temp_token", &t.token)?;
        let secret = key.seal("temp_token_secret", &t.secret)?;
        let mut tx = Transaction::begin(&self.pool, self.backend, Durability::Normal).await?;
        if discard_access_token {
            sqlx::query(
                "UPDATE mbg_settings
                    SET access_token = NULL, access_token_secret = NULL, token_issued_at = NULL,
                        token_expires_at = NULL, token_state = 'none', token_rejected_at = NULL,
                        token_rejected_reason = NULL, token_generation = token_generation + 1
                  WHERE id = $1",
            )
            .bind(MBG_SETTINGS_ID)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::Database)?;
        }
        sqlx::query(
            "INSERT INTO mbg_settings (id, base_url, consumer_name, consumer_id, consumer_secret,
                    temp_token, temp_token_secret, temp_token_created_at, token_state, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9)
             ON CONFLICT (id) DO UPDATE SET
                    base_url = excluded.base_url, consumer_name = excluded.consumer_name,
                    consumer_id = excluded.consumer_id,
                    consumer_secret = excluded.consumer_secret, temp_token = excluded.temp_token,
                    temp_token_secret = excluded.temp_token_secret,
                    temp_token_created_at = excluded.temp_token_created_at,
                    token_state = CASE WHEN mbg_settings.token_state = 'valid'
                                       THEN 'valid' ELSE 'pending' END,
                    updated_at = excluded.updated_at",
        )
        .bind(MBG_SETTINGS_ID)
        .bind(&t.base_url)
        .bind(&t.consumer_name)
        .bind(&t.consumer_id)
        .bind(consumer_secret)
        .bind(token)
        .bind(secret)
        .bind(t.created_at)
        .bind(now())
        .execute(&mut *tx)
        .await
        .map_err(StoreError::Database)?;
        tx.commit().await?;
        Ok(())
    }

    /// Step 3: the access token that replaced the temporary token issued at
    /// `temp_token_created_at`, when `generation` is still the stored one. Clears the temporary
    /// token and any rejection. `false` when another process stored a token meanwhile: nothing
    /// is written.
    pub async fn save_access_token(
        &self,
        generation: i64,
        temp_token_created_at: i64,
        token: &SecretString,
        secret: &SecretString,
        issued_at: i64,
        expires_at: i64,
    ) -> Result<bool> {
        let token = self.secret_key.seal("access_token", token)?;
        let secret = self.secret_key.seal("access_token_secret", secret)?;
        let done = sqlx::query(
            "UPDATE mbg_settings
                SET access_token = $1, access_token_secret = $2, token_issued_at = $3,
                    token_expires_at = $4, token_state = 'valid', temp_token = NULL,
                    temp_token_secret = NULL, temp_token_created_at = NULL,
                    token_rejected_at = NULL, token_rejected_reason = NULL,
                    token_generation = token_generation + 1, updated_at = $5
              WHERE id = $6 AND token_generation = $7 AND temp_token_created_at = $8",
        )
        .bind(token)
        .bind(secret)
        .bind(issued_at)
        .bind(expires_at)
        .bind(now())
        .bind(MBG_SETTINGS_ID)
        .bind(generation)
        .bind(temp_token_created_at)
        .execute(&self.pool)
        .await
        .map_err(StoreError::Database)?;
        Ok(done.rows_affected() == 1)
    }

    /// The MBG accepted the access token of `generation` and gave (or we assume) this expiry:
    /// a renewal, by the API or recorded by hand. `false`, writing nothing, when a newer token
    /// was stored meanwhile.
    pub async fn save_token_expiry(&self, generation: i64, expires_at: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE mbg_settings
                SET token_expires_at = $1,
                    token_state = CASE WHEN token_state = 'pending' THEN 'pending' ELSE 'valid' END,
                    token_rejected_at = NULL, token_rejected_reason = NULL, updated_at = $2
              WHERE id = $3 AND token_generation = $4 AND access_token IS NOT NULL",
        )
        .bind(expires_at)
        .bind(now())
        .bind(MBG_SETTINGS_ID)
        .bind(generation)
        .execute(&self.pool)
        .await
        .map_err(StoreError::Database)?;
        Ok(done.rows_affected() == 1)
    }

    /// The MBG answered 401 to the access token of `generation`: whatever its stored expiry
    /// says, it no longer works. `reason` is shown by `token status` (no secret in it). `false`,
    /// writing nothing, when a newer token was stored meanwhile (it may well work). A temporary
    /// token waiting for approval keeps the state `pending`: approving it is the way out.
    pub async fn mark_token_rejected(
        &self,
        generation: i64,
        at: i64,
        reason: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE mbg_settings
                SET token_state = CASE WHEN token_state = 'pending' THEN 'pending'
                                       ELSE 'rejected' END,
                    token_rejected_at = $1, token_rejected_reason = $2, updated_at = $3
              WHERE id = $4 AND token_generation = $5 AND access_token IS NOT NULL",
        )
        .bind(at)
        .bind(reason)
        .bind(now())
        .bind(MBG_SETTINGS_ID)
        .bind(generation)
        .execute(&self.pool)
        .await
        .map_err(StoreError::Database)?;
        Ok(done.rows_affected() == 1)
    }

    /// Appends to the audit log. Callers pass no secrets; the log is for humans and auditors.
    pub async fn audit(&self, entry: &AuditEntry) -> Result<()> {
        self.write_group(&[super::PassWrite::Audit(entry.clone())])
            .await
            .map(|_| ())
    }

    /// Deletes the engine's own audit entries last seen before `engine_before` and every entry
    /// last seen before `person_before` (a reveal is a person's, whoever wrote it), a batch
    /// at a time so that no transaction holds the log for long. Returns how many went.
    pub async fn prune_audit(&self, engine_before: i64, person_before: i64) -> Result<u64> {
        const BATCH: i64 = 5_000;
        let mut deleted = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM audit_log WHERE id IN (
                   SELECT id FROM audit_log
                    WHERE at < $1 AND COALESCE(last_at, at) < $1
                      AND ((actor IS NULL AND action <> 'reveal') OR COALESCE(last_at, at) < $2)
                    LIMIT $3)",
            )
            .bind(engine_before.max(person_before))
            .bind(person_before)
            .bind(BATCH)
            .execute(&self.pool)
            .await
            .map_err(StoreError::Database)?;
            deleted += done.rows_affected();
            if done.rows_affected() < BATCH as u64 {
                return Ok(deleted);
            }
        }
    }

    /// The newest audit entry whose action is one of `actions`, if any.
    pub async fn latest_audit_of(&self, actions: &[&str]) -> Result<Option<AuditEntry>> {
        let placeholders: Vec<String> = (1..=actions.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT at, actor, extension, action, outcome, detail, repeats, last_at FROM audit_log
              WHERE action IN ({}) ORDER BY id DESC LIMIT 1",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for action in actions {
            query = query.bind(*action);
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::Database)?;
        Ok(audit_entries(&rows)?.into_iter().next())
    }

    /// The newest `limit` audit entries, newest first.
    pub async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT at, actor, extension, action, outcome, detail, repeats, last_at FROM audit_log ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::Database)?;
        audit_entries(&rows)
    }

    /// The newest `limit` audit entries of one extension, newest first.
    pub async fn audit_of(&self, number: &str, limit: u32) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT at, actor, extension, action, outcome, detail, repeats, last_at FROM audit_log
              WHERE extension = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(number)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::Database)?;
        audit_entries(&rows)
    }
}

impl Store {
    /// One page of the audit log, newest first, before the entry `before` (an id: keyset
    /// paging), narrowed to an extension, an actor and an action when given. Returns each
    /// entry with its id, for the next page.
    pub async fn audit_page(
        &self,
        extension: Option<&str>,
        actor: Option<&str>,
        action: Option<&str>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<(i64, AuditEntry)>> {
        let mut conditions = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        for (column, value) in [
            ("extension", extension),
            ("actor", actor),
            ("action", action),
        ] {
            if let Some(value) = value {
                binds.push(value.to_string());
                conditions.push(format!("{column} = ${}", binds.len()));
            }
        }
        if before.is_some() {
            conditions.push(format!("id < ${}", binds.len() + 1));
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT id, at, actor, extension, action, outcome, detail, repeats, last_at FROM audit_log{filter}
              ORDER BY id DESC LIMIT {}",
            limit.max(1)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for value in binds {
            query = query.bind(value);
        }
        if let Some(before) = before {
            query = query.bind(before);
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::Database)?;
        let ids = rows
            .iter()
            .map(|row| row.try_get::<i64, _>("id"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::Database)?;
        Ok(ids.into_iter().zip(audit_entries(&rows)?).collect())
    }
}

fn audit_entries(rows: &[sqlx::any::AnyRow]) -> Result<Vec<AuditEntry>> {
    rows.iter()
        .map(|row| {
            Ok(AuditEntry {
                at: row.try_get("at")?,
                actor: row.try_get("actor")?,
                extension: row.try_get("extension")?,
                action: row.try_get("action")?,
                outcome: row.try_get("outcome")?,
                detail: row.try_get("detail")?,
                repeats: u32::try_from(row.try_get::<i64, _>("repeats")?).unwrap_or(u32::MAX),
                last_at: row.try_get("last_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::Database)
}
