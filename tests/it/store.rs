//! The store suite: one body per test, run on SQLite and on PostgreSQL.

use mbg_provision::store::{
    AuditEntry, Backend, ExtensionKind, ExtensionSpec, ExtensionState, MbgSettings, NewNode,
    NotFound, StateUpdate, Store, StoreError, TokenState,
};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{Connection, Executor};

use crate::support::TestDb;

crate::on_both_backends!(
    nodes_round_trip_and_constraints_name_the_field,
    extensions_are_created_changed_and_moved,
    bad_extensions_are_refused_with_the_field,
    changes_are_recorded_for_sql_written_by_others,
    acknowledging_removes_only_the_changes_handled,
    credentials_are_written_ahead_and_never_replaced,
    deleting_an_owned_extension_keeps_its_device_for_removal,
    state_settings_and_audit_round_trip,
    bulk_set_is_all_or_nothing,
    notifications_reach_a_postgres_listener,
    bad_rows_are_reported_and_the_others_carry_on,
    marking_a_bad_row_needs_no_decoding_and_repairs_our_own_columns,
    an_extension_on_a_missing_node_is_reported_not_dropped,
    a_node_address_change_is_a_change_to_each_of_its_extensions,
);

fn node(name: &str, address: &str) -> NewNode {
    NewNode {
        name: name.into(),
        address: address.into(),
        nat_address: None,
        nat_sip_port: None,
    }
}

fn spec(number: &str, node: &str) -> ExtensionSpec {
    ExtensionSpec {
        number: number.into(),
        node: node.into(),
        kind: None,
        use_remote_auth: None,
        sip_password: None,
    }
}

fn secret(text: &str) -> SecretString {
    SecretString::from(text)
}

async fn with_nodes(store: &Store) {
    store.add_node(&node("pbx1", "10.0.0.20")).await.unwrap();
    store.add_node(&node("pbx2", "10.0.0.21")).await.unwrap();
}

async fn nodes_round_trip_and_constraints_name_the_field(db: TestDb) {
    let store = &db.store;
    let added = store
        .add_node(&NewNode {
            name: "pbx1".into(),
            address: "10.0.0.20".into(),
            nat_address: Some("203.0.113.5".into()),
            nat_sip_port: Some(5062),
        })
        .await
        .unwrap();
    assert_eq!(store.node_by_name("pbx1").await.unwrap(), added);
    assert_eq!(added.nat_sip_port, Some(5062));
    store
        .add_node(&node("pbx2", "mivo2.example.com"))
        .await
        .unwrap();
    let names: Vec<String> = store
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["pbx1", "pbx2"]);

    let err = store
        .add_node(&node("pbx1", "10.0.0.99"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Duplicate {
                field: "node name",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "node name \"pbx1\" already exists");
    let err = store
        .add_node(&node("pbx3", "10.0.0.20"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Duplicate {
                field: "node address",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("10.0.0.20"));
    let err = store
        .add_node(&node("pbx3", "10.0.0.1; rm"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Invalid {
                field: "node address",
                ..
            }
        ),
        "{err:?}"
    );
    let mut bad_port = node("pbx3", "10.0.0.30");
    bad_port.nat_sip_port = Some(0);
    let err = store.add_node(&bad_port).await.unwrap_err();
    assert_eq!(err.field(), Some("node NAT SIP port"), "{err:?}");

    store
        .set_extension(&spec("1001", "pbx1"), &secret("pbx-pass"))
        .await
        .unwrap();
    let err = store.delete_node("pbx1").await.unwrap_err();
    assert!(
        matches!(err, StoreError::InUse { field: "node", .. }),
        "{err:?}"
    );
    store.delete_node("pbx2").await.unwrap();
    let err = store.delete_node("pbx2").await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(NotFound::Node(_))),
        "{err:?}"
    );
}

async fn extensions_are_created_changed_and_moved(db: TestDb) {
    let store = &db.store;
    with_nodes(store).await;
    let (created, is_new) = store
        .set_extension(&spec("1001", "pbx1"), &secret("generated-1"))
        .await
        .unwrap();
    assert!(is_new);
    assert_eq!(created.kind, ExtensionKind::Sip);
    assert!(!created.use_remote_auth);
    assert_eq!(created.state, ExtensionState::Idle);
    assert_eq!(created.sip_password.expose_secret(), "generated-1");
    assert_eq!(created.node_address, "10.0.0.20");

    let mut change = spec("1001", "pbx2");
    change.kind = Some(ExtensionKind::SipHotDesk);
    change.use_remote_auth = Some(true);
    let (moved, is_new) = store
        .set_extension(&change, &secret("unused"))
        .await
        .unwrap();
    assert!(!is_new);
    assert_eq!(moved.id, created.id);
    assert_eq!(moved.node_name, "pbx2");
    assert_eq!(moved.kind, ExtensionKind::SipHotDesk);
    assert!(moved.use_remote_auth);
    assert_eq!(
        moved.sip_password.expose_secret(),
        "generated-1",
        "kept, not regenerated"
    );
    assert!(moved.version > created.version);

    let mut given = spec("1002", "pbx1");
    given.sip_password = Some(secret("typed-by-admin"));
    let (with_password, _) = store
        .set_extension(&given, &secret("unused"))
        .await
        .unwrap();
    assert_eq!(with_password.sip_password.expose_secret(), "typed-by-admin");

    let numbers: Vec<String> = store
        .extensions()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.number)
        .collect();
    assert_eq!(numbers, ["1002", "1001"], "ordered by node, then number");
    assert_eq!(
        store.extension_by_number("1001").await.unwrap().id,
        created.id
    );
    store.delete_extension(created.id).await.unwrap();
    assert!(store.find_extension(created.id).await.unwrap().is_none());
    let err = store.extension_by_number("1001").await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(NotFound::Extension(_))),
        "{err:?}"
    );
}

