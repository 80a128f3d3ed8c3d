//! The console's accounts, sessions and sign-in failures (migration 0008). Passwords and session
//! ids arrive here already hashed: the store never sees either in clear.

use sqlx::Row;

use super::error::quote;
use super::{Result, Store, StoreError, now};

/// What a console user may do. The server checks it on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads every page; no reveal.
    Viewer,
    /// Also changes extensions, reveals (audited) and rotates.
    Operator,
    /// Also nodes, the token and users.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "{} is not a role: viewer, operator or admin",
                quote(other)
            )),
        }
    }
}

/// A console account. Its password hash stays out of `Debug`.
#[derive(Clone)]
pub struct ConsoleUser {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub password_hash: String,
    pub created_at: i64,
}

impl std::fmt::Debug for ConsoleUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleUser")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// What a request does with a session: a person's page or form keeps it from its idle
/// timeout; the live updates an open page polls for by itself do not, or a page left open
/// would never time out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionUse {
    Activity,
    Poll,
}

/// A signed-in browser, found by the hash of its id.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: ConsoleUser,
    pub created_at: i64,
    pub last_seen_at: i64,
}

const USER_COLUMNS: &str = "u.id, u.name, u.role, u.password_hash, u.created_at";

fn user(row: &sqlx::any::AnyRow) -> Result<ConsoleUser> {
    let role: String = row.try_get("role").map_err(StoreError::Database)?;
    Ok(ConsoleUser {
        id: row.try_get("id").map_err(StoreError::Database)?,
        name: row.try_get("name").map_err(StoreError::Database)?,
        role: role.parse().map_err(|reason| StoreError::Invalid {
            field: "console user role",
            reason,
        })?,
        password_hash: row.try_get("password_hash").map_err(StoreError::Database)?,
        created_at: row.try_get("created_at").map_err(StoreError::Database)?,
    })
}

fn no_user(name: &str) -> StoreError {
    StoreError::Invalid {
        field: "console user",
        reason: format!(
            "no console user named {} (see `console user list`)",
            quote(name)
        ),
    }
}

fn last_admin(name: &str) -> StoreError {
    StoreError::InUse {
        field: "console user",
        reason: format!("{} is the last admin: add another admin first", quote(name)),
    }
}

/// The rules for a console user's name: what the sign-in form and the audit log show.
pub fn validate_user_name(name: &str) -> Result<()> {
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            field: "username",
            reason: format!(
                "{} must be 1 to 64 letters, digits, '.', '_', '@' or '-'",
                quote(name)
            ),
        })
    }
}

