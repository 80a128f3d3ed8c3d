//! End to end: the database, the reconciler and the simulated MBG, on SQLite and PostgreSQL.

use mbg_provision::mbg::MbgErrorKind;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use mbg_provision::reconcile::{self, Action, Mode, PassReport, Problem, Status};
use mbg_provision::shutdown::Shutdown;
use mbg_provision::sim::{Device, DeviceFields, Faults};
use mbg_provision::store::{ExtensionKind, ExtensionSpec, ExtensionState, NewNode, Store};
use secrecy::{ExposeSecret, SecretString};

use crate::mbg::{Harness, sim_config};
use crate::support::TestDb;

crate::on_both_backends!(
    provisions_moves_and_removes_only_its_own_sip_users,
    adopts_an_exact_match_and_heals_a_crash_without_duplicates,
    licence_limits_and_name_clashes_are_reported_on_the_right_extensions,
    a_dry_run_changes_nothing,
    a_pass_that_counts_done_outcomes_keeps_only_the_others,
    busy_reads_and_writes_are_retried_within_the_pass,
    a_create_whose_answer_is_lost_is_found_not_posted_twice,
    an_outcome_for_a_row_changed_meanwhile_is_left_for_the_next_pass,
    a_row_that_cannot_be_read_keeps_its_sip_user_and_the_others_go_on,
    a_node_address_change_moves_its_extensions_to_the_matching_icp,
    a_stopped_pass_records_every_call_it_made,
    a_refused_create_of_a_sip_user_already_ours_is_taken_back,
    a_second_copy_is_gone_before_its_name_goes_to_the_one_kept,
    a_large_pass_vacuums_the_changes_its_outcomes_acknowledged,
    a_fill_that_fails_midway_stops_the_pass_and_sends_nothing_uncommitted,
);

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn nodes(store: &Store) {
    for (name, address) in [
        ("pbx1", "10.0.0.20"),
        ("pbx2", "10.0.0.21"),
        ("pbx3", "10.0.0.99"),
    ] {
        store
            .add_node(&NewNode {
                name: name.into(),
                address: address.into(),
                nat_address: None,
                nat_sip_port: None,
            })
            .await
            .unwrap();
    }
}

async fn set(store: &Store, number: &str, node: &str, remote: bool) -> i64 {
    let spec = ExtensionSpec {
        number: number.into(),
        node: node.into(),
        kind: None,
        use_remote_auth: Some(remote),
        sip_password: None,
    };
    let password = SecretString::from(format!("pbx-sip-{number}"));
    store.set_extension(&spec, &password).await.unwrap().0.id
}

async fn pass(h: &Harness) -> PassReport {
    let client = h.client().await;
    reconcile::run_pass(
        &h.db.store,
        &client,
        &h.config,
        Mode::Apply,
        &Shutdown::new(),
        now(),
    )
    .await
    .unwrap()
}

fn by_number<'a>(devices: &'a [Device], number: &str) -> Vec<&'a Device> {
    devices
        .iter()
        .filter(|d| d.icpside_username == number)
        .collect()
}

fn manual(number: &str, icp: &str, setside: &str) -> DeviceFields {
    DeviceFields {
        icp: Some(icp.into()),
        setside_username: Some(setside.into()),
        setside_password: Some("hand-made-pass".into()),
        icpside_username: Some(number.into()),
        icpside_password: Some("hand-made-pass".into()),
        description: Some("added by hand".into()),
        enabled: Some(true),
    }
}

fn verbs(report: &PassReport) -> Vec<(String, &'static str)> {
    let mut verbs: Vec<_> = report
        .plan
        .actions
        .iter()
        .map(|a| (a.number().to_string(), a.verb()))
        .collect();
    verbs.sort();
    verbs
}