async fn bad_extensions_are_refused_with_the_field(db: TestDb) {
    let store = &db.store;
    with_nodes(store).await;
    for number in ["", "12a", "12345678901", "+4420"] {
        let err = store
            .set_extension(&spec(number, "pbx1"), &secret("p"))
            .await
            .unwrap_err();
        assert_eq!(err.field(), Some("extension number"), "{number}: {err:?}");
    }
    let err = store
        .set_extension(&spec("1001", "nowhere"), &secret("p"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(NotFound::Node(ref n)) if n == "nowhere"));
    let mut empty = spec("1001", "pbx1");
    empty.sip_password = Some(secret(""));
    let err = store.set_extension(&empty, &secret("p")).await.unwrap_err();
    assert_eq!(err.field(), Some("SIP password"));
    assert!(
        store.extensions().await.unwrap().is_empty(),
        "nothing half-written"
    );

    // The database itself refuses what a foreign writer might try.
    store
        .set_extension(&spec("1001", "pbx1"), &secret("p"))
        .await
        .unwrap();
    let mut raw = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    for bad in [
        "UPDATE extensions SET kind = 'fax'",
        "UPDATE extensions SET number = '10a1'",
        "UPDATE extensions SET state = 'happy'",
        "UPDATE extensions SET node_id = 999",
    ] {
        assert!(raw.execute(bad).await.is_err(), "accepted: {bad}");
    }
    raw.close().await.unwrap();
}

