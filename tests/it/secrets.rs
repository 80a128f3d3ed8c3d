//! No secret may reach `Debug` output: a stray `{:?}` in a log line must not leak a password.

use mbg_provision::config::Config;
use mbg_provision::store::{ExtensionSpec, TemporaryToken, TokenState};
use secrecy::SecretString;

use crate::support::TestDb;

const SECRETS: &[&str] = &[
    "pbx-sip-PASSWORD-1",
    "remote-PASSWORD-2",
    "consumer-SECRET-3",
    "temp-TOKEN-4",
    "temp-token-SECRET-5",
    "access-TOKEN-6",
    "access-token-SECRET-7",
    "db-PASSWORD-8",
];

fn assert_no_secret(debug: &str) {
    for secret in SECRETS {
        assert!(!debug.contains(secret), "{secret} leaked into: {debug}");
    }
}

#[tokio::test]
async fn debug_output_never_shows_a_secret() {
    let db = TestDb::sqlite().await;
    let store = &db.store;
    store
        .add_node(&mbg_provision::store::NewNode {
            name: "pbx1".into(),
            address: "10.0.0.20".into(),
            nat_address: None,
            nat_sip_port: None,
        })
        .await
        .unwrap();
    let spec = ExtensionSpec {
        number: "1001".into(),
        node: "pbx1".into(),
        kind: None,
        use_remote_auth: Some(true),
        sip_password: Some(SecretString::from(SECRETS[0])),
    };
    assert_no_secret(&format!("{spec:?}"));
    let (ext, _) = store
        .set_extension(&spec, &SecretString::from("x"))
        .await
        .unwrap();
    let ext = store
        .fill_remote_credentials(ext.id, "alice0remote", &SecretString::from(SECRETS[1]))
        .await
        .unwrap();
    let debug = format!("{ext:?} {ext:#?}");
    assert!(
        debug.contains("alice0remote"),
        "the user name is not a secret: {debug}"
    );
    assert_no_secret(&debug);

    let temporary = TemporaryToken {
        base_url: "https://10.0.0.5/mslrest".into(),
        consumer_name: "provisioning".into(),
        consumer_id: "MiVOAppSuite".into(),
        consumer_secret: SECRETS[2].into(),
        token: SECRETS[3].into(),
        secret: SECRETS[4].into(),
        created_at: 1_800_000_000,
    };
    store.save_temporary_token(&temporary, false).await.unwrap();
    let generation = store.mbg_settings().await.unwrap().token_generation;
    assert!(
        store
            .save_access_token(
                generation,
                temporary.created_at,
                &SECRETS[5].into(),
                &SECRETS[6].into(),
                temporary.created_at,
                1_900_000_000,
            )
            .await
            .unwrap()
    );
    store.save_temporary_token(&temporary, false).await.unwrap();
    let read = store.mbg_settings().await.unwrap();
    assert_eq!(read.token_state, TokenState::Valid);
    assert_no_secret(&format!("{temporary:?} {read:?} {read:#?}"));

    let mut config = Config::default();
    config.database.url = format!("postgres://prov:{}@db.example.com/pbx", SECRETS[7])
        .parse()
        .unwrap();
    assert_no_secret(&format!("{config:?} {config:#?} {}", config.database.url));
    assert_no_secret(&format!("{store:?}"));
}

#[cfg(unix)]
#[tokio::test]
async fn a_new_sqlite_database_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::sqlite().await;
    let path = db.url.trim_start_matches("sqlite://");
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
}

/// PostgreSQL puts the whole failing row, passwords included, into a constraint violation's
/// DETAIL. The error as this program prints it (Display, which anyhow and the logs use) must
/// carry only the message. Checked against the real server: the DETAIL does hold the password.
#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "PostgreSQL: set TEST_POSTGRES_URL (CI does)"
)]
async fn a_constraint_violation_is_printed_without_the_row() {
    let Some(db) = TestDb::postgres("a_constraint_violation_is_printed_without_the_row").await
    else {
        return;
    };
    let store = &db.store;
    store
        .add_node(&mbg_provision::store::NewNode {
            name: "pbx1".into(),
            address: "10.0.0.20".into(),
            nat_address: None,
            nat_sip_port: None,
        })
        .await
        .unwrap();
    store
        .set_extension(
            &ExtensionSpec {
                number: "1001".into(),
                node: "pbx1".into(),
                kind: None,
                use_remote_auth: Some(true),
                sip_password: Some(SecretString::from("pbx-sip-PASSWORD-1")),
            },
            &SecretString::from("unused"),
        )
        .await
        .unwrap();
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    let error = sqlx::query(
        "UPDATE extensions SET remote_auth_password = 'remote-PASSWORD-2', kind = 'bad' WHERE number = '1001'",
    )
    .execute(&mut connection)
    .await
    .unwrap_err();
    let detail = error
        .as_database_error()
        .and_then(|e| e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>())
        .and_then(|e| e.detail())
        .unwrap_or_default()
        .to_string();
    assert!(
        detail.contains("remote-PASSWORD-2"),
        "the risk is real: {detail}"
    );
    // As `main` prints an error that ends the program: anyhow's Debug, every cause's Display.
    let printed = format!(
        "{:?}",
        anyhow::Error::new(mbg_provision::store::StoreError::Database(error))
    );
    assert!(printed.contains("extensions_kind_valid"), "{printed}");
    assert_no_secret(&printed);
}
