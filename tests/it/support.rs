//! Real databases for tests: a SQLite file in a temp folder, or a fresh PostgreSQL database
//! created on the server named by `TEST_POSTGRES_URL` and dropped when the test ends.

use std::sync::atomic::{AtomicU32, Ordering};

use mbg_provision::config::DatabaseUrl;
use mbg_provision::secrets::SecretKey;
use mbg_provision::sim::Device;
use mbg_provision::store::{Backend, Store};
use sqlx::{Connection, Executor};

pub const POSTGRES_ENV: &str = "TEST_POSTGRES_URL";

/// The binary under test, with this process's environment minus every `MBG_PROVISION_*`
/// variable, fixed when the command is made: the configuration tests set such variables in this
/// process for a moment (figment's `Jail`), and a child another test starts meanwhile must not
/// inherit them.
pub fn binary() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mbg-provision"));
    command.env_clear().envs(
        std::env::vars_os()
            .filter(|(name, _)| !name.to_string_lossy().starts_with("MBG_PROVISION_")),
    );
    command
}

/// Asserts that the database records every SIP user in `devices`, each against the extension
/// it serves (its ICP-side name is the extension number): a SIP user made but not recorded is
/// one the ownership rule would never clean up. Returns what is recorded, guid to number.
pub async fn assert_every_sip_user_recorded(
    store: &Store,
    devices: &[Device],
) -> std::collections::HashMap<String, String> {
    let recorded: std::collections::HashMap<String, String> = store
        .extensions()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| Some((e.mbg_device_id?, e.number)))
        .collect();
    for device in devices {
        assert_eq!(
            recorded.get(&device.guid),
            Some(&device.icpside_username),
            "SIP user {} of {} is not recorded against its extension",
            device.guid,
            device.icpside_username
        );
    }
    recorded
}

pub struct TestDb {
    pub store: Store,
    /// The URL a second, independent connection can use.
    pub url: String,
    /// The key that seals the token secrets; for SQLite, where the binary looks by default.
    pub key_file: std::path::PathBuf,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<PostgresDb>,
}

struct PostgresDb {
    admin_url: String,
    name: String,
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut db = TestDb::sqlite_in(dir.path()).await;
        db._dir = Some(dir);
        db
    }

    /// A SQLite database in `dir`, which the caller keeps (a mount of its own, say).
    pub async fn sqlite_in(dir: &std::path::Path) -> TestDb {
        let url = format!("sqlite://{}", dir.join("test.db").display());
        let key_file = dir.join("test.key");
        let store = Store::open(&url.parse::<DatabaseUrl>().unwrap())
            .await
            .expect("open SQLite store")
            .with_secret_key(SecretKey::new(&key_file));
        TestDb {
            store,
            url,
            key_file,
            _dir: None,
            postgres: None,
        }
    }

    /// A fresh database on the test server, or `None` (said loudly) when none is configured.
    pub async fn postgres(test: &str) -> Option<TestDb> {
        let Ok(admin_url) = std::env::var(POSTGRES_ENV) else {
            eprintln!(
                "SKIPPED {test} on PostgreSQL: {POSTGRES_ENV} is not set \
                 (e.g. postgres://postgres@127.0.0.1:5432/test); CI always sets it"
            );
            return None;
        };
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "mbgp_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            chrono::Utc::now().timestamp_subsec_nanos()
        );
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("{POSTGRES_ENV} is set but unreachable: {e}"));
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create test database");
        admin.close().await.ok();
        let mut url = url::Url::parse(&admin_url).expect("TEST_POSTGRES_URL is a URL");
        url.set_path(&name);
        let url = url.to_string();
        let dir = tempfile::tempdir().expect("temp dir");
        let key_file = dir.path().join("mbg-provision.key");
        let store = Store::open(&url.parse::<DatabaseUrl>().unwrap())
            .await
            .expect("open PostgreSQL store")
            .with_secret_key(SecretKey::new(&key_file));
        assert_eq!(store.backend(), Backend::Postgres);
        Some(TestDb {
            store,
            url,
            key_file,
            _dir: Some(dir),
            postgres: Some(PostgresDb { admin_url, name }),
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(db) = self.postgres.take() else {
            return;
        };
        // Drop runs inside the test's runtime; a helper thread with its own runtime can block.
        // `WITH (FORCE)` ends the pool's connections, which belong to the test's runtime.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    if let Ok(mut admin) = sqlx::PgConnection::connect(&db.admin_url).await {
                        let _ = admin
                            .execute(sqlx::AssertSqlSafe(format!(
                                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                                db.name
                            )))
                            .await;
                    }
                })
        })
        .join();
    }
}

/// Generates one `#[tokio::test]` per backend for each named `async fn(TestDb)` in scope, so
/// every store test body runs on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    // Long rounds: ignored by a plain `cargo test`, run by `.ci/run` with `--ignored`.
    (long: $($test:ident),* $(,)?) => {
        mod sqlite_long {
            $(
                #[tokio::test]
                #[ignore = "long rounds: run with --ignored (.ci/run does)"]
                async fn $test() {
                    super::$test($crate::support::TestDb::sqlite().await).await;
                }
            )*
        }
        mod postgres_long {
            $(
                #[tokio::test]
                #[cfg_attr(postgres_tests, ignore = "long rounds: run with --ignored (.ci/run does)")]
                #[cfg_attr(not(postgres_tests), ignore = "PostgreSQL: set TEST_POSTGRES_URL (CI does)")]
                async fn $test() {
                    if let Some(db) = $crate::support::TestDb::postgres(stringify!($test)).await {
                        super::$test(db).await;
                    }
                }
            )*
        }
    };
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test($crate::support::TestDb::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                #[cfg_attr(not(postgres_tests), ignore = "PostgreSQL: set TEST_POSTGRES_URL (CI does)")]
                async fn $test() {
                    if let Some(db) = $crate::support::TestDb::postgres(stringify!($test)).await {
                        super::$test(db).await;
                    }
                }
            )*
        }
    };
}
