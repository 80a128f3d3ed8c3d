//! Store errors, with database constraint violations turned into the field they are about, so that
//! a CLI user or an import report can be told "extension number: must be 1 to 10 digits" instead of
//! a driver message.

use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{field} {value} already exists")]
    Duplicate { field: &'static str, value: String },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{0}")]
    NotFound(NotFound),
    #[error("{field} is still in use: {reason}")]
    InUse { field: &'static str, reason: String },
    /// New credentials now could orphan a SIP user made with the current ones.
    #[error(
        "extension {number} cannot get new credentials yet: {why}. Retry once `mbg-provision status` shows it provisioned or idle (the daemon applies a change within seconds; without it, run `mbg-provision sync`)"
    )]
    NotSettled { number: String, why: String },
    // Not `#[source]`: sqlx's messages already include their causes, and anyhow would repeat them.
    #[error("database error: {0}{hint}", hint = disk_hint(.0))]
    Database(sqlx::Error),
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Said plainly, within `database.connect_timeout`, instead of sqlx's "pool timed out".
    #[error("cannot connect to {address}: {reason}")]
    Unreachable { address: String, reason: String },
    /// The PostgreSQL server answers, but has no database of that name.
    #[error(
        "the PostgreSQL database {name} does not exist on {address}: create it with `{createdb}` (or CREATE DATABASE {name}), then run `mbg-provision migrate`"
    )]
    NoSuchDatabase {
        name: String,
        address: String,
        createdb: String,
    },
    #[error(
        "the SQLite database {} does not exist: create it with `mbg-provision migrate` (or `node add`), or set database.url to the existing one",
        .0.display()
    )]
    MissingDatabase(std::path::PathBuf),
    #[error(transparent)]
    ForeignOwner(#[from] crate::file_owner::ForeignOwner),
    #[error("{0}")]
    BadRow(super::BadRow),
    /// The pass's outcome writer was gone (the pass itself was dropped) before this was written.
    #[error("the outcome writer stopped before this outcome was written")]
    WriterStopped,
}

/// SQLite's words for a disk that cannot be written ("disk I/O error", code 778) do not say
/// what an operator can do about it.
fn disk_hint(error: &sqlx::Error) -> &'static str {
    let sqlx::Error::Database(e) = error else {
        return "";
    };
    let full =
        " (the disk holding the database is full: free space and the work resumes by itself)";
    match e.code().as_deref() {
        // PostgreSQL's SQLSTATEs have five characters; SQLite's result codes are numbers.
        Some("53100") => full,
        Some(code) if code.len() == 5 => "",
        // The primary result code is the low byte of SQLite's extended one.
        code => match code.and_then(|c| c.parse::<i32>().ok()).map(|c| c & 0xff) {
            Some(13) => full,
            Some(10) => " (the database file could not be written: is its disk full or failing?)",
            _ => "",
        },
    }
}

/// How much of a user's value an error message quotes.
const QUOTE_CHARS: usize = 64;

/// Quotes a value for an error message, cut to [`QUOTE_CHARS`] characters: the value may be a
/// 50 MB CSV field or a column written by another program, and the message goes to a terminal or
/// a log line.
pub fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTE_CHARS) {
        None => format!("\"{value}\""),
        Some((cut, _)) => format!("\"{}…\" ({} bytes)", &value[..cut], value.len()),
    }
}

/// What was looked for and not found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotFound {
    Node(String),
    Extension(String),
}

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotFound::Node(name) => write!(f, "no node named {} (see `node list`)", quote(name)),
            NotFound::Extension(number) if number.len() > QUOTE_CHARS => {
                write!(f, "no extension {}", quote(number))
            }
            NotFound::Extension(number) => write!(f, "no extension {number}"),
        }
    }
}

impl StoreError {
    /// The field a constraint violation is about, if this is one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            StoreError::Duplicate { field, .. }
            | StoreError::Invalid { field, .. }
            | StoreError::InUse { field, .. } => Some(field),
            _ => None,
        }
    }
}

enum Violation {
    Duplicate,
    Invalid(&'static str),
    InUse(&'static str),
}

/// Constraint name, the text SQLite puts in its message for it, the field, and what went wrong.
/// SQLite names CHECK constraints in its messages but describes UNIQUE ones by their columns.
const CONSTRAINTS: &[(&str, &str, &str, Violation)] = &[
    (
        "nodes_name_unique",
        "nodes.name",
        "node name",
        Violation::Duplicate,
    ),
    (
        "nodes_name_valid",
        "nodes_name_valid",
        "node name",
        Violation::Invalid("must be 1 to 64 characters"),
    ),
    (
        "nodes_address_unique",
        "nodes.address",
        "node address",
        Violation::Duplicate,
    ),
    (
        "nodes_address_valid",
        "nodes_address_valid",
        "node address",
        Violation::Invalid("must be an IP address or host name"),
    ),
    (
        "nodes_nat_address_valid",
        "nodes_nat_address_valid",
        "node NAT address",
        Violation::Invalid("must be an IP address or host name"),
    ),
    (
        "nodes_nat_sip_port_valid",
        "nodes_nat_sip_port_valid",
        "node NAT SIP port",
        Violation::Invalid("must be 1 to 65535"),
    ),
    (
        "extensions_number_unique",
        "extensions.node_id, extensions.number",
        "extension number",
        Violation::Duplicate,
    ),
    (
        "extensions_number_valid",
        "extensions_number_valid",
        "extension number",
        Violation::Invalid("must be 1 to 10 digits"),
    ),
    (
        "extensions_kind_valid",
        "extensions_kind_valid",
        "extension kind",
        Violation::Invalid("must be sip or sip_hot_desk"),
    ),
    (
        "extensions_sip_password_valid",
        "extensions_sip_password_valid",
        "SIP password",
        Violation::Invalid("must not be empty"),
    ),
    (
        "extensions_node_id_fkey",
        "FOREIGN KEY constraint failed",
        "node",
        Violation::InUse("extensions still refer to it, or it does not exist"),
    ),
    (
        "extensions_use_remote_auth_valid",
        "extensions_use_remote_auth_valid",
        "use_remote_auth",
        Violation::Invalid("must be 0 or 1"),
    ),
    (
        "extensions_mbg_device_id_unique",
        "extensions.mbg_device_id",
        "MBG device id",
        Violation::Duplicate,
    ),
];

/// Maps a driver error to a typed one; `value_of` gives what the caller tried to write into a
/// field, for the message.
pub(crate) fn classify(error: sqlx::Error, value_of: impl Fn(&str) -> String) -> StoreError {
    let sqlx::Error::Database(db) = &error else {
        return StoreError::Database(error);
    };
    let message = db.message();
    let found = CONSTRAINTS.iter().find(|(name, sqlite_text, ..)| {
        db.constraint() == Some(*name) || message.ends_with(sqlite_text)
    });
    match found {
        Some((_, _, field, Violation::Duplicate)) => StoreError::Duplicate {
            field,
            value: quote(&value_of(field)),
        },
        Some((_, _, field, Violation::Invalid(reason))) => StoreError::Invalid {
            field,
            reason: (*reason).to_string(),
        },
        Some((_, _, field, Violation::InUse(reason))) => StoreError::InUse {
            field,
            reason: (*reason).to_string(),
        },
        None => StoreError::Database(error),
    }
}
