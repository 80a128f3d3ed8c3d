//! What the MBG holds, as passes plan from it and as the daemon keeps it between passes:
//! refreshed by each full reconcile, corrected by each answer, so that a change costs no read of
//! the MBG's SIP user list at any size.
//!
//! Kept compact: per SIP user its guid, ICP-side and set-side names (a targeted pass asks the
//! database for the rows that share them), ICP and enabled flag, and a hash of the passwords
//! and the description. The plan only ever asks whether those equal a value of the database (a
//! password, the description we write), so before a pass they are restored from the values of
//! the rows it plans ([`MbgView::devices_for`]); a value no row has is given a stand-in that
//! keeps equal values equal and equals no real value. Some 87 bytes per SIP user (a 56-byte
//! record holding a UUID guid's 16 bytes, 12 bytes of keys, its number and set-side name as
//! text) and no allocation of its own, instead of some 580 bytes in nine allocations for every
//! field's string: 100,000 in an idle daemon are some 8.7 MB, not 58. The hash is keyed (a random key per process), and the passwords are not
//! kept at all.

use std::borrow::Cow;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::LazyLock;
use std::time::Instant;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use super::plan::{self, HashMap, HashSet};
use super::{DeviceEffect, ReconcileError, read_with_retry};
use crate::config::Config;
use crate::mbg::{Icp, MbgClient, SipDevice, SipDevicePatch};
use crate::shutdown::Shutdown;
use crate::store::{Extension, Released};

#[derive(Clone, Default)]
pub struct MbgView {
    pub icps: Vec<Icp>,
    kept: Kept,
}

/// The SIP users as kept: a record of fixed size each, no allocation of its own (100,000 small
/// allocations left the heap too fragmented to hand back after a pass), their keys side by side
/// (what a targeted pass sweeps), and their texts end to end in one string.
#[derive(Clone, Default)]
struct Kept {
    devices: Vec<KeptDevice>,
    keys: Vec<DeviceKeys>,
    texts: String,
    /// Bytes of `texts` no device points at any more (removed or renamed SIP users).
    unused: usize,
    /// The ICP names the devices use, each once (a device keeps its position here).
    icp_names: Vec<Box<str>>,
}

#[derive(Clone, Copy)]
struct KeptDevice {
    texts: TextSpan,
    /// The guid when it is a UUID in its usual form (16 bytes instead of 36 of text).
    uuid: Option<[u8; 16]>,
    setside_password: u64,
    icpside_password: u64,
    description: u64,
    icp: u32,
    enabled: bool,
}

// 100,000 of them in an idle daemon: each byte here is 100 kB.
const _: () = assert!(size_of::<KeptDevice>() == 56);

impl KeptDevice {
    fn parts(self, texts: &str) -> (Guid<'_>, &str, &str) {
        let (guid, number, name) = self.texts.parts(texts);
        match self.uuid {
            Some(uuid) => (Guid::Uuid(uuid), number, name),
            None => (Guid::Text(guid), number, name),
        }
    }
}

/// Where a SIP user's guid (unless kept as a UUID), ICP-side name (the number) and set-side
/// name are in [`Kept::texts`], one after the other. Aligned to 2 bytes, so that a device
/// record has no padding.
#[derive(Clone, Copy)]
#[repr(C, packed(2))]
struct TextSpan {
    at: u32,
    guid: u16,
    number: u16,
    name: u16,
}

impl TextSpan {
    fn len(self) -> usize {
        usize::from(self.guid) + usize::from(self.number) + usize::from(self.name)
    }

    fn parts(self, texts: &str) -> (&str, &str, &str) {
        let at = self.at as usize;
        let (guid, number) = (usize::from(self.guid), usize::from(self.number));
        let rest = &texts[at..at + self.len()];
        (
            &rest[..guid],
            &rest[guid..guid + number],
            &rest[guid + number..],
        )
    }
}

/// A SIP user's guid as the view keeps it: the MBG's guids are UUIDs written in lower-case
/// hex (8-4-4-4-12), kept as their 16 bytes; any other text is kept as it is. Each text has
/// one form, so equal guids compare equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Guid<'a> {
    Uuid([u8; 16]),
    Text(&'a str),
}