async fn changes_are_recorded_for_sql_written_by_others(db: TestDb) {
    let store = &db.store;
    with_nodes(store).await;
    let (ext, _) = store
        .set_extension(&spec("1001", "pbx1"), &secret("p"))
        .await
        .unwrap();
    let inserted = store.pending_changes(100).await.unwrap();
    assert_eq!(inserted.len(), 1);
    assert_eq!(inserted[0].extension_id, ext.id);
    store
        .acknowledge_changes(&inserted.iter().map(|c| c.seq).collect::<Vec<_>>())
        .await
        .unwrap();

    // Another program (the phone system's page, a DBA) writes the row directly.
    let mut other = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    let switch_on = match store.backend() {
        Backend::Sqlite => [
            "UPDATE extensions SET use_remote_auth = 1 WHERE number = '1001'",
            "UPDATE extensions SET use_remote_auth = false WHERE number = '1001'",
            "UPDATE extensions SET use_remote_auth = true WHERE number = '1001'",
        ],
        Backend::Postgres => [
            "UPDATE extensions SET use_remote_auth = true WHERE number = '1001'",
            "UPDATE extensions SET use_remote_auth = '0' WHERE number = '1001'",
            "UPDATE extensions SET use_remote_auth = '1' WHERE number = '1001'",
        ],
    };
    for sql in switch_on {
        other.execute(sql).await.unwrap();
    }
    let after = store.extension(ext.id).await.unwrap();
    assert!(after.use_remote_auth);
    assert_eq!(after.version, ext.version + 3);
    let changes = store.pending_changes(100).await.unwrap();
    assert_eq!(changes.len(), 3);
    assert!(changes.iter().all(|c| c.extension_id == ext.id));
    assert!(
        changes.windows(2).all(|w| w[0].seq < w[1].seq),
        "in seq order"
    );

    // Writes that do not change what the MBG holds are not changes.
    other
        .execute("UPDATE extensions SET state = 'pending', attempts = 3, use_remote_auth = use_remote_auth")
        .await
        .unwrap();
    assert_eq!(store.pending_changes(100).await.unwrap().len(), 3);
    assert_eq!(
        store.extension(ext.id).await.unwrap().version,
        after.version
    );

    // Credentials, node and kind changes count; so does a delete.
    other
        .execute("UPDATE extensions SET remote_auth_name = 'alice01' WHERE number = '1001'")
        .await
        .unwrap();
    other
        .execute("UPDATE extensions SET sip_password = 'rotated' WHERE number = '1001'")
        .await
        .unwrap();
    other
        .execute("UPDATE extensions SET node_id = (SELECT id FROM nodes WHERE name = 'pbx2')")
        .await
        .unwrap();
    other
        .execute("UPDATE extensions SET kind = 'sip_hot_desk'")
        .await
        .unwrap();
    other.execute("DELETE FROM extensions").await.unwrap();
    assert_eq!(store.pending_changes(100).await.unwrap().len(), 8);
    assert_eq!(
        store.pending_changes(2).await.unwrap().len(),
        2,
        "limit honoured"
    );
    other.close().await.unwrap();
}

async fn acknowledging_removes_only_the_changes_handled(db: TestDb) {
    let store = &db.store;
    with_nodes(store).await;
    for number in ["1001", "1002", "1003"] {
        store
            .set_extension(&spec(number, "pbx1"), &secret("p"))
            .await
            .unwrap();
    }
    let changes = store.pending_changes(100).await.unwrap();
    assert_eq!(changes.len(), 3);
    store
        .acknowledge_changes(&[changes[0].seq, changes[2].seq])
        .await
        .unwrap();
    assert_eq!(store.pending_changes(100).await.unwrap(), vec![changes[1]]);
    // More than one statement's worth of placeholders.
    let many: Vec<i64> = (1..=1200).collect();
    store.acknowledge_changes(&many).await.unwrap();
    assert!(store.pending_changes(100).await.unwrap().is_empty());
}

async fn credentials_are_written_ahead_and_never_replaced(db: TestDb) {
    let store = &db.store;
    with_nodes(store).await;
    let (ext, _) = store
        .set_extension(&spec("1001", "pbx1"), &secret("p"))
        .await
        .unwrap();
    assert!(ext.remote_auth_name.is_none() && ext.remote_auth_password.is_none());

    let filled = store
        .fill_remote_credentials(ext.id, "first0name", &secret("first-password-123"))
        .await
        .unwrap();
    assert_eq!(filled.remote_auth_name.as_deref(), Some("first0name"));
    assert_eq!(
        filled
            .remote_auth_password
            .as_ref()
            .unwrap()
            .expose_secret(),
        "first-password-123"
    );
    let again = store
        .fill_remote_credentials(ext.id, "second0name", &secret("second-password-456"))
        .await
        .unwrap();
    assert_eq!(again.remote_auth_name.as_deref(), Some("first0name"));
    assert_eq!(
        again.remote_auth_password.as_ref().unwrap().expose_secret(),
        "first-password-123"
    );

    // An empty string written by another program counts as "not set".
    let mut other = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    other
        .execute("UPDATE extensions SET remote_auth_password = ''")
        .await
        .unwrap();
    let refilled = store
        .fill_remote_credentials(ext.id, "third0name", &secret("third-password-789"))
        .await
        .unwrap();
    assert_eq!(refilled.remote_auth_name.as_deref(), Some("first0name"));
    assert_eq!(
        refilled
            .remote_auth_password
            .as_ref()
            .unwrap()
            .expose_secret(),
        "third-password-789"
    );
    other.close().await.unwrap();

    store
        .record_device(ext.id, Some("guid-1"), true)
        .await
        .unwrap();
    let recorded = store.extension(ext.id).await.unwrap();
    assert_eq!(recorded.mbg_device_id.as_deref(), Some("guid-1"));
    assert!(recorded.provisioned_by_us);
    store.record_device(ext.id, None, true).await.unwrap();
    let cleared = store.extension(ext.id).await.unwrap();
    assert!(cleared.mbg_device_id.is_none() && !cleared.provisioned_by_us);
}

