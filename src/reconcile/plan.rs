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
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use crate::mbg::{Icp, NewSipDevice, SipDevice, SipDevicePatch};
use crate::store::{Extension, ExtensionState, Released};

mod claims;
use claims::Claims;
pub(super) use claims::carries_credentials;
pub use claims::{Row, Whose};

/// The plan's maps hash with FxHash (rustc's own), not SipHash: their keys are guids, numbers and
/// names from our database and the MBG, not chosen by an attacker, and SipHash was a third of the
/// time of a plan for 100,000 extensions.
pub(super) type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FxHasher>>;
pub(super) type HashSet<K> = std::collections::HashSet<K, BuildHasherDefault<FxHasher>>;

fn with_capacity<K, V>(capacity: usize) -> HashMap<K, V> {
    HashMap::with_capacity_and_hasher(capacity, BuildHasherDefault::default())
}

#[derive(Default)]
pub(super) struct FxHasher(u64);

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

    /// The multiply leaves the low bits depending on the low bits of the input only, and the
    /// table picks buckets with the low bits: numbers `1000000`..`1099999` then fell into a
    /// handful of buckets (100,000 rows took 37 times 10,000's). Folding the high half, which
    /// depends on every input bit, into the low half spreads them.
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
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
    /// Remote credentials are not set. A pass draws them before it plans, so only a plan made
    /// from rows as stored meets this.
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
    /// Create the SIP user [`wanted_device`] makes of the extension's row under this ICP. The
    /// device itself is made when it is sent: 100,000 creates holding theirs (seven strings
    /// each) were the largest part of a first pass's memory.
    Create {
        extension_id: i64,
        number: String,
        /// Shared by every create under this ICP.
        icp: Arc<str>,
    },
    /// Change the fields in `changes` of a device we own.
    Update {
        extension_id: i64,
        number: String,
        guid: String,
        changes: Vec<&'static str>,
        /// Boxed, as in `Adopt`: six optional strings would make every action of a plan as large.
        patch: Box<SipDevicePatch>,
    },
    /// Take over a device: a foreign one with exactly this number under the right ICP, or one
    /// of ours whose guid never reached the database.
    Adopt {
        extension_id: i64,
        number: String,
        guid: String,
        changes: Vec<&'static str>,
        patch: Box<SipDevicePatch>,
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

    pub(crate) fn extension_id(&self) -> Option<i64> {
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
    pub(crate) fn is_mbg_call(&self) -> bool {
        match self {
            Action::Create { .. } | Action::Delete { .. } => true,
            Action::Update { patch, .. } | Action::Adopt { patch, .. } => !patch.is_empty(),
            Action::Forget { .. } | Action::Report { .. } => false,
        }
    }

    /// `false` for reports: they change nothing.
    pub(crate) fn is_change(&self) -> bool {
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

    pub(crate) fn problems(&self) -> impl Iterator<Item = &Action> {
        self.actions.iter().filter(|a| !a.is_change())
    }

    pub(crate) fn creates(&self) -> usize {
        self.actions
            .iter()
            .filter(|a| matches!(a, Action::Create { .. }))
            .count()
    }
}

/// The description written into devices we create: a hint for humans on the MBG page.
/// Ownership is the guid recorded in the database, never this text.
pub fn description(number: &str) -> String {
    format!("{DESCRIPTION_PREFIX}{number}")
}

const DESCRIPTION_PREFIX: &str = "mbg-provision ext ";

/// Why the database's row cannot be sent to the MBG as it is, if it cannot.
fn check_wanted(extension: &Extension) -> Result<(), Problem> {
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
        if !is_sendable_password(secret.expose_secret()) {
            return invalid(
                field,
                &format!(
                    "must be {MIN_PASSWORD} to {MAX_PASSWORD} characters, none of them control characters"
                ),
            );
        }
    }
    Ok(())
}

/// The device the database asks for, of a row [`check_wanted`] passed.
pub(crate) fn wanted_device(extension: &Extension, icp: &str) -> NewSipDevice {
    let same = |field: &Option<_>| field.clone().unwrap_or_default();
    NewSipDevice {
        icp: icp.to_string(),
        setside_username: same(&extension.remote_auth_name),
        setside_password: extension
            .remote_auth_password
            .clone()
            .unwrap_or_else(|| SecretString::from("")),
        icpside_username: extension.number.clone(),
        icpside_password: extension.sip_password.clone(),
        description: description(&extension.number),
        enabled: true,
    }
}

/// Whether `device` is already what [`wanted_device`] would ask for: the steady state's check,
/// made without building the wanted device (100,000 of them, five strings each).
fn is_as_wanted(device: &SipDevice, extension: &Extension, icp: &Icp) -> bool {
    let same = |a: &SecretString, b: &SecretString| a.expose_secret() == b.expose_secret();
    device.icp == icp.name
        && extension.remote_auth_name.as_deref() == Some(device.setside_username.as_str())
        && extension
            .remote_auth_password
            .as_ref()
            .is_some_and(|p| same(p, &device.setside_password))
        && device.icpside_username == extension.number
        && same(&device.icpside_password, &extension.sip_password)
        && device.description.strip_prefix(DESCRIPTION_PREFIX) == Some(extension.number.as_str())
        && device.enabled
}

/// [`MIN_PASSWORD`] to [`MAX_PASSWORD`] characters, none a control character. Every row is
/// checked at every pass: ASCII (what the generator draws) is checked byte by byte.
fn is_sendable_password(secret: &str) -> bool {
    if secret.is_ascii() {
        (MIN_PASSWORD..=MAX_PASSWORD).contains(&secret.len())
            && !secret.bytes().any(|b| b.is_ascii_control())
    } else {
        (MIN_PASSWORD..=MAX_PASSWORD).contains(&secret.chars().count())
            && !secret.chars().any(char::is_control)
    }
}

/// The MBG refuses shorter passwords as weak (contract: 400 under 8 characters).
const MIN_PASSWORD: usize = 8;
const MAX_PASSWORD: usize = 128;

/// The fields of `device` that differ from `wanted`, as a patch and as names for humans.
pub(crate) fn diff(
    device: &SipDevice,
    wanted: &NewSipDevice,
) -> (SipDevicePatch, Vec<&'static str>) {
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

/// A number's place in number order (shorter first, then by value), as an integer: sorting
/// 100,000 rows by their number strings chased a pointer into the heap per comparison, and
/// cost more than the rest of the plan. A number that is not 1 to 18 digits sorts last (it
/// is reported, never sent).
fn number_order(number: &str) -> (u8, u64) {
    match number.parse::<u64>() {
        Ok(value) if number.len() <= 18 && number.bytes().all(|b| b.is_ascii_digit()) => {
            (number.len() as u8, value)
        }
        _ => (u8::MAX, 0),
    }
}

/// The ICP whose address is the extension's node's, once the row passed [`check_wanted`].
type Target<'a> = Result<&'a Icp, Problem>;

/// Sorts device positions by guid, comparing the guids' first 16 bytes as integers kept beside
/// the positions (a comparison of the strings themselves chases two pointers into the heap),
/// and the whole guids only where those are equal.
fn sort_by_guid(positions: &mut [usize], devices: &[SipDevice]) {
    let prefix = |guid: &str| {
        let mut bytes = [0u8; 16];
        let head = &guid.as_bytes()[..guid.len().min(16)];
        bytes[..head.len()].copy_from_slice(head);
        u128::from_be_bytes(bytes)
    };
    let mut keyed: Vec<(u128, usize)> = positions
        .iter()
        .map(|&d| (prefix(&devices[d].guid), d))
        .collect();
    keyed.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| devices[a.1].guid.cmp(&devices[b.1].guid))
    });
    for (slot, (_, d)) in positions.iter_mut().zip(keyed) {
        *slot = d;
    }
}