impl<'a> Guid<'a> {
    pub(crate) fn of(text: &'a str) -> Guid<'a> {
        Guid::uuid(text).map_or(Guid::Text(text), Guid::Uuid)
    }

    fn uuid(text: &str) -> Option<[u8; 16]> {
        let text = text.as_bytes();
        if text.len() != 36 || [8, 13, 18, 23].iter().any(|&at| text[at] != b'-') {
            return None;
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut digits = text.iter().filter(|&&c| c != b'-').map(|&c| digit(c));
        let mut uuid = [0; 16];
        for byte in &mut uuid {
            *byte = (digits.next()?? << 4) | digits.next()??;
        }
        Some(uuid)
    }
}

impl fmt::Display for Guid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Guid::Text(text) => f.write_str(text),
            Guid::Uuid(uuid) => {
                for (i, byte) in uuid.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// Short hashes of a SIP user's guid, ICP-side name (the number) and set-side name: what a
/// targeted pass looks for (see [`super::near`]). A hash shared by chance only brings one more
/// SIP user into a pass, so 32 bits are enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeviceKeys {
    pub(crate) guid: u32,
    pub(crate) number: u32,
    pub(crate) name: u32,
}

/// The keyed hash of every kept value: equal hashes are taken for equal values.
pub(crate) fn hash(value: &str) -> u64 {
    static KEY: LazyLock<RandomState> = LazyLock::new(RandomState::new);
    KEY.hash_one(value)
}

/// The short keyed hash a targeted pass looks for.
pub(crate) fn key(value: &str) -> u32 {
    (hash(value) >> 32) as u32
}

/// A SIP user as the MBG lists it, borrowed from the answer where the JSON has no escapes;
/// parsed as [`SipDevice`] is (the same fields and defaults).
#[derive(Deserialize)]
struct Listed<'a> {
    #[serde(borrow)]
    guid: Cow<'a, str>,
    #[serde(borrow)]
    icp: Cow<'a, str>,
    #[serde(borrow)]
    setside_username: Cow<'a, str>,
    #[serde(borrow)]
    setside_password: Cow<'a, str>,
    #[serde(borrow)]
    icpside_username: Cow<'a, str>,
    #[serde(borrow)]
    icpside_password: Cow<'a, str>,
    #[serde(borrow, default)]
    description: Cow<'a, str>,
    #[serde(default = "enabled_by_default")]
    enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

impl<'a> From<&'a SipDevice> for Listed<'a> {
    fn from(d: &'a SipDevice) -> Listed<'a> {
        Listed {
            guid: Cow::Borrowed(&d.guid),
            icp: Cow::Borrowed(&d.icp),
            setside_username: Cow::Borrowed(&d.setside_username),
            setside_password: Cow::Borrowed(d.setside_password.expose_secret()),
            icpside_username: Cow::Borrowed(&d.icpside_username),
            icpside_password: Cow::Borrowed(d.icpside_password.expose_secret()),
            description: Cow::Borrowed(&d.description),
            enabled: d.enabled,
        }
    }
}

/// The MBG's device list, kept as it is parsed: the parsed list is never held whole.
struct KeptList(Kept);

impl<'de> Deserialize<'de> for KeptList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<KeptList, D::Error> {
        struct Keeping;
        impl<'de> Visitor<'de> for Keeping {
            type Value = Kept;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of SIP users")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kept, A::Error> {
                let mut kept = Kept::default();
                while let Some(device) = seq.next_element::<Listed<'de>>()? {
                    kept.push(&device).map_err(de::Error::custom)?;
                }
                kept.shrink();
                Ok(kept)
            }
        }
        deserializer.deserialize_seq(Keeping).map(KeptList)
    }
}

impl fmt::Debug for MbgView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MbgView")
            .field("icps", &self.icps)
            .field("devices", &self.len())
            .finish()
    }
}

impl MbgView {
    #[cfg(test)]
    /// # Panics
    /// When a SIP user has a guid or name longer than 65,535 bytes (tests and demos only: the
    /// daemon reads the MBG through [`MbgView::read`], which refuses such a list).
    pub(crate) fn new(icps: Vec<Icp>, devices: Vec<SipDevice>) -> MbgView {
        let mut kept = Kept::default();
        for device in &devices {
            kept.push(&Listed::from(device))
                .expect("SIP users' texts under 64 KiB");
        }
        kept.shrink();
        MbgView { icps, kept }
    }

    /// Reads both lists at once (neither depends on the other, and each costs a round trip
    /// before the first create), retrying a busy MBG until `mbg.retry_deadline`.
    pub async fn read(
        client: &MbgClient,
        config: &Config,
        shutdown: &Shutdown,
    ) -> Result<MbgView, ReconcileError> {
        let retry_until = Instant::now() + config.mbg.retry_deadline;
        let cap = config.mbg.max_retry_after;
        let icps = read_with_retry(cap, shutdown, retry_until, || client.icps());
        let devices = MbgView::read_devices(Vec::new(), client, config, shutdown, retry_until);
        let (icps, view) = tokio::try_join!(icps, devices)?;
        Ok(MbgView { icps, ..view })
    }

