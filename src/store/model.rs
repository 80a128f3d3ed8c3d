//! The rows of the extension database as Rust types. Secrets are `SecretString`, whose `Debug`
//! prints `[REDACTED]`, so deriving `Debug` here is safe.

use std::fmt;
use std::str::FromStr;

use secrecy::SecretString;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub id: i64,
    pub name: String,
    pub address: String,
    pub nat_address: Option<String>,
    pub nat_sip_port: Option<u16>,
}

impl Node {
    /// The port the node's remote phones register on at the MBG: its NAT SIP port, else SIP's.
    pub fn registrar_port(&self) -> u16 {
        self.nat_sip_port.unwrap_or(5060)
    }
}

/// An ICP as the leader last listed it on the MBG (migration 0009): what a page shows of the
/// MBG without asking it, on a standby too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordedIcp {
    pub guid: String,
    pub name: String,
    pub address: String,
    /// When the leader read the list (seconds since the epoch).
    pub seen_at: i64,
}

/// What `Store::update_node` changes: the fields given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeChange {
    pub address: Option<String>,
    pub nat_address: Option<String>,
    pub nat_sip_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNode {
    pub name: String,
    pub address: String,
    pub nat_address: Option<String>,
    pub nat_sip_port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtensionKind {
    Sip,
    SipHotDesk,
}

impl ExtensionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExtensionKind::Sip => "sip",
            ExtensionKind::SipHotDesk => "sip_hot_desk",
        }
    }
}

impl fmt::Display for ExtensionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExtensionKind {
    type Err = String;
    /// Accepts the database spelling and the CLI's (`sip-hot-desk`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "sip" => Ok(ExtensionKind::Sip),
            "sip_hot_desk" | "hot_desk" => Ok(ExtensionKind::SipHotDesk),
            other => Err(format!("unknown kind \"{other}\": use sip or sip-hot-desk")),
        }
    }
}

/// Where an extension stands with the MBG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtensionState {
    /// Not wanted on the MBG and nothing of ours there.
    Idle,
    /// A change is waiting to be applied.
    Pending,
    Provisioned,
    /// The last attempt failed; it is retried at `next_attempt_at`.
    Failed,
    /// Retrying cannot help: a human must fix something (see `last_error`).
    NeedsAttention,
}

impl ExtensionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ExtensionState::Idle => "idle",
            ExtensionState::Pending => "pending",
            ExtensionState::Provisioned => "provisioned",
            ExtensionState::Failed => "failed",
            ExtensionState::NeedsAttention => "needs_attention",
        }
    }
}

impl fmt::Display for ExtensionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExtensionState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "idle" => ExtensionState::Idle,
            "pending" => ExtensionState::Pending,
            "provisioned" => ExtensionState::Provisioned,
            "failed" => ExtensionState::Failed,
            "needs_attention" => ExtensionState::NeedsAttention,
            other => return Err(format!("unknown extension state \"{other}\"")),
        })
    }
}

/// An extension with the node it lives on.
#[derive(Debug, Clone)]
pub struct Extension {
    pub id: i64,
    pub node_id: i64,
    pub node_name: String,
    pub node_address: String,
    pub number: String,
    pub kind: ExtensionKind,
    /// ICP-side password; the ICP-side auth name is always `number`.
    pub sip_password: SecretString,
    pub use_remote_auth: bool,
    pub remote_auth_name: Option<String>,
    pub remote_auth_password: Option<SecretString>,
    pub mbg_device_id: Option<String>,
    pub provisioned_by_us: bool,
    pub state: ExtensionState,
    pub last_error: Option<String>,
    pub attempts: u32,
    pub next_attempt_at: Option<i64>,
    pub version: i64,
    pub updated_at: i64,
}

impl Extension {
    /// The SIP user recorded against this extension as ours (created or adopted by us). A guid
    /// noted without that mark is only a note: nothing may update or delete that SIP user for
    /// this row. The rest of the ownership rule is `reconcile::plan::claims`.
    pub fn recorded_guid(&self) -> Option<&str> {
        self.mbg_device_id
            .as_deref()
            .filter(|_| self.provisioned_by_us)
    }
}

/// An extension row that cannot be used as it is: written by another program with a value our
/// own checks would refuse, or pointing at a node that no longer exists. It is reported, and the
/// other rows carry on without it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadRow {
    pub id: i64,
    /// `None` when the number itself is what cannot be read.
    pub number: Option<String>,
    /// The SIP user the row claims, when readable: a plan must leave it alone, not take it for
    /// one that nobody claims.
    pub mbg_device_id: Option<String>,
    pub column: &'static str,
    /// Never quotes a credential column's value.
    pub reason: String,
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "extension row id {}", self.id)?;
        if let Some(number) = &self.number {
            write!(f, " (number {})", super::error::quote(number))?;
        }
        write!(f, ": column {}: {}", self.column, self.reason)
    }
}

/// Every extension row: those that can be used, and those that need a human first.
#[derive(Debug, Clone, Default)]
pub struct ExtensionRows {
    pub good: Vec<Extension>,
    pub bad: Vec<BadRow>,
}

/// The rows a targeted pass asks for: by id, by number, by remote auth name and by the SIP
/// user recorded against them (see `reconcile::near`).
#[derive(Debug, Clone, Default)]
pub(crate) struct RowKeys {
    pub ids: Vec<i64>,
    pub numbers: Vec<String>,
    pub names: Vec<String>,
    pub guids: Vec<String>,
}