async fn deleting_an_owned_extension_keeps_its_device_for_removal(db: TestDb) {
    let store = &db.store;
    with_nodes(store).await;
    let (ours, _) = store
        .set_extension(&spec("1001", "pbx1"), &secret("p"))
        .await
        .unwrap();
    let (theirs, _) = store
        .set_extension(&spec("1002", "pbx1"), &secret("p"))
        .await
        .unwrap();
    store
        .record_device(ours.id, Some("guid-ours"), true)
        .await
        .unwrap();
    store
        .record_device(theirs.id, Some("guid-adopted-not"), false)
        .await
        .unwrap();
    store.delete_extension(ours.id).await.unwrap();
    store.delete_extension(theirs.id).await.unwrap();
    let released = store.released_devices().await.unwrap();
    assert_eq!(released.len(), 1, "only a device we own is ours to remove");
    assert_eq!(released[0].mbg_device_id, "guid-ours");
    assert_eq!(released[0].number, "1001");
    store.forget_released_device("guid-ours").await.unwrap();
    assert!(store.released_devices().await.unwrap().is_empty());
}

async fn state_settings_and_audit_round_trip(db: TestDb) {
    let store = &db.store;
    with_nodes(store).await;
    let (ext, _) = store
        .set_extension(&spec("1001", "pbx1"), &secret("p"))
        .await
        .unwrap();
    let update = StateUpdate {
        state: ExtensionState::Failed,
        last_error: Some("MBG answered 503".into()),
        attempts: 3,
        next_attempt_at: Some(1_900_000_000),
    };
    store.set_state(ext.id, &update).await.unwrap();
    let failed = store.extension(ext.id).await.unwrap();
    assert_eq!(failed.state, ExtensionState::Failed);
    assert_eq!(failed.last_error.as_deref(), Some("MBG answered 503"));
    assert_eq!(failed.attempts, 3);
    assert_eq!(failed.next_attempt_at, Some(1_900_000_000));
    assert_eq!(failed.version, ext.version, "bookkeeping is not a change");

    assert_eq!(
        store.mbg_settings().await.unwrap().token_state,
        TokenState::None
    );
    let settings = MbgSettings {
        base_url: Some("https://10.0.0.5/mslrest".into()),
        consumer_id: Some("MiVOAppSuite".into()),
        consumer_secret: Some(secret("shared-secret")),
        access_token: Some(secret("or7z4alsrn2+pyuwm33djq==")),
        access_token_secret: Some(secret("tok+secret/==")),
        token_expires_at: Some(1_900_000_000),
        token_state: TokenState::Valid,
        ..MbgSettings::default()
    };
    store.save_mbg_settings(&settings).await.unwrap();
    let read = store.mbg_settings().await.unwrap();
    assert_eq!(read.token_state, TokenState::Valid);
    assert_eq!(read.consumer_id.as_deref(), Some("MiVOAppSuite"));
    assert_eq!(
        read.access_token.unwrap().expose_secret(),
        "or7z4alsrn2+pyuwm33djq=="
    );
    assert_eq!(
        read.access_token_secret.unwrap().expose_secret(),
        "tok+secret/=="
    );
    assert_eq!(read.token_expires_at, Some(1_900_000_000));
    assert!(read.temp_token.is_none());
    let renewed = MbgSettings {
        token_expires_at: Some(1_931_536_000),
        ..store.mbg_settings().await.unwrap()
    };
    store.save_mbg_settings(&renewed).await.unwrap();
    assert_eq!(
        store.mbg_settings().await.unwrap().token_expires_at,
        Some(1_931_536_000),
        "saved over, not beside"
    );

    for (at, action) in [(10, "create"), (20, "delete")] {
        store
            .audit(&AuditEntry {
                at,
                extension: Some("1001".into()),
                action: action.into(),
                outcome: "ok".into(),
                detail: None,
            })
            .await
            .unwrap();
    }
    let log = store.audit_log(10).await.unwrap();
    assert_eq!(
        log.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["delete", "create"]
    );
}

