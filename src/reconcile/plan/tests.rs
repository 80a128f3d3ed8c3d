use std::collections::HashSet;

use proptest::prelude::*;
use secrecy::SecretString;

use super::*;
use crate::reconcile::near::Step;
use crate::store::{ExtensionKind, ExtensionState};

fn icp(name: &str, address: &str) -> Icp {
    Icp {
        guid: format!("icp-{name}"),
        name: name.into(),
        address: address.into(),
        icptype: String::new(),
    }
}

fn icps() -> Vec<Icp> {
    vec![icp("MiVO250-1", "10.0.0.1"), icp("MiVO250-2", "10.0.0.2")]
}

/// A row with remote credentials, on a node named after its address (also the row of other
/// modules' tests).
pub(crate) fn extension(id: i64, number: &str, address: &str, wanted: bool) -> Extension {
    Extension {
        id,
        node_id: 1,
        node_name: format!("node-{address}"),
        node_address: address.into(),
        number: number.into(),
        kind: ExtensionKind::Sip,
        sip_password: SecretString::from(format!("sip-pass-{number}")),
        use_remote_auth: wanted,
        remote_auth_name: Some(format!("remote{number}")),
        remote_auth_password: Some(SecretString::from(format!("remote-pass-{number}"))),
        mbg_device_id: None,
        provisioned_by_us: false,
        state: ExtensionState::Idle,
        last_error: None,
        attempts: 0,
        next_attempt_at: None,
        version: 1,
        updated_at: 0,
    }
}

fn device(guid: &str, number: &str, icp: &str, setside: &str) -> SipDevice {
    SipDevice {
        guid: guid.into(),
        icp: icp.into(),
        setside_username: setside.into(),
        setside_password: SecretString::from("manual-pass"),
        icpside_username: number.into(),
        icpside_password: SecretString::from("manual-pass"),
        description: "added by hand".into(),
        enabled: true,
    }
}

fn owned(mut e: Extension, guid: &str) -> Extension {
    e.mbg_device_id = Some(guid.into());
    e.provisioned_by_us = true;
    e
}

/// The device an extension's create would produce, as the MBG would then hold it.
fn as_created(guid: &str, d: &NewSipDevice) -> SipDevice {
    d.created(guid)
}

fn patched(device: &mut SipDevice, patch: &SipDevicePatch) {
    patch.apply_to(device);
}

/// What `apply` does to the database and the MBG when every action succeeds.
fn apply_all(
    extensions: &mut [Extension],
    released: &mut Vec<Released>,
    devices: &mut Vec<SipDevice>,
    plan: &Plan,
) {
    for (n, action) in plan.actions.iter().enumerate() {
        let ext = |extensions: &mut [Extension], id: Option<i64>| {
            id.and_then(|id| extensions.iter_mut().position(|e| e.id == id))
        };
        match action {
            Action::Create {
                extension_id, icp, ..
            } => {
                let guid = format!("created-{n}-{extension_id}");
                let i = ext(extensions, Some(*extension_id)).unwrap();
                devices.push(as_created(&guid, &wanted_device(&extensions[i], icp)));
                extensions[i].mbg_device_id = Some(guid);
                extensions[i].provisioned_by_us = true;
            }
            Action::Update { guid, patch, .. } => {
                patched(devices.iter_mut().find(|d| &d.guid == guid).unwrap(), patch);
            }
            Action::Adopt {
                extension_id,
                guid,
                patch,
                ..
            } => {
                patched(devices.iter_mut().find(|d| &d.guid == guid).unwrap(), patch);
                let i = ext(extensions, Some(*extension_id)).unwrap();
                extensions[i].mbg_device_id = Some(guid.clone());
                extensions[i].provisioned_by_us = true;
            }
            Action::Delete { owner, guid, .. } => {
                devices.retain(|d| &d.guid != guid);
                forget(extensions, released, *owner);
            }
            Action::Forget { owner, .. } => forget(extensions, released, *owner),
            Action::Report { .. } => {}
        }
    }
}

fn forget(extensions: &mut [Extension], released: &mut Vec<Released>, owner: Owner) {
    match owner {
        Owner::Extension(id) => {
            let e = extensions.iter_mut().find(|e| e.id == id).unwrap();
            e.mbg_device_id = None;
            e.provisioned_by_us = false;
        }
        Owner::Released { id, last: true } => released.retain(|r| r.id != id),
        Owner::Released { last: false, .. } | Owner::Duplicate => {}
    }
}