async fn provisions_moves_and_removes_only_its_own_sip_users(db: TestDb) {
    let h = Harness::new(db, sim_config()).await.with_token().await;
    let store = &h.db.store;
    nodes(store).await;
    let a = set(store, "1001", "pbx1", true).await;
    let hot_desk = ExtensionSpec {
        number: "1002".into(),
        node: "pbx1".into(),
        kind: Some(ExtensionKind::SipHotDesk),
        use_remote_auth: Some(true),
        sip_password: None,
    };
    let b = store
        .set_extension(&hot_desk, &SecretString::from("pbx-sip-1002"))
        .await
        .unwrap()
        .0
        .id;
    set(store, "1003", "pbx1", false).await;
    let by_hand = h
        .sim
        .add_device(manual("1999", "MiVO250-1", "frontdesk"))
        .unwrap();

    let first = pass(&h).await;
    assert_eq!(
        verbs(&first),
        [("1001".into(), "create"), ("1002".into(), "create")]
    );
    assert!(first.succeeded() && !first.needs_attention());
    let devices = h.sim.devices();
    let ext = store.extension(a).await.unwrap();
    let [device] = by_number(&devices, "1001")[..] else {
        panic!("one device for 1001")
    };
    assert_eq!(ext.mbg_device_id.as_deref(), Some(device.guid.as_str()));
    assert!(ext.provisioned_by_us);
    assert_eq!(ext.state, ExtensionState::Provisioned);
    assert_eq!(device.icp, "MiVO250-1");
    assert_eq!(
        device.icpside_password, "pbx-sip-1001",
        "ICP side = the PBX's SIP password"
    );
    assert_eq!(
        Some(&device.setside_username),
        ext.remote_auth_name.as_ref()
    );
    assert_eq!(
        device.setside_password,
        ext.remote_auth_password.as_ref().unwrap().expose_secret()
    );
    assert_eq!(ext.remote_auth_name.as_ref().unwrap().len(), 12);
    assert_eq!(
        ext.remote_auth_password
            .as_ref()
            .unwrap()
            .expose_secret()
            .len(),
        20
    );
    assert_eq!(device.description, "mbg-provision ext 1001");
    assert_eq!(
        by_number(&devices, "1002").len(),
        1,
        "hot desk extensions get a SIP user too"
    );
    assert!(
        store.pending_changes(100).await.unwrap().is_empty(),
        "changes acknowledged"
    );

    // Node change: the same SIP user moves to the other ICP.
    set(store, "1001", "pbx2", true).await;
    let moved = pass(&h).await;
    assert_eq!(verbs(&moved), [("1001".into(), "update")]);
    let devices = h.sim.devices();
    let [device_after] = by_number(&devices, "1001")[..] else {
        panic!("still one device")
    };
    assert_eq!(device_after.guid, device.guid);
    assert_eq!(device_after.icp, "MiVO250-2");

    // Drift: someone changes our device's password by hand; the database wins.
    let client = h.client().await;
    client
        .update_device(
            &device.guid,
            &mbg_provision::mbg::SipDevicePatch {
                setside_password: Some("changed-by-hand".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(verbs(&pass(&h).await), [("1001".into(), "update")]);

    // Switched off: deleted. The extension keeps its credentials for next time.
    set(store, "1001", "pbx2", false).await;
    let off = pass(&h).await;
    assert_eq!(verbs(&off), [("1001".into(), "delete")]);
    let ext = store.extension(a).await.unwrap();
    assert!(ext.mbg_device_id.is_none() && !ext.provisioned_by_us);
    assert_eq!(ext.state, ExtensionState::Idle);
    assert!(ext.remote_auth_name.is_some());
    assert!(by_number(&h.sim.devices(), "1001").is_empty());

    // The extension row deleted outright: its SIP user is still ours to remove.
    store.delete_extension(b).await.unwrap();
    let gone = pass(&h).await;
    assert_eq!(verbs(&gone), [("1002".into(), "delete")]);
    assert!(store.released().await.unwrap().is_empty());

    // The SIP user added by hand was never touched.
    let devices = h.sim.devices();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].guid, by_hand);
    assert_eq!(devices[0].setside_password, "hand-made-pass");
    assert!(pass(&h).await.plan.actions.is_empty(), "converged");
    let audit = store.audit_log(50).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "create" && e.extension.as_deref() == Some("1001"))
    );
    assert!(
        audit
            .iter()
            .all(|e| !e.detail.as_deref().unwrap_or("").contains("pbx-sip-"))
    );
}

async fn adopts_an_exact_match_and_heals_a_crash_without_duplicates(db: TestDb) {
    let h = Harness::new(db, sim_config()).await.with_token().await;
    let store = &h.db.store;
    nodes(store).await;
    // A SIP user made by hand for 1001 under the right ICP, and one for 1002 under the wrong one.
    let exact = h
        .sim
        .add_device(manual("1001", "MiVO250-1", "old-name"))
        .unwrap();
    let elsewhere = h
        .sim
        .add_device(manual("1002", "MiVO250-2", "other-name"))
        .unwrap();
    let a = set(store, "1001", "pbx1", true).await;
    let b = set(store, "1002", "pbx1", true).await;

    let report = pass(&h).await;
    assert_eq!(
        verbs(&report),
        [("1001".into(), "adopt"), ("1002".into(), "problem")]
    );
    let ext = store.extension(a).await.unwrap();
    assert_eq!(ext.mbg_device_id.as_deref(), Some(exact.as_str()));
    assert!(ext.provisioned_by_us);
    let devices = h.sim.devices();
    let adopted = devices.iter().find(|d| d.guid == exact).unwrap();
    assert_eq!(
        Some(&adopted.setside_username),
        ext.remote_auth_name.as_ref(),
        "overwritten by the database"
    );
    assert_eq!(adopted.icpside_password, "pbx-sip-1001");
    let other = devices.iter().find(|d| d.guid == elsewhere).unwrap();
    assert_eq!(
        other.setside_username, "other-name",
        "not an exact match: untouched"
    );
    let stuck = store.extension(b).await.unwrap();
    assert_eq!(stuck.state, ExtensionState::NeedsAttention);
    assert!(stuck.last_error.unwrap().contains("MiVO250-2"));

    // A crash between the MBG's create and the guid commit: the credentials were committed
    // (write-ahead), the SIP user exists, the database does not know its guid.
    let c = set(store, "1003", "pbx1", true).await;
    let ext = store
        .fill_remote_credentials(
            c,
            "crashtest0001",
            &SecretString::from("committed-before-post"),
        )
        .await
        .unwrap();
    let client = h.client().await;
    let orphan = client
        .create_device(&mbg_provision::mbg::NewSipDevice {
            icp: "MiVO250-1".into(),
            setside_username: ext.remote_auth_name.clone().unwrap(),
            setside_password: ext.remote_auth_password.clone().unwrap(),
            icpside_username: "1003".into(),
            icpside_password: ext.sip_password.clone(),
            description: "mbg-provision ext 1003".into(),
            enabled: true,
        })
        .await
        .unwrap();
    let healed = pass(&h).await;
    assert!(
        verbs(&healed).contains(&("1003".into(), "adopt")),
        "{:?}",
        verbs(&healed)
    );
    let ext = store.extension(c).await.unwrap();
    assert_eq!(ext.mbg_device_id.as_deref(), Some(orphan.as_str()));
    assert_eq!(by_number(&h.sim.devices(), "1003").len(), 1, "no duplicate");
    let again = pass(&h).await;
    assert!(again.plan.changes().next().is_none(), "{:?}", verbs(&again));
}

