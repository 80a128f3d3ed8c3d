//! The plan: what to do on the MBG so that it matches the database. A pure function of the
//! database's extensions, the SIP users we released, and what the MBG holds; no I/O, so every
//! rule here is unit- and property-tested.
//!
//! Rules, in order of precedence:
//! - A device is ours when its guid is recorded against an extension with `provisioned_by_us`
//!   (or against a released, i.e. deleted, extension), or when it *proves* itself ours: its
//!   ICP-side name is the extension's number and its set-side name and password are the
//!   extension's stored remote credentials. Those are random and committed before any create, so
//!   only a create of ours whose guid never reached the database (a crash, a lost answer) can
//!   have made it. Only ours are updated or deleted.
//! - One device per extension: a recorded guid goes to one row (a wanted one first), and a
//!   second device carrying an extension's credentials is a duplicate, deleted.
//! - A device that is not ours is adopted only when it has exactly the extension's number as its
//!   ICP-side name, under the ICP of the extension's node; its credentials are then overwritten
//!   with the database's, as the phone system itself does.
//! - Every other device is left alone; conflicts with it are reported, never resolved by force.

use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use secrecy::{ExposeSecret, SecretString};

use crate::mbg::{Icp, NewSipDevice, SipDevice, SipDevicePatch};
use crate::store::{Extension, ExtensionState, Released};

/// The plan's maps hash with FxHash (rustc's own), not SipHash: their keys are guids, numbers and
/// names from our database and the MBG, not chosen by an attacker, and SipHash was a third of the
/// time of a plan for 100,000 extensions.
type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FxHasher>>;
type HashSet<K> = std::collections::HashSet<K, BuildHasherDefault<FxHasher>>;

fn with_capacity<K, V>(capacity: usize) -> HashMap<K, V> {
    HashMap::with_capacity_and_hasher(capacity, BuildHasherDefault::default())
}

#[derive(Default)]
struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let mut last = [0u8; 8];
        let rest = chunks.remainder();
        last[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(last) ^ rest.len() as u64);
    }

    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }

    fn write_usize(&mut self, word: usize) {
        self.add(word as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

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
    /// Another wanted extension has the same remote auth name: two phones would log in as one.
    SetsideNameShared {
        name: String,
        number: String,
    },
    /// A value the MBG or the phone would refuse (written into the database by another program).
    Invalid {
        field: &'static str,
        reason: String,
    },
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
            Problem::SetsideNameShared { name, number } => format!(
                "extension {number} already has the remote auth name {name}: give one of them another (clear it and one is generated)"
            ),
            Problem::Invalid { field, reason } => {
                format!("the extension's {field} {reason}: correct it in the database")
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
    /// Take over a device: a foreign one with exactly this number under the right ICP, or one
    /// of ours whose guid never reached the database.
    Adopt {
        extension_id: i64,
        number: String,
        guid: String,
        changes: Vec<&'static str>,
        patch: SipDevicePatch,
        proof: Adoption,
    },
    /// Remove a device we own.
    Delete {
        owner: Owner,
        number: String,
        guid: String,
    },
    /// Our record names a device the MBG no longer has (or that another row holds): clear the
    /// record, no MBG call.
    Forget {
        owner: Owner,
        number: String,
        guid: Option<String>,
    },
    Report {
        extension_id: i64,
        number: String,
        problem: Problem,
    },
}

/// Why a device may be taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adoption {
    /// Exactly the extension's number under the ICP of its node: the phone system's own rule.
    ExactMatch,
    /// It carries the extension's stored credentials: ours, from a create whose answer was lost.
    OwnCredentials,
}

/// Whose device a [`Action::Delete`] or [`Action::Forget`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Extension(i64),
    /// A deleted extension (a row of `released_extensions`); `last` when no other device of it
    /// remains, so that the row can go once this one is gone.
    Released {
        id: i64,
        last: bool,
    },
    /// A second device carrying an extension's credentials.
    Duplicate,
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
            Action::Delete { owner, .. } | Action::Forget { owner, .. } => match owner {
                Owner::Extension(id) => Some(*id),
                _ => None,
            },
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

    /// Whether applying this calls the MBG (an adoption with nothing to overwrite does not).
    pub fn is_mbg_call(&self) -> bool {
        match self {
            Action::Create { .. } | Action::Delete { .. } => true,
            Action::Update { patch, .. } | Action::Adopt { patch, .. } => !patch.is_empty(),
            Action::Forget { .. } | Action::Report { .. } => false,
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
    let invalid = |field, reason: &str| {
        Err(Problem::Invalid {
            field,
            reason: reason.to_string(),
        })
    };
    let number = &extension.number;
    if !(1..=10).contains(&number.len()) || !number.bytes().all(|b| b.is_ascii_digit()) {
        return invalid("number", "must be 1 to 10 digits");
    }
    if !(1..=64).contains(&name.len())
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return invalid(
            "remote auth name",
            "must be 1 to 64 letters, digits, '.', '_' or '-'",
        );
    }
    for (field, secret) in [
        ("remote auth password", password),
        ("SIP password", &extension.sip_password),
    ] {
        let secret = secret.expose_secret();
        if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&secret.chars().count())
            || secret.chars().any(char::is_control)
        {
            return invalid(
                field,
                &format!(
                    "must be {MIN_PASSWORD} to {MAX_PASSWORD} characters, none of them control characters"
                ),
            );
        }
    }
    Ok(NewSipDevice {
        icp: icp.name.clone(),
        setside_username: name.clone(),
        setside_password: password.clone(),
        icpside_username: number.clone(),
        icpside_password: extension.sip_password.clone(),
        description: description(number),
        enabled: true,
    })
}