    /// The view of `icps` and the SIP users the MBG lists, retried until `retry_until`.
    pub(crate) async fn read_devices(
        icps: Vec<Icp>,
        client: &MbgClient,
        config: &Config,
        shutdown: &Shutdown,
        retry_until: Instant,
    ) -> Result<MbgView, ReconcileError> {
        let KeptList(kept) =
            read_with_retry(config.mbg.max_retry_after, shutdown, retry_until, || {
                client.devices_as::<KeptList>()
            })
            .await?;
        Ok(MbgView { icps, kept })
    }

    /// How many SIP users the MBG holds.
    pub(crate) fn len(&self) -> usize {
        self.kept.devices.len()
    }

    pub(crate) fn device_keys(&self) -> &[DeviceKeys] {
        &self.kept.keys
    }

    /// The guid, number and set-side name of the SIP user at `position`.
    pub(crate) fn device_texts(&self, position: usize) -> (Guid<'_>, &str, &str) {
        self.kept.devices[position].parts(&self.kept.texts)
    }

    /// The SIP users at `positions` (all of them when `None`), with each hashed field restored
    /// from the values of `rows` and `released` that a pass plans from. A value none of them
    /// has becomes a stand-in, `"\u{1}"` and the hash: equal for equal values, and equal to no
    /// value the plan compares it with (the passwords it sends have no control characters, and
    /// the description it writes starts with text).
    pub(crate) fn devices_for(
        &self,
        positions: Option<&[usize]>,
        rows: &[Extension],
        released: &[Released],
    ) -> Vec<SipDevice> {
        let known = Known::of(rows, released);
        let kept = &self.kept;
        let restore = |device: &KeptDevice| {
            let (guid, number, name) = device.parts(&kept.texts);
            SipDevice {
                guid: guid.to_string(),
                icp: kept.icp_names[device.icp as usize].to_string(),
                setside_username: name.to_string(),
                setside_password: SecretString::from(known.passwords.text(device.setside_password)),
                icpside_username: number.to_string(),
                icpside_password: SecretString::from(
                    known.sip_passwords.text(device.icpside_password),
                ),
                description: known.descriptions.text(device.description),
                enabled: device.enabled,
            }
        };
        match positions {
            Some(positions) => positions
                .iter()
                .map(|&d| restore(&kept.devices[d]))
                .collect(),
            None => kept.devices.iter().map(restore).collect(),
        }
    }

    /// How many SIP users differ between `earlier` and this view: added, removed, or with any
    /// field changed.
    pub(crate) fn drift_from(&self, earlier: &MbgView) -> usize {
        let (now, then) = (&self.kept, &earlier.kept);
        let before: HashMap<Guid<'_>, &KeptDevice> = then
            .devices
            .iter()
            .map(|d| (d.parts(&then.texts).0, d))
            .collect();
        let mut kept = 0;
        let mut changed = 0;
        for device in &now.devices {
            let texts = device.parts(&now.texts);
            match before.get(&texts.0) {
                Some(was) => {
                    kept += 1;
                    let same = was.parts(&then.texts) == texts
                        && (was.setside_password, was.icpside_password, was.description)
                            == (
                                device.setside_password,
                                device.icpside_password,
                                device.description,
                            )
                        && was.enabled == device.enabled
                        && then.icp_names[was.icp as usize] == now.icp_names[device.icp as usize];
                    if !same {
                        changed += 1;
                    }
                }
                None => changed += 1,
            }
        }
        changed + (before.len() - kept)
    }

    /// Takes in what the MBG confirmed during a pass, in one sweep over the devices rather
    /// than one per answer: a pass that created 10,000 SIP users would otherwise scan the list
    /// 10,000 times.
    ///
    /// # Panics
    /// When a SIP user renamed has a text longer than 65,535 bytes (the plan refuses such
    /// values before the MBG sees them).
    pub(crate) fn absorb(&mut self, changes: MbgChanges) {
        let created = &changes.created;
        let mut replaced: HashSet<Guid<'_>> = changes.removed.iter().map(|g| Guid::of(g)).collect();
        replaced.extend(created.devices.iter().map(|d| d.parts(&created.texts).0));
        let patches: HashMap<Guid<'_>, &SipDevicePatch> = changes
            .patched
            .iter()
            .map(|(g, p)| (Guid::of(g), p))
            .collect();
        if replaced.is_empty() && patches.is_empty() {
            return;
        }
        let kept = &mut self.kept;
        kept.remove(|guid| replaced.contains(&guid));
        if !patches.is_empty() {
            for d in 0..kept.devices.len() {
                let guid = kept.devices[d].parts(&kept.texts).0;
                if let Some(patch) = patches.get(&guid) {
                    kept.patch(d, patch).expect("patched texts under 64 KiB");
                }
            }
        }
        if kept.devices.is_empty() {
            // A first pass: what it made is the view (the ICP names are those it uses).
            let mut created = changes.created;
            created.shrink();
            *kept = created;
        } else {
            kept.append(&changes.created);
            kept.compact_when_half_unused();
        }
    }
}

