//! The plan: what to do on the MBG so that it matches the database. A pure function of the
//! database's extensions, the SIP users we released, and what the MBG holds; no I/O, so every
//! rule here is unit- and property-tested.
//!
//! Rules, in order of precedence:
//! - A device is ours when its guid is recorded against an extension with `provisioned_by_us`,
//!   or in `released_devices`. Only ours are updated or deleted.
//! - A device that is not ours is adopted only when it has exactly the extension's number as its
//!   ICP-side name, under the ICP of the extension's node; its credentials are then overwritten
//!   with the database's, as the phone system itself does.
//! - Every other device is left alone; conflicts with it are reported, never resolved by force.

use std::collections::{HashMap, HashSet};
use std::fmt;

use secrecy::{ExposeSecret, SecretString};

use crate::mbg::{Icp, NewSipDevice, SipDevice, SipDevicePatch};
use crate::store::{Extension, ExtensionState, ReleasedDevice};

/// What a human must fix; the extension is not sent to the MBG until then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    NoIcpForNode {
        node: String,
        address: String,
    },
    /// Another SIP user, not ours, already has this set-side name.
    SetsideNameTaken {
        name: String,
        guid: String,
    },
    /// A SIP user we do not own has this number under another ICP.
    NumberUsedElsewhere {
        icp: String,
        guid: String,
    },
    /// `mbg.teleworker_licences` would be exceeded.
    LicenceBudget {
        budget: u32,
    },
    /// Remote credentials are not set (they are generated before planning; seen only if that
    /// failed).
    MissingCredentials,
}

impl Problem {
    /// The fix to make, for the plan's table.
    pub fn fix(&self) -> String {
        match self {
            Problem::NoIcpForNode { node, address } => format!(
                "no ICP on the MBG has the address {address} of node {node}: add one on the MBG or correct the node address"
            ),
            Problem::SetsideNameTaken { name, guid } => format!(
                "the set-side name {name} is used by SIP user {guid}, which mbg-provision does not own: rename or remove that user on the MBG, or clear this extension's remote auth name"
            ),
            Problem::NumberUsedElsewhere { icp, guid } => format!(
                "SIP user {guid} under ICP {icp} already has this number and is not ours: remove it on the MBG or move the extension's node"
            ),
            Problem::LicenceBudget { budget } => format!(
                "the teleworker licence budget of {budget} (mbg.teleworker_licences) is used up: raise it, or switch other extensions off"
            ),
            Problem::MissingCredentials => {
                "remote credentials are missing and could not be generated".to_string()
            }
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fix())
    }
}

#[derive(Debug, Clone)]
pub enum Action {
    Create {
        extension_id: i64,
        number: String,
        device: NewSipDevice,
    },
    /// Change the fields in `changes` of a device we own.
    Update {
        extension_id: i64,
        number: String,
        guid: String,
        changes: Vec<&'static str>,
        patch: SipDevicePatch,
    },
    /// Take over a device with exactly this number under the right ICP.
    Adopt {
        extension_id: i64,
        number: String,
        guid: String,
        changes: Vec<&'static str>,
        patch: SipDevicePatch,
    },
    /// Remove a device we own; `extension_id` is `None` when the extension row was deleted.
    Delete {
        extension_id: Option<i64>,
        number: String,
        guid: String,
    },
    /// Our record names a device the MBG no longer has: clear the record, no MBG call.
    Forget {
        extension_id: Option<i64>,
        number: String,
        guid: String,
    },
    Report {
        extension_id: i64,
        number: String,
        problem: Problem,
    },
}

impl Action {
    pub fn number(&self) -> &str {
        match self {
            Action::Create { number, .. }
            | Action::Update { number, .. }
            | Action::Adopt { number, .. }
            | Action::Delete { number, .. }
            | Action::Forget { number, .. }
            | Action::Report { number, .. } => number,
        }
    }

    pub fn extension_id(&self) -> Option<i64> {
        match self {
            Action::Create { extension_id, .. }
            | Action::Update { extension_id, .. }
            | Action::Adopt { extension_id, .. }
            | Action::Report { extension_id, .. } => Some(*extension_id),
            Action::Delete { extension_id, .. } | Action::Forget { extension_id, .. } => {
                *extension_id
            }
        }
    }

    /// The device this action changes on the MBG, if any.
    pub fn target_guid(&self) -> Option<&str> {
        match self {
            Action::Update { guid, .. }
            | Action::Adopt { guid, .. }
            | Action::Delete { guid, .. } => Some(guid),
            _ => None,
        }
    }

    /// `false` for reports: they change nothing.
    pub fn is_change(&self) -> bool {
        !matches!(self, Action::Report { .. })
    }

    pub fn verb(&self) -> &'static str {
        match self {
            Action::Create { .. } => "create",
            Action::Update { .. } => "update",
            Action::Adopt { .. } => "adopt",
            Action::Delete { .. } => "delete",
            Action::Forget { .. } => "forget",
            Action::Report { .. } => "problem",
        }
    }
}