async fn licence_limits_and_name_clashes_are_reported_on_the_right_extensions(db: TestDb) {
    let mut config = sim_config();
    config.licences = Some(3);
    let mut h = Harness::new(db, config).await.with_token().await;
    let store = &h.db.store;
    nodes(store).await;
    h.sim
        .add_device(manual("1999", "MiVO250-1", "frontdesk"))
        .unwrap();
    for number in ["1001", "1002", "1003", "1004"] {
        set(store, number, "pbx1", true).await;
    }
    // The MBG's own limit: 3 licences, one used by hand, so two of ours fit.
    let report = pass(&h).await;
    let outcomes = &report.applied.as_ref().unwrap().outcomes;
    let no_licence: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.status == Status::NeedsAttention)
        .map(|o| o.number.as_str())
        .collect();
    assert_eq!(no_licence.len(), 2, "{outcomes:?}");
    for number in &no_licence {
        let ext = store.extension_by_number(number).await.unwrap();
        assert_eq!(ext.state, ExtensionState::NeedsAttention);
        let error = ext.last_error.unwrap();
        assert!(
            error.contains("no teleworker licence") && error.contains(number),
            "{error}"
        );
    }
    assert!(report.needs_attention());

    // Our own budget, checked before calling the MBG: the highest numbers wait.
    h.config.mbg.teleworker_licences = Some(3);
    let budgeted = pass(&h).await;
    let reported: Vec<String> = budgeted
        .plan
        .actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::Report {
                    problem: Problem::LicenceBudget { .. },
                    ..
                }
            )
        })
        .map(|a| a.number().to_string())
        .collect();
    assert_eq!(reported, ["1003", "1004"]);

    // A set-side name held by a SIP user we do not own.
    h.config.mbg.teleworker_licences = None;
    set(store, "1001", "pbx1", false).await;
    pass(&h).await;
    let id = set(store, "2001", "pbx2", true).await;
    store
        .fill_remote_credentials(id, "frontdesk", &SecretString::from("some-password-1"))
        .await
        .unwrap();
    let clash = pass(&h).await;
    assert!(clash.plan.actions.iter().any(|a| matches!(
        a,
        Action::Report { problem: Problem::SetsideNameTaken { name, .. }, .. } if name == "frontdesk"
    )));
    let ext = store.extension(id).await.unwrap();
    assert_eq!(ext.state, ExtensionState::NeedsAttention);
    assert!(ext.last_error.unwrap().contains("frontdesk"));
    assert!(by_number(&h.sim.devices(), "2001").is_empty());
}

async fn a_dry_run_changes_nothing(db: TestDb) {
    let h = Harness::new(db, sim_config()).await.with_token().await;
    let store = &h.db.store;
    nodes(store).await;
    let id = set(store, "1001", "pbx1", true).await;
    set(store, "1002", "pbx3", true).await;
    h.sim.clear_requests();
    let before = store.extension(id).await.unwrap();
    let client = h.client().await;
    let report = reconcile::run_pass(
        store,
        &client,
        &h.config,
        Mode::DryRun,
        &Shutdown::new(),
        now(),
    )
    .await
    .unwrap();
    assert_eq!(
        verbs(&report),
        [("1001".into(), "create"), ("1002".into(), "problem")]
    );
    assert!(report.applied.is_none());
    let requests = h.sim.requests();
    assert!(!requests.is_empty());
    assert!(requests.iter().all(|r| r.method == "GET"), "{requests:?}");
    assert!(h.sim.devices().is_empty());
    let after = store.extension(id).await.unwrap();
    assert!(
        after.remote_auth_name.is_none(),
        "no credentials stored by a dry run"
    );
    assert_eq!((after.state, after.version), (before.state, before.version));
    assert_eq!(
        store.pending_changes(100).await.unwrap().len(),
        2,
        "changes not consumed"
    );
}

