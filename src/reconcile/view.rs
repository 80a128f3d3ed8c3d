//! What the MBG holds, as passes plan from it and as the daemon keeps it between passes:
//! refreshed by each full reconcile, corrected by each answer, so that a change costs no read of
//! the MBG's SIP user list at any size.
//!
//! Kept compact: per SIP user its guid, ICP-side and set-side names (a targeted pass asks the
//! database for the rows that share them), ICP and enabled flag, and a hash of the passwords
//! and the description. The plan only ever asks whether those equal a value of the database (a
//! password, the description we write), so before a pass they are restored from the values of
//! the rows it plans ([`MbgView::devices_for`]); a value no row has is given a stand-in that
//! keeps equal values equal and equals no real value. About 220 bytes per SIP user instead of
//! some 580 for every field's string: 100,000 of them in an idle daemon is some 22 MB, not 58.
//! The hash is keyed (a random key per process), and the passwords are not kept at all.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::LazyLock;
use std::time::Instant;

use secrecy::{ExposeSecret, SecretString};

use super::plan::{self, HashMap, HashSet};
use super::{DeviceEffect, Outcome, ReconcileError, read_with_retry};
use crate::config::Config;
use crate::mbg::{Icp, MbgClient, SipDevice, SipDevicePatch};
use crate::shutdown::Shutdown;
use crate::store::{Extension, Released};

#[derive(Clone, Default)]
pub struct MbgView {
    pub icps: Vec<Icp>,
    devices: Vec<KeptDevice>,
    /// The ICP names the devices use, each once (a device keeps its position here).
    icp_names: Vec<Box<str>>,
    /// Each device's keys again, side by side: a targeted pass sweeps 2.4 MB at 100,000 SIP
    /// users instead of the devices' 11 MB. Rebuilt whenever the devices change.
    keys: Vec<DeviceKeys>,
}

/// One SIP user as kept. Two are equal when every field is.
#[derive(Clone, PartialEq, Eq)]
struct KeptDevice {
    guid: Box<str>,
    /// The ICP-side name: the number.
    number: Box<str>,
    /// The set-side name.
    name: Box<str>,
    keys: DeviceKeys,
    setside_password: u64,
    icpside_password: u64,
    description: u64,
    icp: u32,
    enabled: bool,
}

/// The hashes of a SIP user's guid, ICP-side name (the number) and set-side name: what a
/// targeted pass looks for (see [`super::near`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeviceKeys {
    pub(crate) guid: u64,
    pub(crate) number: u64,
    pub(crate) name: u64,
}

/// The keyed hash of every kept field and every key a targeted pass looks for.
pub(crate) fn hash(value: &str) -> u64 {
    static KEY: LazyLock<RandomState> = LazyLock::new(RandomState::new);
    KEY.hash_one(value)
}

impl fmt::Debug for MbgView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MbgView")
            .field("icps", &self.icps)
            .field("devices", &self.devices.len())
            .finish()
    }
}

impl MbgView {
    pub fn new(icps: Vec<Icp>, devices: Vec<SipDevice>) -> MbgView {
        let mut view = MbgView {
            icps,
            ..MbgView::default()
        };
        view.devices = devices.iter().map(|d| view.keep(d)).collect();
        view.line_up_keys();
        view
    }

    fn line_up_keys(&mut self) {
        self.keys = self.devices.iter().map(|d| d.keys).collect();
    }

    /// Reads both lists, retrying a busy MBG until `mbg.retry_deadline`.
    pub async fn read(
        client: &MbgClient,
        config: &Config,
        shutdown: &Shutdown,
    ) -> Result<MbgView, ReconcileError> {
        let retry_until = Instant::now() + config.mbg.retry_deadline;
        let cap = config.mbg.max_retry_after;
        let icps = read_with_retry(cap, shutdown, retry_until, || client.icps()).await?;
        let devices = read_with_retry(cap, shutdown, retry_until, || client.devices()).await?;
        Ok(MbgView::new(icps, devices))
    }

