//! What the simulated MBG knows: consumers, tokens, ICPs, SIP devices, its clock and its faults.

use std::collections::{BTreeMap, HashMap, HashSet};

use rand::RngExt;
use serde::{Deserialize, Serialize};

pub(crate) const TEMPORARY_TOKEN_LIFETIME: i64 = 600;
pub(crate) const ACCESS_TOKEN_LIFETIME: i64 = 365 * 86_400;
pub(crate) const TIMESTAMP_WINDOW: i64 = 300;

pub const PERMISSION_TOKEN: &str = "Base/managetoken";
pub const PERMISSION_ICPS: &str = "MBG/v1/icps";
pub const PERMISSION_DEVICES: &str = "MBG/v1/devices";
pub const ALL_PERMISSIONS: [&str; 3] = [PERMISSION_TOKEN, PERMISSION_ICPS, PERMISSION_DEVICES];

#[derive(Debug, Clone)]
pub(crate) struct Consumer {
    pub secret: String,
    pub permissions: HashSet<String>,
    pub active: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct TemporaryToken {
    pub consumer: String,
    pub secret: String,
    pub created_at: i64,
    pub verifier: Option<String>,
    pub exchanged: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct AccessToken {
    pub consumer: String,
    pub secret: String,
    pub expires_at: i64,
    pub revoked: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Icp {
    pub guid: String,
    pub name: String,
    pub address: String,
    pub icptype: String,
}

/// A SIP device as the MBG returns it, extra fields included.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Device {
    pub guid: String,
    pub icp: String,
    pub setside_username: String,
    pub setside_password: String,
    pub icpside_username: String,
    pub icpside_password: String,
    pub description: String,
    pub enabled: bool,
    pub clientid: String,
    pub last_modified: i64,
    pub connected: bool,
}

/// The fields a POST or PUT may carry.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct DeviceFields {
    pub icp: Option<String>,
    pub setside_username: Option<String>,
    pub setside_password: Option<String>,
    pub icpside_username: Option<String>,
    pub icpside_password: Option<String>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

/// Faults to inject, set through `/sim/faults` or [`super::SimHandle::set_faults`].
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Faults {
    pub latency_ms: u64,
    /// Probability (0 to 1) that a request gets a 503.
    pub fail_rate: f64,
    /// The next N signed requests get 429 with this `Retry-After`.
    pub rate_limit_next: u32,
    pub retry_after_secs: u64,
    /// The next N signed requests have their connection dropped mid-answer.
    pub drop_next: u32,
    /// The next N signed requests that change something are carried out, then their
    /// connection is dropped: the client cannot tell whether a create went through.
    pub lose_answer_next: u32,
    /// Probability that a signed request's connection is dropped before any work.
    pub drop_rate: f64,
    /// Probability that a changing request is carried out and its answer then dropped.
    pub lose_answer_rate: f64,
    /// Probability that a request starts a burst: it and the next `burst_len - 1` signed
    /// requests get 429 with `Retry-After: retry_after_secs`.
    pub burst_rate: f64,
    pub burst_len: u32,
    /// Probability that an answer is held back `spike_ms` (beyond the client's timeout).
    pub spike_rate: f64,
    pub spike_ms: u64,
    /// The next N signed requests that change something are held `spike_ms` before they are
    /// carried out: a create that lands after its client gave up on it.
    pub slow_changes_next: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// The `Host` header: tells apart clients given different names for the simulator.
    pub host: String,
    /// When the request arrived, and when its answer was ready (after any injected latency).
    #[serde(skip)]
    pub received_at: Option<std::time::Instant>,
    #[serde(skip)]
    pub answered_at: Option<std::time::Instant>,
}

/// How many faults the simulator injected, by kind: the figures of a fault suite.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Injected {
    pub errors_5xx: u64,
    pub rate_limited: u64,
    pub dropped: u64,
    pub lost_answers: u64,
    pub spikes: u64,
}

pub(crate) struct SimState {
    pub consumers: HashMap<String, Consumer>,
    pub temporary: HashMap<String, TemporaryToken>,
    pub access: HashMap<String, AccessToken>,
    /// (timestamp, nonce, token) seen, pruned once outside the timestamp window.
    pub nonces: HashSet<(i64, String, String)>,
    pub icps: Vec<Icp>,
    pub devices: BTreeMap<String, Device>,
    /// How many devices use each set-side name: the uniqueness check of a real MBG is an index
    /// lookup, and a scan of every device under the lock made the simulator, not the client,
    /// the bottleneck of a 10,000-device bench.
    pub setside_names: HashMap<String, usize>,
    /// When `nonces` was last pruned (the simulator's clock, seconds).
    pub nonces_pruned_at: i64,
    pub licences: Option<usize>,
    pub auto_approve: bool,
    pub approve_with: Option<String>,
    /// `false`: the token info and renew endpoints answer 404, like an MBG without them.
    pub token_api: bool,
    pub duplicate_setside_names: bool,
    /// `true`: token answers leave `+ / =` unencoded, as some servers do.
    pub unencoded_token_answers: bool,
    pub clock_offset: i64,
    pub faults: Faults,
    /// The latest [`REQUEST_LOG`] requests: a simulator left running for months (`simulate`)
    /// must not grow without end.
    pub requests: std::collections::VecDeque<LoggedRequest>,
    /// Every request since the log was last cleared, including those the log no longer holds.
    pub requests_seen: u64,
    pub injected: Injected,
}

/// How many requests the simulator's log keeps (about 20 MB).
pub(crate) const REQUEST_LOG: usize = 100_000;

impl SimState {
    pub(crate) fn log_request(&mut self, request: LoggedRequest) {
        if self.requests.len() == REQUEST_LOG {
            self.requests.pop_front();
        }
        self.requests.push_back(request);
        self.requests_seen += 1;
    }