/// The daemon's passes: what is done is counted, not kept; what needs a human is kept whole.
async fn a_pass_that_counts_done_outcomes_keeps_only_the_others(db: TestDb) {
    let h = Harness::new(db, sim_config()).await.with_token().await;
    let store = &h.db.store;
    nodes(store).await;
    let created = set(store, "1001", "pbx1", true).await;
    let unplaceable = set(store, "1002", "pbx3", true).await;
    let client = h.client().await;
    let shutdown = Shutdown::new();
    let mut view = reconcile::MbgView::read(&client, &h.config, &shutdown)
        .await
        .unwrap();
    let scope = reconcile::Scope {
        count_done_only: true,
        ..reconcile::Scope::default()
    };
    let report = reconcile::run_pass_with(
        store,
        &client,
        &h.config,
        Mode::Apply,
        &shutdown,
        now(),
        &mut view,
        &scope,
        None,
    )
    .await
    .unwrap();
    let applied = report.applied.as_ref().unwrap();
    assert_eq!(applied.done_not_kept, 1);
    let kept: Vec<_> = applied
        .outcomes
        .iter()
        .map(|o| (o.extension_id, o.status.clone()))
        .collect();
    assert_eq!(kept, [(Some(unplaceable), Status::NeedsAttention)]);
    assert!(report.needs_attention() && report.succeeded());
    let ext = store.extension(created).await.unwrap();
    assert_eq!(ext.state, ExtensionState::Provisioned);
    assert_eq!(by_number(&h.sim.devices(), "1001").len(), 1);
}

/// Applies a plan made from `extensions`, retrying for at most `retry_for`.
async fn apply_planned(
    store: &Store,
    client: &mbg_provision::mbg::MbgClient,
    plan: &reconcile::Plan,
    extensions: Vec<mbg_provision::store::Extension>,
    retry_for: Duration,
    now: i64,
) -> reconcile::ApplyReport {
    let planned = reconcile::Planned::new(extensions);
    let options = reconcile::ApplyOptions {
        max_in_flight: 4,
        max_retry_after: Duration::from_secs(300),
        retry_until: Instant::now() + retry_for,
        now,
        mbg_timeout: Duration::from_secs(5),
        keep_done: true,
    };
    let shutdown = Shutdown::new();
    let cx = reconcile::apply::Context {
        store,
        client,
        planned: &planned,
        shutdown: &shutdown,
        options: &options,
        progress: None,
        superseded: &Default::default(),
        covered: &Default::default(),
        fill: &Default::default(),
    };
    reconcile::apply::apply(&cx, plan).await.unwrap()
}

fn count(h: &Harness, method: &str, path_end: &str, status: u16) -> usize {
    h.sim
        .requests()
        .iter()
        .filter(|r| r.method == method && r.path.ends_with(path_end) && r.status == status)
        .count()
}

async fn busy_reads_and_writes_are_retried_within_the_pass(db: TestDb) {
    let h = Harness::new(db, sim_config()).await.with_token().await;
    let store = &h.db.store;
    nodes(store).await;
    let id = set(store, "1001", "pbx1", true).await;
    // The first three requests are refused, Retry-After 1 s: the two lists, then one of their
    // retries or the create.
    h.sim.set_faults(Faults {
        rate_limit_next: 3,
        retry_after_secs: 1,
        ..Faults::default()
    });
    let started = Instant::now();
    let report = pass(&h).await;
    assert!(report.succeeded(), "{:?}", report.applied);
    // The two lists are read side by side, so their first waits overlap; a second follows.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After honoured"
    );
    let ext = store.extension(id).await.unwrap();
    assert_eq!(ext.state, ExtensionState::Provisioned);
    let limited = h.sim.requests().iter().filter(|r| r.status == 429).count();
    assert_eq!(limited, 3, "each refusal was followed by a retry");
    assert_eq!(count(&h, "POST", "/devices/sip/", 200), 1);
    assert_eq!(by_number(&h.sim.devices(), "1001").len(), 1);
}

async fn a_create_whose_answer_is_lost_is_found_not_posted_twice(db: TestDb) {
    let mut sim = sim_config();
    sim.duplicate_setside_names = true;
    let h = Harness::new(db, sim).await.with_token().await;
    let store = &h.db.store;
    nodes(store).await;
    let ids: Vec<i64> = [
        set(store, "1001", "pbx1", true).await,
        set(store, "1002", "pbx1", true).await,
    ]
    .to_vec();
    // Both creates are carried out, then their connections dropped.
    h.sim.set_faults(Faults {
        lose_answer_next: 2,
        ..Faults::default()
    });
    h.sim.clear_requests();
    let report = pass(&h).await;
    assert!(report.succeeded(), "{:?}", report.applied);
    assert_eq!(
        count(&h, "POST", "/devices/sip/", 200),
        2,
        "posted once each"
    );
    assert_eq!(
        count(&h, "GET", "/devices/sip/all/", 200),
        2,
        "the pass's read and one shared lookup, not one per create"
    );
    let devices = h.sim.devices();
    for id in ids {
        let ext = store.extension(id).await.unwrap();
        let mine = by_number(&devices, &ext.number);
        assert_eq!(mine.len(), 1, "no duplicate");
        assert_eq!(ext.mbg_device_id.as_deref(), Some(mine[0].guid.as_str()));
        assert_eq!(ext.state, ExtensionState::Provisioned);
    }
}