async fn bulk_set_is_all_or_nothing(db: TestDb) {
    let store = &db.store;
    with_nodes(store).await;
    let mut counter = 0;
    let mut next_password = || {
        counter += 1;
        secret(&format!("generated-{counter}"))
    };
    let good = [spec("1001", "pbx1"), spec("1002", "pbx2")];
    assert_eq!(
        store
            .set_extensions(&good, &mut next_password)
            .await
            .unwrap(),
        2
    );
    let before = store.extensions().await.unwrap();

    let mut change = spec("1001", "pbx1");
    change.use_remote_auth = Some(true);
    let bad = [change, spec("1003", "pbx1"), spec("1004", "gone")];
    let (index, err) = store
        .set_extensions(&bad, &mut next_password)
        .await
        .unwrap_err();
    assert_eq!(index, 2);
    assert!(
        matches!(err, StoreError::NotFound(NotFound::Node(_))),
        "{err:?}"
    );
    let after = store.extensions().await.unwrap();
    assert_eq!(after.len(), before.len(), "1003 not created");
    assert!(!after.iter().any(|e| e.use_remote_auth), "1001 not changed");
    assert_eq!(
        store.pending_changes(100).await.unwrap().len(),
        2,
        "no change rows left behind"
    );
}

async fn notifications_reach_a_postgres_listener(db: TestDb) {
    if db.store.backend() != Backend::Postgres {
        return; // SQLite has no notifications; the daemon polls it.
    }
    let store = &db.store;
    with_nodes(store).await;
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener.listen("extension_changes").await.unwrap();
    let (ext, _) = store
        .set_extension(&spec("1001", "pbx1"), &secret("p"))
        .await
        .unwrap();
    let note = tokio::time::timeout(std::time::Duration::from_secs(10), listener.recv())
        .await
        .expect("notification within 10 s")
        .unwrap();
    assert_eq!(note.channel(), "extension_changes");
    assert_eq!(note.payload(), ext.id.to_string());
}

/// A connection as another program has it: on SQLite with CHECKs and foreign keys off (as a DBA
/// can), on PostgreSQL with the constraints dropped.
async fn foreign_writer(db: &TestDb) -> sqlx::AnyConnection {
    let mut other = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    let setup: &[&str] = match db.store.backend() {
        Backend::Sqlite => &[
            "PRAGMA ignore_check_constraints = ON",
            "PRAGMA foreign_keys = OFF",
        ],
        Backend::Postgres => &[
            "ALTER TABLE extensions DROP CONSTRAINT extensions_state_valid",
            "ALTER TABLE extensions DROP CONSTRAINT extensions_kind_valid",
            "ALTER TABLE extensions DROP CONSTRAINT extensions_number_valid",
            "ALTER TABLE extensions DROP CONSTRAINT extensions_node_id_fkey",
            "ALTER TABLE extensions ALTER COLUMN sip_password DROP NOT NULL",
        ],
    };
    for sql in setup {
        other.execute(*sql).await.unwrap();
    }
    other
}