/// The plan. `budget` is `mbg.teleworker_licences`. At most one action per extension.
pub fn plan(
    extensions: &[Extension],
    released: &[Released],
    icps: &[Icp],
    devices: &[SipDevice],
    budget: Option<u32>,
) -> Plan {
    let Positions {
        index_of,
        ordered,
        by_priority,
    } = Positions::of(extensions, devices);
    let wants = |p: &usize| extensions[*p].use_remote_auth;
    let claims = Claims::build(extensions, released, devices, &index_of, &by_priority);
    let foreign = Foreign::of(devices, &claims);
    let mut plan = Plan {
        actions: Vec::with_capacity(extensions.len()),
        ..Plan::default()
    };
    let unwanted: Vec<usize> = ordered.iter().copied().filter(|p| !wants(p)).collect();
    let deleted = deletions(&mut plan, extensions, &unwanted, released, devices, &claims);
    let wanted: Vec<(usize, Target)> = ordered
        .iter()
        .copied()
        .filter(wants)
        .map(|p| (p, target(&extensions[p], icps)))
        .collect();
    let adoptions = Adoptions::choose(extensions, &wanted, &claims, &foreign);
    let mut decider = Decider {
        devices,
        index_of: &index_of,
        claims: &claims,
        foreign: &foreign,
        adoptions: &adoptions,
        name_holders: with_capacity(extensions.len()),
        budget,
        licences_left: budget
            .map(|b| (b as usize).saturating_sub(devices.len().saturating_sub(deleted))),
        icp_names: HashMap::default(),
    };
    for (p, target) in wanted {
        if let Some(action) = decider.decide(p, &extensions[p], target, &mut plan.settled) {
            plan.actions.push(action);
        }
    }
    // Kept for the whole pass: a first pass's 100,000 actions would keep a quarter more room.
    plan.actions.shrink_to_fit();
    plan
}