/// What a pass changed on the MBG, gathered as the answers come: the SIP users created are
/// kept at once as the view keeps them, so that a first pass of 100,000 creates does not hold
/// 100,000 parsed devices to its end.
#[derive(Default)]
pub struct MbgChanges {
    created: Kept,
    patched: Vec<(String, SipDevicePatch)>,
    removed: Vec<String>,
}

impl fmt::Debug for MbgChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MbgChanges")
            .field("created", &self.created.devices.len())
            .field("patched", &self.patched.len())
            .field("removed", &self.removed.len())
            .finish()
    }
}

impl MbgChanges {
    /// Room for `creates` SIP users made (their number and set-side name at a guess of 32
    /// bytes; guids are UUIDs, kept apart).
    pub(crate) fn expecting(creates: usize) -> MbgChanges {
        MbgChanges {
            created: Kept {
                devices: Vec::with_capacity(creates),
                keys: Vec::with_capacity(creates),
                texts: String::with_capacity(creates * 32),
                ..Kept::default()
            },
            ..MbgChanges::default()
        }
    }

    /// # Panics
    /// When a SIP user created has a text longer than 65,535 bytes (the plan refuses such
    /// values before the MBG sees them).
    pub(crate) fn take(&mut self, effect: DeviceEffect) {
        match effect {
            DeviceEffect::Created(device) => self
                .created
                .push(&Listed::from(&device))
                .expect("created texts under 64 KiB"),
            DeviceEffect::Patched { guid, patch } => self.patched.push((guid, patch)),
            DeviceEffect::Removed(guid) => self.removed.push(guid),
        }
    }
}

/// A SIP user's text too long to keep: no MBG allows one.
#[derive(Debug, thiserror::Error)]
#[error("SIP user {guid:?}: a guid or name longer than 65,535 bytes")]
struct TooLong {
    guid: String,
}

impl Kept {
    fn push(&mut self, device: &Listed<'_>) -> Result<(), TooLong> {
        let guid = Guid::of(&device.guid);
        let texts = self.add_texts(guid, &device.icpside_username, &device.setside_username)?;
        let icp = self.icp_position(&device.icp);
        self.devices.push(KeptDevice {
            texts,
            uuid: match guid {
                Guid::Uuid(uuid) => Some(uuid),
                Guid::Text(_) => None,
            },
            setside_password: hash(&device.setside_password),
            icpside_password: hash(&device.icpside_password),
            description: hash(&device.description),
            icp,
            enabled: device.enabled,
        });
        self.keys.push(DeviceKeys {
            guid: key(&device.guid),
            number: key(&device.icpside_username),
            name: key(&device.setside_username),
        });
        Ok(())
    }

    /// Adds the texts of a SIP user (its guid's only when it is not a UUID).
    fn add_texts(&mut self, guid: Guid<'_>, number: &str, name: &str) -> Result<TextSpan, TooLong> {
        let too_long = || TooLong {
            guid: guid.to_string().chars().take(64).collect(),
        };
        let guid = match guid {
            Guid::Text(text) => text,
            Guid::Uuid(_) => "",
        };
        let span = TextSpan {
            at: u32::try_from(self.texts.len()).map_err(|_| too_long())?,
            guid: u16::try_from(guid.len()).map_err(|_| too_long())?,
            number: u16::try_from(number.len()).map_err(|_| too_long())?,
            name: u16::try_from(name.len()).map_err(|_| too_long())?,
        };
        self.texts.push_str(guid);
        self.texts.push_str(number);
        self.texts.push_str(name);
        Ok(span)
    }

    fn icp_position(&mut self, name: &str) -> u32 {
        let at = match self.icp_names.iter().position(|n| &**n == name) {
            Some(at) => at,
            None => {
                self.icp_names.push(name.into());
                self.icp_names.len() - 1
            }
        };
        u32::try_from(at).expect("fewer ICP names than SIP users")
    }