    /// How many SIP users the MBG holds.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    pub(crate) fn device_keys(&self) -> &[DeviceKeys] {
        &self.keys
    }

    /// The guid, number and set-side name of the SIP user at `position`.
    pub(crate) fn device_texts(&self, position: usize) -> (&str, &str, &str) {
        let d = &self.devices[position];
        (&d.guid, &d.number, &d.name)
    }

    fn keep(&mut self, device: &SipDevice) -> KeptDevice {
        KeptDevice {
            guid: device.guid.as_str().into(),
            number: device.icpside_username.as_str().into(),
            name: device.setside_username.as_str().into(),
            keys: DeviceKeys {
                guid: hash(&device.guid),
                number: hash(&device.icpside_username),
                name: hash(&device.setside_username),
            },
            setside_password: hash(device.setside_password.expose_secret()),
            icpside_password: hash(device.icpside_password.expose_secret()),
            description: hash(&device.description),
            icp: self.icp_position(&device.icp),
            enabled: device.enabled,
        }
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
        let restore = |device: &KeptDevice| SipDevice {
            guid: device.guid.to_string(),
            icp: self.icp_names[device.icp as usize].to_string(),
            setside_username: device.name.to_string(),
            setside_password: SecretString::from(known.passwords.text(device.setside_password)),
            icpside_username: device.number.to_string(),
            icpside_password: SecretString::from(known.sip_passwords.text(device.icpside_password)),
            description: known.descriptions.text(device.description),
            enabled: device.enabled,
        };
        match positions {
            Some(positions) => positions
                .iter()
                .map(|&d| restore(&self.devices[d]))
                .collect(),
            None => self.devices.iter().map(restore).collect(),
        }
    }

    /// How many SIP users differ between `earlier` and this view: added, removed, or with any
    /// field changed.
    pub fn drift_from(&self, earlier: &MbgView) -> usize {
        let icp = |view: &MbgView, d: &KeptDevice| view.icp_names[d.icp as usize].clone();
        let before: HashMap<u64, &KeptDevice> =
            earlier.devices.iter().map(|d| (d.keys.guid, d)).collect();
        let mut kept = 0;
        let mut changed = 0;
        for device in &self.devices {
            match before.get(&device.keys.guid) {
                Some(was) => {
                    kept += 1;
                    let same = KeptDevice {
                        icp: device.icp,
                        ..(*was).clone()
                    } == *device
                        && icp(earlier, was) == icp(self, device);
                    if !same {
                        changed += 1;
                    }
                }
                None => changed += 1,
            }
        }
        changed + (before.len() - kept)
    }

    /// Takes in what the MBG confirmed during a pass. In one sweep over the devices, not one
    /// per outcome: a pass that created 10,000 SIP users would otherwise scan the list 10,000
    /// times.
    pub fn absorb(&mut self, outcomes: &[Outcome]) {
        let mut replaced: HashSet<&str> = HashSet::default();
        let mut patches: HashMap<&str, &SipDevicePatch> = HashMap::default();
        let mut created: Vec<&SipDevice> = Vec::new();
        for effect in outcomes.iter().filter_map(|o| o.effect.as_ref()) {
            match effect {
                DeviceEffect::Created(device) => {
                    replaced.insert(&device.guid);
                    created.push(device);
                }
                DeviceEffect::Patched { guid, patch } => {
                    patches.insert(guid, patch);
                }
                DeviceEffect::Removed(guid) => {
                    replaced.insert(guid);
                }
            }
        }
        if replaced.is_empty() && patches.is_empty() {
            return;
        }
        self.devices.retain(|d| !replaced.contains(&*d.guid));
        if !patches.is_empty() {
            let mut devices = std::mem::take(&mut self.devices);
            for device in &mut devices {
                if let Some(patch) = patches.get(&*device.guid) {
                    self.patch(device, patch);
                }
            }
            self.devices = devices;
        }
        for device in created {
            let kept = self.keep(device);
            self.devices.push(kept);
        }
        self.line_up_keys();
    }

    fn patch(&mut self, device: &mut KeptDevice, patch: &SipDevicePatch) {
        if let Some(icp) = &patch.icp {
            device.icp = self.icp_position(icp);
        }
        if let Some(name) = &patch.setside_username {
            device.keys.name = hash(name);
            device.name = name.as_str().into();
        }
        if let Some(password) = &patch.setside_password {
            device.setside_password = hash(password.expose_secret());
        }
        if let Some(number) = &patch.icpside_username {
            device.keys.number = hash(number);
            device.number = number.as_str().into();
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
    use crate::reconcile::Status;

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

    fn outcome(effect: DeviceEffect) -> Outcome {
        Outcome {
            extension_id: None,
            number: String::new(),
            verb: "update",
            status: Status::Done,
            detail: String::new(),
            effect: Some(effect),
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
        view.absorb(&[
            outcome(DeviceEffect::Removed("g1".into())),
            outcome(DeviceEffect::Patched {
                guid: "g3".into(),
                patch: renamed.clone(),
            }),
            outcome(DeviceEffect::Created(device("g9", "109"))),
            outcome(DeviceEffect::Removed("g4".into())),
        ]);
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
}