    pub(crate) fn clear_requests(&mut self) {
        self.requests.clear();
        self.requests_seen = 0;
    }
}

/// A token or token secret in the shape of a real MBG's (`or7z4alsrn2+pyuwm33djq==`), with a `+`,
/// a `/` and a `=` always, so that every exchange proves that they survive the round trip.
pub(crate) fn random_token() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 16];
    rand::rng().fill(&mut bytes[..]);
    let mut token = base64::engine::general_purpose::STANDARD.encode(bytes);
    token.replace_range(4..5, "+");
    token.replace_range(9..10, "/");
    token
}

fn random_guid() -> String {
    let mut rng = rand::rng();
    let hex: String = (0..32)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap())
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

impl SimState {
    pub(crate) fn now(&self) -> i64 {
        chrono::Utc::now().timestamp() + self.clock_offset
    }

    pub(crate) fn add_icp(&mut self, name: &str, address: &str) {
        self.icps.push(Icp {
            guid: random_guid(),
            name: name.to_string(),
            address: address.to_string(),
            icptype: "MiVO250".to_string(),
        });
    }

    /// A token and its secret as a token answer writes them.
    pub(crate) fn token_answer(&self, token: &str, secret: &str) -> (String, String) {
        if self.unencoded_token_answers {
            (token.to_string(), secret.to_string())
        } else {
            (crate::oauth::encode(token), crate::oauth::encode(secret))
        }
    }

    pub(crate) fn new_temporary_token(&mut self, consumer: &str) -> (String, String) {
        let (token, secret) = (random_token(), random_token());
        let verifier = self
            .approve_with
            .clone()
            .or_else(|| self.auto_approve.then(six_digits));
        self.temporary.insert(
            token.clone(),
            TemporaryToken {
                consumer: consumer.to_string(),
                secret: secret.clone(),
                created_at: self.now(),
                verifier,
                exchanged: false,
            },
        );
        (token, secret)
    }

    /// What an administrator does on the MBG page: approve, and read the verifier.
    pub(crate) fn approve(&mut self, token: &str) -> Option<String> {
        let temporary = self.temporary.get_mut(token)?;
        Some(temporary.verifier.get_or_insert_with(six_digits).clone())
    }

    pub(crate) fn revoke(&mut self, token: &str) -> bool {
        if let Some(access) = self.access.get_mut(token) {
            access.revoked = true;
            true
        } else {
            self.temporary.remove(token).is_some()
        }
    }

    /// Records a nonce; `false` if it was already used with this timestamp and token.
    pub(crate) fn fresh_nonce(&mut self, timestamp: i64, nonce: &str, token: &str) -> bool {
        // Once a second at most: pruning on every request made each one cost O(requests).
        if self.nonces_pruned_at != self.now() {
            self.nonces_pruned_at = self.now();
            let horizon = self.now() - 2 * TIMESTAMP_WINDOW;
            self.nonces.retain(|(ts, _, _)| *ts >= horizon);
        }
        self.nonces
            .insert((timestamp, nonce.to_string(), token.to_string()))
    }