    /// Drops the SIP users whose guid `gone` names, keeping the others' order.
    fn remove(&mut self, gone: impl Fn(Guid<'_>) -> bool) {
        let mut left = 0;
        for d in 0..self.devices.len() {
            let device = self.devices[d];
            if gone(device.parts(&self.texts).0) {
                self.unused += device.texts.len();
            } else {
                self.devices[left] = device;
                self.keys[left] = self.keys[d];
                left += 1;
            }
        }
        self.devices.truncate(left);
        self.keys.truncate(left);
    }

    fn patch(&mut self, d: usize, patch: &SipDevicePatch) -> Result<(), TooLong> {
        let mut device = self.devices[d];
        if patch.setside_username.is_some() || patch.icpside_username.is_some() {
            let (guid, number, name) = device.parts(&self.texts);
            let number = patch
                .icpside_username
                .as_deref()
                .unwrap_or(number)
                .to_string();
            let name = patch
                .setside_username
                .as_deref()
                .unwrap_or(name)
                .to_string();
            let guid = guid.to_string();
            self.unused += device.texts.len();
            device.texts = self.add_texts(Guid::of(&guid), &number, &name)?;
            self.keys[d].number = key(&number);
            self.keys[d].name = key(&name);
        }
        if let Some(icp) = &patch.icp {
            device.icp = self.icp_position(icp);
        }
        if let Some(password) = &patch.setside_password {
            device.setside_password = hash(password.expose_secret());
        }
        if let Some(password) = &patch.icpside_password {
            device.icpside_password = hash(password.expose_secret());
        }
        if let Some(description) = &patch.description {
            device.description = hash(description);
        }
        if let Some(enabled) = patch.enabled {
            device.enabled = enabled;
        }
        self.devices[d] = device;
        Ok(())
    }

    /// Adds the SIP users `other` keeps, after these.
    fn append(&mut self, other: &Kept) {
        // Grown by what is added or a sixteenth, not doubled: the view is kept for good.
        let room = |len: usize, added: usize| added.max(len / 16);
        self.devices
            .reserve_exact(room(self.devices.len(), other.devices.len()));
        self.keys
            .reserve_exact(room(self.keys.len(), other.keys.len()));
        self.texts
            .reserve_exact(room(self.texts.len(), other.texts.len()));
        self.keys.extend_from_slice(&other.keys);
        for device in &other.devices {
            let (guid, number, name) = device.parts(&other.texts);
            let texts = self
                .add_texts(guid, number, name)
                .expect("texts kept once fit again");
            let icp = self.icp_position(&other.icp_names[device.icp as usize]);
            self.devices.push(KeptDevice {
                texts,
                icp,
                ..*device
            });
        }
    }

    /// Rewrites the texts without the unused ones once they are half of them.
    fn compact_when_half_unused(&mut self) {
        if self.unused * 2 <= self.texts.len() {
            return;
        }
        let mut texts = String::with_capacity(self.texts.len() - self.unused);
        for device in &mut self.devices {
            let start = device.texts.at as usize;
            device.texts.at = u32::try_from(texts.len()).expect("fewer texts than before");
            texts.push_str(&self.texts[start..start + device.texts.len()]);
        }
        self.texts = texts;
        self.unused = 0;
    }

    fn shrink(&mut self) {
        self.devices.shrink_to_fit();
        self.keys.shrink_to_fit();
        self.texts.shrink_to_fit();
    }
}

/// The values a pass plans from, by hash, to restore kept fields with.
struct Known<'a> {
    passwords: Values<'a>,
    sip_passwords: Values<'a>,
    descriptions: Values<'a>,
}

#[derive(Default)]
struct Values<'a> {
    by_hash: HashMap<u64, std::borrow::Cow<'a, str>>,
}

impl<'a> Values<'a> {
    fn add(&mut self, value: impl Into<std::borrow::Cow<'a, str>>) {
        let value = value.into();
        self.by_hash.entry(hash(&value)).or_insert(value);
    }

    fn text(&self, hashed: u64) -> String {
        match self.by_hash.get(&hashed) {
            Some(value) => value.to_string(),
            None => format!("\u{1}{hashed:016x}"),
        }
    }
}

impl<'a> Known<'a> {
    fn of(rows: &'a [Extension], released: &'a [Released]) -> Known<'a> {
        let mut known = Known {
            passwords: Values::default(),
            sip_passwords: Values::default(),
            descriptions: Values::default(),
        };
        for e in rows {
            known.descriptions.add(plan::description(&e.number));
            known.sip_passwords.add(e.sip_password.expose_secret());
            if let Some(password) = &e.remote_auth_password {
                known.passwords.add(password.expose_secret());
            }
        }
        for r in released {
            known.descriptions.add(plan::description(&r.number));
            if let Some(password) = &r.remote_auth_password {
                known.passwords.add(password.expose_secret());
            }
        }
        known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(guid: &str, number: &str) -> SipDevice {
        SipDevice {
            guid: guid.into(),
            icp: "MiVO250-1".into(),
            setside_username: format!("set{number}"),
            setside_password: SecretString::from("set-pass"),
            icpside_username: number.into(),
            icpside_password: SecretString::from("icp-pass"),
            description: String::new(),
            enabled: true,
        }
    }