/// Devices are named by their position in `devices`: one hash of each guid, not one per
/// question asked about it. Extensions too are named by their position in `extensions`.
struct Positions<'a> {
    index_of: HashMap<&'a str, usize>,
    /// In number order.
    ordered: Vec<usize>,
    /// Wanted rows first, each part in number order: a guid that two rows claim goes to the row
    /// that wants it.
    by_priority: Vec<usize>,
}

impl<'a> Positions<'a> {
    fn of(extensions: &[Extension], devices: &'a [SipDevice]) -> Positions<'a> {
        let index_of: HashMap<&str, usize> = devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.guid.as_str(), i))
            .collect();
        let mut ordered: Vec<usize> = (0..extensions.len()).collect();
        ordered.sort_by_cached_key(|&p| (number_order(&extensions[p].number), extensions[p].id));
        let wants = |p: &usize| extensions[*p].use_remote_auth;
        let by_priority: Vec<usize> = ordered
            .iter()
            .copied()
            .filter(wants)
            .chain(ordered.iter().copied().filter(|p| !wants(p)))
            .collect();
        Positions {
            index_of,
            ordered,
            by_priority,
        }
    }
}

/// Whose each of `devices` is, and why, by the rule every plan applies: what `extension show`
/// and preflight tell a human.
pub(crate) fn whose(
    extensions: &[Extension],
    released: &[Released],
    devices: &[SipDevice],
) -> Vec<Whose> {
    let positions = Positions::of(extensions, devices);
    let claims = Claims::build(
        extensions,
        released,
        devices,
        &positions.index_of,
        &positions.by_priority,
    );
    (0..devices.len())
        .map(|d| claims.whose(d, devices, extensions, released))
        .collect()
}

/// The ICP a wanted row's SIP user belongs under, once the row passed [`check_wanted`].
fn target<'a>(extension: &Extension, icps: &'a [Icp]) -> Target<'a> {
    icps.iter()
        .find(|icp| icp.address == extension.node_address)
        .ok_or_else(|| Problem::NoIcpForNode {
            node: extension.node_name.clone(),
            address: extension.node_address.clone(),
        })
        .and_then(|icp| check_wanted(extension).map(|()| icp))
}

/// The devices that are nobody's, by ICP-side name (the number) and by set-side name, each
/// list in guid order. Only those: in a steady state there are none, and 100,000 lists of one
/// device each cost more than the rest of the plan.
struct Foreign<'a> {
    by_number: HashMap<&'a str, Vec<&'a SipDevice>>,
    by_setside: HashMap<&'a str, Vec<&'a SipDevice>>,
}

impl<'a> Foreign<'a> {
    fn of(devices: &'a [SipDevice], claims: &Claims) -> Foreign<'a> {
        let mut foreign = Foreign {
            by_number: HashMap::default(),
            by_setside: HashMap::default(),
        };
        for (d, device) in devices.iter().enumerate() {
            if claims.is_foreign(d) {
                let number = device.icpside_username.as_str();
                foreign.by_number.entry(number).or_default().push(device);
                let name = device.setside_username.as_str();
                foreign.by_setside.entry(name).or_default().push(device);
            }
        }
        // Where several devices compete, the lowest guid comes first, whatever order the MBG
        // listed them in. Only those short lists are sorted.
        let by_guid = |list: &mut Vec<&SipDevice>| {
            if list.len() > 1 {
                list.sort_by(|a, b| a.guid.cmp(&b.guid));
            }
        };
        foreign.by_number.values_mut().for_each(by_guid);
        foreign.by_setside.values_mut().for_each(by_guid);
        foreign
    }

    fn with_number(&self, number: &str) -> impl Iterator<Item = &'a SipDevice> + '_ {
        self.by_number.get(number).into_iter().flatten().copied()
    }

    /// The first foreign device with set-side name `name` that stays foreign.
    fn clash(&self, adoptions: &Adoptions, name: &str) -> Option<&'a SipDevice> {
        self.by_setside
            .get(name)
            .into_iter()
            .flatten()
            .find(|d| !adoptions.takes(&d.guid))
            .copied()
    }
}