    /// Validates and stores a new device; the error is the MBG's 400 message.
    pub(crate) fn create_device(&mut self, fields: DeviceFields) -> Result<String, String> {
        let required = |value: &Option<String>, name: &str| {
            value
                .clone()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("missing required field {name}"))
        };
        let device = Device {
            guid: random_guid(),
            icp: required(&fields.icp, "icp")?,
            setside_username: required(&fields.setside_username, "setside_username")?,
            setside_password: required(&fields.setside_password, "setside_password")?,
            icpside_username: required(&fields.icpside_username, "icpside_username")?,
            icpside_password: required(&fields.icpside_password, "icpside_password")?,
            description: fields.description.unwrap_or_default(),
            enabled: fields.enabled.unwrap_or(true),
            clientid: format!("client-{}", self.devices.len() + 1),
            last_modified: self.now(),
            connected: false,
        };
        if let Some(limit) = self.licences
            && self.devices.len() >= limit
        {
            return Err("no teleworker licence available".into());
        }
        self.check_device(&device, None)?;
        let guid = device.guid.clone();
        self.store_device(device);
        Ok(guid)
    }

    /// Inserts or replaces a device, keeping `setside_names` in step.
    fn store_device(&mut self, device: Device) {
        *self
            .setside_names
            .entry(device.setside_username.clone())
            .or_default() += 1;
        if let Some(old) = self.devices.insert(device.guid.clone(), device) {
            self.forget_setside_name(&old.setside_username);
        }
    }

    pub(crate) fn remove_device(&mut self, guid: &str) -> Option<Device> {
        let removed = self.devices.remove(guid)?;
        self.forget_setside_name(&removed.setside_username);
        Some(removed)
    }

    fn forget_setside_name(&mut self, name: &str) {
        if let Some(count) = self.setside_names.get_mut(name) {
            *count -= 1;
            if *count == 0 {
                self.setside_names.remove(name);
            }
        }
    }

    pub(crate) fn update_device(
        &mut self,
        guid: &str,
        fields: DeviceFields,
    ) -> Result<bool, String> {
        let Some(mut device) = self.devices.get(guid).cloned() else {
            return Ok(false);
        };
        let set = |target: &mut String, value: Option<String>| {
            if let Some(value) = value {
                *target = value;
            }
        };
        set(&mut device.icp, fields.icp);
        set(&mut device.setside_username, fields.setside_username);
        set(&mut device.setside_password, fields.setside_password);
        set(&mut device.icpside_username, fields.icpside_username);
        set(&mut device.icpside_password, fields.icpside_password);
        set(&mut device.description, fields.description);
        if let Some(enabled) = fields.enabled {
            device.enabled = enabled;
        }
        device.last_modified = self.now();
        let was = self.devices[guid].setside_username.clone();
        self.check_device(&device, Some(&was))?;
        self.store_device(device);
        Ok(true)
    }

    /// `was`: the set-side name the device had before this update (it does not clash with
    /// itself).
    fn check_device(&self, device: &Device, was: Option<&str>) -> Result<(), String> {
        if !self.icps.iter().any(|icp| icp.name == device.icp) {
            return Err(format!("unknown ICP {:?}", device.icp));
        }
        for (name, value) in [
            ("setside_username", &device.setside_username),
            ("icpside_username", &device.icpside_username),
        ] {
            if value.is_empty() {
                return Err(format!("{name} must not be empty"));
            }
        }
        for (name, value) in [
            ("setside_password", &device.setside_password),
            ("icpside_password", &device.icpside_password),
        ] {
            if value.chars().count() < 8 {
                return Err(format!("{name} is too weak: at least 8 characters"));
            }
        }
        let users = self
            .setside_names
            .get(&device.setside_username)
            .copied()
            .unwrap_or(0);
        let others = users - usize::from(was == Some(device.setside_username.as_str()));
        if !self.duplicate_setside_names && others > 0 {
            return Err(format!(
                "setside_username {:?} is already used by another device",
                device.setside_username
            ));
        }
        Ok(())
    }
}

fn six_digits() -> String {
    format!("{:06}", rand::rng().random_range(0..1_000_000))
}
