//! The store suite: one body per test, run on SQLite and on PostgreSQL.

use mbg_provision::store::{
    AuditEntry, Backend, ExtensionKind, ExtensionSpec, ExtensionState, NewNode, NotFound,
    SessionUse, StateUpdate, Store, StoreError, TemporaryToken, TokenState,
};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{AssertSqlSafe, Connection, Executor};

use crate::support::TestDb;

crate::on_both_backends!(
    nodes_round_trip_and_constraints_name_the_field,
    extensions_are_created_changed_and_moved,
    bad_extensions_are_refused_with_the_field,
    changes_are_recorded_for_sql_written_by_others,
    each_column_the_mbg_holds_and_only_those_bumps_the_version,
    acknowledging_removes_only_the_changes_handled,
    credentials_are_written_ahead_and_never_replaced,
    deleting_an_owned_extension_keeps_its_device_for_removal,
    state_settings_and_audit_round_trip,
    bulk_set_is_all_or_nothing,
    a_large_import_is_batched_and_records_each_change_once,
    a_bulk_set_applies_specs_in_order,
    notifications_reach_a_postgres_listener,
    bad_rows_are_reported_and_the_others_carry_on,
    marking_a_bad_row_needs_no_decoding_and_repairs_our_own_columns,
    an_extension_on_a_missing_node_is_reported_not_dropped,
    a_node_address_change_is_a_change_to_each_of_its_extensions,
    one_sip_user_belongs_to_one_row,
    a_deleted_row_keeps_the_credentials_that_prove_its_sip_user,
    outcome_writes_follow_the_planned_version,
    a_node_is_changed_field_by_field,
    the_database_id_is_random_and_stays,
    console_accounts_keep_an_admin_and_sessions_end_when_they_should,
    the_console_list_pages_by_number_with_a_prefix,
    a_repeated_failure_is_one_entry_and_old_entries_are_pruned_by_kind,
    typed_credentials_replace_a_settled_rows_in_the_same_save_that_ticks_the_box,
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

/// Clears the change log, so that a test sees only the changes it makes next.
async fn acknowledge_all(store: &Store) {
    let recorded: Vec<i64> = store
        .pending_changes(u32::MAX)
        .await
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect();
    store.acknowledge_changes(&recorded).await.unwrap();
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

/// The version is what every outcome write is conditioned on: each of the seven columns the
/// MBG holds bumps it (PostgreSQL's trigger names them since migration 13; a column left out
/// would let a stale outcome land), and the pass's own bookkeeping columns do not.
async fn each_column_the_mbg_holds_and_only_those_bumps_the_version(db: TestDb) {
    let store = &db.store;
    with_nodes(store).await;
    let (ext, _) = store
        .set_extension(&spec("1001", "pbx1"), &secret("p"))
        .await
        .unwrap();
    let mut other = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    let flag_on = match store.backend() {
        Backend::Sqlite => "use_remote_auth = 1",
        Backend::Postgres => "use_remote_auth = true",
    };
    let mut version = ext.version;
    for set in [
        "node_id = (SELECT id FROM nodes WHERE name = 'pbx2')",
        "number = '1002'",
        "kind = 'sip_hot_desk'",
        "sip_password = 'rotated'",
        flag_on,
        "remote_auth_name = 'alice01'",
        "remote_auth_password = 'Secret-123456'",
    ] {
        other
            .execute(AssertSqlSafe(format!(
                "UPDATE extensions SET {set} WHERE id = {}",
                ext.id
            )))
            .await
            .unwrap();
        let now = store.extension(ext.id).await.unwrap().version;
        assert_eq!(now, version + 1, "SET {set}");
        version = now;
    }
    let bookkeeping = match store.backend() {
        Backend::Sqlite => "provisioned_by_us = 1",
        Backend::Postgres => "provisioned_by_us = true",
    };
    for set in [
        "mbg_device_id = 'guid-1'",
        bookkeeping,
        "state = 'failed'",
        "last_error = 'refused'",
        "attempts = 3",
        "next_attempt_at = 12345",
        "remote_auth_name = remote_auth_name",
    ] {
        other
            .execute(AssertSqlSafe(format!(
                "UPDATE extensions SET {set} WHERE id = {}",
                ext.id
            )))
            .await
            .unwrap();
        assert_eq!(
            store.extension(ext.id).await.unwrap().version,
            version,
            "SET {set}"
        );
    }
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
    if store.backend() == Backend::Postgres {
        // 1,000 or more acknowledged at once: the table is vacuumed there and then, so that
        // the next change queries do not walk the dead rows until autovacuum comes by.
        let mut db_connection = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let started = std::time::Instant::now();
        loop {
            let vacuums: i64 = sqlx::query_scalar(
                "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'extension_changes'",
            )
            .fetch_one(&mut db_connection)
            .await
            .unwrap();
            if vacuums > 0 {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "extension_changes was not vacuumed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
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
    let released = store.released().await.unwrap();
    assert_eq!(released.len(), 1, "only a device we own is ours to remove");
    assert_eq!(released[0].mbg_device_id.as_deref(), Some("guid-ours"));
    assert_eq!(released[0].number, "1001");
    store.forget_released(released[0].id).await.unwrap();
    assert!(store.released().await.unwrap().is_empty());
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
    exchange(
        store,
        "or7z4alsrn2+pyuwm33djq==",
        "tok+secret/==",
        1_900_000_000,
    )
    .await;
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
    assert!(
        store
            .save_token_expiry(read.token_generation, 1_931_536_000)
            .await
            .unwrap()
    );
    assert_eq!(
        store.mbg_settings().await.unwrap().token_expires_at,
        Some(1_931_536_000),
        "saved over, not beside"
    );

    for (at, action) in [(10, "create"), (20, "delete")] {
        store
            .audit(&AuditEntry {
                at,
                actor: Some("os:root".into()),
                extension: Some("1001".into()),
                action: action.into(),
                outcome: "ok".into(),
                detail: None,
                repeats: 1,
                last_at: None,
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

/// Thousands of rows: more than one batch of the bulk write, so that all-or-nothing covers
/// batches already written when the bad row is found.
async fn a_large_import_is_batched_and_records_each_change_once(db: TestDb) {
    const ROWS: usize = 5_000;
    let store = &db.store;
    with_nodes(store).await;
    let mut counter = 0;
    let mut next_password = || {
        counter += 1;
        secret(&format!("generated-{counter}"))
    };
    let numbers: Vec<String> = (0..ROWS).map(|i| (100_000 + i).to_string()).collect();
    let specs: Vec<ExtensionSpec> = numbers
        .iter()
        .enumerate()
        .map(|(i, number)| {
            let mut s = spec(number, if i % 2 == 0 { "pbx1" } else { "pbx2" });
            if i % 7 == 0 {
                s.kind = Some(ExtensionKind::SipHotDesk);
            }
            if i % 5 == 0 {
                s.use_remote_auth = Some(true);
            }
            s
        })
        .collect();
    assert_eq!(
        store
            .set_extensions(&specs, &mut next_password)
            .await
            .unwrap(),
        ROWS
    );
    let all = store.extensions().await.unwrap();
    assert_eq!(all.len(), ROWS);
    let by_number: std::collections::HashMap<&str, &mbg_provision::store::Extension> =
        all.iter().map(|e| (e.number.as_str(), e)).collect();
    for (i, number) in numbers.iter().enumerate() {
        let e = by_number[number.as_str()];
        assert_eq!(e.node_name, if i % 2 == 0 { "pbx1" } else { "pbx2" });
        let kind = if i % 7 == 0 {
            ExtensionKind::SipHotDesk
        } else {
            ExtensionKind::Sip
        };
        assert_eq!(e.kind, kind, "{number}");
        assert_eq!(e.use_remote_auth, i % 5 == 0, "{number}");
        assert_eq!(e.state, ExtensionState::Idle);
    }
    let passwords: std::collections::HashSet<&str> =
        all.iter().map(|e| e.sip_password.expose_secret()).collect();
    assert_eq!(passwords.len(), ROWS, "each new extension its own password");
    let changes = store.pending_changes(1_000_000).await.unwrap();
    assert_eq!(changes.len(), ROWS, "one change per extension created");

    // The same file again: restated, nothing changed, no change recorded.
    assert_eq!(
        store
            .set_extensions(&specs, &mut next_password)
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.pending_changes(1_000_000).await.unwrap().len(), ROWS);
    let again = store.extensions().await.unwrap();
    assert!(
        all.iter().zip(&again).all(|(a, b)| a.version == b.version
            && a.sip_password.expose_secret() == b.sip_password.expose_secret()),
        "nothing rewritten"
    );

    // A subset changed (remote on for every third row that had it off): only those get a change.
    let mut changed_ids = std::collections::HashSet::new();
    let update: Vec<ExtensionSpec> = numbers
        .iter()
        .enumerate()
        .map(|(i, number)| {
            let mut s = spec(number, if i % 2 == 0 { "pbx1" } else { "pbx2" });
            if i % 3 == 0 && i % 5 != 0 {
                s.use_remote_auth = Some(true);
                changed_ids.insert(by_number[number.as_str()].id);
            } else if i % 11 == 0 {
                s.use_remote_auth = Some(i % 5 == 0); // restates what is stored
            }
            s
        })
        .collect();
    assert_eq!(
        store
            .set_extensions(&update, &mut next_password)
            .await
            .unwrap(),
        0
    );
    let changes = store.pending_changes(1_000_000).await.unwrap();
    let new_changes: std::collections::HashSet<i64> =
        changes[ROWS..].iter().map(|c| c.extension_id).collect();
    assert_eq!(changes.len(), ROWS + changed_ids.len());
    assert_eq!(new_changes, changed_ids, "exactly the changed rows");
    let updated = store.extensions().await.unwrap();
    for e in &updated {
        let before = by_number[e.number.as_str()];
        assert_eq!(e.kind, before.kind, "kind left alone: {}", e.number);
        assert_eq!(
            e.sip_password.expose_secret(),
            before.sip_password.expose_secret(),
            "password kept: {}",
            e.number
        );
        assert_eq!(
            e.use_remote_auth,
            before.use_remote_auth || changed_ids.contains(&e.id)
        );
    }

    // A bad row at the very end, after whole batches were written: nothing stays.
    let mut bad: Vec<ExtensionSpec> = numbers
        .iter()
        .map(|number| {
            let mut s = spec(number, "pbx1"); // odd rows move from pbx2
            s.kind = Some(ExtensionKind::SipHotDesk);
            s
        })
        .collect();
    bad.extend((0..10).map(|i| spec(&(200_000 + i).to_string(), "pbx2")));
    bad.push(spec("300000", "gone"));
    let (index, err) = store
        .set_extensions(&bad, &mut next_password)
        .await
        .unwrap_err();
    assert_eq!(index, ROWS + 10);
    assert!(
        matches!(err, StoreError::NotFound(NotFound::Node(ref n)) if n == "gone"),
        "{err:?}"
    );
    let after = store.extensions().await.unwrap();
    assert_eq!(after.len(), ROWS, "no row created");
    assert!(
        after.iter().zip(&updated).all(|(a, b)| a.id == b.id
            && a.node_id == b.node_id
            && a.kind == b.kind
            && a.version == b.version),
        "no row changed or moved"
    );
    assert_eq!(
        store.pending_changes(1_000_000).await.unwrap().len(),
        ROWS + changed_ids.len(),
        "no change rows left behind"
    );
}

/// The bulk write gives what the specs applied one by one would: a number seen twice, a number
/// moved, and a number on several nodes.
async fn a_bulk_set_applies_specs_in_order(db: TestDb) {
    let store = &db.store;
    with_nodes(store).await;
    store.add_node(&node("pbx3", "10.0.0.22")).await.unwrap();
    let mut counter = 0;
    let mut next_password = || {
        counter += 1;
        secret(&format!("generated-{counter}"))
    };
    // 2001 on two nodes, written by another program.
    let mut raw = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    raw.execute(
        "INSERT INTO extensions (node_id, number, sip_password)
         SELECT id, '2001', 'theirs-' || name FROM nodes WHERE name IN ('pbx1', 'pbx2')",
    )
    .await
    .unwrap();
    raw.close().await.unwrap();
    store
        .set_extension(&spec("3001", "pbx3"), &secret("kept"))
        .await
        .unwrap();

    let mut hot = spec("1001", "pbx2");
    hot.kind = Some(ExtensionKind::SipHotDesk);
    let mut remote = spec("1001", "pbx2");
    remote.use_remote_auth = Some(true);
    let mut typed = spec("2001", "pbx2");
    typed.sip_password = Some(secret("typed"));
    let mut moved = spec("3001", "pbx1");
    moved.use_remote_auth = Some(true);
    let specs = [
        spec("1001", "pbx1"), // created
        hot,                  // moved to pbx2, kind changed
        remote,               // the same row again
        typed,                // the pbx2 row of a number on two nodes
        moved,                // moved from pbx3
    ];
    assert_eq!(
        store
            .set_extensions(&specs, &mut next_password)
            .await
            .unwrap(),
        1
    );
    let all = store.extensions().await.unwrap();
    let find = |number: &str, node: &str| {
        all.iter()
            .find(|e| e.number == number && e.node_name == node)
            .unwrap_or_else(|| panic!("{number} on {node}: {all:?}"))
    };
    assert_eq!(all.len(), 4, "{all:?}");
    let e1001 = find("1001", "pbx2");
    assert_eq!(e1001.kind, ExtensionKind::SipHotDesk);
    assert!(e1001.use_remote_auth);
    assert_eq!(e1001.sip_password.expose_secret(), "generated-1");
    assert_eq!(find("2001", "pbx2").sip_password.expose_secret(), "typed");
    assert_eq!(
        find("2001", "pbx1").sip_password.expose_secret(),
        "theirs-pbx1"
    );
    let e3001 = find("3001", "pbx1");
    assert!(e3001.use_remote_auth);
    assert_eq!(e3001.sip_password.expose_secret(), "kept");

    let (index, err) = store
        .set_extensions(
            &[spec("1002", "pbx1"), spec("2001", "pbx3")],
            &mut next_password,
        )
        .await
        .unwrap_err();
    assert_eq!(index, 1);
    assert_eq!(err.field(), Some("extension number"), "{err:?}");
    assert!(err.to_string().contains("several nodes"), "{err}");
    assert_eq!(store.extensions().await.unwrap().len(), 4);
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

    // One statement over several rows: one notification (empty payload), every row recorded.
    store
        .set_extension(&spec("1002", "pbx1"), &secret("p"))
        .await
        .unwrap();
    listener.recv().await.unwrap();
    let before = store.pending_changes(u32::MAX).await.unwrap().len();
    let mut other = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    other
        .execute("UPDATE extensions SET use_remote_auth = NOT use_remote_auth")
        .await
        .unwrap();
    let note = tokio::time::timeout(std::time::Duration::from_secs(10), listener.recv())
        .await
        .expect("notification within 10 s")
        .unwrap();
    assert_eq!(note.payload(), "", "several rows: no single id");
    assert_eq!(
        store.pending_changes(u32::MAX).await.unwrap().len(),
        before + 2
    );
    let second = tokio::time::timeout(std::time::Duration::from_millis(300), listener.recv()).await;
    assert!(
        second.is_err(),
        "one notification per statement: {second:?}"
    );
}

/// The whole exchange as the store sees it: step 1, then step 3 with this access token.
async fn exchange(store: &Store, token: &str, secret: &str, expires_at: i64) {
    let created_at = 1_800_000_000;
    store
        .save_temporary_token(&temporary("temp-TOKEN", created_at), false)
        .await
        .unwrap();
    let generation = store.mbg_settings().await.unwrap().token_generation;
    assert!(
        store
            .save_access_token(
                generation,
                created_at,
                &secret_of(token),
                &secret_of(secret),
                created_at,
                expires_at,
            )
            .await
            .unwrap(),
        "nothing raced this exchange"
    );
}

fn secret_of(value: &str) -> SecretString {
    SecretString::from(value)
}

fn temporary(token: &str, created_at: i64) -> TemporaryToken {
    TemporaryToken {
        base_url: "https://10.0.0.5/mslrest".into(),
        consumer_name: "provisioning".into(),
        consumer_id: "MiVOAppSuite".into(),
        consumer_secret: secret_of("consumer-SECRET"),
        token: secret_of(token),
        secret: secret_of(&format!("{token}-secret")),
        created_at,
    }
}

/// Token truth (issue 7, item 5) and secrets at rest (item 7), on both backends.
mod token {
    use mbg_provision::config::DatabaseUrl;
    use mbg_provision::secrets::{SecretKey, SecretsError};
    use mbg_provision::store::{Store, StoreError, TokenState};
    use mbg_provision::token::TokenStatus;
    use secrecy::ExposeSecret;
    use sqlx::Connection;

    use super::{exchange, secret_of, temporary};
    use crate::support::TestDb;

    crate::on_both_backends!(
        a_stale_renewal_or_refusal_cannot_undo_a_newer_token,
        a_401_marks_the_token_rejected_until_a_new_token_is_verified,
        token_secrets_are_sealed_at_rest_with_the_key_file,
        a_wrong_or_missing_key_is_explained_and_a_new_exchange_overwrites,
        legacy_cleartext_secrets_are_read_and_sealed_on_the_next_write,
        a_sealed_value_moved_to_another_column_does_not_open,
    );

    const SECRET_COLUMNS: [&str; 5] = [
        "consumer_secret",
        "temp_token",
        "temp_token_secret",
        "access_token",
        "access_token_secret",
    ];

    /// Another process on the same database, with the same key file.
    async fn second_store(db: &TestDb, key_file: &std::path::Path) -> Store {
        Store::open(&db.url.parse::<DatabaseUrl>().unwrap())
            .await
            .unwrap()
            .with_secret_key(SecretKey::new(key_file))
    }

    async fn raw(db: &TestDb, sql: &str) -> Vec<Option<String>> {
        let mut conn = sqlx::AnyConnection::connect(&db.url).await.unwrap();
        let row = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_optional(&mut conn)
            .await
            .unwrap();
        use sqlx::Row;
        let values = row.map_or_else(Vec::new, |row| {
            (0..row.len())
                .map(|i| row.try_get::<Option<String>, _>(i).unwrap())
                .collect()
        });
        conn.close().await.ok();
        values
    }

    async fn raw_secrets(db: &TestDb) -> Vec<Option<String>> {
        raw(
            db,
            &format!(
                "SELECT {} FROM mbg_settings WHERE id = 1",
                SECRET_COLUMNS.join(", ")
            ),
        )
        .await
    }

    async fn a_stale_renewal_or_refusal_cannot_undo_a_newer_token(db: TestDb) {
        let store = &db.store;
        exchange(store, "old-TOKEN", "old-token-SECRET", 1_900_000_000).await;
        // `token renew` reads the settings, then waits on the MBG...
        let stale = store.mbg_settings().await.unwrap();
        // ...while `token verify` in another process stores a new token.
        let other = second_store(&db, &db.key_file).await;
        other
            .save_temporary_token(&temporary("next-temp", 1_800_000_100), false)
            .await
            .unwrap();
        let read = other.mbg_settings().await.unwrap();
        assert!(
            other
                .save_access_token(
                    read.token_generation,
                    1_800_000_100,
                    &secret_of("new-TOKEN"),
                    &secret_of("new-token-SECRET"),
                    1_800_000_100,
                    1_950_000_000,
                )
                .await
                .unwrap()
        );
        // The stale renewal, a stale 401 and a stale verify all write nothing.
        assert!(
            !store
                .save_token_expiry(stale.token_generation, 1_931_536_000)
                .await
                .unwrap()
        );
        assert!(
            !store
                .mark_token_rejected(stale.token_generation, 1_800_000_200, "old token: 401")
                .await
                .unwrap()
        );
        assert!(
            !store
                .save_access_token(
                    stale.token_generation,
                    1_800_000_000,
                    &secret_of("old-TOKEN"),
                    &secret_of("old-token-SECRET"),
                    1_800_000_000,
                    1_900_000_000,
                )
                .await
                .unwrap()
        );
        let now = store.mbg_settings().await.unwrap();
        assert_eq!(now.access_token.unwrap().expose_secret(), "new-TOKEN");
        assert_eq!(
            now.access_token_secret.unwrap().expose_secret(),
            "new-token-SECRET"
        );
        assert_eq!(now.token_expires_at, Some(1_950_000_000));
        assert_eq!(now.token_state, TokenState::Valid);
        assert!(now.token_rejected_at.is_none());
        other.close().await;
    }

    async fn a_401_marks_the_token_rejected_until_a_new_token_is_verified(db: TestDb) {
        let store = &db.store;
        let now = 1_800_000_000;
        exchange(store, "TOKEN", "token-SECRET", now + 364 * 86_400).await;
        let generation = store.mbg_settings().await.unwrap().token_generation;
        let reason = "GET mbg/v1/icps/all/ answered 401: token revoked";
        assert!(
            store
                .mark_token_rejected(generation, now + 60, reason)
                .await
                .unwrap()
        );
        let settings = store.mbg_settings().await.unwrap();
        assert_eq!(settings.token_state, TokenState::Rejected);
        assert_eq!(settings.token_rejected_at, Some(now + 60));
        let status = TokenStatus::of(&settings, now + 120);
        assert!(!status.is_usable(), "364 days left on paper, but refused");
        let text = status.to_string();
        assert!(text.starts_with("rejected by the MBG on "), "{text}");
        assert!(text.contains("token revoked"), "{text}");
        assert!(text.contains("token request"), "{text}");

        // A new exchange clears it.
        exchange(store, "TOKEN-2", "token-SECRET-2", now + 365 * 86_400).await;
        let settings = store.mbg_settings().await.unwrap();
        assert_eq!(settings.token_state, TokenState::Valid);
        assert!(settings.token_rejected_at.is_none());
        assert!(settings.token_rejected_reason.is_none());
        assert!(TokenStatus::of(&settings, now).is_usable());
    }

    async fn token_secrets_are_sealed_at_rest_with_the_key_file(db: TestDb) {
        let store = &db.store;
        assert!(!db.key_file.exists(), "no key before the first secret");
        exchange(
            store,
            "access-TOKEN-6",
            "access-token-SECRET-7",
            1_900_000_000,
        )
        .await;
        store
            .save_temporary_token(&temporary("temp-TOKEN-4", 1_800_000_500), false)
            .await
            .unwrap();
        let plain = [
            "consumer-SECRET",
            "temp-TOKEN-4",
            "temp-TOKEN-4-secret",
            "access-TOKEN-6",
            "access-token-SECRET-7",
        ];
        let stored = raw_secrets(&db).await;
        for (column, value) in SECRET_COLUMNS.iter().zip(&stored) {
            let value = value.as_deref().unwrap_or_else(|| panic!("{column} empty"));
            assert!(value.starts_with("v1:"), "{column}: {value}");
            for secret in plain {
                assert!(!value.contains(secret), "{column} holds {secret}");
            }
        }
        let key = std::fs::read(&db.key_file).unwrap();
        assert_eq!(key.len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&db.key_file)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }

        let other = second_store(&db, &db.key_file).await;
        let read = other.mbg_settings().await.unwrap();
        let values = [
            read.consumer_secret,
            read.temp_token,
            read.temp_token_secret,
            read.access_token,
            read.access_token_secret,
        ];
        for (value, expected) in values.iter().zip(plain) {
            assert_eq!(value.as_ref().unwrap().expose_secret(), expected);
        }
        other.close().await;
    }

    async fn a_wrong_or_missing_key_is_explained_and_a_new_exchange_overwrites(db: TestDb) {
        exchange(&db.store, "access-TOKEN", "access-SECRET", 1_900_000_000).await;
        let elsewhere = tempfile::tempdir().unwrap();
        let missing = elsewhere.path().join("missing.key");
        let wrong = elsewhere.path().join("wrong.key");
        std::fs::write(&wrong, [7u8; 32]).unwrap();

        let lost = second_store(&db, &missing).await;
        let err = lost.mbg_settings().await.unwrap_err();
        assert!(
            matches!(err, StoreError::Secrets(SecretsError::KeyMissing { .. })),
            "{err:?}"
        );
        assert!(err.to_string().contains("token request"), "{err}");
        assert!(!missing.exists(), "reading creates no key");

        let replaced = second_store(&db, &wrong).await;
        let err = replaced.mbg_settings().await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("key file") && text.contains("does not match the database"),
            "{text}"
        );
        assert!(
            text.contains("token request") && text.contains("token verify"),
            "{text}"
        );
        assert!(!text.contains("access-SECRET"));

        // `token request` in that state: overwrite, dropping the access token it cannot open.
        replaced
            .save_temporary_token(&temporary("fresh-temp", 1_800_000_900), true)
            .await
            .unwrap();
        let fresh = replaced.mbg_settings().await.unwrap();
        assert!(fresh.access_token.is_none() && fresh.access_token_secret.is_none());
        assert_eq!(fresh.temp_token.unwrap().expose_secret(), "fresh-temp");
        assert_eq!(fresh.token_state, TokenState::Pending);
        lost.close().await;
        replaced.close().await;
    }

    async fn legacy_cleartext_secrets_are_read_and_sealed_on_the_next_write(db: TestDb) {
        let mut conn = sqlx::AnyConnection::connect(&db.url).await.unwrap();
        sqlx::query(
            "INSERT INTO mbg_settings (id, consumer_id, consumer_secret, access_token,
                    access_token_secret, token_expires_at, token_state, updated_at)
             VALUES (1, 'MiVOAppSuite', 'legacy-SECRET', 'legacy-TOKEN', 'legacy-token-SECRET',
                    1900000000, 'valid', 0)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.ok();
        let read = db.store.mbg_settings().await.unwrap();
        assert_eq!(
            read.consumer_secret.unwrap().expose_secret(),
            "legacy-SECRET"
        );
        assert_eq!(read.access_token.unwrap().expose_secret(), "legacy-TOKEN");

        db.store
            .save_temporary_token(&temporary("temp", 1_800_000_000), false)
            .await
            .unwrap();
        let generation = db.store.mbg_settings().await.unwrap().token_generation;
        assert!(
            db.store
                .save_access_token(
                    generation,
                    1_800_000_000,
                    &secret_of("new-TOKEN"),
                    &secret_of("new-token-SECRET"),
                    1_800_000_000,
                    1_950_000_000,
                )
                .await
                .unwrap()
        );
        for (column, value) in SECRET_COLUMNS.iter().zip(raw_secrets(&db).await) {
            if let Some(value) = value {
                assert!(value.starts_with("v1:"), "{column} still clear: {value}");
            }
        }
    }

    async fn a_sealed_value_moved_to_another_column_does_not_open(db: TestDb) {
        exchange(&db.store, "access-TOKEN", "access-SECRET", 1_900_000_000).await;
        let mut conn = sqlx::AnyConnection::connect(&db.url).await.unwrap();
        sqlx::query(
            "UPDATE mbg_settings
                SET access_token = access_token_secret, access_token_secret = access_token",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.ok();
        let err = db.store.mbg_settings().await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Secrets(SecretsError::KeyMismatch {
                    column: "access_token",
                    ..
                })
            ),
            "{err:?}"
        );
    }
}

/// A connection as another program has it: on SQLite with CHECKs and foreign keys off (as a DBA
/// can), on PostgreSQL with the constraints dropped.
pub(crate) async fn foreign_writer(db: &TestDb) -> sqlx::AnyConnection {
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
    for number in [
        "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008",
    ] {
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
    // A flag that is neither on nor off is a bad row, not "on". PostgreSQL's boolean column
    // cannot hold one; the same reading code judges both.
    let flags: &[(&str, &str)] = match store.backend() {
        Backend::Sqlite => &[
            (
                "UPDATE extensions SET use_remote_auth = 2 WHERE number = '1007'",
                "use_remote_auth",
            ),
            (
                "UPDATE extensions SET use_remote_auth = 'yes' WHERE number = '1008'",
                "use_remote_auth",
            ),
        ],
        Backend::Postgres => &[
            (
                "UPDATE extensions SET kind = '' WHERE number = '1007'",
                "kind",
            ),
            (
                "UPDATE extensions SET state = 'on' WHERE number = '1008'",
                "state",
            ),
        ],
    };
    for (sql, _) in flags {
        other.execute(*sql).await.unwrap();
    }
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
            (ids["1007"], Some("1007"), flags[0].1),
            (ids["1008"], Some("1008"), flags[1].1),
        ]
    );
    if store.backend() == Backend::Sqlite {
        let flag = rows.bad.iter().find(|b| b.id == ids["1007"]).unwrap();
        assert!(flag.to_string().contains("is 2, not"), "{flag}");
    }
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
    acknowledge_all(store).await;

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
        // One statement changed both: one wake-up, with no single id to name.
        let note = tokio::time::timeout(std::time::Duration::from_secs(10), listener.recv())
            .await
            .expect("notification within 10 s")
            .unwrap();
        assert_eq!(note.payload(), "");
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

async fn one_sip_user_belongs_to_one_row(db: TestDb) {
    let store = &db.store;
    with_nodes(store).await;
    let (a, _) = store
        .set_extension(&spec("1001", "pbx1"), &secret("p"))
        .await
        .unwrap();
    let (b, _) = store
        .set_extension(&spec("1002", "pbx1"), &secret("p"))
        .await
        .unwrap();
    store
        .record_device(a.id, Some("guid-1"), true)
        .await
        .unwrap();
    let err = store
        .record_device(b.id, Some("guid-1"), true)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Duplicate {
                field: "MBG device id",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("guid-1"), "{err}");
    assert!(store.extension(b.id).await.unwrap().mbg_device_id.is_none());
    // A row with no SIP user is not a claim: many rows may have none.
    store.record_device(a.id, None, false).await.unwrap();
    store.record_device(b.id, None, false).await.unwrap();
}

async fn a_deleted_row_keeps_the_credentials_that_prove_its_sip_user(db: TestDb) {
    let store = &db.store;
    with_nodes(store).await;
    let (never, _) = store
        .set_extension(&spec("1001", "pbx1"), &secret("p"))
        .await
        .unwrap();
    let (lost, _) = store
        .set_extension(&spec("1002", "pbx1"), &secret("p"))
        .await
        .unwrap();
    // Credentials written ahead, the create's guid never stored (a crash).
    store
        .fill_remote_credentials(lost.id, "lostname01", &secret("lost-password-1"))
        .await
        .unwrap();
    store.delete_extension(never.id).await.unwrap();
    store.delete_extension(lost.id).await.unwrap();
    let released = store.released().await.unwrap();
    assert_eq!(
        released.len(),
        1,
        "a row that never had credentials leaves nothing"
    );
    assert_eq!(released[0].number, "1002");
    assert_eq!(released[0].mbg_device_id, None);
    assert_eq!(released[0].remote_auth_name.as_deref(), Some("lostname01"));
    assert_eq!(
        released[0]
            .remote_auth_password
            .as_ref()
            .map(|p| p.expose_secret().to_string()),
        Some("lost-password-1".to_string())
    );
}

async fn outcome_writes_follow_the_planned_version(db: TestDb) {
    use mbg_provision::store::{DeviceFact, ExtensionState, OutcomeWrite, StateUpdate};
    let store = &db.store;
    with_nodes(store).await;
    let (ext, _) = store
        .set_extension(&spec("1001", "pbx1"), &secret("p"))
        .await
        .unwrap();
    let provisioned = StateUpdate {
        state: ExtensionState::Provisioned,
        last_error: None,
        attempts: 0,
        next_attempt_at: None,
    };
    let (other, _) = store
        .set_extension(&spec("1002", "pbx1"), &secret("p"))
        .await
        .unwrap();
    let seqs_of = async |id: i64| -> Vec<i64> {
        let pending = store.pending_changes(u32::MAX).await.unwrap();
        pending
            .iter()
            .filter(|c| c.extension_id == id)
            .map(|c| c.seq)
            .collect()
    };
    let answered = seqs_of(ext.id).await;
    assert!(!answered.is_empty());
    let write = |version, device| OutcomeWrite {
        extension_id: ext.id,
        planned_version: version,
        device,
        state: provisioned.clone(),
        acknowledges: answered.clone(),
    };
    // The row changes after the plan: the state is not written, the SIP user is recorded.
    let mut changed = spec("1001", "pbx1");
    changed.use_remote_auth = Some(true);
    store.set_extension(&changed, &secret("p")).await.unwrap();
    let stale = write(ext.version, DeviceFact::Holds("guid-9".into()));
    assert!(!store.write_outcome(&stale).await.unwrap());
    let now = store.extension(ext.id).await.unwrap();
    assert_eq!(now.state, ExtensionState::Idle);
    assert_eq!(now.mbg_device_id.as_deref(), Some("guid-9"));
    assert!(now.version > ext.version);
    for seq in &answered {
        assert!(
            seqs_of(ext.id).await.contains(seq),
            "a change answered by an outcome not written stays"
        );
    }
    let current = write(now.version, DeviceFact::Unchanged);
    assert!(store.write_outcome(&current).await.unwrap());
    let left = seqs_of(ext.id).await;
    assert!(
        answered.iter().all(|seq| !left.contains(seq)),
        "the changes a written outcome answers are acknowledged with it"
    );
    assert!(
        !left.is_empty(),
        "the change made after the plan is not among them, and stays"
    );
    assert!(
        !seqs_of(other.id).await.is_empty(),
        "another extension's change stays"
    );
    assert_eq!(
        store.extension(ext.id).await.unwrap().state,
        ExtensionState::Provisioned
    );
}

/// `node set`: only the fields given change; a new address is a change to each extension of the
/// node; an unknown node and a taken address are refused by name.
async fn a_node_is_changed_field_by_field(db: TestDb) {
    let store = &db.store;
    with_nodes(store).await;
    let (ext, _) = store
        .set_extension(&spec("1001", "pbx1"), &secret("p"))
        .await
        .unwrap();
    acknowledge_all(store).await;

    let nat = mbg_provision::store::NodeChange {
        nat_address: Some("203.0.113.7".into()),
        nat_sip_port: Some(5062),
        ..Default::default()
    };
    let changed = store.update_node("pbx1", &nat).await.unwrap();
    assert_eq!(changed.address, "10.0.0.20", "kept");
    assert_eq!(changed.nat_address.as_deref(), Some("203.0.113.7"));
    assert_eq!(changed.nat_sip_port, Some(5062));
    assert!(
        store.pending_changes(10).await.unwrap().is_empty(),
        "NAT settings do not reach the MBG"
    );

    let moved = mbg_provision::store::NodeChange {
        address: Some("10.0.0.30".into()),
        ..Default::default()
    };
    let changed = store.update_node("pbx1", &moved).await.unwrap();
    assert_eq!(changed.address, "10.0.0.30");
    assert_eq!(changed.nat_sip_port, Some(5062), "kept");
    let changes = store.pending_changes(10).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].extension_id, ext.id);

    let taken = mbg_provision::store::NodeChange {
        address: Some("10.0.0.21".into()),
        ..Default::default()
    };
    let err = store.update_node("pbx1", &taken).await.unwrap_err();
    assert!(err.to_string().contains("10.0.0.21"), "{err}");
    let err = store.update_node("pbx9", &nat).await.unwrap_err();
    assert!(err.to_string().contains("pbx9"), "{err}");
    assert_eq!(
        store.node_by_name("pbx1").await.unwrap().address,
        "10.0.0.30",
        "a refused change changes nothing"
    );
}

/// The id that tells `preflight` whether a daemon works on its database: the same on every
/// open of one database, different for another.
async fn the_database_id_is_random_and_stays(db: TestDb) {
    let id = db.store.database_id().await.unwrap();
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    let again = Store::open(&db.url.parse().unwrap()).await.unwrap();
    assert_eq!(again.database_id().await.unwrap(), id);
    again.close().await;
    let other = TestDb::sqlite().await;
    assert_ne!(other.store.database_id().await.unwrap(), id);
}

/// The console's accounts: names are unique, the last admin can be neither removed nor demoted,
/// a new password ends the user's other sessions, and a session past its idle or absolute
/// limit is gone.
async fn console_accounts_keep_an_admin_and_sessions_end_when_they_should(db: TestDb) {
    use mbg_provision::store::Role;
    let store = &db.store;
    assert!(!store.has_console_admin().await.unwrap());
    let ada = store
        .add_console_user("ada", Role::Admin, "$argon2id$x")
        .await
        .unwrap();
    assert!(store.has_console_admin().await.unwrap());
    let again = store
        .add_console_user("ada", Role::Viewer, "$argon2id$y")
        .await
        .unwrap_err();
    assert!(again.to_string().contains("already exists"), "{again}");
    assert!(
        store
            .add_console_user("a b", Role::Viewer, "h")
            .await
            .is_err()
    );
    let last = store.remove_console_user("ada").await.unwrap_err();
    assert!(last.to_string().contains("last admin"), "{last}");
    let demote = store
        .set_console_role("ada", Role::Viewer)
        .await
        .unwrap_err();
    assert!(demote.to_string().contains("last admin"), "{demote}");
    store
        .add_console_user("bob", Role::Admin, "h")
        .await
        .unwrap();
    store.set_console_role("ada", Role::Operator).await.unwrap();
    assert!(store.remove_console_user("nobody").await.is_err());

    store.create_console_session("s1", ada.id).await.unwrap();
    store.create_console_session("s2", ada.id).await.unwrap();
    let session = store
        .console_session("s1", 60, 3600, SessionUse::Activity)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.user.name, "ada");
    assert_eq!(session.user.role, Role::Operator);
    store
        .set_console_password("ada", "$argon2id$new", Some("s1"))
        .await
        .unwrap();
    assert!(
        store
            .console_session("s1", 60, 3600, SessionUse::Activity)
            .await
            .unwrap()
            .is_some(),
        "kept"
    );
    assert!(
        store
            .console_session("s2", 60, 3600, SessionUse::Activity)
            .await
            .unwrap()
            .is_none(),
        "ended"
    );
    // Limits of -1 s: every session is past them, and is deleted.
    assert!(
        store
            .console_session("s1", -1, 3600, SessionUse::Activity)
            .await
            .unwrap()
            .is_none(),
        "idle"
    );
    store.create_console_session("s3", ada.id).await.unwrap();
    assert!(
        store
            .console_session("s3", 60, -1, SessionUse::Activity)
            .await
            .unwrap()
            .is_none(),
        "absolute"
    );
    // A live poll does not keep a session from its idle timeout; a page does.
    store.create_console_session("s5", ada.id).await.unwrap();
    crate::service::sql(
        &db.url,
        "UPDATE console_sessions SET last_seen_at = last_seen_at - 100 WHERE id_hash = 's5'",
    )
    .await;
    let seen = |s: Option<mbg_provision::store::Session>| s.unwrap().last_seen_at;
    let polled = seen(
        store
            .console_session("s5", 600, 3600, SessionUse::Poll)
            .await
            .unwrap(),
    );
    let again = seen(
        store
            .console_session("s5", 600, 3600, SessionUse::Poll)
            .await
            .unwrap(),
    );
    assert_eq!(polled, again, "a poll leaves last_seen_at alone");
    store
        .console_session("s5", 600, 3600, SessionUse::Activity)
        .await
        .unwrap();
    let after = seen(
        store
            .console_session("s5", 600, 3600, SessionUse::Poll)
            .await
            .unwrap(),
    );
    assert!(
        after >= polled + 100,
        "a page moves it: {polled} -> {after}"
    );
    store.create_console_session("s4", ada.id).await.unwrap();
    store.remove_console_user("ada").await.unwrap();
    assert!(
        store
            .console_session("s4", 60, 3600, SessionUse::Activity)
            .await
            .unwrap()
            .is_none(),
        "with its user"
    );

    assert_eq!(
        store
            .record_login_failure("bob", "10.1.1.1", 0)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .record_login_failure("bob", "10.1.1.1", 0)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store.login_failures("bob", "10.9.9.9", 0).await.unwrap(),
        0,
        "per address"
    );
    store.clear_login_failures("bob", "10.1.1.1").await.unwrap();
    assert_eq!(store.login_failures("bob", "10.1.1.1", 0).await.unwrap(), 0);
}

/// The console's list: a prefix is a range (1 and 10 match "1", 2 does not), the state filter,
/// and keyset pages that together hold every row once, in number order.
async fn the_console_list_pages_by_number_with_a_prefix(db: TestDb) {
    use mbg_provision::store::ExtensionFilter;
    let store = &db.store;
    with_nodes(store).await;
    for number in ["1", "10", "100", "1999", "2", "19", "1000"] {
        store
            .set_extension(&spec(number, "pbx1"), &secret("p"))
            .await
            .unwrap();
    }
    let numbers = |page: &[mbg_provision::store::Extension]| -> Vec<String> {
        page.iter().map(|e| e.number.clone()).collect()
    };
    let ones = ExtensionFilter {
        prefix: Some("1".into()),
        ..Default::default()
    };
    let all = store.extension_page(&ones, None, 100).await.unwrap();
    assert_eq!(numbers(&all), ["1", "10", "100", "1000", "19", "1999"]);
    let first = store.extension_page(&ones, None, 4).await.unwrap();
    let last = first.last().unwrap();
    let second = store
        .extension_page(&ones, Some((&last.number, last.id)), 4)
        .await
        .unwrap();
    assert_eq!(numbers(&first), ["1", "10", "100", "1000"]);
    assert_eq!(numbers(&second), ["19", "1999"]);
    let ten = ExtensionFilter {
        prefix: Some("10".into()),
        ..Default::default()
    };
    assert_eq!(
        numbers(&store.extension_page(&ten, None, 100).await.unwrap()),
        ["10", "100", "1000"]
    );
    let pending = ExtensionFilter {
        state: Some(ExtensionState::Provisioned),
        ..Default::default()
    };
    assert!(
        store
            .extension_page(&pending, None, 100)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A daemon that runs for years: a failure that repeats (the same action, outcome and detail
/// for the same extension, the engine's own) is one entry with a count and the time of its
/// last repeat; a different failure, a success between, or a person's entry starts a new one.
/// Pruning deletes the engine's entries past `audit.keep` and everything past
/// `audit.keep_security`, keeping a person's entries (and reveals) in between.
async fn a_repeated_failure_is_one_entry_and_old_entries_are_pruned_by_kind(db: TestDb) {
    let store = &db.store;
    let entry =
        |at: i64, number: &str, outcome: &str, detail: &str, actor: Option<&str>| AuditEntry {
            at,
            actor: actor.map(str::to_string),
            extension: Some(number.into()),
            action: "create".into(),
            outcome: outcome.into(),
            detail: Some(detail.into()),
            repeats: 1,
            last_at: None,
        };
    let down = "extension 1001: the MBG is unreachable";
    for at in [100, 200, 300] {
        store
            .audit(&entry(at, "1001", "failed", down, None))
            .await
            .unwrap();
    }
    // Several at once, as a pass writes them: each extension's streak grows by one.
    store
        .write_group(&[
            mbg_provision::store::PassWrite::Audit(entry(400, "1001", "failed", down, None)),
            mbg_provision::store::PassWrite::Audit(entry(
                400,
                "1002",
                "failed",
                "extension 1002: refused",
                None,
            )),
        ])
        .await
        .unwrap();
    let log = store.audit_log(10).await.unwrap();
    assert_eq!(log.len(), 2, "{log:?}");
    let streak = log
        .iter()
        .find(|e| e.extension.as_deref() == Some("1001"))
        .unwrap();
    assert_eq!(
        (streak.at, streak.repeats, streak.last_at),
        (100, 4, Some(400))
    );

    store
        .audit(&entry(
            500,
            "1001",
            "failed",
            "extension 1001: another error",
            None,
        ))
        .await
        .unwrap();
    store
        .audit(&entry(600, "1001", "ok", "created", None))
        .await
        .unwrap();
    store
        .audit(&entry(700, "1001", "failed", down, None))
        .await
        .unwrap();
    store
        .audit(&entry(800, "1001", "failed", down, Some("ada")))
        .await
        .unwrap();
    store
        .audit(&entry(900, "1001", "failed", down, Some("ada")))
        .await
        .unwrap();
    let log = store.audit_log(20).await.unwrap();
    assert_eq!(
        log.len(),
        7,
        "a new streak after each difference, none for a person: {log:?}"
    );
    assert!(log.iter().all(|e| e.repeats == 1 || e.at == 100));

    // keep: entries of the engine last seen before 650 go; keep_security: all before 150.
    let mut reveal = entry(120, "1003", "ok", "revealed", None);
    reveal.action = "reveal".into();
    store.audit(&reveal).await.unwrap();
    store
        .audit(&entry(140, "1004", "ok", "saved", Some("os:root")))
        .await
        .unwrap();
    store
        .audit(&entry(160, "1005", "ok", "saved", Some("ada")))
        .await
        .unwrap();
    let deleted = store.prune_audit(650, 150).await.unwrap();
    let left: Vec<(i64, Option<String>)> = store
        .audit_log(20)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.at, e.extension))
        .collect();
    // Gone: the engine's entries last seen before 650 (1001's first streak, last seen at 400;
    // 1002's failure; the other error; the success) and, past keep_security, the reveal and
    // root's save. Kept: the engine's failure at 700 and every person's entry after 150.
    assert_eq!(deleted, 6, "{left:?}");
    assert_eq!(
        left,
        [
            (160, Some("1005".to_string())),
            (900, Some("1001".to_string())),
            (800, Some("1001".to_string())),
            (700, Some("1001".to_string())),
        ],
        "newest first"
    );
    assert_eq!(
        store.prune_audit(650, 150).await.unwrap(),
        0,
        "nothing more to do"
    );
}

/// The console's Save and `extension set --remote-name` tick the box and bring new credentials
/// in one write. On a settled row (idle, nothing pending) that is allowed: the change the save
/// itself records is not "a change not yet applied". Once that change waits for the daemon,
/// other credentials are refused, naming the extension, and nothing is written.
async fn typed_credentials_replace_a_settled_rows_in_the_same_save_that_ticks_the_box(db: TestDb) {
    let store = &db.store;
    with_nodes(store).await;
    let audit = AuditEntry {
        at: 1,
        actor: Some("ada".into()),
        extension: Some("1001".into()),
        action: "save".into(),
        outcome: "ok".into(),
        detail: None,
        repeats: 1,
        last_at: None,
    };
    let first = secret("First-password-1");
    store
        .set_extension_with_credentials(
            &spec("1001", "pbx1"),
            &secret("p"),
            Some(("first1001", &first)),
            &audit,
        )
        .await
        .unwrap();
    // The daemon has seen that change: the row is idle and settled.
    crate::service::sql(&db.url, "DELETE FROM extension_changes").await;
    let ticked = ExtensionSpec {
        use_remote_auth: Some(true),
        ..spec("1001", "pbx1")
    };
    let second = secret("Second-password-2");
    let (saved, _) = store
        .set_extension_with_credentials(
            &ticked,
            &secret("p"),
            Some(("second1001", &second)),
            &audit,
        )
        .await
        .expect("a settled row takes new credentials in the save that ticks the box");
    assert!(saved.use_remote_auth);
    assert_eq!(saved.remote_auth_name.as_deref(), Some("second1001"));

    let third = secret("Third-password-3");
    let refused = store
        .set_extension_with_credentials(&ticked, &secret("p"), Some(("third1001", &third)), &audit)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("1001"), "{refused}");
    let kept = store.extension_by_number("1001").await.unwrap();
    assert_eq!(kept.remote_auth_name.as_deref(), Some("second1001"));
    assert_eq!(
        kept.remote_auth_password.unwrap().expose_secret(),
        "Second-password-2"
    );
}