async fn an_outcome_for_a_row_changed_meanwhile_is_left_for_the_next_pass(db: TestDb) {
    let h = Harness::new(db, sim_config()).await.with_token().await;
    let store = &h.db.store;
    nodes(store).await;
    let id = set(store, "1001", "pbx1", true).await;
    pass(&h).await;
    // Planned while the extension is off...
    set(store, "1001", "pbx1", false).await;
    let client = h.client().await;
    let extensions = store.extensions().await.unwrap();
    let plan = reconcile::plan::plan(
        &extensions,
        &store.released().await.unwrap(),
        &client.icps().await.unwrap(),
        &client.devices().await.unwrap(),
        None,
    );
    assert_eq!(plan.actions.len(), 1);
    // ...applied after it was switched back on.
    set(store, "1001", "pbx1", true).await;
    let applied = apply_planned(
        store,
        &client,
        &plan,
        extensions,
        Duration::from_secs(5),
        now(),
    )
    .await;
    assert_eq!(applied.outcomes[0].status, Status::Stale);
    let ext = store.extension(id).await.unwrap();
    assert_eq!(
        ext.state,
        ExtensionState::Provisioned,
        "the stale outcome (idle) was not written"
    );
    assert!(
        ext.mbg_device_id.is_none(),
        "but the deleted SIP user is forgotten"
    );
    assert!(
        !store.pending_changes(10).await.unwrap().is_empty(),
        "the change is still to do"
    );
    // The next pass plans from the row as it is: wanted.
    assert_eq!(verbs(&pass(&h).await), [("1001".into(), "create")]);
    assert_eq!(by_number(&h.sim.devices(), "1001").len(), 1);
    assert_eq!(
        store.extension(id).await.unwrap().state,
        ExtensionState::Provisioned
    );
}