async fn bad_rows_are_reported_and_the_others_carry_on(db: TestDb) {
    let store = &db.store;
    with_nodes(store).await;
    let mut ids = std::collections::HashMap::new();
    for number in ["1001", "1002", "1003", "1004", "1005", "1006"] {
        let (e, _) = store
            .set_extension(&spec(number, "pbx1"), &secret("p"))
            .await
            .unwrap();
        ids.insert(number, e.id);
    }
    let mut other = foreign_writer(&db).await;
    let backend_specific = match store.backend() {
        // INTEGER affinity keeps text that is not a number as text.
        Backend::Sqlite => (
            "UPDATE extensions SET version = 'new' WHERE number = '1006'",
            "version",
        ),
        Backend::Postgres => (
            "UPDATE extensions SET sip_password = NULL WHERE number = '1006'",
            "sip_password",
        ),
    };
    for sql in [
        "UPDATE extensions SET state = 'bogus', remote_auth_password = 'Leak-Pass-1' WHERE number = '1001'",
        "UPDATE extensions SET attempts = -3 WHERE number = '1002'",
        "UPDATE extensions SET kind = 'fax' WHERE number = '1004'",
        "UPDATE extensions SET number = '10a5' WHERE number = '1005'",
        backend_specific.0,
    ] {
        other.execute(sql).await.unwrap();
    }
    other.close().await.unwrap();

    let rows = store.extension_rows().await.unwrap();
    let good: Vec<&str> = rows.good.iter().map(|e| e.number.as_str()).collect();
    assert_eq!(good, ["1003"], "the good row is still there");
    let mut bad: Vec<(i64, Option<&str>, &str)> = rows
        .bad
        .iter()
        .map(|b| (b.id, b.number.as_deref(), b.column))
        .collect();
    bad.sort();
    assert_eq!(
        bad,
        [
            (ids["1001"], Some("1001"), "state"),
            (ids["1002"], Some("1002"), "attempts"),
            (ids["1004"], Some("1004"), "kind"),
            (ids["1005"], Some("10a5"), "number"),
            (ids["1006"], Some("1006"), backend_specific.1),
        ]
    );
    let text = rows
        .bad
        .iter()
        .map(|b| format!("{b} {b:?}"))
        .collect::<Vec<_>>()
        .join("\n");
    for expected in [
        format!(
            "extension row id {} (number \"1001\"): column state",
            ids["1001"]
        ),
        "\"bogus\"".to_string(),
        "\"fax\"".to_string(),
        "-3".to_string(),
    ] {
        assert!(text.contains(&expected), "{expected} missing from {text}");
    }
    assert!(!text.contains("Leak-Pass"), "a secret in a report: {text}");

    // Callers that want every row or nothing get an error that names the row.
    let err = store.extensions().await.unwrap_err();
    assert!(matches!(err, StoreError::BadRow(_)), "{err:?}");
    assert!(err.to_string().contains("extension row id"), "{err}");
    let err = store.extension(ids["1001"]).await.unwrap_err();
    assert!(err.to_string().contains("column state"), "{err}");
}

async fn marking_a_bad_row_needs_no_decoding_and_repairs_our_own_columns(db: TestDb) {
    let store = &db.store;
    with_nodes(store).await;
    let (state, _) = store
        .set_extension(&spec("1001", "pbx1"), &secret("p"))
        .await
        .unwrap();
    let (attempts, _) = store
        .set_extension(&spec("1002", "pbx1"), &secret("p"))
        .await
        .unwrap();
    let (kind, _) = store
        .set_extension(&spec("1003", "pbx1"), &secret("p"))
        .await
        .unwrap();
    let mut other = foreign_writer(&db).await;
    for sql in [
        "UPDATE extensions SET state = 'bogus' WHERE number = '1001'",
        "UPDATE extensions SET attempts = -3, next_attempt_at = 99 WHERE number = '1002'",
        "UPDATE extensions SET kind = 'fax' WHERE number = '1003'",
    ] {
        other.execute(sql).await.unwrap();
    }
    other.close().await.unwrap();
    let changes_before = store.pending_changes(100).await.unwrap().len();

    let rows = store.extension_rows().await.unwrap();
    assert_eq!(rows.bad.len(), 3);
    for bad in &rows.bad {
        store.mark_bad_row(bad.id, &bad.to_string()).await.unwrap();
    }

    // The flag repairs what is ours (state, retry bookkeeping) ...
    let rows = store.extension_rows().await.unwrap();
    let repaired: Vec<i64> = rows.good.iter().map(|e| e.id).collect();
    assert_eq!(repaired, [state.id, attempts.id]);
    for e in &rows.good {
        assert_eq!(e.state, ExtensionState::NeedsAttention);
        assert_eq!(e.attempts, 0);
        assert_eq!(e.next_attempt_at, None);
        assert!(
            e.last_error
                .as_deref()
                .is_some_and(|m| m.contains(&format!("extension row id {}", e.id))),
            "{:?}",
            e.last_error
        );
    }
    // ... and leaves the rest for a human, still reported.
    assert_eq!(rows.bad.len(), 1);
    assert_eq!((rows.bad[0].id, rows.bad[0].column), (kind.id, "kind"));
    let mut raw = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    let (flagged, last_error): (String, String) =
        sqlx::query_as("SELECT state, last_error FROM extensions WHERE id = $1")
            .bind(kind.id)
            .fetch_one(&mut raw)
            .await
            .unwrap();
    raw.close().await.unwrap();
    assert_eq!(flagged, "needs_attention");
    assert!(last_error.contains("column kind"), "{last_error}");
    assert_eq!(
        store.pending_changes(100).await.unwrap().len(),
        changes_before,
        "flagging is not a change to what the MBG holds"
    );
}