/// Deletions first, in number order: they free licences for the creations after them. Returns
/// how many devices go.
fn deletions(
    plan: &mut Plan,
    extensions: &[Extension],
    unwanted: &[usize],
    released: &[Released],
    devices: &[SipDevice],
    claims: &Claims,
) -> usize {
    let mut deleted = 0usize;
    let mut delete = |owner, number: &str, d: usize| {
        deleted += 1;
        Action::Delete {
            owner,
            number: number.to_string(),
            guid: devices[d].guid.clone(),
        }
    };
    for &p in unwanted {
        let extension = &extensions[p];
        let owner = Owner::Extension(extension.id);
        if let Some((d, _)) = claims.held_by_extension(p) {
            plan.actions.push(delete(owner, &extension.number, d));
        } else if let Some(guid) = extension.recorded_guid() {
            plan.actions.push(Action::Forget {
                owner,
                number: extension.number.clone(),
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
        plan.actions.push(match claims.held_by_released(i) {
            Some((d, last)) => delete(Owner::Released { id: r.id, last }, &r.number, d),
            None => Action::Forget {
                owner: Owner::Released {
                    id: r.id,
                    last: true,
                },
                number: r.number.clone(),
                guid: r.mbg_device_id.clone(),
            },
        });
    }
    for d in claims.duplicates() {
        let number = devices[d].icpside_username.clone();
        plan.actions.push(delete(Owner::Duplicate, &number, d));
    }
    deleted
}

/// Which foreign device each wanted extension takes over: one with exactly its number under
/// its ICP. Set-side name clashes count only devices that stay foreign once the plan is
/// applied (an adopted device becomes ours and takes our name). An adopter that clashes gives
/// its device up, which can make new clashes, hence the loop; it only ever removes adoptions,
/// so it ends.
struct Adoptions<'a> {
    /// guid -> (adopter's id, adopter's remote auth name)
    by_guid: HashMap<&'a str, (i64, &'a str)>,
    /// adopter's id -> guid, once chosen
    by_adopter: HashMap<i64, &'a str>,
}

impl<'a> Adoptions<'a> {
    fn choose(
        extensions: &'a [Extension],
        wanted: &[(usize, Target)],
        claims: &Claims,
        foreign: &Foreign<'a>,
    ) -> Adoptions<'a> {
        let mut adoptions = Adoptions {
            by_guid: HashMap::default(),
            by_adopter: HashMap::default(),
        };
        for (p, target) in wanted {
            let e = &extensions[*p];
            let (Ok(icp), Some(name)) = (target, e.remote_auth_name.as_deref()) else {
                continue;
            };
            if claims.held_by_extension(*p).is_some() {
                continue;
            }
            if let Some(candidate) = foreign
                .with_number(&e.number)
                .find(|d| d.icp == icp.name && !adoptions.takes(&d.guid))
            {
                adoptions.by_guid.insert(&candidate.guid, (e.id, name));
            }
        }
        loop {
            let giving_up: Vec<&str> = adoptions
                .by_guid
                .iter()
                .filter(|(_, (_, name))| foreign.clash(&adoptions, name).is_some())
                .map(|(guid, _)| *guid)
                .collect();
            if giving_up.is_empty() {
                adoptions.by_adopter = adoptions
                    .by_guid
                    .iter()
                    .map(|(guid, (adopter, _))| (*adopter, *guid))
                    .collect();
                return adoptions;
            }
            for guid in giving_up {
                adoptions.by_guid.remove(guid);
            }
        }
    }

    fn takes(&self, guid: &str) -> bool {
        self.by_guid.contains_key(guid)
    }

    /// The guid of the device extension `id` adopts, if any.
    fn of(&self, id: i64) -> Option<&'a str> {
        self.by_adopter.get(&id).copied()
    }
}

/// The per-extension decision for wanted rows, in number order.
struct Decider<'a> {
    devices: &'a [SipDevice],
    index_of: &'a HashMap<&'a str, usize>,
    claims: &'a Claims,
    foreign: &'a Foreign<'a>,
    adoptions: &'a Adoptions<'a>,
    /// The first wanted extension (in number order) with a remote auth name keeps it.
    name_holders: HashMap<&'a str, &'a str>,
    budget: Option<u32>,
    licences_left: Option<usize>,
    icp_names: HashMap<&'a str, Arc<str>>,
}