#[tokio::test]
async fn failures_past_the_deadline_are_recorded_and_a_refused_token_stops_the_pass() {
    let h = Harness::new(TestDb::sqlite().await, sim_config())
        .await
        .with_token()
        .await;
    let store = &h.db.store;
    nodes(store).await;
    let id = set(store, "1001", "pbx1", true).await;
    pass(&h).await;
    set(store, "1001", "pbx2", true).await; // an update to make
    // A Retry-After beyond the pass's deadline: the reads give up with a clear error.
    let mut config = h.config.clone();
    config.mbg.retry_deadline = Duration::from_secs(2);
    h.sim.set_faults(Faults {
        rate_limit_next: 1,
        retry_after_secs: 7,
        ..Faults::default()
    });
    let client = h.client().await;
    let err = reconcile::run_pass(
        store,
        &client,
        &config,
        Mode::Apply,
        &Shutdown::new(),
        now(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("kept failing") && err.to_string().contains("retry after 7 s"),
        "{err}"
    );
    assert_eq!(
        store.extension(id).await.unwrap().state,
        ExtensionState::Provisioned
    );

    // The update itself limited past the deadline: recorded failed, Retry-After honoured.
    h.sim.set_faults(Faults::default());
    let start = now();
    let extensions = store.extensions().await.unwrap();
    let plan = reconcile::plan::plan(
        &extensions,
        &[],
        &client.icps().await.unwrap(),
        &client.devices().await.unwrap(),
        None,
    );
    h.sim.set_faults(Faults {
        rate_limit_next: 1,
        retry_after_secs: 7,
        ..Faults::default()
    });
    let report = apply_planned(
        store,
        &client,
        &plan,
        extensions,
        Duration::from_secs(2),
        start,
    )
    .await;
    assert_eq!(report.outcomes[0].status, Status::Failed);
    let ext = store.extension(id).await.unwrap();
    assert_eq!(ext.state, ExtensionState::Failed);
    assert_eq!(ext.attempts, 1);
    assert_eq!(ext.next_attempt_at, Some(start + 7), "Retry-After honoured");
    assert!(ext.last_error.unwrap().contains("1001"));

    // The token is revoked: the pass stops calling, and nothing is lost.
    let settings = store.mbg_settings().await.unwrap();
    h.sim.revoke(settings.access_token.unwrap().expose_secret());
    let err = reconcile::run_pass(
        store,
        &client,
        &h.config,
        Mode::Apply,
        &Shutdown::new(),
        now(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, reconcile::ReconcileError::Mbg(ref e) if matches!(e.kind, MbgErrorKind::Unauthorized(_)))
    );
    let ext = store.extension(id).await.unwrap();
    assert!(ext.remote_auth_name.is_some(), "credentials kept");
    assert_eq!(ext.state, ExtensionState::Failed, "still to do");
}

async fn a_node_address_change_moves_its_extensions_to_the_matching_icp(db: TestDb) {
    use sqlx::{Connection, Executor};

    let h = Harness::new(db, sim_config()).await.with_token().await;
    let store = &h.db.store;
    nodes(store).await;
    set(store, "1001", "pbx1", true).await;
    set(store, "2001", "pbx2", true).await;
    assert!(pass(&h).await.succeeded());
    let before = h.sim.devices();
    assert_eq!(by_number(&before, "1001")[0].icp, "MiVO250-1");

    // The phone system's admin re-addresses the nodes, in SQL: pbx1 now has MiVO250-2's address.
    let mut other = sqlx::AnyConnection::connect(&h.db.url).await.unwrap();
    other
        .execute("UPDATE nodes SET address = '10.0.0.98' WHERE name = 'pbx2'")
        .await
        .unwrap();
    other
        .execute("UPDATE nodes SET address = '10.0.0.21' WHERE name = 'pbx1'")
        .await
        .unwrap();
    other.close().await.unwrap();
    let changed: Vec<i64> = store
        .pending_changes(100)
        .await
        .unwrap()
        .iter()
        .map(|c| c.extension_id)
        .collect();
    assert_eq!(changed.len(), 2, "one change per re-addressed extension");

    let moved = pass(&h).await;
    assert!(
        verbs(&moved).contains(&("1001".into(), "update")),
        "{:?}",
        verbs(&moved)
    );
    let after = h.sim.devices();
    let [device] = by_number(&after, "1001")[..] else {
        panic!("still one device for 1001")
    };
    assert_eq!(device.guid, by_number(&before, "1001")[0].guid);
    assert_eq!(device.icp, "MiVO250-2");
    assert!(store.pending_changes(100).await.unwrap().is_empty());
}

async fn a_row_that_cannot_be_read_keeps_its_sip_user_and_the_others_go_on(db: TestDb) {
    use sqlx::Executor;
    let h = Harness::new(db, sim_config()).await.with_token().await;
    let store = &h.db.store;
    nodes(store).await;
    let broken = set(store, "1001", "pbx1", true).await;
    set(store, "1002", "pbx1", true).await;
    pass(&h).await;
    let held = store
        .extension(broken)
        .await
        .unwrap()
        .mbg_device_id
        .unwrap();
    // Another program writes a value we cannot read into 1001, and switches 1002 off.
    let mut other = crate::store::foreign_writer(&h.db).await;
    other
        .execute(sqlx::AssertSqlSafe(format!(
            "UPDATE extensions SET kind = 'analogue', use_remote_auth = false WHERE id = {broken}"
        )))
        .await
        .unwrap();
    set(store, "1002", "pbx1", false).await;
    let report = pass(&h).await;
    assert_eq!(report.bad_rows.len(), 1);
    assert_eq!(report.bad_rows[0].column, "kind");
    assert!(report.needs_attention(), "sync exits 2");
    assert_eq!(
        verbs(&report),
        [("1002".into(), "delete")],
        "the others go on"
    );
    let devices = h.sim.devices();
    assert_eq!(devices.len(), 1);
    assert_eq!(
        devices[0].guid, held,
        "the unreadable row's SIP user is left alone"
    );
    let rows = store.extension_rows().await.unwrap();
    assert!(rows.good.iter().all(|e| e.number != "1001"));
}

#[tokio::test]
async fn a_retry_after_holds_back_the_rest_of_the_round() {
    let h = Harness::new(TestDb::sqlite().await, sim_config())
        .await
        .with_token()
        .await;
    let store = &h.db.store;
    nodes(store).await;
    for i in 0..40 {
        let id = set(store, &format!("40{i:02}"), "pbx1", true).await;
        store
            .fill_remote_credentials(
                id,
                &format!("name40{i:02}"),
                &SecretString::from(format!("password-40{i:02}")),
            )
            .await
            .unwrap();
    }
    let client = h.client().await;
    let extensions = store.extensions().await.unwrap();
    let plan = reconcile::plan::plan(
        &extensions,
        &[],
        &client.icps().await.unwrap(),
        &client.devices().await.unwrap(),
        None,
    );
    assert_eq!(plan.changes().count(), 40);
    // The MBG refuses everything for a while, asking for 1 s between tries.
    h.sim.set_faults(Faults {
        rate_limit_next: 10_000,
        retry_after_secs: 1,
        ..Faults::default()
    });
    h.sim.clear_requests();
    let report = apply_planned(
        store,
        &client,
        &plan,
        extensions,
        Duration::from_secs(3),
        now(),
    )
    .await;
    let posts = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    // At most max_in_flight (4) calls per round, and at most 4 rounds: no storm of 40 x 4.
    assert!(posts <= 16, "{posts} POSTs");
    assert!(report.outcomes.iter().all(|o| o.status == Status::Failed));
    let failed = store.extensions().await.unwrap();
    assert!(
        failed
            .iter()
            .all(|e| e.state == ExtensionState::Failed && e.next_attempt_at.is_some())
    );
}

/// The outcome writer groups commits; a stop must still leave every SIP user that the MBG
/// created recorded against its extension, with its audit row, before the pass returns.
async fn a_stopped_pass_records_every_call_it_made(db: TestDb) {
    let mut sim = sim_config();
    sim.faults = Faults {
        latency_ms: 10,
        ..Faults::default()
    };
    let mut h = Harness::new(db, sim).await.with_token().await;
    h.config.mbg.max_in_flight = 32;
    let store = &h.db.store;
    nodes(store).await;
    for i in 0..300 {
        set(store, &format!("5{i:03}"), "pbx1", true).await;
    }
    let client = h.client().await;
    let shutdown = Shutdown::new();
    let stop_midway = async {
        while h.sim.devices().len() < 60 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        shutdown.trigger(2);
    };
    let (report, ()) = tokio::join!(
        reconcile::run_pass(store, &client, &h.config, Mode::Apply, &shutdown, now()),
        stop_midway
    );
    let report = report.unwrap();
    let applied = report.applied.as_ref().unwrap();
    assert!(applied.interrupted);
    let devices = h.sim.devices();
    assert!(
        devices.len() >= 60 && devices.len() < 300,
        "stopped midway: {} made",
        devices.len()
    );
    let recorded = crate::support::assert_every_sip_user_recorded(store, &devices).await;
    assert_eq!(
        recorded.len(),
        devices.len(),
        "nothing recorded that was not made"
    );
    let audited = store
        .audit_log(10_000)
        .await
        .unwrap()
        .iter()
        .filter(|a| a.action == "create" && a.outcome == "ok")
        .count();
    assert_eq!(audited, devices.len(), "one audit row per create");
    let provisioned = store
        .extensions()
        .await
        .unwrap()
        .iter()
        .filter(|e| e.state == ExtensionState::Provisioned)
        .count();
    assert_eq!(provisioned, devices.len());
}

/// The pass planned from a device list read before another holder of the pass lock created
/// this extension's SIP user (its credentials, its ICP): the MBG refuses the create (400, the
/// set-side name in use). One device list read shows the SIP user is this extension's own, so
/// it is taken back, not sent to needs-attention, and no second one is made.
async fn a_refused_create_of_a_sip_user_already_ours_is_taken_back(db: TestDb) {
    let h = Harness::new(db, sim_config()).await.with_token().await;
    nodes(&h.db.store).await;
    set(&h.db.store, "1001", "pbx1", true).await;
    crate::service::sql(
        &h.db.url,
        "UPDATE extensions SET remote_auth_name = 'ours1001', remote_auth_password = 'Ours-Pass-1001'",
    )
    .await;
    let client = h.client().await;
    let mut stale = reconcile::MbgView::read(&client, &h.config, &Shutdown::new())
        .await
        .unwrap();
    let made = h
        .sim
        .add_device(DeviceFields {
            setside_username: Some("ours1001".into()),
            setside_password: Some("Ours-Pass-1001".into()),
            icpside_password: Some("pbx-sip-1001".into()),
            description: Some("mbg-provision ext 1001".into()),
            ..manual("1001", "MiVO250-1", "ours1001")
        })
        .unwrap();
    let report = reconcile::run_pass_with(
        &h.db.store,
        &client,
        &h.config,
        Mode::Apply,
        &Shutdown::new(),
        now(),
        &mut stale,
        &Default::default(),
        None,
    )
    .await
    .unwrap();
    let outcomes = &report.applied.as_ref().unwrap().outcomes;
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0].status, Status::Done, "{outcomes:?}");
    assert_eq!(
        count(&h, "POST", "/devices/sip/", 400),
        1,
        "the create was refused"
    );
    let row = h.db.store.extension_by_number("1001").await.unwrap();
    assert_eq!(row.mbg_device_id.as_deref(), Some(made.as_str()));
    assert_eq!(row.state, ExtensionState::Provisioned);
    assert_eq!(h.sim.devices().len(), 1);
}