/// An extension that needs no MBG call, with the state it should show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub extension_id: i64,
    pub state: ExtensionState,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub settled: Vec<Settled>,
}

impl Plan {
    pub fn changes(&self) -> impl Iterator<Item = &Action> {
        self.actions.iter().filter(|a| a.is_change())
    }

    pub fn problems(&self) -> impl Iterator<Item = &Action> {
        self.actions.iter().filter(|a| !a.is_change())
    }
}

/// The description written into devices we create: a hint for humans on the MBG page.
/// Ownership is the guid recorded in the database, never this text.
pub fn description(number: &str) -> String {
    format!("mbg-provision ext {number}")
}

/// The device the database asks for, or the problem that prevents it.
fn wanted_device(extension: &Extension, icp: &Icp) -> Result<NewSipDevice, Problem> {
    let (Some(name), Some(password)) =
        (&extension.remote_auth_name, &extension.remote_auth_password)
    else {
        return Err(Problem::MissingCredentials);
    };
    Ok(NewSipDevice {
        icp: icp.name.clone(),
        setside_username: name.clone(),
        setside_password: password.clone(),
        icpside_username: extension.number.clone(),
        icpside_password: extension.sip_password.clone(),
        description: description(&extension.number),
        enabled: true,
    })
}

/// The fields of `device` that differ from `wanted`, as a patch and as names for humans.
pub fn diff(device: &SipDevice, wanted: &NewSipDevice) -> (SipDevicePatch, Vec<&'static str>) {
    let mut patch = SipDevicePatch::default();
    let mut changes = Vec::new();
    let same = |a: &SecretString, b: &SecretString| a.expose_secret() == b.expose_secret();
    if device.icp != wanted.icp {
        patch.icp = Some(wanted.icp.clone());
        changes.push("icp");
    }
    if device.setside_username != wanted.setside_username {
        patch.setside_username = Some(wanted.setside_username.clone());
        changes.push("setside_username");
    }
    if !same(&device.setside_password, &wanted.setside_password) {
        patch.setside_password = Some(wanted.setside_password.clone());
        changes.push("setside_password");
    }
    if device.icpside_username != wanted.icpside_username {
        patch.icpside_username = Some(wanted.icpside_username.clone());
        changes.push("icpside_username");
    }
    if !same(&device.icpside_password, &wanted.icpside_password) {
        patch.icpside_password = Some(wanted.icpside_password.clone());
        changes.push("icpside_password");
    }
    if device.description != wanted.description {
        patch.description = Some(wanted.description.clone());
        changes.push("description");
    }
    if device.enabled != wanted.enabled {
        patch.enabled = Some(wanted.enabled);
        changes.push("enabled");
    }
    (patch, changes)
}

/// The ICP and device an extension wants, or why it cannot have one.
type Target<'a> = Result<(&'a Icp, NewSipDevice), Problem>;