    /// What the view keeps after creates, patches and removals is what a fresh read of the
    /// result would keep: a stale hash would hide a SIP user from a targeted pass.
    #[test]
    fn absorbing_answers_keeps_what_a_fresh_read_would() {
        let mut devices: Vec<SipDevice> = (0..6)
            .map(|i| device(&format!("g{i}"), &format!("10{i}")))
            .collect();
        let mut view = MbgView::new(Vec::new(), devices.clone());
        let renamed = SipDevicePatch {
            icp: Some("MiVO250-2".into()),
            setside_username: Some("renamed".into()),
            icpside_username: Some("999".into()),
            ..Default::default()
        };
        let mut changes = MbgChanges::default();
        for effect in [
            DeviceEffect::Removed("g1".into()),
            DeviceEffect::Patched {
                guid: "g3".into(),
                patch: renamed.clone(),
            },
            DeviceEffect::Created(device("g9", "109")),
            DeviceEffect::Removed("g4".into()),
        ] {
            changes.take(effect);
        }
        view.absorb(changes);
        devices.retain(|d| d.guid != "g1" && d.guid != "g4");
        renamed.apply_to(&mut devices[2]);
        devices.push(device("g9", "109"));
        let fresh = MbgView::new(Vec::new(), devices);
        assert_eq!(view.drift_from(&fresh), 0);
        assert_eq!(view.len(), 5);
        let restored = view.devices_for(None, &[], &[]);
        assert_eq!(restored[2].icp, "MiVO250-2");
        assert_eq!(restored[2].setside_username, "renamed");
        assert!(
            restored[2]
                .setside_password
                .expose_secret()
                .starts_with('\u{1}'),
            "no row has it"
        );
    }

    /// Drift counts each SIP user added, removed or changed in any field, and nothing else.
    #[test]
    fn drift_counts_each_changed_sip_user_once() {
        let devices: Vec<SipDevice> = (0..5)
            .map(|i| device(&format!("g{i}"), &format!("10{i}")))
            .collect();
        let earlier = MbgView::new(Vec::new(), devices.clone());
        let mut later = devices;
        later.remove(0);
        later[0].icpside_password = SecretString::from("changed by hand");
        later[1].icp = "MiVO250-2".into();
        later.push(device("g7", "107"));
        let later = MbgView::new(Vec::new(), later);
        assert_eq!(later.drift_from(&earlier), 4);
        assert_eq!(earlier.drift_from(&earlier.clone()), 0);
    }

    fn texts_of(view: &MbgView) -> Vec<(String, String, String, String, bool)> {
        view.devices_for(None, &[], &[])
            .into_iter()
            .map(|d| {
                (
                    d.guid,
                    d.icp,
                    d.icpside_username,
                    d.setside_username,
                    d.enabled,
                )
            })
            .collect()
    }

    /// The list kept as it is parsed is the list parsed whole and then kept: escaped strings
    /// (not borrowed from the answer), the defaults of `description` and `enabled`, unknown
    /// fields; and what the whole parse refuses, it refuses.
    #[test]
    fn the_list_kept_while_parsing_is_the_list_parsed_whole() {
        let answer = r#"[
            {"guid": "g\"1", "icp": "MiVO250-1", "setside_username": "caf\u00e9",
             "setside_password": "p\\w", "icpside_username": "1001",
             "icpside_password": "s1", "description": "mbg-provision ext 1001",
             "enabled": false, "extra": {"nested": [1, 2]}},
            {"guid": "g2", "icp": "MiVO250-2", "setside_username": "n2",
             "setside_password": "p2", "icpside_username": "1002", "icpside_password": "s2"}
        ]"#;
        let whole: Vec<SipDevice> = serde_json::from_str(answer).unwrap();
        let KeptList(kept) = serde_json::from_str(answer).unwrap();
        let streamed = MbgView {
            icps: Vec::new(),
            kept,
        };
        let parsed = MbgView::new(Vec::new(), whole);
        assert_eq!(streamed.drift_from(&parsed), 0);
        assert_eq!(parsed.drift_from(&streamed), 0);
        assert_eq!(texts_of(&streamed), texts_of(&parsed));
        assert_eq!(texts_of(&streamed)[0].0, "g\"1");
        assert_eq!(texts_of(&streamed)[0].3, "café");
        assert!(texts_of(&streamed)[1].4, "enabled by default");