impl Store {
    pub async fn add_console_user(
        &self,
        name: &str,
        role: Role,
        password_hash: &str,
    ) -> Result<ConsoleUser> {
        validate_user_name(name)?;
        sqlx::query(
            "INSERT INTO console_users (name, role, password_hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(name)
        .bind(role.as_str())
        .bind(password_hash)
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db)
                if db.constraint() == Some("console_users_name_unique")
                    || db.message().contains("console_users.name") =>
            {
                StoreError::Duplicate {
                    field: "console user",
                    value: quote(name),
                }
            }
            _ => StoreError::Database(e),
        })?;
        self.console_user(name).await?.ok_or_else(|| no_user(name))
    }

    pub async fn console_user(&self, name: &str) -> Result<Option<ConsoleUser>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM console_users u WHERE u.name = $1");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::Database)?
            .map(|row| user(&row))
            .transpose()
    }

    pub async fn console_users(&self) -> Result<Vec<ConsoleUser>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM console_users u ORDER BY u.name");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::Database)?
            .iter()
            .map(user)
            .collect()
    }

    /// Whether the console can be used: it stays closed until an admin exists.
    pub async fn has_console_admin(&self) -> Result<bool> {
        let admins: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM console_users WHERE role = 'admin'")
                .fetch_one(&self.pool)
                .await
                .map_err(StoreError::Database)?;
        Ok(admins > 0)
    }

    /// A new password ends every session of the user but `keep` (the one that changed it).
    pub async fn set_console_password(
        &self,
        name: &str,
        password_hash: &str,
        keep: Option<&str>,
    ) -> Result<()> {
        let user = self
            .console_user(name)
            .await?
            .ok_or_else(|| no_user(name))?;
        let mut tx = super::transaction::Transaction::begin(
            &self.pool,
            self.backend,
            super::transaction::Durability::Normal,
        )
        .await?;
        sqlx::query("UPDATE console_users SET password_hash = $2 WHERE id = $1")
            .bind(user.id)
            .bind(password_hash)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::Database)?;
        sqlx::query("DELETE FROM console_sessions WHERE user_id = $1 AND id_hash <> $2")
            .bind(user.id)
            .bind(keep.unwrap_or(""))
            .execute(&mut *tx)
            .await
            .map_err(StoreError::Database)?;
        tx.commit().await
    }

    /// Changes a role; the last admin cannot be demoted.
    pub async fn set_console_role(&self, name: &str, role: Role) -> Result<()> {
        let done = sqlx::query(
            "UPDATE console_users SET role = $2
              WHERE name = $1
                AND (role <> 'admin' OR $2 = 'admin'
                     OR (SELECT COUNT(*) FROM console_users WHERE role = 'admin') > 1)",
        )
        .bind(name)
        .bind(role.as_str())
        .execute(&self.pool)
        .await
        .map_err(StoreError::Database)?;
        if done.rows_affected() == 1 {
            return Ok(());
        }
        match self.console_user(name).await? {
            None => Err(no_user(name)),
            Some(_) => Err(last_admin(name)),
        }
    }

    /// Removes a user and its sessions; the last admin cannot be removed.
    pub async fn remove_console_user(&self, name: &str) -> Result<()> {
        let done = sqlx::query(
            "DELETE FROM console_users
              WHERE name = $1
                AND (role <> 'admin' OR (SELECT COUNT(*) FROM console_users WHERE role = 'admin') > 1)",
        )
        .bind(name)
        .execute(&self.pool)
        .await
        .map_err(StoreError::Database)?;
        if done.rows_affected() == 1 {
            return Ok(());
        }
        match self.console_user(name).await? {
            None => Err(no_user(name)),
            Some(_) => Err(last_admin(name)),
        }
    }

    pub async fn create_console_session(&self, id_hash: &str, user_id: i64) -> Result<()> {
        let at = now();
        sqlx::query(
            "INSERT INTO console_sessions (id_hash, user_id, created_at, last_seen_at) VALUES ($1, $2, $3, $3)",
        )
        .bind(id_hash)
        .bind(user_id)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(StoreError::Database)?;
        Ok(())
    }

    /// The session with this id hash, if it is alive by the given limits (seconds); a session
    /// past either is deleted. A live one is marked seen now.
    pub async fn console_session(
        &self,
        id_hash: &str,
        idle_secs: i64,
        absolute_secs: i64,
        by: SessionUse,
    ) -> Result<Option<Session>> {
        let sql = format!(
            "SELECT {USER_COLUMNS}, s.created_at AS session_created_at, s.last_seen_at
               FROM console_sessions s JOIN console_users u ON u.id = s.user_id
              WHERE s.id_hash = $1"
        );
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::Database)?
        else {
            return Ok(None);
        };
        let session = Session {
            user: user(&row)?,
            created_at: row
                .try_get("session_created_at")
                .map_err(StoreError::Database)?,
            last_seen_at: row.try_get("last_seen_at").map_err(StoreError::Database)?,
        };
        let at = now();
        if at - session.last_seen_at > idle_secs || at - session.created_at > absolute_secs {
            self.end_console_session(id_hash).await?;
            return Ok(None);
        }
        if by == SessionUse::Poll {
            return Ok(Some(session));
        }
        sqlx::query("UPDATE console_sessions SET last_seen_at = $2 WHERE id_hash = $1")
            .bind(id_hash)
            .bind(at)
            .execute(&self.pool)
            .await
            .map_err(StoreError::Database)?;
        Ok(Some(session))
    }

    pub(crate) async fn end_console_session(&self, id_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.pool)
            .await
            .map_err(StoreError::Database)?;
        Ok(())
    }

    /// Records a failed sign-in and returns how many this (name, client) pair had since `since`,
    /// this one included. Failures older than a day are dropped on the way.
    pub async fn record_login_failure(&self, name: &str, client: &str, since: i64) -> Result<i64> {
        let at = now();
        sqlx::query("DELETE FROM console_login_failures WHERE failed_at < $1")
            .bind(at - 86_400)
            .execute(&self.pool)
            .await
            .map_err(StoreError::Database)?;
        sqlx::query(
            "INSERT INTO console_login_failures (name, client, failed_at) VALUES ($1, $2, $3)",
        )
        .bind(name)
        .bind(client)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(StoreError::Database)?;
        self.login_failures(name, client, since).await
    }

    pub async fn login_failures(&self, name: &str, client: &str, since: i64) -> Result<i64> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM console_login_failures WHERE name = $1 AND client = $2 AND failed_at >= $3",
        )
        .bind(name)
        .bind(client)
        .bind(since)
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::Database)
    }

    pub async fn clear_login_failures(&self, name: &str, client: &str) -> Result<()> {
        sqlx::query("DELETE FROM console_login_failures WHERE name = $1 AND client = $2")
            .bind(name)
            .bind(client)
            .execute(&self.pool)
            .await
            .map_err(StoreError::Database)?;
        Ok(())
    }
}