/// The plan. `budget` is `mbg.teleworker_licences`. At most one action per extension.
pub fn plan(
    extensions: &[Extension],
    released: &[ReleasedDevice],
    icps: &[Icp],
    devices: &[SipDevice],
    budget: Option<u32>,
) -> Plan {
    let by_guid: HashMap<&str, &SipDevice> = devices.iter().map(|d| (d.guid.as_str(), d)).collect();
    let owned: HashSet<&str> = extensions
        .iter()
        .filter(|e| e.provisioned_by_us)
        .filter_map(|e| e.mbg_device_id.as_deref())
        .chain(released.iter().map(|r| r.mbg_device_id.as_str()))
        .collect();
    let mut plan = Plan::default();

    let mut ordered: Vec<&Extension> = extensions.iter().collect();
    ordered
        .sort_by(|a, b| (a.number.len(), &a.number, a.id).cmp(&(b.number.len(), &b.number, b.id)));

    // Deletions first: they free licences for the creations below.
    let mut deleted = 0usize;
    for extension in ordered.iter().filter(|e| !e.use_remote_auth) {
        let ours = extension
            .mbg_device_id
            .as_deref()
            .filter(|_| extension.provisioned_by_us);
        let (action, state) = match ours {
            Some(guid) if by_guid.contains_key(guid) => {
                deleted += 1;
                let action = Action::Delete {
                    extension_id: Some(extension.id),
                    number: extension.number.clone(),
                    guid: guid.to_string(),
                };
                (Some(action), None)
            }
            Some(guid) => {
                let action = Action::Forget {
                    extension_id: Some(extension.id),
                    number: extension.number.clone(),
                    guid: guid.to_string(),
                };
                (Some(action), None)
            }
            None => (None, Some(ExtensionState::Idle)),
        };
        plan.actions.extend(action);
        if let Some(state) = state {
            plan.settled.push(Settled {
                extension_id: extension.id,
                state,
            });
        }
    }
    for device in released {
        let guid = device.mbg_device_id.clone();
        let number = device.number.clone();
        plan.actions.push(if by_guid.contains_key(guid.as_str()) {
            deleted += 1;
            Action::Delete {
                extension_id: None,
                number,
                guid,
            }
        } else {
            Action::Forget {
                extension_id: None,
                number,
                guid,
            }
        });
    }

    // Which foreign device each extension adopts. Set-side name clashes count only devices that
    // stay foreign once the plan is applied (an adopted device becomes ours and takes our
    // name). An adopter that clashes gives its device up, which can make new clashes, hence the
    // loop; it only ever removes adoptions, so it ends.
    let wanted: Vec<(&Extension, Target)> = ordered
        .iter()
        .filter(|e| e.use_remote_auth)
        .map(|e| {
            let target = icps
                .iter()
                .find(|icp| icp.address == e.node_address)
                .ok_or_else(|| Problem::NoIcpForNode {
                    node: e.node_name.clone(),
                    address: e.node_address.clone(),
                })
                .and_then(|icp| wanted_device(e, icp).map(|device| (icp, device)));
            (*e, target)
        })
        .collect();
    let current_of = |e: &Extension| {
        e.mbg_device_id
            .as_deref()
            .filter(|_| e.provisioned_by_us)
            .and_then(|guid| by_guid.get(guid).copied())
    };
    let not_owned = |d: &&SipDevice| !owned.contains(d.guid.as_str());
    let mut adoptions: HashMap<&str, (i64, String)> = HashMap::new(); // guid -> (adopter, name)
    for (e, target) in &wanted {
        let Ok((icp, device)) = target else { continue };
        if current_of(e).is_some() {
            continue;
        }
        if let Some(candidate) = devices.iter().filter(not_owned).find(|d| {
            d.icpside_username == e.number
                && d.icp == icp.name
                && !adoptions.contains_key(d.guid.as_str())
        }) {
            adoptions.insert(&candidate.guid, (e.id, device.setside_username.clone()));
        }
    }
    let clash = |adoptions: &HashMap<&str, (i64, String)>, name: &str| {
        devices
            .iter()
            .filter(not_owned)
            .find(|d| d.setside_username == name && !adoptions.contains_key(d.guid.as_str()))
    };
    loop {
        let giving_up: Vec<&str> = adoptions
            .iter()
            .filter(|(_, (_, name))| clash(&adoptions, name).is_some())
            .map(|(guid, _)| *guid)
            .collect();
        if giving_up.is_empty() {
            break;
        }
        for guid in giving_up {
            adoptions.remove(guid);
        }
    }

    let mut licences_left = budget.map(|b| (b as usize).saturating_sub(devices.len() - deleted));
    for (extension, target) in wanted {
        let report = |problem| Action::Report {
            extension_id: extension.id,
            number: extension.number.clone(),
            problem,
        };
        let (_, wanted) = match target {
            Ok(target) => target,
            Err(problem) => {
                plan.actions.push(report(problem));
                continue;
            }
        };
        let name_taken = |name: &str| {
            clash(&adoptions, name).map(|d| Problem::SetsideNameTaken {
                name: name.to_string(),
                guid: d.guid.clone(),
            })
        };
        if let Some(device) = current_of(extension) {
            let (patch, changes) = diff(device, &wanted);
            if changes.is_empty() {
                plan.settled.push(Settled {
                    extension_id: extension.id,
                    state: ExtensionState::Provisioned,
                });
            } else if let Some(problem) = patch.setside_username.as_deref().and_then(&name_taken) {
                plan.actions.push(report(problem));
            } else {
                plan.actions.push(Action::Update {
                    extension_id: extension.id,
                    number: extension.number.clone(),
                    guid: device.guid.clone(),
                    changes,
                    patch,
                });
            }
            continue;
        }
        if let Some(problem) = name_taken(&wanted.setside_username) {
            plan.actions.push(report(problem));
            continue;
        }
        let adopted = adoptions
            .iter()
            .find(|(_, (id, _))| *id == extension.id)
            .and_then(|(guid, _)| by_guid.get(guid));
        if let Some(device) = adopted {
            let (patch, changes) = diff(device, &wanted);
            plan.actions.push(Action::Adopt {
                extension_id: extension.id,
                number: extension.number.clone(),
                guid: device.guid.clone(),
                changes,
                patch,
            });
            continue;
        }
        if let Some(elsewhere) = devices.iter().filter(not_owned).find(|d| {
            d.icpside_username == extension.number && !adoptions.contains_key(d.guid.as_str())
        }) {
            plan.actions.push(report(Problem::NumberUsedElsewhere {
                icp: elsewhere.icp.clone(),
                guid: elsewhere.guid.clone(),
            }));
            continue;
        }
        match &mut licences_left {
            Some(0) => {
                plan.actions.push(report(Problem::LicenceBudget {
                    budget: budget.unwrap_or(0),
                }));
                continue;
            }
            Some(left) => *left -= 1,
            None => {}
        }
        plan.actions.push(Action::Create {
            extension_id: extension.id,
            number: extension.number.clone(),
            device: wanted,
        });
    }
    plan
}

#[cfg(test)]
mod tests;