/// The extension's row names a SIP user other than the one it was provisioned as (repointed by
/// hand): the pass deletes the copy carrying the extension's credentials and gives them to the
/// SIP user the row names. The simulator, like an MBG with a unique set-side name, refuses the
/// name while the copy holds it, and holds the first change back 300 ms: the update must wait
/// for the delete, not race it.
async fn a_second_copy_is_gone_before_its_name_goes_to_the_one_kept(db: TestDb) {
    let h = Harness::new(db, sim_config()).await.with_token().await;
    let store = &h.db.store;
    nodes(store).await;
    let id = set(store, "1001", "pbx1", true).await;
    pass(&h).await;
    let first = store.extension(id).await.unwrap().mbg_device_id.unwrap();
    let kept = h
        .sim
        .add_device(manual("9999", "MiVO250-1", "by-hand-1001"))
        .unwrap();
    store.record_device(id, Some(&kept), true).await.unwrap();
    h.sim.set_faults(Faults {
        slow_changes_next: 1,
        spike_ms: 300,
        ..Default::default()
    });

    let report = pass(&h).await;
    assert_eq!(
        verbs(&report),
        [("1001".into(), "delete"), ("1001".into(), "update")]
    );
    let outcomes = &report.applied.as_ref().unwrap().outcomes;
    assert!(
        outcomes.iter().all(|o| o.status == Status::Done),
        "{outcomes:?}"
    );
    let devices = h.sim.devices();
    assert_eq!(devices.len(), 1, "{devices:?}");
    let ext = store.extension(id).await.unwrap();
    assert_eq!(devices[0].guid, kept);
    assert_ne!(devices[0].guid, first);
    assert_eq!(
        Some(&devices[0].setside_username),
        ext.remote_auth_name.as_ref()
    );
    assert_eq!(devices[0].icpside_username, "1001");
}