fn released_row(id: i64, number: &str, guid: Option<&str>) -> Released {
    Released {
        id,
        number: number.into(),
        mbg_device_id: guid.map(Into::into),
        remote_auth_name: None,
        remote_auth_password: None,
        released_at: 0,
    }
}

/// A device that one of our creates made for `e`, whose guid never reached the database.
fn made_for(guid: &str, e: &Extension, icp: &str) -> SipDevice {
    let mut d = as_created(guid, &wanted_device(e, &icps()[0].name));
    d.icp = icp.into();
    d
}

#[test]
fn creates_under_the_icp_of_the_node_with_the_contract_fields() {
    let extensions = [extension(1, "1001", "10.0.0.2", true)];
    let plan = plan(&extensions, &[], &icps(), &[], None);
    let [Action::Create { icp, .. }] = plan.actions.as_slice() else {
        panic!("{plan:?}")
    };
    let device = wanted_device(&extensions[0], icp);
    assert_eq!(device.icp, "MiVO250-2");
    assert_eq!(device.icpside_username, "1001");
    assert_eq!(device.setside_username, "remote1001");
    assert_eq!(device.description, "mbg-provision ext 1001");
    assert!(device.enabled);
}

#[test]
fn a_node_move_updates_only_the_icp() {
    let extensions = [owned(extension(1, "1001", "10.0.0.2", true), "g1")];
    let mut on_old = as_created("g1", &wanted_device(&extensions[0], &icps()[1].name));
    on_old.icp = "MiVO250-1".into();
    let plan = plan(&extensions, &[], &icps(), &[on_old], None);
    let [Action::Update { changes, patch, .. }] = plan.actions.as_slice() else {
        panic!("{plan:?}")
    };
    assert_eq!(changes, &["icp"]);
    assert_eq!(patch.icp.as_deref(), Some("MiVO250-2"));
    assert!(patch.setside_password.is_none());
}

#[test]
fn switching_off_deletes_only_our_device() {
    let ours = owned(extension(1, "1001", "10.0.0.1", false), "g1");
    let not_ours = extension(2, "1002", "10.0.0.1", false);
    let devices = [
        device("g1", "1001", "MiVO250-1", "remote1001"),
        device("g2", "1002", "MiVO250-1", "manual"),
    ];
    let plan = plan(&[ours, not_ours], &[], &icps(), &devices, None);
    assert_eq!(plan.actions.len(), 1, "{plan:?}");
    assert_eq!(plan.actions[0].target_guid(), Some("g1"));
    assert_eq!(plan.actions[0].verb(), "delete");
}

#[test]
fn adopts_an_exact_number_and_icp_match_and_nothing_looser() {
    let devices = [
        device("elsewhere", "1002", "MiVO250-2", "manual1"),
        device("exact", "1001", "MiVO250-1", "manual2"),
    ];
    let extensions = [
        extension(1, "1001", "10.0.0.1", true),
        extension(2, "1002", "10.0.0.1", true),
    ];
    let plan = plan(&extensions, &[], &icps(), &devices, None);
    let Action::Adopt { guid, changes, .. } = &plan.actions[0] else {
        panic!("{plan:?}")
    };
    assert_eq!(guid, "exact");
    assert!(changes.contains(&"setside_password") && changes.contains(&"description"));
    assert!(matches!(
        &plan.actions[1],
        Action::Report { problem: Problem::NumberUsedElsewhere { guid, .. }, .. } if guid == "elsewhere"
    ));
}