impl<'a> Decider<'a> {
    /// The action for wanted extension `p`, or `None` when it is settled (pushed to `settled`).
    fn decide(
        &mut self,
        p: usize,
        extension: &'a Extension,
        target: Target<'a>,
        settled: &mut Vec<Settled>,
    ) -> Option<Action> {
        let report = |problem| {
            Some(Action::Report {
                extension_id: extension.id,
                number: extension.number.clone(),
                problem,
            })
        };
        if let Some(name) = extension.remote_auth_name.as_deref()
            && let Some(holder) = self.name_holders.insert(name, &extension.number)
        {
            self.name_holders.insert(name, holder);
            return report(Problem::SetsideNameShared {
                name: name.to_string(),
                number: holder.to_string(),
            });
        }
        let icp = match target {
            Ok(icp) => icp,
            Err(problem) => return report(problem),
        };
        match self.claims.held_by_extension(p) {
            Some((d, is_recorded)) => {
                self.decide_held(extension, icp, &self.devices[d], is_recorded, settled)
            }
            None => self.decide_unheld(extension, icp),
        }
    }

    fn name_taken(&self, name: &str) -> Option<Problem> {
        self.foreign
            .clash(self.adoptions, name)
            .map(|d| Problem::SetsideNameTaken {
                name: name.to_string(),
                guid: d.guid.clone(),
            })
    }

    /// An extension that holds a device: settled, updated, or (held by proof) adopted back.
    fn decide_held(
        &self,
        extension: &Extension,
        icp: &Icp,
        device: &SipDevice,
        is_recorded: bool,
        settled: &mut Vec<Settled>,
    ) -> Option<Action> {
        let provisioned = Settled {
            extension_id: extension.id,
            state: ExtensionState::Provisioned,
        };
        if is_recorded && is_as_wanted(device, extension, icp) {
            settled.push(provisioned);
            return None;
        }
        let (patch, changes) = diff(device, &wanted_device(extension, &icp.name));
        let (extension_id, number, guid) =
            (extension.id, extension.number.clone(), device.guid.clone());
        if let Some(problem) = patch
            .setside_username
            .as_deref()
            .and_then(|n| self.name_taken(n))
        {
            Some(Action::Report {
                extension_id,
                number,
                problem,
            })
        } else if !is_recorded {
            Some(Action::Adopt {
                extension_id,
                number,
                guid,
                changes,
                patch: Box::new(patch),
                proof: Adoption::OwnCredentials,
            })
        } else if changes.is_empty() {
            settled.push(provisioned);
            None
        } else {
            Some(Action::Update {
                extension_id,
                number,
                guid,
                changes,
                patch: Box::new(patch),
            })
        }
    }

    /// An extension that holds no device: adopt the foreign one chosen for it, else create one,
    /// unless its name or number is taken or the licences are used up.
    fn decide_unheld(&mut self, extension: &Extension, icp: &'a Icp) -> Option<Action> {
        let report = |problem| {
            Some(Action::Report {
                extension_id: extension.id,
                number: extension.number.clone(),
                problem,
            })
        };
        let setside_username = extension.remote_auth_name.as_deref().unwrap_or_default();
        if let Some(problem) = self.name_taken(setside_username) {
            return report(problem);
        }
        let adopted = self
            .adoptions
            .of(extension.id)
            .and_then(|guid| self.index_of.get(guid))
            .map(|&d| &self.devices[d]);
        if let Some(device) = adopted {
            let (patch, changes) = diff(device, &wanted_device(extension, &icp.name));
            return Some(Action::Adopt {
                extension_id: extension.id,
                number: extension.number.clone(),
                guid: device.guid.clone(),
                changes,
                patch: Box::new(patch),
                proof: Adoption::ExactMatch,
            });
        }
        if let Some(elsewhere) = self
            .foreign
            .with_number(&extension.number)
            .find(|d| !self.adoptions.takes(&d.guid))
        {
            return report(Problem::NumberUsedElsewhere {
                icp: elsewhere.icp.clone(),
                guid: elsewhere.guid.clone(),
            });
        }
        match &mut self.licences_left {
            Some(0) => {
                return report(Problem::LicenceBudget {
                    budget: self.budget.unwrap_or(0),
                });
            }
            Some(left) => *left -= 1,
            None => {}
        }
        let icp = self
            .icp_names
            .entry(&icp.name)
            .or_insert_with(|| Arc::from(icp.name.as_str()))
            .clone();
        Some(Action::Create {
            extension_id: extension.id,
            number: extension.number.clone(),
            icp,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
