//! No secret may reach `Debug` output: a stray `{:?}` in a log line must not leak a password.

use mbg_provision::config::Config;
use mbg_provision::store::{ExtensionSpec, MbgSettings, TokenState};
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

    let settings = MbgSettings {
        consumer_id: Some("MiVOAppSuite".into()),
        consumer_secret: Some(SECRETS[2].into()),
        temp_token: Some(SECRETS[3].into()),
        temp_token_secret: Some(SECRETS[4].into()),
        access_token: Some(SECRETS[5].into()),
        access_token_secret: Some(SECRETS[6].into()),
        token_state: TokenState::Valid,
        ..MbgSettings::default()
    };
    store.save_mbg_settings(&settings).await.unwrap();
    let read = store.mbg_settings().await.unwrap();
    assert_no_secret(&format!("{settings:?} {read:?} {read:#?}"));

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