#[test]
fn reports_what_a_human_must_fix() {
    let mut no_creds = extension(3, "1003", "10.0.0.1", true);
    no_creds.remote_auth_password = None;
    let extensions = [
        extension(1, "1001", "10.9.9.9", true),
        extension(2, "1002", "10.0.0.1", true),
        no_creds,
    ];
    let devices = [device("taken", "4711", "MiVO250-1", "remote1002")];
    let plan = plan(&extensions, &[], &icps(), &devices, None);
    let problems: Vec<&Problem> = plan
        .actions
        .iter()
        .map(|a| match a {
            Action::Report { problem, .. } => problem,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert!(matches!(problems[0], Problem::NoIcpForNode { address, .. } if address == "10.9.9.9"));
    assert!(matches!(problems[1], Problem::SetsideNameTaken { guid, .. } if guid == "taken"));
    assert_eq!(problems[2], &Problem::MissingCredentials);
    assert!(
        problems[0]
            .fix()
            .contains("add one on the MBG or correct the node address")
    );
}

#[test]
fn the_licence_budget_counts_deletions_first() {
    let extensions = [
        owned(extension(1, "1001", "10.0.0.1", false), "g1"),
        extension(2, "1002", "10.0.0.1", true),
        extension(3, "1003", "10.0.0.1", true),
    ];
    let devices = [
        device("g1", "1001", "MiVO250-1", "remote1001"),
        device("m1", "2001", "MiVO250-1", "manual"),
    ];
    let plan = plan(&extensions, &[], &icps(), &devices, Some(2));
    let verbs: Vec<(&str, &str)> = plan
        .actions
        .iter()
        .map(|a| (a.verb(), a.number()))
        .collect();
    assert_eq!(
        verbs,
        [("delete", "1001"), ("create", "1002"), ("problem", "1003")]
    );
}

#[test]
fn released_devices_are_deleted_or_forgotten() {
    let released = [
        released_row(1, "1001", Some("g1")),
        released_row(2, "1002", Some("gone")),
    ];
    let devices = [device("g1", "1001", "MiVO250-1", "r1")];
    let plan = plan(&[], &released, &icps(), &devices, None);
    let verbs: Vec<&str> = plan.actions.iter().map(Action::verb).collect();
    assert_eq!(verbs, ["delete", "forget"]);
}

#[test]
fn a_device_carrying_an_extensions_credentials_is_ours_wherever_it_is() {
    // A create went through but its guid never reached the database (kill -9, lost answer).
    let on = extension(1, "1001", "10.0.0.2", true);
    let made = made_for("lost", &on, "MiVO250-1");
    // Wanted, now on another node: taken back and moved, not reported as someone else's.
    let plan_on = plan(
        std::slice::from_ref(&on),
        &[],
        &icps(),
        std::slice::from_ref(&made),
        None,
    );
    assert!(
        matches!(&plan_on.actions[..], [Action::Adopt { guid, proof: Adoption::OwnCredentials, changes, .. }]
            if guid == "lost" && changes == &["icp"]),
        "{plan_on:?}"
    );
    // Switched off: deleted.
    let off = extension(1, "1001", "10.0.0.1", false);
    let plan_off = plan(&[off], &[], &icps(), std::slice::from_ref(&made), None);
    assert!(
        matches!(&plan_off.actions[..], [Action::Delete { owner: Owner::Extension(1), guid, .. }] if guid == "lost"),
        "{plan_off:?}"
    );
    // Row deleted: the released row keeps the credentials, and they find it.
    let mut gone = released_row(7, "1001", None);
    gone.remote_auth_name = on.remote_auth_name.clone();
    gone.remote_auth_password = on.remote_auth_password.clone();
    let plan_gone = plan(&[], &[gone], &icps(), std::slice::from_ref(&made), None);
    assert!(
        matches!(&plan_gone.actions[..], [Action::Delete { owner: Owner::Released { id: 7, last: true }, guid, .. }] if guid == "lost"),
        "{plan_gone:?}"
    );
    // The same number and name with another password is not proof: left alone, reported.
    let mut other = made.clone();
    other.setside_password = SecretString::from("someone-elses-1");
    let plan_other = plan(
        &[extension(1, "1001", "10.0.0.2", false)],
        &[],
        &icps(),
        &[other],
        None,
    );
    assert!(plan_other.actions.is_empty(), "{plan_other:?}");
}

#[test]
fn whose_names_the_row_and_the_reason() {
    let recorded = owned(extension(1, "1001", "10.0.0.1", true), "recorded");
    let lost = extension(2, "1002", "10.0.0.1", true);
    let mut gone = released_row(7, "1003", Some("released"));
    gone.remote_auth_name = Some("remote1003".into());
    let devices = [
        made_for("recorded", &recorded, "MiVO250-1"),
        made_for("copy", &recorded, "MiVO250-2"),
        made_for("lost", &lost, "MiVO250-1"),
        device("released", "1003", "MiVO250-1", "remote1003"),
        device("by-hand", "1001", "MiVO250-2", "by-hand-1001"),
    ];
    let row = |id, number: &str| Row::Extension {
        id,
        number: number.into(),
        wanted: true,
    };
    assert_eq!(
        whose(&[recorded, lost], &[gone], &devices),
        [
            Whose::Recorded(row(1, "1001")),
            Whose::Duplicate(row(1, "1001")),
            Whose::Proven(row(2, "1002")),
            Whose::Recorded(Row::Released {
                number: "1003".into()
            }),
            Whose::Foreign,
        ]
    );
    assert!(
        Whose::Foreign
            .to_string()
            .starts_with("not ours (added by hand")
    );
    assert_eq!(
        Whose::Proven(row(2, "1002")).to_string(),
        "ours, carrying the remote credentials of extension 1002 (a create whose answer was lost): the next pass records it"
    );
    // Switched off, the row's SIP user goes, whichever way it is ours.
    let off = extension(2, "1002", "10.0.0.1", false);
    let [proven_off] = &whose(std::slice::from_ref(&off), &[], &devices[2..3])[..] else {
        panic!("one SIP user")
    };
    assert!(!proven_off.is_settled());
    assert!(
        proven_off.to_string().ends_with("the next pass deletes it"),
        "{proven_off}"
    );
    let [recorded_off] = &whose(&[owned(off, "lost")], &[], &devices[2..3])[..] else {
        panic!("one SIP user")
    };
    assert_eq!(
        recorded_off.to_string(),
        "ours, recorded against extension 1002: the next pass deletes it"
    );
}

#[test]
fn second_copies_of_our_device_are_deleted_and_the_recorded_one_kept() {
    let e = owned(extension(1, "1001", "10.0.0.1", true), "b-recorded");
    let devices = [
        made_for("a-copy", &e, "MiVO250-1"),
        made_for("b-recorded", &e, "MiVO250-1"),
        made_for("c-copy", &e, "MiVO250-1"),
    ];
    let plan = plan(&[e], &[], &icps(), &devices, None);
    let deleted: Vec<&str> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Delete {
                owner: Owner::Duplicate,
                guid,
                ..
            } => Some(guid.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(deleted, ["a-copy", "c-copy"]);
    assert_eq!(plan.actions.len(), 2, "{plan:?}");
    assert_eq!(plan.settled[0].state, ExtensionState::Provisioned);
}

#[test]
fn a_guid_claimed_by_two_rows_is_never_deleted_while_one_wants_it() {
    let wanted = owned(extension(1, "1001", "10.0.0.1", true), "g1");
    let copy = owned(extension(2, "1002", "10.0.0.1", false), "g1");
    let d = as_created("g1", &wanted_device(&wanted, &icps()[0].name));
    let plan = plan(&[copy, wanted], &[], &icps(), &[d], Some(1));
    assert!(
        matches!(
            &plan.actions[..],
            [Action::Forget {
                owner: Owner::Extension(2),
                ..
            }]
        ),
        "{plan:?}"
    );
}

#[test]
fn two_wanted_rows_never_share_a_set_side_login() {
    let first = owned(extension(1, "1001", "10.0.0.1", true), "g1");
    let mut copy = extension(2, "1002", "10.0.0.1", true);
    copy.remote_auth_name = first.remote_auth_name.clone();
    let d = as_created("g1", &wanted_device(&first, &icps()[0].name));
    let plan = plan(&[first, copy], &[], &icps(), &[d], None);
    assert!(
        matches!(&plan.actions[..], [Action::Report { number, problem: Problem::SetsideNameShared { number: holder, .. }, .. }]
            if number == "1002" && holder == "1001"),
        "{plan:?}"
    );
}

#[test]
fn more_devices_than_the_budget_do_not_underflow() {
    let devices: Vec<SipDevice> = (0..5)
        .map(|i| {
            device(
                &format!("h{i}"),
                &format!("20{i}"),
                "MiVO250-1",
                &format!("hand{i}"),
            )
        })
        .collect();
    let plan = plan(
        &[extension(1, "1001", "10.0.0.1", true)],
        &[],
        &icps(),
        &devices,
        Some(2),
    );
    assert!(
        matches!(
            &plan.actions[..],
            [Action::Report {
                problem: Problem::LicenceBudget { budget: 2 },
                ..
            }]
        ),
        "{plan:?}"
    );
}

#[test]
fn values_the_mbg_would_refuse_are_reported_not_sent() {
    let mut bad_name = extension(1, "1001", "10.0.0.1", true);
    bad_name.remote_auth_name = Some("has space".into());
    let mut short = extension(2, "1002", "10.0.0.1", true);
    short.remote_auth_password = Some(SecretString::from("short"));
    let plan = plan(&[bad_name, short], &[], &icps(), &[], None);
    let fields: Vec<&str> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Report {
                problem: Problem::Invalid { field, .. },
                ..
            } => Some(*field),
            _ => None,
        })
        .collect();
    assert_eq!(fields, ["remote auth name", "remote auth password"]);
    for action in &plan.actions {
        if let Action::Report { problem, .. } = action {
            assert!(!problem.fix().contains("short"), "a password in: {problem}");
        }
    }
}

#[test]
fn in_sync_extensions_settle_without_actions() {
    let e = owned(extension(1, "1001", "10.0.0.1", true), "g1");
    let d = as_created("g1", &wanted_device(&e, &icps()[0].name));
    let off = extension(2, "1002", "10.0.0.1", false);
    let plan = plan(&[e, off], &[], &icps(), &[d], None);
    assert!(plan.actions.is_empty(), "{plan:?}");
    assert_eq!(
        plan.settled,
        [
            Settled {
                extension_id: 2,
                state: ExtensionState::Idle
            },
            Settled {
                extension_id: 1,
                state: ExtensionState::Provisioned
            },
        ]
    );
}

prop_compose! {
    fn arb_extension(id: i64)(
        number in 1000u32..1012,
        address in prop::sample::select(vec!["10.0.0.1", "10.0.0.2", "10.0.0.9"]),
        wanted in any::<bool>(),
        owned_guid in prop::option::of(0u8..6),
        name_clash in prop::option::of(0u8..6),
    ) -> Extension {
        let mut e = extension(id, &number.to_string(), address, wanted);
        if let Some(g) = owned_guid {
            e.mbg_device_id = Some(format!("g{g}"));
            e.provisioned_by_us = true;
        }
        if let Some(n) = name_clash {
            e.remote_auth_name = Some(format!("set{n}"));
        }
        e
    }
}

prop_compose! {
    fn arb_device()(
        guid in 0u8..10,
        number in 1000u32..1012,
        icp in prop::sample::select(vec!["MiVO250-1", "MiVO250-2"]),
        setside in 0u8..8,
        password_matches in any::<bool>(),
        as_we_write_it in any::<bool>(),
    ) -> SipDevice {
        let mut d = device(&format!("g{guid}"), &number.to_string(), icp, &format!("set{setside}"));
        if password_matches {
            d.setside_password = SecretString::from(format!("remote-pass-{number}"));
        }
        if as_we_write_it {
            d.icpside_password = SecretString::from(format!("sip-pass-{number}"));
            d.description = description(&number.to_string());
        }
        d
    }
}

fn arb_state() -> impl Strategy<Value = (Vec<Extension>, Vec<Released>, Vec<SipDevice>, Option<u32>)>
{
    (
        prop::collection::vec(any::<u8>(), 0..10),
        prop::collection::vec(arb_device(), 0..10),
        prop::collection::vec(0u8..10, 0..3),
        prop::option::of(0u32..12),
    )
        .prop_flat_map(|(ids, devices, released, budget)| {
            let extensions: Vec<_> = (0..ids.len() as i64).map(arb_extension).collect();
            (extensions, Just(devices), Just(released), Just(budget))
        })
        .prop_map(|(mut extensions, mut devices, released, budget)| {
            // The MBG keys devices by guid and the database one guid to one owner.
            let mut seen = HashSet::new();
            devices.retain(|d| seen.insert(d.guid.clone()));
            let mut owners = HashSet::new();
            for e in &mut extensions {
                if let Some(g) = &e.mbg_device_id
                    && !owners.insert(g.clone())
                {
                    e.mbg_device_id = None;
                    e.provisioned_by_us = false;
                }
            }
            let mut numbers = HashSet::new();
            extensions.retain(|e| numbers.insert(e.number.clone()));
            let released = released
                .into_iter()
                .enumerate()
                .filter(|(_, g)| owners.insert(format!("g{g}")))
                .map(|(i, g)| {
                    // Some deleted rows left only their credentials (a lost create).
                    let number = 1000 + u32::from(g);
                    let mut r =
                        released_row(i as i64 + 100, &number.to_string(), Some(&format!("g{g}")));
                    if g % 3 == 0 {
                        r.mbg_device_id = None;
                    }
                    if g % 2 == 0 {
                        r.remote_auth_name = Some(format!("set{}", g % 8));
                        r.remote_auth_password =
                            Some(SecretString::from(format!("remote-pass-{number}")));
                    }
                    r
                })
                .collect::<Vec<_>>();
            (extensions, released, devices, budget)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn applying_the_plan_then_planning_again_changes_nothing(
        (mut extensions, mut released, mut devices, budget) in arb_state()
    ) {
        let first = plan(&extensions, &released, &icps(), &devices, budget);
        apply_all(&mut extensions, &mut released, &mut devices, &first);
        let second = plan(&extensions, &released, &icps(), &devices, budget);
        let calls: Vec<_> = second.actions.iter().filter(|a| a.is_mbg_call()).collect();
        prop_assert!(calls.is_empty(), "second plan still calls the MBG: {calls:?}");
        // What may remain is bookkeeping: a released row whose duplicates went with it.
        apply_all(&mut extensions, &mut released, &mut devices, &second);
        let third = plan(&extensions, &released, &icps(), &devices, budget);
        let changes: Vec<_> = third.changes().collect();
        prop_assert!(changes.is_empty(), "third plan still changes: {changes:?}");
    }

    #[test]
    fn only_our_devices_are_touched_except_exact_adoptions(
        (extensions, released, devices, budget) in arb_state()
    ) {
        let owned: HashSet<String> = extensions
            .iter()
            .filter(|e| e.provisioned_by_us)
            .filter_map(|e| e.mbg_device_id.clone())
            .chain(released.iter().filter_map(|r| r.mbg_device_id.clone()))
            .collect();
        // Proof by credentials: the number and both set-side values of a row, live or released.
        let proven = |d: &SipDevice| {
            extensions.iter().any(|e| carries_credentials(d, &e.number, e.remote_auth_name.as_deref(), e.remote_auth_password.as_ref()))
                || released.iter().any(|r| carries_credentials(d, &r.number, r.remote_auth_name.as_deref(), r.remote_auth_password.as_ref()))
        };
        let plan = plan(&extensions, &released, &icps(), &devices, budget);
        for action in &plan.actions {
            let Some(guid) = action.target_guid() else { continue };
            let d = devices.iter().find(|d| d.guid == guid).unwrap();
            if owned.contains(guid) || proven(d) {
                continue;
            }
            let Action::Adopt { extension_id, .. } = action else {
                return Err(TestCaseError::fail(format!("touches a device not ours: {action:?}")));
            };
            let e = extensions.iter().find(|e| e.id == *extension_id).unwrap();
            let icp = icps().into_iter().find(|i| i.address == e.node_address).unwrap();
            prop_assert_eq!(&d.icpside_username, &e.number);
            prop_assert_eq!(&d.icp, &icp.name);
        }
    }

    /// What `extension show` and preflight say of a SIP user is what the plan does with it:
    /// it touches only ours (or adopts one nobody holds), and deletes as duplicates exactly
    /// those it calls duplicates.
    #[test]
    fn whose_says_what_the_plan_does(
        (extensions, released, devices, budget) in arb_state()
    ) {
        let whose = whose(&extensions, &released, &devices);
        let plan = plan(&extensions, &released, &icps(), &devices, budget);
        let mut duplicates_deleted = 0;
        for action in &plan.actions {
            let Some(guid) = action.target_guid() else { continue };
            let d = devices.iter().position(|d| d.guid == guid).unwrap();
            let fits = match (action, &whose[d]) {
                (Action::Adopt { .. }, Whose::Foreign) => true,
                (Action::Delete { owner: Owner::Duplicate, .. }, Whose::Duplicate(_)) => {
                    duplicates_deleted += 1;
                    true
                }
                (
                    Action::Delete { owner: Owner::Released { .. }, .. },
                    Whose::Recorded(Row::Released { .. }) | Whose::Proven(Row::Released { .. }),
                ) => true,
                (
                    action,
                    Whose::Recorded(Row::Extension { id, .. })
                    | Whose::Proven(Row::Extension { id, .. }),
                ) => action.extension_id() == Some(*id),
                _ => false,
            };
            prop_assert!(fits, "{action:?} on a SIP user that is {:?}", whose[d]);
        }
        let duplicates = whose.iter().filter(|w| matches!(w, Whose::Duplicate(_))).count();
        prop_assert_eq!(duplicates, duplicates_deleted);
    }

    #[test]
    fn a_wanted_rows_device_is_never_deleted(
        (extensions, released, devices, budget) in arb_state()
    ) {
        let plan = plan(&extensions, &released, &icps(), &devices, budget);
        let kept: HashSet<&str> = extensions
            .iter()
            .filter(|e| e.use_remote_auth && e.provisioned_by_us)
            .filter_map(|e| e.mbg_device_id.as_deref())
            .collect();
        for action in &plan.actions {
            if let Action::Delete { guid, .. } = action {
                prop_assert!(!kept.contains(guid.as_str()), "deletes {} that a wanted row holds", guid);
            }
        }
    }

    #[test]
    fn no_two_actions_for_one_extension_or_one_device(
        (extensions, released, devices, budget) in arb_state()
    ) {
        let plan = plan(&extensions, &released, &icps(), &devices, budget);
        let mut ids = HashSet::new();
        let mut guids = HashSet::new();
        for action in &plan.actions {
            if let Some(id) = action.extension_id() {
                prop_assert!(ids.insert(id), "extension {} twice: {:?}", id, plan.actions);
            }
            if let Some(guid) = action.target_guid() {
                prop_assert!(guids.insert(guid.to_string()), "device {} twice", guid);
            }
        }
        for settled in &plan.settled {
            prop_assert!(ids.insert(settled.extension_id), "settled and acted on");
        }
    }
}

/// The steady state's shortcut says "as wanted" exactly when `diff` finds nothing: a device
/// as created is, and one field changed, any of the seven, is not.
#[test]
fn the_settled_shortcut_agrees_with_diff() {
    let e = extension(1, "1001", "10.0.0.1", true);
    let icp = &icps()[0];
    let created = as_created("g1", &wanted_device(&e, &icp.name));
    assert!(is_as_wanted(&created, &e, icp));
    assert!(diff(&created, &wanted_device(&e, &icp.name)).1.is_empty());
    let changes: [fn(&mut SipDevice); 8] = [
        |d| d.icp = "MiVO250-2".into(),
        |d| d.setside_username = "other".into(),
        |d| d.setside_password = SecretString::from("Other-password-1"),
        |d| d.icpside_username = "1002".into(),
        |d| d.icpside_password = SecretString::from("Other-password-2"),
        |d| d.description = "changed by hand".into(),
        |d| d.description = "mbg-provision ext 10011".into(),
        |d| d.enabled = false,
    ];
    for (i, change) in changes.iter().enumerate() {
        let mut device = created.clone();
        change(&mut device);
        assert!(!is_as_wanted(&device, &e, icp), "change {i}");
        assert!(
            !diff(&device, &wanted_device(&e, &icp.name)).1.is_empty(),
            "change {i}"
        );
    }
}

#[test]
fn number_order_is_shorter_first_then_by_value() {
    let mut numbers = ["1001", "999", "0999", "20", "x1", "1000"];
    numbers.sort_by_key(|n| number_order(n));
    assert_eq!(numbers, ["20", "999", "0999", "1000", "1001", "x1"]);
}

#[test]
fn sendable_passwords_are_counted_in_characters_without_control_characters() {
    assert!(is_sendable_password("Abcdefg1"));
    assert!(!is_sendable_password("Abcdef1"), "7 characters");
    assert!(is_sendable_password("ééééééé1"), "8 characters, 15 bytes");
    assert!(
        !is_sendable_password("Abcdefg1\t"),
        "an ASCII control character"
    );
    assert!(
        !is_sendable_password("Abcdefg1\u{85}"),
        "a non-ASCII control character"
    );
    assert!(!is_sendable_password(&"a".repeat(129)));
}

#[test]
fn devices_sort_by_their_whole_guid() {
    let e = extension(1, "1001", "10.0.0.1", true);
    let guids = [
        "aaaaaaaaaaaaaaaa2",
        "b",
        "aaaaaaaaaaaaaaaa1",
        "a",
        "aaaaaaaaaaaaaaaa",
        "ab",
    ];
    let devices: Vec<SipDevice> = guids
        .iter()
        .map(|g| as_created(g, &wanted_device(&e, &icps()[0].name)))
        .collect();
    let mut positions: Vec<usize> = (0..devices.len()).collect();
    sort_by_guid(&mut positions, &devices);
    let sorted: Vec<&str> = positions
        .iter()
        .map(|&d| devices[d].guid.as_str())
        .collect();
    let mut expected = guids.to_vec();
    expected.sort();
    assert_eq!(sorted, expected);
}

/// The rows a store would return for `keys`.
fn matching(extensions: &[Extension], keys: &crate::store::RowKeys) -> crate::store::ExtensionRows {
    let good = extensions
        .iter()
        .filter(|e| {
            keys.ids.contains(&e.id)
                || keys.numbers.contains(&e.number)
                || e.remote_auth_name
                    .as_ref()
                    .is_some_and(|n| keys.names.contains(n))
                || e.mbg_device_id
                    .as_ref()
                    .is_some_and(|g| keys.guids.contains(g))
        })
        .cloned()
        .collect();
    crate::store::ExtensionRows {
        good,
        bad: Vec::new(),
    }
}

/// What a plan says about `ids` and the released rows, comparable across plans.
fn about(plan: &Plan, ids: &HashSet<i64>) -> (Vec<String>, Vec<Settled>) {
    let mut actions: Vec<String> = plan
        .actions
        .iter()
        .filter(|a| match a {
            Action::Delete { owner, .. } | Action::Forget { owner, .. } => match owner {
                Owner::Extension(id) => ids.contains(id),
                Owner::Released { .. } => true,
                Owner::Duplicate => false,
            },
            other => other.extension_id().is_some_and(|id| ids.contains(&id)),
        })
        .map(|a| format!("{a:?}"))
        .collect();
    actions.sort();
    let mut settled: Vec<Settled> = plan
        .settled
        .iter()
        .filter(|s| ids.contains(&s.extension_id))
        .cloned()
        .collect();
    settled.sort_by_key(|s| s.extension_id);
    (actions, settled)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// A targeted pass plans from the neighbourhood of its changes only: that must give the
    /// changed rows (and the released ones) exactly what the plan of everything gives them.
    #[test]
    fn the_neighbourhood_plans_its_rows_as_the_whole_database_does(
        (extensions, released, devices, _) in arb_state(),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 1..3),
    ) {
        prop_assume!(!extensions.is_empty());
        let changed: HashSet<i64> =
            picks.iter().map(|i| extensions[i.index(extensions.len())].id).collect();
        let view = crate::reconcile::MbgView::new(icps(), devices.clone());
        let mut near = crate::reconcile::near::Near::new(changed.iter().copied());
        let close = |near: &mut crate::reconcile::near::Near| loop {
            match near.step(&view) {
                Step::Read(keys) => near.add_rows(matching(&extensions, &keys)),
                Step::Closed => break,
                Step::TooFar => panic!("a neighbourhood of a few rows takes a few rounds"),
            }
        };
        close(&mut near);
        near.add_released(&released);
        close(&mut near);
        let (rows, near_devices) = near.into_parts();
        let subset = view.devices_for(Some(&near_devices), &rows.good, &released);
        let whole = plan(&extensions, &released, &icps(), &devices, None);
        let part = plan(&rows.good, &released, &icps(), &subset, None);
        prop_assert_eq!(about(&whole, &changed), about(&part, &changed));
        // And whose each SIP user near is (what `extension show` says) as from everything.
        let whose_whole = whose(&extensions, &released, &devices);
        for (device, near_whose) in subset.iter().zip(whose(&rows.good, &released, &subset)) {
            let d = devices.iter().position(|d| d.guid == device.guid).unwrap();
            prop_assert_eq!(&whose_whole[d], &near_whose, "{}", device.guid);
        }
    }

    /// The view keeps hashes of the passwords and the description, restored from the rows
    /// before a pass: the plan from the restored SIP users is the plan from the real ones.
    #[test]
    fn the_kept_view_plans_as_the_sip_users_themselves(
        (extensions, released, devices, budget) in arb_state()
    ) {
        let view = crate::reconcile::MbgView::new(icps(), devices.clone());
        let restored = view.devices_for(None, &extensions, &released);
        let real = plan(&extensions, &released, &icps(), &devices, budget);
        let kept = plan(&extensions, &released, &icps(), &restored, budget);
        let text = |p: &Plan| (format!("{:?}", p.actions), format!("{:?}", p.settled));
        prop_assert_eq!(text(&real), text(&kept));
    }
}

/// A sync's follow-up pass replaces what the first pass planned for the same extension and
/// keeps the rest; lookups by id find each once.
#[test]
fn planned_extensions_take_in_a_later_pass_by_id() {
    use crate::reconcile::Planned;
    let first = Planned::new(vec![
        extension(3, "1003", "10.0.0.20", true),
        extension(1, "1001", "10.0.0.20", true),
    ]);
    let mut later = extension(3, "2003", "10.0.0.20", false);
    later.version = 7;
    let mut all = first;
    all.take_in(Planned::new(vec![
        later,
        extension(2, "1002", "10.0.0.20", true),
    ]));
    assert_eq!(
        all.get(&3).map(|e| (e.number.as_str(), e.version)),
        Some(("2003", 7))
    );
    assert_eq!(all.get(&1).map(|e| e.number.as_str()), Some("1001"));
    assert!(all.contains_key(&2));
    assert!(!all.contains_key(&4));
}