impl RowKeys {
    pub(crate) fn is_empty(&self) -> bool {
        self.ids.is_empty()
            && self.numbers.is_empty()
            && self.names.is_empty()
            && self.guids.is_empty()
    }
}

/// What `extension set` and `extension import` write: only the database, as the phone system's
/// own page would. `None` leaves a field as it is (or at its default for a new extension).
#[derive(Debug, Clone)]
pub struct ExtensionSpec {
    pub number: String,
    pub node: String,
    pub kind: Option<ExtensionKind>,
    pub use_remote_auth: Option<bool>,
    pub sip_password: Option<SecretString>,
}

/// What the console's extension list is narrowed to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtensionFilter {
    /// Numbers that start with these digits.
    pub prefix: Option<String>,
    pub state: Option<ExtensionState>,
    /// The node's name.
    pub node: Option<String>,
}

/// A row of `extension_changes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub seq: i64,
    pub extension_id: i64,
    pub changed_at: i64,
}

/// A deleted extension row, kept until no SIP user of its remains on the MBG: the guid we
/// recorded, if any, and the remote credentials, which prove a SIP user ours even when its guid
/// never reached the database (a crash during the create).
#[derive(Debug, Clone)]
pub struct Released {
    pub id: i64,
    pub number: String,
    pub mbg_device_id: Option<String>,
    pub remote_auth_name: Option<String>,
    pub remote_auth_password: Option<SecretString>,
    pub released_at: i64,
}

/// What an MBG call established about the SIP user of an extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceFact {
    Unchanged,
    /// This SIP user is the extension's, and ours (created or adopted).
    Holds(String),
    /// The extension holds no SIP user any more (deleted, or gone from the MBG).
    Gone,
}

/// One extension's outcome: the device fact is written whatever happened to the row meanwhile
/// (it is a fact about the MBG, and losing it would orphan a SIP user), the state only if the row
/// still has the version the plan was made from.
#[derive(Debug, Clone)]
pub struct OutcomeWrite {
    pub extension_id: i64,
    pub planned_version: i64,
    pub device: DeviceFact,
    pub state: StateUpdate,
    /// The recorded changes (their `seq`) this outcome answers, acknowledged in the same
    /// transaction when the state is written, kept when it is not (the row changed meanwhile).
    pub acknowledges: Vec<i64>,
}

/// The outcome of an MBG call, written to the extension row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateUpdate {
    pub state: ExtensionState,
    pub last_error: Option<String>,
    pub attempts: u32,
    pub next_attempt_at: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenState {
    #[default]
    None,
    /// A temporary token waits for an administrator's approval on the MBG.
    Pending,
    Valid,
    /// Written by earlier versions after a 401 past the stored expiry; now every 401 is
    /// [`TokenState::Rejected`]. Still read, because a database may hold it.
    Expired,
    /// The MBG answered 401 to the access token (revoked, expired, or not renewed in time).
    Rejected,
}

impl FromStr for TokenState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "none" => TokenState::None,
            "pending" => TokenState::Pending,
            "valid" => TokenState::Valid,
            "expired" => TokenState::Expired,
            "rejected" => TokenState::Rejected,
            other => return Err(format!("unknown token state \"{other}\"")),
        })
    }
}

/// The one row of `mbg_settings` for the MBG we talk to.
#[derive(Debug, Clone, Default)]
pub struct MbgSettings {
    pub base_url: Option<String>,
    pub internal_address: Option<String>,
    pub ca_certificate: Option<String>,
    pub consumer_name: Option<String>,
    pub consumer_id: Option<String>,
    pub consumer_secret: Option<SecretString>,
    pub temp_token: Option<SecretString>,
    pub temp_token_secret: Option<SecretString>,
    pub temp_token_created_at: Option<i64>,
    pub access_token: Option<SecretString>,
    pub access_token_secret: Option<SecretString>,
    pub token_issued_at: Option<i64>,
    /// Only a hint: the MBG's own date counts, and an admin may press *Renew* on the MBG page
    /// without telling us (`token renewed` records it).
    pub token_expires_at: Option<i64>,
    pub token_state: TokenState,
    /// When and why the MBG last answered 401 to the access token; cleared by a new token.
    pub token_rejected_at: Option<i64>,
    pub token_rejected_reason: Option<String>,
    /// Counts the access tokens stored so far. Writes about "the current token" (its renewed
    /// expiry, a 401) name the generation they started from, and do nothing if a newer token
    /// was stored meanwhile.
    pub token_generation: i64,
}

/// What step 1 of the token exchange stores: the consumer and the temporary token.
#[derive(Debug, Clone)]
pub struct TemporaryToken {
    pub base_url: String,
    pub consumer_name: String,
    pub consumer_id: String,
    pub consumer_secret: SecretString,
    pub token: SecretString,
    pub secret: SecretString,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub at: i64,
    /// Who: a console user's name, or `os:NAME` for the OS user who ran a command; `None` for
    /// the engine's own entries.
    pub actor: Option<String>,
    pub extension: Option<String>,
    pub action: String,
    pub outcome: String,
    pub detail: Option<String>,
    /// How many times this happened: a failure that repeats is one entry (1 for a new one).
    pub repeats: u32,
    /// When it last repeated, if it did.
    pub last_at: Option<i64>,
}