async fn an_extension_on_a_missing_node_is_reported_not_dropped(db: TestDb) {
    let store = &db.store;
    with_nodes(store).await;
    store
        .set_extension(&spec("1001", "pbx1"), &secret("p"))
        .await
        .unwrap();
    let (orphan, _) = store
        .set_extension(&spec("2001", "pbx2"), &secret("p"))
        .await
        .unwrap();
    store
        .record_device(orphan.id, Some("guid-2001"), true)
        .await
        .unwrap();
    let mut other = foreign_writer(&db).await;
    other
        .execute("DELETE FROM nodes WHERE name = 'pbx2'")
        .await
        .unwrap();
    other.close().await.unwrap();

    let rows = store.extension_rows().await.unwrap();
    assert_eq!(rows.good.len(), 1);
    assert_eq!(rows.good[0].number, "1001");
    assert_eq!(rows.bad.len(), 1, "{:?}", rows.bad);
    let bad = &rows.bad[0];
    assert_eq!(
        (bad.id, bad.number.as_deref(), bad.column),
        (orphan.id, Some("2001"), "node_id")
    );
    assert_eq!(bad.mbg_device_id.as_deref(), Some("guid-2001"));
    assert!(
        bad.reason
            .contains(&format!("node {} does not exist", orphan.node_id)),
        "{bad}"
    );
    // Not "gone": a row that is gone would have its SIP user removed.
    let err = store.find_extension(orphan.id).await.unwrap_err();
    assert!(matches!(err, StoreError::BadRow(_)), "{err:?}");
}

async fn a_node_address_change_is_a_change_to_each_of_its_extensions(db: TestDb) {
    let store = &db.store;
    with_nodes(store).await;
    let mut on_pbx1 = Vec::new();
    for number in ["1001", "1002"] {
        let (e, _) = store
            .set_extension(&spec(number, "pbx1"), &secret("p"))
            .await
            .unwrap();
        on_pbx1.push(e);
    }
    let (elsewhere, _) = store
        .set_extension(&spec("2001", "pbx2"), &secret("p"))
        .await
        .unwrap();
    let recorded: Vec<i64> = store
        .pending_changes(100)
        .await
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect();
    store.acknowledge_changes(&recorded).await.unwrap();

    let mut listener = match store.backend() {
        Backend::Postgres => {
            let mut l = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
            l.listen("extension_changes").await.unwrap();
            Some(l)
        }
        Backend::Sqlite => None,
    };
    let mut other = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    other
        .execute("UPDATE nodes SET address = '10.0.0.99' WHERE name = 'pbx1'")
        .await
        .unwrap();

    let mut changed: Vec<i64> = store
        .pending_changes(100)
        .await
        .unwrap()
        .iter()
        .map(|c| c.extension_id)
        .collect();
    changed.sort();
    assert_eq!(changed, [on_pbx1[0].id, on_pbx1[1].id], "one change each");
    for before in &on_pbx1 {
        let after = store.extension(before.id).await.unwrap();
        assert_eq!(after.node_address, "10.0.0.99");
        assert!(after.version > before.version, "{}", after.number);
    }
    assert_eq!(
        store.extension(elsewhere.id).await.unwrap().version,
        elsewhere.version,
        "another node's extension is untouched"
    );
    if let Some(listener) = listener.as_mut() {
        let mut woken = Vec::new();
        for _ in 0..2 {
            let note = tokio::time::timeout(std::time::Duration::from_secs(10), listener.recv())
                .await
                .expect("notification within 10 s")
                .unwrap();
            woken.push(note.payload().parse::<i64>().unwrap());
        }
        woken.sort();
        assert_eq!(woken, changed);
    }

    // What does not reach the MBG is not a change: the name, NAT settings, the same address.
    for sql in [
        "UPDATE nodes SET name = 'pbx-one' WHERE name = 'pbx1'",
        "UPDATE nodes SET nat_address = '203.0.113.7', nat_sip_port = 5062",
        "UPDATE nodes SET address = address",
    ] {
        other.execute(sql).await.unwrap();
    }
    other.close().await.unwrap();
    assert_eq!(store.pending_changes(100).await.unwrap().len(), 2);
}