/// The MBG refuses shorter passwords as weak (contract: 400 under 8 characters).
const MIN_PASSWORD: usize = 8;
const MAX_PASSWORD: usize = 128;

/// Whether `device` carries this number and these remote credentials: the proof that one of our
/// creates made it.
fn proves(
    device: &SipDevice,
    number: &str,
    name: &Option<String>,
    password: &Option<SecretString>,
) -> bool {
    match (name, password) {
        (Some(name), Some(password)) => {
            device.icpside_username == number
                && device.setside_username == *name
                && device.setside_password.expose_secret() == password.expose_secret()
        }
        _ => false,
    }
}

/// The guid recorded against an extension as ours.
fn recorded(e: &Extension) -> Option<&str> {
    e.mbg_device_id.as_deref().filter(|_| e.provisioned_by_us)
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

/// Who holds a device once the plan is applied.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Claim {
    Extension(i64),
    Released(usize),
    Duplicate,
}

/// The plan. `budget` is `mbg.teleworker_licences`. At most one action per extension.
pub fn plan(
    extensions: &[Extension],
    released: &[Released],
    icps: &[Icp],
    devices: &[SipDevice],
    budget: Option<u32>,
) -> Plan {
    // Where several devices compete (same number, same set-side name), the lowest guid comes
    // first, whatever order the MBG listed them in. Only those short lists are sorted: sorting
    // all 100,000 by guid chases a pointer per comparison and cost more than the rest of the plan.
    let by_guid_order = |list: &mut Vec<&SipDevice>| {
        if list.len() > 1 {
            list.sort_by(|a, b| a.guid.cmp(&b.guid));
        }
    };
    let devices: Vec<&SipDevice> = devices.iter().collect();
    let by_guid: HashMap<&str, &SipDevice> =
        devices.iter().map(|d| (d.guid.as_str(), *d)).collect();
    // Lookups by ICP-side name (the number) and set-side name, each list in guid order: the
    // plan must stay linear for 100,000 extensions against 100,000 devices.
    let mut by_number: HashMap<&str, Vec<&SipDevice>> = with_capacity(devices.len());
    for device in &devices {
        by_number
            .entry(device.icpside_username.as_str())
            .or_default()
            .push(device);
    }
    by_number.values_mut().for_each(by_guid_order);
    let with_number = |number: &str| by_number.get(number).into_iter().flatten().copied();
    let mut ordered: Vec<&Extension> = extensions.iter().collect();
    ordered
        .sort_by(|a, b| (a.number.len(), &a.number, a.id).cmp(&(b.number.len(), &b.number, b.id)));
    // Wanted rows first: a guid that two rows claim goes to the row that wants it.
    let by_priority: Vec<&Extension> = ordered
        .iter()
        .filter(|e| e.use_remote_auth)
        .chain(ordered.iter().filter(|e| !e.use_remote_auth))
        .copied()
        .collect();

    // Which device each extension and each released row holds: its recorded guid, else the
    // first device that proves itself ours; further proving devices are duplicates.
    let mut claims: HashMap<&str, Claim> = with_capacity(devices.len());
    let mut held_by_extension: HashMap<i64, &str> = with_capacity(extensions.len());
    let mut held_by_released: HashMap<usize, &str> = HashMap::default();
    for e in &by_priority {
        if let Some(guid) = recorded(e).and_then(|g| by_guid.get_key_value(g).map(|(k, _)| *k))
            && !claims.contains_key(guid)
        {
            claims.insert(guid, Claim::Extension(e.id));
            held_by_extension.insert(e.id, guid);
        }
    }
    for (i, r) in released.iter().enumerate() {
        if let Some(guid) = r
            .mbg_device_id
            .as_deref()
            .and_then(|g| by_guid.get_key_value(g).map(|(k, _)| *k))
            && !claims.contains_key(guid)
        {
            claims.insert(guid, Claim::Released(i));
            held_by_released.insert(i, guid);
        }
    }
    // A device that no recorded guid claims goes to the first row, in priority order, whose
    // credentials it carries: held, or a duplicate when that row already holds one. Only the
    // unclaimed devices are looked at (none, in a steady state), each against the rows of its
    // number.
    let mut unclaimed: Vec<&SipDevice> = devices
        .iter()
        .copied()
        .filter(|d| !claims.contains_key(d.guid.as_str()))
        .collect();
    by_guid_order(&mut unclaimed);
    let numbers: HashSet<&str> = unclaimed
        .iter()
        .map(|d| d.icpside_username.as_str())
        .collect();
    let owners = by_priority
        .iter()
        .map(|e| {
            (
                Claim::Extension(e.id),
                e.number.as_str(),
                &e.remote_auth_name,
                &e.remote_auth_password,
            )
        })
        .chain(released.iter().enumerate().map(|(i, r)| {
            (
                Claim::Released(i),
                r.number.as_str(),
                &r.remote_auth_name,
                &r.remote_auth_password,
            )
        }));
    let mut owners_of: HashMap<&str, Vec<_>> = HashMap::default();
    for (priority, (owner, number, name, password)) in owners
        .enumerate()
        .filter(|(_, (_, number, ..))| numbers.contains(number))
    {
        owners_of
            .entry(number)
            .or_default()
            .push((priority, owner, name, password));
    }
    let mut duplicates: Vec<(usize, &str, &str)> = Vec::new(); // (priority, guid, number)
    let mut has_duplicates: HashSet<usize> = HashSet::default();
    for device in unclaimed {
        let (guid, number) = (device.guid.as_str(), device.icpside_username.as_str());
        let Some(&(priority, owner, ..)) = owners_of
            .get(number)
            .into_iter()
            .flatten()
            .find(|(_, _, name, password)| proves(device, number, name, password))
        else {
            continue;
        };
        let held = match owner {
            Claim::Extension(id) => held_by_extension.entry(id).or_insert(guid),
            Claim::Released(i) => held_by_released.entry(i).or_insert(guid),
            Claim::Duplicate => unreachable!("owners are rows"),
        };
        if *held == guid {
            claims.insert(guid, owner);
        } else {
            claims.insert(guid, Claim::Duplicate);
            duplicates.push((priority, guid, number));
            if let Claim::Released(i) = owner {
                has_duplicates.insert(i);
            }
        }
    }
    duplicates.sort();
    let foreign = |d: &&SipDevice| !claims.contains_key(d.guid.as_str());
    let mut foreign_by_setside: HashMap<&str, Vec<&SipDevice>> = HashMap::default();
    for device in devices.iter().copied().filter(foreign) {
        foreign_by_setside
            .entry(device.setside_username.as_str())
            .or_default()
            .push(device);
    }
    foreign_by_setside.values_mut().for_each(by_guid_order);
    let mut plan = Plan::default();

    // Deletions first: they free licences for the creations below.
    let mut deleted = 0usize;
    for extension in ordered.iter().filter(|e| !e.use_remote_auth) {
        let number = extension.number.clone();
        let owner = Owner::Extension(extension.id);
        if let Some(guid) = held_by_extension.get(&extension.id) {
            deleted += 1;
            plan.actions.push(Action::Delete {
                owner,
                number,
                guid: guid.to_string(),
            });
        } else if let Some(guid) = recorded(extension) {
            plan.actions.push(Action::Forget {
                owner,
                number,
                guid: Some(guid.to_string()),
            });
        } else {
            plan.settled.push(Settled {
                extension_id: extension.id,
                state: ExtensionState::Idle,
            });
        }
    }
    for (i, r) in released.iter().enumerate() {
        let number = r.number.clone();
        match held_by_released.get(&i) {
            Some(guid) => {
                deleted += 1;
                plan.actions.push(Action::Delete {
                    owner: Owner::Released {
                        id: r.id,
                        last: !has_duplicates.contains(&i),
                    },
                    number,
                    guid: guid.to_string(),
                });
            }
            None => plan.actions.push(Action::Forget {
                owner: Owner::Released {
                    id: r.id,
                    last: true,
                },
                number,
                guid: r.mbg_device_id.clone(),
            }),
        }
    }
    for (_, guid, number) in &duplicates {
        deleted += 1;
        plan.actions.push(Action::Delete {
            owner: Owner::Duplicate,
            number: number.to_string(),
            guid: guid.to_string(),
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
    let mut adoptions: HashMap<&str, (i64, String)> = HashMap::default(); // guid -> (adopter, name)
    for (e, target) in &wanted {
        let Ok((icp, device)) = target else { continue };
        if held_by_extension.contains_key(&e.id) {
            continue;
        }
        if let Some(candidate) = with_number(&e.number)
            .filter(foreign)
            .find(|d| d.icp == icp.name && !adoptions.contains_key(d.guid.as_str()))
        {
            adoptions.insert(&candidate.guid, (e.id, device.setside_username.clone()));
        }
    }
    let clash = |adoptions: &HashMap<&str, (i64, String)>, name: &str| {
        foreign_by_setside
            .get(name)
            .into_iter()
            .flatten()
            .find(|d| !adoptions.contains_key(d.guid.as_str()))
            .copied()
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

    let adopted_by: HashMap<i64, &str> = adoptions
        .iter()
        .map(|(guid, (adopter, _))| (*adopter, *guid))
        .collect();
    let mut licences_left =
        budget.map(|b| (b as usize).saturating_sub(devices.len().saturating_sub(deleted)));
    // The first wanted extension (in number order) with a remote auth name keeps it.
    let mut name_holders: HashMap<&str, &str> = with_capacity(extensions.len());
    for (extension, target) in wanted {
        let report = |problem| Action::Report {
            extension_id: extension.id,
            number: extension.number.clone(),
            problem,
        };
        if let Some(name) = extension.remote_auth_name.as_deref()
            && let Some(holder) = name_holders.insert(name, &extension.number)
        {
            name_holders.insert(name, holder);
            plan.actions.push(report(Problem::SetsideNameShared {
                name: name.to_string(),
                number: holder.to_string(),
            }));
            continue;
        }
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
        if let Some(device) = held_by_extension.get(&extension.id).map(|g| by_guid[g]) {
            let (patch, changes) = diff(device, &wanted);
            let is_recorded = recorded(extension) == Some(device.guid.as_str());
            if let Some(problem) = patch.setside_username.as_deref().and_then(&name_taken) {
                plan.actions.push(report(problem));
            } else if !is_recorded {
                plan.actions.push(Action::Adopt {
                    extension_id: extension.id,
                    number: extension.number.clone(),
                    guid: device.guid.clone(),
                    changes,
                    patch,
                    proof: Adoption::OwnCredentials,
                });
            } else if changes.is_empty() {
                plan.settled.push(Settled {
                    extension_id: extension.id,
                    state: ExtensionState::Provisioned,
                });
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
        let adopted = adopted_by
            .get(&extension.id)
            .and_then(|guid| by_guid.get(guid));
        if let Some(device) = adopted {
            let (patch, changes) = diff(device, &wanted);
            plan.actions.push(Action::Adopt {
                extension_id: extension.id,
                number: extension.number.clone(),
                guid: device.guid.clone(),
                changes,
                patch,
                proof: Adoption::ExactMatch,
            });
            continue;
        }
        if let Some(elsewhere) = with_number(&extension.number)
            .filter(foreign)
            .find(|d| !adoptions.contains_key(d.guid.as_str()))
        {
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