        let missing_password = r#"[{"guid": "g", "icp": "i", "setside_username": "n",
            "icpside_username": "1", "icpside_password": "s"}]"#;
        assert!(serde_json::from_str::<Vec<SipDevice>>(missing_password).is_err());
        assert!(serde_json::from_str::<KeptList>(missing_password).is_err());
        let too_long = format!(
            r#"[{{"guid": "g", "icp": "i", "setside_username": "{}", "setside_password": "p",
            "icpside_username": "1", "icpside_password": "s"}}]"#,
            "n".repeat(70_000)
        );
        let refused = serde_json::from_str::<KeptList>(&too_long).err().unwrap();
        assert!(
            refused.to_string().contains("longer than 65,535"),
            "{refused}"
        );
    }

    /// Removing and renaming leave texts no SIP user points at; once they are half, they are
    /// dropped, and what is left reads as a fresh view of the same SIP users would.
    #[test]
    fn unused_texts_are_compacted_away_without_changing_the_view() {
        let mut devices: Vec<SipDevice> = (0..10)
            .map(|i| device(&format!("guid-{i}"), &format!("10{i}")))
            .collect();
        let mut view = MbgView::new(Vec::new(), devices.clone());
        let before = view.kept.texts.len();
        let mut changes = MbgChanges::default();
        for i in 0..6 {
            changes.take(DeviceEffect::Removed(format!("guid-{i}")));
        }
        let renamed = SipDevicePatch {
            setside_username: Some("a much longer set-side name than before".into()),
            ..Default::default()
        };
        changes.take(DeviceEffect::Patched {
            guid: "guid-7".into(),
            patch: renamed.clone(),
        });
        view.absorb(changes);
        devices.drain(..6);
        renamed.apply_to(&mut devices[1]);
        let fresh = MbgView::new(Vec::new(), devices);
        assert_eq!(view.kept.unused, 0, "compacted");
        assert!(
            view.kept.texts.len() < before,
            "{} bytes",
            view.kept.texts.len()
        );
        assert_eq!(view.kept.texts.len(), fresh.kept.texts.len());
        assert_eq!(view.drift_from(&fresh), 0);
        assert_eq!(texts_of(&view), texts_of(&fresh));
        let (guid, number, name) = view.device_texts(1);
        assert_eq!(
            (guid, number, name),
            (
                Guid::Text("guid-7"),
                "107",
                "a much longer set-side name than before"
            )
        );
        assert_eq!(view.device_keys()[1].name, key(name));
    }

    const UUID: &str = "0f8e2a4c-9b1d-4e7f-a3c5-6d2b8e0f1a9c";

    /// A guid in the MBG's usual form is kept as 16 bytes and reads back as the same text; any
    /// other text (upper case, braces, one digit short, not hex) is kept as it is.
    #[test]
    fn uuids_are_kept_as_bytes_and_read_back_as_they_came() {
        let uuid = Guid::of(UUID);
        assert!(matches!(uuid, Guid::Uuid(_)), "{uuid:?}");
        assert_eq!(uuid.to_string(), UUID);
        for other in [
            "0F8E2A4C-9B1D-4E7F-A3C5-6D2B8E0F1A9C",
            "{0f8e2a4c-9b1d-4e7f-a3c5-6d2b8e0f1a9}",
            "0f8e2a4c-9b1d-4e7f-a3c5-6d2b8e0f1a9",
            "0f8e2a4c9b1d-4e7f-a3c5-6d2b8e0f1a9c0",
            "0f8e2a4c-9b1d-4e7f-a3c5-6d2b8e0f1a9g",
            "0f8e2a4c-9b1d-4e7f-a3c5-6d2b8e0f1aé",
            "",
        ] {
            assert_eq!(Guid::of(other), Guid::Text(other));
        }
    }

    proptest::proptest! {
        /// Whatever the MBG calls a SIP user, the view gives the same text back, and two
        /// guids are kept equal exactly when their texts are.
        #[test]
        fn every_guid_reads_back_as_it_came(
            a in "[0-9a-f-]{36}|[0-9a-fA-F]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|.{0,40}",
            b in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        ) {
            proptest::prop_assert_eq!(Guid::of(&a).to_string(), a.clone());
            proptest::prop_assert_eq!(Guid::of(&b).to_string(), b.clone());
            proptest::prop_assert!(matches!(Guid::of(&b), Guid::Uuid(_)));
            proptest::prop_assert_eq!(Guid::of(&a) == Guid::of(&b), a == b);
        }

        /// Passes that remove, rename and create SIP users with UUIDs, upper-case UUIDs (kept
        /// as text) and other guids, absorbed one after the other, leave the view a fresh read
        /// of the result would make: the same SIP users, texts and keys, and no text counted
        /// wrongly as unused (compaction depends on it). Each pass touches a SIP user once,
        /// as a pass's plan does.
        #[test]
        fn absorbing_passes_over_mixed_guids_keeps_what_a_fresh_read_would(
            start in 0usize..12,
            steps in proptest::collection::vec((0u8..4, 0usize..64, 0u8..3), 0..48),
        ) {
            let guid = |i: usize, kind: u8| match kind {
                0 => format!("{}{i:04x}", &UUID[..32]),
                1 => format!("{}{i:04X}", UUID[..32].to_uppercase()),
                _ => format!("g{i}"),
            };
            let mut made = 0;
            let mut make = |kind: u8| {
                made += 1;
                device(&guid(made, kind), &format!("{}", 100 + made))
            };
            let mut devices: Vec<SipDevice> = (0..start).map(|i| make((i % 3) as u8)).collect();
            let mut view = MbgView::new(Vec::new(), devices.clone());
            let mut changes = MbgChanges::default();
            let mut touched: HashSet<String> = HashSet::default();
            for (step, at, kind) in steps.into_iter().chain([(3, 0, 0)]) {
                let untouched: Vec<usize> = (0..devices.len())
                    .filter(|&d| !touched.contains(&devices[d].guid))
                    .collect();
                match (step, untouched.is_empty()) {
                    (0, false) => {
                        let gone = devices.remove(untouched[at % untouched.len()]);
                        touched.insert(gone.guid.clone());
                        changes.take(DeviceEffect::Removed(gone.guid));
                    }
                    (1, false) => {
                        let d = untouched[at % untouched.len()];
                        let patch = SipDevicePatch {
                            setside_username: Some(format!("renamed {at}")),
                            icpside_username: (kind == 0).then(|| format!("9{at}")),
                            ..Default::default()
                        };
                        patch.apply_to(&mut devices[d]);
                        touched.insert(devices[d].guid.clone());
                        changes.take(DeviceEffect::Patched { guid: devices[d].guid.clone(), patch });
                    }
                    (3, _) => {
                        view.absorb(std::mem::take(&mut changes));
                        touched.clear();
                        let fresh = MbgView::new(Vec::new(), devices.clone());
                        proptest::prop_assert_eq!(view.drift_from(&fresh), 0);
                        proptest::prop_assert_eq!(fresh.drift_from(&view), 0);
                        proptest::prop_assert_eq!(texts_of(&view), texts_of(&fresh));
                        proptest::prop_assert_eq!(view.device_keys(), fresh.device_keys());
                        proptest::prop_assert_eq!(
                            view.kept.texts.len() - view.kept.unused,
                            fresh.kept.texts.len()
                        );
                    }
                    _ => {
                        let created = make(kind);
                        touched.insert(created.guid.clone());
                        devices.push(created.clone());
                        changes.take(DeviceEffect::Created(created));
                    }
                }
            }
        }
    }

    /// SIP users with UUIDs keep no guid text, and creating, renaming, removing and
    /// restoring them works on the bytes as it does on text.
    #[test]
    fn sip_users_with_uuids_keep_only_their_names_as_text() {
        let uuid = |i: u8| format!("{}{i:x}", &UUID[..35]);
        let mut devices: Vec<SipDevice> = (0..8)
            .map(|i| device(&uuid(i), &format!("10{i}")))
            .collect();
        let mut view = MbgView::new(Vec::new(), devices.clone());
        let names: usize = devices
            .iter()
            .map(|d| d.icpside_username.len() + d.setside_username.len())
            .sum();
        assert_eq!(view.kept.texts.len(), names, "no guid among the texts");
        let renamed = SipDevicePatch {
            setside_username: Some("renamed".into()),
            ..Default::default()
        };
        let mut changes = MbgChanges::default();
        changes.take(DeviceEffect::Removed(uuid(1)));
        changes.take(DeviceEffect::Patched {
            guid: uuid(5),
            patch: renamed.clone(),
        });
        changes.take(DeviceEffect::Created(device(&uuid(9), "109")));
        view.absorb(changes);
        devices.remove(1);
        renamed.apply_to(&mut devices[4]);
        devices.push(device(&uuid(9), "109"));
        let fresh = MbgView::new(Vec::new(), devices.clone());
        assert_eq!(view.drift_from(&fresh), 0);
        let restored: Vec<String> = view
            .devices_for(None, &[], &[])
            .into_iter()
            .map(|d| d.guid)
            .collect();
        let wanted: Vec<String> = devices.into_iter().map(|d| d.guid).collect();
        assert_eq!(restored, wanted);
        assert_eq!(view.device_texts(4).2, "renamed");
        assert_eq!(view.device_keys()[4].guid, key(&uuid(5)));
    }
}