/// The changes a pass's outcomes acknowledge count towards the vacuum after a large pass on
/// PostgreSQL, as those acknowledged at its end do: a first sync acknowledges nearly all of its
/// changes with their outcomes.
async fn a_large_pass_vacuums_the_changes_its_outcomes_acknowledged(db: TestDb) {
    use mbg_provision::store::Backend;
    use sqlx::Connection;
    let h = Harness::new(db, sim_config()).await.with_token().await;
    let store = &h.db.store;
    nodes(store).await;
    for i in 0..600 {
        set(store, &(2000 + i).to_string(), "pbx1", true).await;
    }
    let vacuums = async || -> i64 {
        let mut connection = sqlx::PgConnection::connect(&h.db.url).await.unwrap();
        sqlx::query_scalar(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'extension_changes'",
        )
        .fetch_one(&mut connection)
        .await
        .unwrap()
    };
    let postgres = store.backend() == Backend::Postgres;
    if postgres {
        assert_eq!(vacuums().await, 0, "vacuumed before the pass");
    }
    let report = pass(&h).await;
    assert!(report.succeeded());
    assert_eq!(h.sim.devices().len(), 600);
    assert!(
        store.pending_changes(10).await.unwrap().is_empty(),
        "every change acknowledged"
    );
    if postgres {
        let started = Instant::now();
        while vacuums().await == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "extension_changes was not vacuumed after 1,200 changes were acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// SQL that makes the database refuse to store remote credentials for `number` (as a full disk
/// would, but for one row), and SQL that takes that back.
pub(crate) fn planted_fill_failure(
    backend: mbg_provision::store::Backend,
    number: &str,
) -> (String, String) {
    use mbg_provision::store::Backend;
    match backend {
        Backend::Sqlite => (
            format!(
                "CREATE TRIGGER planted_failure BEFORE UPDATE OF remote_auth_name ON extensions
                 WHEN NEW.number = '{number}' AND NEW.remote_auth_name IS NOT NULL
                 BEGIN SELECT RAISE(ABORT, 'planted: no room left'); END;"
            ),
            "DROP TRIGGER planted_failure".into(),
        ),
        Backend::Postgres => (
            format!(
                "CREATE FUNCTION planted_failure() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                     IF NEW.number = '{number}' AND NEW.remote_auth_name IS NOT NULL THEN
                         RAISE EXCEPTION 'planted: no room left';
                     END IF;
                     RETURN NEW;
                 END $$;
                 CREATE TRIGGER planted_failure BEFORE UPDATE ON extensions
                 FOR EACH ROW EXECUTE FUNCTION planted_failure();"
            ),
            "DROP TRIGGER planted_failure ON extensions; DROP FUNCTION planted_failure();".into(),
        ),
    }
}

/// The credentials a pass draws are stored in chunks while its calls go on, each call waiting
/// for its own chunk. A chunk the database refuses (here a trigger planted on one row, as a
/// full disk would) stops the pass: it says how many extensions' credentials were not stored,
/// every SIP user on the MBG carries credentials the database committed, and the next pass
/// does the rest without a duplicate.
async fn a_fill_that_fails_midway_stops_the_pass_and_sends_nothing_uncommitted(db: TestDb) {
    let mut h = Harness::new(db, sim_config()).await.with_token().await;
    // Chunks of 4, 8, 16, 32, then 40: the refused row, the 31st, is in the fourth.
    h.config.mbg.max_in_flight = 4;
    let store = &h.db.store;
    nodes(store).await;
    for i in 0..100 {
        set(store, &(2000 + i).to_string(), "pbx1", true).await;
    }
    let (plant, unplant) = planted_fill_failure(store.backend(), "2030");
    crate::service::sql(&h.db.url, &plant).await;
    let mbg_carries_what_was_committed = async || {
        let rows: HashMap<String, mbg_provision::store::Extension> = store
            .extensions()
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.number.clone(), e))
            .collect();
        for device in h.sim.devices() {
            let row = &rows[&device.icpside_username];
            assert_eq!(
                row.remote_auth_name.as_deref(),
                Some(device.setside_username.as_str()),
                "{}: a set-side name the database never committed",
                row.number
            );
            assert_eq!(
                row.remote_auth_password
                    .as_ref()
                    .map(|p| p.expose_secret().to_string()),
                Some(device.setside_password.clone()),
                "{}: a set-side password the database never committed",
                row.number
            );
        }
        rows
    };

    let client = h.client().await;
    let error = reconcile::run_pass(
        store,
        &client,
        &h.config,
        Mode::Apply,
        &Shutdown::new(),
        now(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("for 72 extension(s)")
            && error.contains("(the pass stopped there)")
            && error.contains("planted: no room left"),
        "{error}"
    );
    let rows = mbg_carries_what_was_committed().await;
    let without: Vec<&str> = rows
        .values()
        .filter(|e| e.remote_auth_name.is_none())
        .map(|e| e.number.as_str())
        .collect();
    assert_eq!(without.len(), 72, "the refused chunk and those after it");
    assert!(without.contains(&"2030"));
    assert!(
        h.sim.devices().len() <= 28,
        "only extensions of the stored chunks may have been created: {}",
        h.sim.devices().len()
    );

    crate::service::sql(&h.db.url, &unplant).await;
    let report = pass(&h).await;
    assert!(report.succeeded());
    mbg_carries_what_was_committed().await;
    let devices = h.sim.devices();
    assert_eq!(devices.len(), 100);
    let mut numbers: Vec<&str> = devices
        .iter()
        .map(|d| d.icpside_username.as_str())
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), 100, "no extension created twice");
}
