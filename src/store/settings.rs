use sqlx::Row;

use super::{
    AuditEntry, MbgSettings, Result, Store, StoreError, expose, get_parsed, get_secret, now,
};

/// We talk to one MBG; its settings are the row with this id.
const MBG_SETTINGS_ID: i64 = 1;

impl Store {
    /// The MBG's settings; all empty before the first `token request`.
    pub async fn mbg_settings(&self) -> Result<MbgSettings> {
        let row = sqlx::query(
            "SELECT base_url, internal_address, ca_certificate, consumer_name, consumer_id,
                    consumer_secret, temp_token, temp_token_secret, temp_token_created_at,
                    access_token, access_token_secret, token_issued_at, token_expires_at,
                    token_state
               FROM mbg_settings WHERE id = $1",
        )
        .bind(MBG_SETTINGS_ID)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::Database)?;
        let Some(row) = row else {
            return Ok(MbgSettings::default());
        };
        let read = || -> Result<MbgSettings, sqlx::Error> {
            Ok(MbgSettings {
                base_url: row.try_get("base_url")?,
                internal_address: row.try_get("internal_address")?,
                ca_certificate: row.try_get("ca_certificate")?,
                consumer_name: row.try_get("consumer_name")?,
                consumer_id: row.try_get("consumer_id")?,
                consumer_secret: get_secret(&row, "consumer_secret")?,
                temp_token: get_secret(&row, "temp_token")?,
                temp_token_secret: get_secret(&row, "temp_token_secret")?,
                temp_token_created_at: row.try_get("temp_token_created_at")?,
                access_token: get_secret(&row, "access_token")?,
                access_token_secret: get_secret(&row, "access_token_secret")?,
                token_issued_at: row.try_get("token_issued_at")?,
                token_expires_at: row.try_get("token_expires_at")?,
                token_state: get_parsed(&row, "token_state")?,
            })
        };
        read().map_err(StoreError::Database)
    }

    /// Replaces the MBG's settings as a whole, in one statement, so a token and its secret are
    /// never stored half-updated.
    pub async fn save_mbg_settings(&self, s: &MbgSettings) -> Result<()> {
        sqlx::query(
            "INSERT INTO mbg_settings (id, base_url, internal_address, ca_certificate,
                    consumer_name, consumer_id, consumer_secret, temp_token, temp_token_secret,
                    temp_token_created_at, access_token, access_token_secret, token_issued_at,
                    token_expires_at, token_state, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
             ON CONFLICT (id) DO UPDATE SET
                    base_url = excluded.base_url, internal_address = excluded.internal_address,
                    ca_certificate = excluded.ca_certificate,
                    consumer_name = excluded.consumer_name, consumer_id = excluded.consumer_id,
                    consumer_secret = excluded.consumer_secret, temp_token = excluded.temp_token,
                    temp_token_secret = excluded.temp_token_secret,
                    temp_token_created_at = excluded.temp_token_created_at,
                    access_token = excluded.access_token,
                    access_token_secret = excluded.access_token_secret,
                    token_issued_at = excluded.token_issued_at,
                    token_expires_at = excluded.token_expires_at,
                    token_state = excluded.token_state, updated_at = excluded.updated_at",
        )
        .bind(MBG_SETTINGS_ID)
        .bind(s.base_url.as_deref())
        .bind(s.internal_address.as_deref())
        .bind(s.ca_certificate.as_deref())
        .bind(s.consumer_name.as_deref())
        .bind(s.consumer_id.as_deref())
        .bind(expose(&s.consumer_secret))
        .bind(expose(&s.temp_token))
        .bind(expose(&s.temp_token_secret))
        .bind(s.temp_token_created_at)
        .bind(expose(&s.access_token))
        .bind(expose(&s.access_token_secret))
        .bind(s.token_issued_at)
        .bind(s.token_expires_at)
        .bind(s.token_state.as_str())
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(StoreError::Database)?;
        Ok(())
    }

    /// Appends to the audit log. Callers pass no secrets; the log is for humans and auditors.
    pub async fn audit(&self, entry: &AuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, extension, action, outcome, detail)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(entry.at)
        .bind(entry.extension.as_deref())
        .bind(&entry.action)
        .bind(&entry.outcome)
        .bind(entry.detail.as_deref())
        .execute(&self.pool)
        .await
        .map_err(StoreError::Database)?;
        Ok(())
    }

    /// The newest `limit` audit entries, newest first.
    pub async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT at, extension, action, outcome, detail FROM audit_log ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::Database)?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    at: row.try_get("at")?,
                    extension: row.try_get("extension")?,
                    action: row.try_get("action")?,
                    outcome: row.try_get("outcome")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::Database)
    }
}
