//! Configuration: built-in defaults, then a TOML file, then `MBG_PROVISION_<SECTION>__<KEY>`
//! environment variables.
//!
//! Every value is validated while it is deserialized, so that figment can tell which key and which
//! source (file or variable) a bad value came from: an admin who mistypes one line in a
//! configuration file must be told that line, not a generic "invalid configuration".

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::credentials;

/// Prefix of the environment variables that override the file.
pub(crate) const ENV_PREFIX: &str = "MBG_PROVISION_";
/// Variables under [`ENV_PREFIX`] that are not configuration keys.
const NON_CONFIG_VARS: &[&str] = &["consumer_secret"];
/// The file read when `--config` is not given, if it exists in the working folder.
pub const DEFAULT_FILE: &str = "config.toml";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub database: DatabaseConfig,
    pub mbg: MbgConfig,
    pub watch: WatchConfig,
    pub reconcile: ReconcileConfig,
    pub token: TokenConfig,
    pub credentials: CredentialsConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub secrets: SecretsConfig,
    pub health: HealthConfig,
    pub leader: LeaderConfig,
    pub console: ConsoleConfig,
    pub audit: AuditConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub url: DatabaseUrl,
    /// How long to wait for the database server before saying it cannot be reached, rather than
    /// leaving the user with sqlx's "pool timed out" after its 30 s default.
    #[serde(with = "nonzero_duration")]
    pub connect_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: DatabaseUrl("sqlite://mbg-provision.db".into()),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MbgConfig {
    /// `None` until the administrator points us at an MBG; commands that need it say so.
    pub base_url: Option<MbgUrl>,
    pub ca_file: Option<PathBuf>,
    #[serde(deserialize_with = "de_max_in_flight")]
    pub max_in_flight: usize,
    #[serde(with = "nonzero_duration")]
    pub timeout: Duration,
    /// Upper bound on a `Retry-After` we obey, so a misbehaving MBG cannot park us for a day.
    #[serde(with = "human_duration")]
    pub max_retry_after: Duration,
    /// How long one pass keeps retrying what the MBG could not do (429, 503, timeouts) before
    /// it records the extension as `failed` for a later pass.
    #[serde(with = "human_duration")]
    pub retry_deadline: Duration,
    pub teleworker_licences: Option<u32>,
}

impl Default for MbgConfig {
    fn default() -> Self {
        Self {
            base_url: None,
            ca_file: None,
            max_in_flight: 8,
            timeout: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(300),
            retry_deadline: Duration::from_secs(60),
            teleworker_licences: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    #[serde(with = "nonzero_duration")]
    pub poll_interval: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    #[serde(with = "nonzero_duration")]
    pub interval: Duration,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    pub renew_schedule: CronSchedule,
    #[serde(deserialize_with = "de_renew_within_days")]
    pub renew_within_days: u32,
    /// After a 401 the daemon stops calling the MBG and looks this often for a new token
    /// stored by `token verify` (a database read, no MBG call).
    #[serde(with = "nonzero_duration")]
    pub recheck_interval: Duration,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            renew_schedule: "0 0 3 * * *".parse().expect("default schedule parses"),
            renew_within_days: 30,
            recheck_interval: Duration::from_secs(60),
        }
    }
}

/// Where the key that encrypts the token secrets in the database lives (see [`crate::secrets`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// `None`: the default place (`secrets::key_file` says where).
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialsConfig {
    #[serde(deserialize_with = "de_name_length")]
    pub name_length: usize,
    #[serde(deserialize_with = "de_password_length")]
    pub password_length: usize,
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        Self {
            name_length: 12,
            password_length: 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// The certificate chain (PEM) served on `listen`; with `tls_key`, `listen` speaks TLS
    /// only, and the console may listen on any address.
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// A TLS proxy in front terminates TLS for `listen`: the console then marks its cookies
    /// `Secure` and may listen on any address. Only true when every client goes through it.
    pub behind_tls_proxy: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9187)),
            tls_cert: None,
            tls_key: None,
            behind_tls_proxy: false,
        }
    }
}

impl HttpConfig {
    /// Whether browsers reach `listen` over TLS: served here, or by a declared proxy.
    pub fn is_tls(&self) -> bool {
        self.tls_cert.is_some() || self.behind_tls_proxy
    }
}

/// The pass lock's lease (see [`crate::lease`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaderConfig {
    /// How long a holder of the pass lock goes on calling the MBG without confirming its lock
    /// (PostgreSQL). A new holder waits out this plus `mbg.timeout` after one that did not stop
    /// cleanly.
    #[serde(with = "nonzero_duration")]
    pub lease: Duration,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(6),
        }
    }
}

/// How `/healthz` judges what the daemon depends on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// The MBG or the database failing for longer than this makes the daemon unhealthy (503);
    /// before that it is degraded. An idle daemon probes both at least this often, so that
    /// "failing" has a meaning without traffic.
    #[serde(with = "nonzero_duration")]
    pub grace: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(30),
        }
    }
}

/// The console's sessions (see `src/console`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// A session not used for this long ends.
    #[serde(with = "nonzero_duration")]
    pub idle_timeout: Duration,
    /// A session ends this long after its sign-in, used or not.
    #[serde(with = "nonzero_duration")]
    pub absolute_timeout: Duration,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30 * 60),
            absolute_timeout: Duration::from_secs(12 * 3600),
        }
    }
}

/// How long the audit log keeps what, so that a daemon running for years does not fill its disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The engine's own entries (creates, updates, removals, failure streaks) older than this
    /// are deleted by the leader.
    #[serde(with = "nonzero_duration")]
    pub keep: Duration,
    /// Entries of a person (a console user or an OS user: reveals, saves, accounts, tokens)
    /// are kept this long: the security record outlives the operational one.
    #[serde(with = "nonzero_duration")]
    pub keep_security: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            keep: Duration::from_secs(400 * 86_400),
            keep_security: Duration::from_secs(7 * 365 * 86_400),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One thing wrong with the configuration, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key, e.g. `mbg.timeout`.
    pub key: String,
    /// `config file /etc/mbg-provision/config.toml`, `environment variable MBG_PROVISION_MBG__TIMEOUT`.
    pub origin: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A parser quotes the offending line or value, which may be a URL with a password.
        let message = redact_url_passwords(&self.message);
        if self.key.is_empty() {
            write!(f, "{}: {message}", self.origin)
        } else {
            write!(f, "`{}` in {}: {message}", self.key, self.origin)
        }
    }
}

/// Blanks the password of every `scheme://user:password@host` in `text`.
pub(crate) fn redact_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let authority_end = after
            .find(|c: char| {
                c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '"' || c == '\''
            })
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority
            .rfind('@')
            .and_then(|a| authority[..a].find(':').map(|c| (c, a)))
        {
            Some((colon, at)) => {
                out.push_str(&authority[..=colon]);
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {} does not exist or is not a file", .0.display())]
    MissingFile(PathBuf),
    #[error("invalid configuration:\n{}", list(.0))]
    Invalid(Vec<ConfigProblem>),
}

fn list(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Loads `file` (which must exist) or, without it, `config.toml` in the working folder when
    /// there is one, then applies the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) if !path.is_file() => return Err(ConfigError::MissingFile(absolute(path))),
            // Absolute, so that an error names the file that was read, whatever the working folder.
            Some(path) => figment = figment.merge(Toml::file_exact(absolute(path))),
            None if Path::new(DEFAULT_FILE).is_file() => {
                figment = figment.merge(Toml::file_exact(absolute(Path::new(DEFAULT_FILE))))
            }
            None => {}
        }
        let env = Env::prefixed(ENV_PREFIX)
            .split("__")
            .ignore(NON_CONFIG_VARS);
        figment = figment.merge(env);
        let mut config = Self::extract(&figment)?;
        config.anchor_relative_paths(&figment);
        Ok(config)
    }

    /// A relative path written in a configuration file means the file's folder, not the working
    /// folder of whoever runs the command: `sudo -u mbg-provision mbg-provision --config
    /// /etc/mbg-provision/config.toml status` run from a home folder must open the service's
    /// database, not make a new one there. Paths from the environment keep the working folder.
    fn anchor_relative_paths(&mut self, figment: &Figment) {
        let folder_of = |key: &str| -> Option<PathBuf> {
            let source = figment.find_metadata(key)?.source.as_ref()?;
            Some(source.file_path()?.parent()?.to_path_buf())
        };
        if let Some(folder) = folder_of("database.url")
            && let Some(url) = self.database.url.anchored_in(&folder)
        {
            self.database.url = url;
        }
        for (key, path) in [
            ("mbg.ca_file", &mut self.mbg.ca_file),
            ("secrets.key_file", &mut self.secrets.key_file),
            ("http.tls_cert", &mut self.http.tls_cert),
            ("http.tls_key", &mut self.http.tls_key),
        ] {
            if let (Some(folder), Some(path)) = (folder_of(key), path)
                && path.is_relative()
            {
                *path = folder.join(&*path);
            }
        }
    }

    /// Takes in `new`, read again on SIGHUP, and returns the keys whose change only a restart
    /// applies (`database.*`, `http.*`, `log.*`, `secrets.*`: the pool, the listener, the
    /// logger and the key are set up once), in order. Those keep their running values; all
    /// other keys take the new ones.
    pub(crate) fn reload(&mut self, mut new: Config) -> Vec<String> {
        fn json(section: &impl Serialize) -> serde_json::Value {
            serde_json::to_value(section).unwrap_or_default()
        }
        let needs_restart = [
            changed_keys("database", &json(&self.database), &json(&new.database)),
            changed_keys("http", &json(&self.http), &json(&new.http)),
            changed_keys("log", &json(&self.log), &json(&new.log)),
            changed_keys("secrets", &json(&self.secrets), &json(&new.secrets)),
        ]
        .concat();
        new.database = self.database.clone();
        new.http = self.http.clone();
        new.log = self.log.clone();
        new.secrets = self.secrets.clone();
        *self = new;
        needs_restart
    }

    /// The configuration in `text` over the defaults, without the environment: the loader's
    /// checks on text that comes from no file (the fuzz target and its proptest stand-in).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let figment =
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text));
        Self::extract(&figment)
    }

    fn extract(figment: &Figment) -> Result<Config, ConfigError> {
        // A source that cannot be read at all (a TOML syntax error) would fail every section
        // below with the same error: report it once, naming the file.
        if let Err(error) = figment.extract::<figment::value::Value>() {
            return Err(ConfigError::Invalid(problems(figment, error, &[])));
        }
        // Section by section, so that every bad section is reported at once, not only the first.
        let mut found = Vec::new();
        check_section::<DatabaseConfig>(figment, "database", &mut found);
        check_section::<MbgConfig>(figment, "mbg", &mut found);
        check_section::<WatchConfig>(figment, "watch", &mut found);
        check_section::<ReconcileConfig>(figment, "reconcile", &mut found);
        check_section::<TokenConfig>(figment, "token", &mut found);
        check_section::<CredentialsConfig>(figment, "credentials", &mut found);
        check_section::<HttpConfig>(figment, "http", &mut found);
        check_section::<LogConfig>(figment, "log", &mut found);
        check_section::<SecretsConfig>(figment, "secrets", &mut found);
        check_section::<ConsoleConfig>(figment, "console", &mut found);
        check_section::<AuditConfig>(figment, "audit", &mut found);
        if !found.is_empty() {
            return Err(ConfigError::Invalid(found));
        }
        let config: Config = figment
            .extract()
            .map_err(|error| ConfigError::Invalid(problems(figment, error, &[])))?;
        // A certificate without its key (or the reverse) is a half-done TLS setup.
        if config.http.tls_cert.is_some() != config.http.tls_key.is_some() {
            let (given, missing) = if config.http.tls_cert.is_some() {
                ("tls_cert", "tls_key")
            } else {
                ("tls_key", "tls_cert")
            };
            let path = ["http".to_string(), given.to_string()];
            return Err(ConfigError::Invalid(vec![ConfigProblem {
                key: format!("http.{missing}"),
                origin: origin(figment.find_metadata(&path.join(".")), &path),
                message: format!(
                    "http.{given} is set, so http.{missing} must be too (both or neither)"
                ),
            }]));
        }
        Ok(config)
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn check_section<T: serde::de::DeserializeOwned>(
    figment: &Figment,
    section: &str,
    found: &mut Vec<ConfigProblem>,
) {
    if let Err(error) = figment.extract_inner::<T>(section) {
        found.extend(problems(figment, error, &[section]));
    }
}

/// Turns figment's errors into problems that name the key and its source the way a user wrote
/// them (figment would print an environment variable as `MBG.TIMEOUT`).
fn problems(figment: &Figment, error: figment::Error, prefix: &[&str]) -> Vec<ConfigProblem> {
    error
        .into_iter()
        .map(|e| {
            // `extract_inner` appends the section to the error's path instead of prepending it.
            let mut path: Vec<String> = prefix.iter().map(|p| p.to_string()).collect();
            let relative = e.path.strip_suffix(path.as_slice()).unwrap_or(&e.path);
            path.extend(relative.iter().cloned());
            let message = match &e.kind {
                figment::error::Kind::UnknownField(field, expected) => {
                    if path.last() != Some(field) {
                        path.push(field.clone());
                    }
                    format!("unknown key; expected one of: {}", expected.join(", "))
                }
                kind => kind.to_string(),
            };
            let metadata = e.metadata.clone().or_else(|| {
                // An unknown field error carries no tag; find who supplied the key.
                figment.find_metadata(&path.join(".")).cloned()
            });
            ConfigProblem {
                origin: origin(metadata.as_ref(), &path),
                key: path.join("."),
                message,
            }
        })
        .collect()
}

/// Where the key at `path` came from, the way a user wrote it.
fn origin(metadata: Option<&figment::Metadata>, path: &[String]) -> String {
    match metadata {
        Some(md) if md.name.contains("environment") => format!(
            "environment variable {ENV_PREFIX}{}",
            path.join("__").to_ascii_uppercase()
        ),
        Some(md) => match &md.source {
            Some(figment::Source::File(file)) => format!("config file {}", file.display()),
            _ => md.name.to_string(),
        },
        None => "configuration".to_string(),
    }
}

fn de_max_in_flight<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if !(1..=256).contains(&n) {
        return Err(serde::de::Error::custom(format!(
            "{n} is out of range: allow between 1 and 256 MBG calls in flight"
        )));
    }
    Ok(n)
}

fn de_name_length<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if !(6..=32).contains(&n) {
        return Err(serde::de::Error::custom(format!(
            "{n} is out of range: remote auth names are 6 to 32 characters"
        )));
    }
    Ok(n)
}

fn de_password_length<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    let min = credentials::min_password_length();
    if n < min || n > 64 {
        return Err(serde::de::Error::custom(format!(
            "{n} is out of range: passwords need {min} to 64 characters ({min} gives at least {} bits of entropy)",
            credentials::MIN_PASSWORD_BITS
        )));
    }
    Ok(n)
}

/// Tokens live 12 months: a window of a year or more would renew on every run of the job.
fn de_renew_within_days<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if n > 364 {
        return Err(serde::de::Error::custom(format!(
            "{n} is out of range: a token lives 365 days, so renew at most 364 days before expiry"
        )));
    }
    Ok(n)
}

/// A duration that must not be zero: a zero timeout fails every call, and a zero interval spins.
mod nonzero_duration {
    use super::*;

    pub use human_duration::serialize;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let duration = human_duration::deserialize(d)?;
        if duration.is_zero() {
            return Err(serde::de::Error::custom(
                "must be more than zero: write e.g. \"500ms\" or \"30s\"",
            ));
        }
        Ok(duration)
    }
}

/// Durations written as a number and a unit: `500ms`, `30s`, `5m`, `2h`, `1d`.
pub mod human_duration {
    use super::*;

    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("\"{text}\" has no unit: write e.g. \"30s\", \"5m\", \"2h\""))?;
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| {
            format!("\"{text}\" is not a duration: write e.g. \"30s\", \"5m\", \"2h\"")
        })?;
        let millis = match unit.trim() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => {
                return Err(format!(
                    "\"{text}\": unknown unit \"{other}\"; use ms, s, m, h or d"
                ));
            }
        };
        Ok(Duration::from_millis(number.saturating_mul(millis)))
    }

    pub(crate) fn format(duration: &Duration) -> String {
        let ms = duration.as_millis();
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms > 0 && ms.is_multiple_of(size) {
                return format!("{}{unit}", ms / size);
            }
        }
        format!("{ms}ms")
    }

    pub fn serialize<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(duration))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"5m\" or \"2h\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                parse(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "{v} has no unit: write e.g. \"{v}s\" or \"{v}m\""
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
                self.visit_u64(v.unsigned_abs())
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A database URL; its `Debug` and `Display` hide the password a PostgreSQL URL may carry.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL with its password, for the database driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_postgres(&self) -> bool {
        self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")
    }

    /// The SQLite file, as written in the URL; `None` for PostgreSQL and in-memory databases.
    pub fn sqlite_file(&self) -> Option<PathBuf> {
        if self.is_postgres() {
            return None;
        }
        let path = self
            .0
            .trim_start_matches("sqlite://")
            .trim_start_matches("sqlite:");
        let path = path.split('?').next().unwrap_or(path);
        (!path.is_empty() && !path.contains(":memory:")).then(|| PathBuf::from(path))
    }

    /// The same database with a relative SQLite file taken from `folder`.
    fn anchored_in(&self, folder: &Path) -> Option<DatabaseUrl> {
        let file = self.sqlite_file().filter(|f| f.is_relative())?;
        let query = self.0.split_once('?').map(|(_, q)| format!("?{q}"));
        Some(Self(format!(
            "sqlite://{}{}",
            folder.join(file).display(),
            query.unwrap_or_default()
        )))
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("sqlite:") {
            return Ok(Self(s.to_string()));
        }
        let url = url::Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
        match url.scheme() {
            "postgres" | "postgresql" if url.host_str().is_some_and(|h| !h.is_empty()) => {
                // The driver logs every parameter it does not know, value and all.
                if let Some((name, _)) = url.query_pairs().find(|(name, _)| {
                    is_credential_param(name) && !DRIVER_CREDENTIAL_PARAMS.contains(&name.as_ref())
                }) {
                    return Err(format!(
                        "the URL parameter \"{name}\" is not supported by the PostgreSQL driver; \
                         remove it (give the password in the URL or as password=)"
                    ));
                }
                Ok(Self(s.to_string()))
            }
            "postgres" | "postgresql" => Err("a PostgreSQL URL needs a host".into()),
            other => Err(format!(
                "unsupported database \"{other}\": use sqlite://FILE or postgres://USER@HOST/DB"
            )),
        }
    }
}

/// The credential parameters that sqlx's PostgreSQL driver takes (`sslkey` is a file name).
const DRIVER_CREDENTIAL_PARAMS: &[&str] = &["password", "sslkey", "ssl-key"];

/// Whether a URL query parameter may carry a credential: libpq's `password`, `sslpassword`,
/// `passfile`, and, erring on the safe side, anything named like a secret, token or key.
fn is_credential_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "secret", "token", "key"]
        .iter()
        .any(|s| name.contains(s))
}

/// Shows the URL with every credential replaced by `***`: the password of the user info and the
/// value of every query parameter that may carry one.
impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Ok(mut url) = url::Url::parse(&self.0) else {
            return f.write_str(&self.0);
        };
        let mut redacted = false;
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
            redacted = true;
        }
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| {
                let value = if is_credential_param(&name) {
                    redacted = true;
                    "***".to_string()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        if !redacted {
            return f.write_str(&self.0);
        }
        if url.query().is_some() {
            url.query_pairs_mut().clear().extend_pairs(&pairs);
        }
        f.write_str(url.as_str())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The MBG's web-services base URL, e.g. `https://10.0.0.5/mslrest`, without a trailing `/`.
/// Plain `http://` is accepted only for loopback hosts (a simulator), because the OAuth token
/// and every SIP password would otherwise cross the network in clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct MbgUrl(String);

impl MbgUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `base_url` joined with a resource path such as `mbg/v1/icps/all/`.
    pub(crate) fn join(&self, path: &str) -> String {
        format!("{}/{}", self.0, path.trim_start_matches('/'))
    }
}

impl fmt::Display for MbgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

impl FromStr for MbgUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let url = url::Url::parse(s).map_err(|e| format!("\"{s}\" is not a URL ({e})"))?;
        if !url.username().is_empty() || url.password().is_some() {
            let mut shown = url.clone();
            let _ = shown.set_username("");
            let _ = shown.set_password(None);
            // A user and password in the URL would replace the OAuth signature on every call,
            // and be printed wherever the address is.
            return Err(format!(
                "\"{shown}\" must not carry a user name or password: the MBG is signed in to with OAuth (`token request`); remove them"
            ));
        }
        let host = url.host().ok_or_else(|| format!("\"{s}\" has no host"))?;
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(&host) => {}
            "http" => {
                return Err(format!(
                    "\"{s}\" is plain http to a non-loopback host; use https (trust a private CA with mbg.ca_file)"
                ));
            }
            other => return Err(format!("\"{s}\": scheme \"{other}\" is not http(s)")),
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("\"{s}\" must not have a query or fragment"));
        }
        Ok(Self(url.as_str().trim_end_matches('/').to_string()))
    }
}

impl<'de> Deserialize<'de> for MbgUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A cron schedule in six fields (or `@daily` and the like), evaluated in UTC.
#[derive(Clone)]
pub struct CronSchedule {
    expression: String,
    schedule: cron::Schedule,
}

impl CronSchedule {
    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub(crate) fn schedule(&self) -> &cron::Schedule {
        &self.schedule
    }
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CronSchedule({:?})", self.expression)
    }
}

impl FromStr for CronSchedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let fields = s.split_whitespace().count();
        if fields == 5 {
            return Err(format!(
                "\"{s}\" has 5 fields, but 6 fields are needed: seconds first (sec min hour day-of-month month day-of-week), e.g. \"0 {s}\""
            ));
        }
        // The cron crate also takes a seventh field, the year: a schedule that stops firing in
        // some year would let the token expire silently, so only the six-field form is accepted.
        if fields == 7 {
            return Err(format!(
                "\"{s}\" has 7 fields, but exactly 6 are accepted (sec min hour day-of-month month day-of-week, no year), e.g. \"0 0 3 * * *\""
            ));
        }
        let schedule = cron::Schedule::from_str(s).map_err(|e| {
            format!(
                "\"{s}\" is not a cron expression ({e}); 6 fields are needed: sec min hour day-of-month month day-of-week, e.g. \"0 0 3 * * *\""
            )
        })?;
        Ok(Self {
            expression: s.to_string(),
            schedule,
        })
    }
}

impl Serialize for CronSchedule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.expression)
    }
}

impl<'de> Deserialize<'de> for CronSchedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// `section.key` for every key whose value differs between two serialised sections.
fn changed_keys(section: &str, old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let old = old.as_object().unwrap_or(&empty);
    let new = new.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|key| old.get(*key) != new.get(*key))
        .map(|key| format!("{section}.{key}"))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn url_passwords_in_quoted_text_are_blanked() {
        assert_eq!(
            super::redact_url_passwords(
                "expected `=`, found line url = \"postgres://u:Hunter2Pass@db:5432/x\" and http://a:b@h/"
            ),
            "expected `=`, found line url = \"postgres://u:***@db:5432/x\" and http://a:***@h/"
        );
        assert_eq!(
            super::redact_url_passwords("sqlite://x.db and https://host/p?q=1 user@host"),
            "sqlite://x.db and https://host/p?q=1 user@host"
        );
    }

    use super::*;

    /// Found by a hostile run: the user and password of such a URL replaced the OAuth header
    /// and were printed by `preflight`.
    #[test]
    fn an_mbg_url_with_a_user_or_password_is_refused_without_quoting_it() {
        for url in [
            "http://admin:hostilepw@127.0.0.1:8080/mslrest",
            "https://admin@10.0.0.5/mslrest",
        ] {
            let error = url.parse::<MbgUrl>().unwrap_err();
            assert!(
                error.contains("must not carry a user name or password"),
                "{error}"
            );
            assert!(
                !error.contains("hostilepw") && !error.contains("admin"),
                "{error}"
            );
        }
    }

    #[test]
    fn durations_parse_with_units_and_round_trip() {
        assert_eq!(
            human_duration::parse("500ms"),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(human_duration::parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(human_duration::parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(human_duration::parse("1d"), Ok(Duration::from_secs(86_400)));
        assert!(human_duration::parse("5").unwrap_err().contains("no unit"));
        assert!(
            human_duration::parse("5 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        for d in ["1500ms", "90s", "5m", "2h", "1d"] {
            assert_eq!(
                human_duration::format(&human_duration::parse(d).unwrap()),
                d
            );
        }
    }

    #[test]
    fn mbg_urls_refuse_clear_text_to_remote_hosts() {
        assert!("https://10.0.0.5/mslrest/".parse::<MbgUrl>().is_ok());
        assert!("http://127.0.0.1:8080/mslrest".parse::<MbgUrl>().is_ok());
        assert!("http://[::1]:8080/mslrest".parse::<MbgUrl>().is_ok());
        assert!("http://localhost/mslrest".parse::<MbgUrl>().is_ok());
        let err = "http://10.0.0.5/mslrest".parse::<MbgUrl>().unwrap_err();
        assert!(err.contains("non-loopback"), "{err}");
        let url: MbgUrl = "https://mbg.example.com/mslrest/".parse().unwrap();
        assert_eq!(url.join("/ping/"), "https://mbg.example.com/mslrest/ping/");
    }

    #[test]
    fn database_url_hides_its_password() {
        let url: DatabaseUrl = "postgres://prov:hunter22@db.example.com/pbx"
            .parse()
            .unwrap();
        assert!(!format!("{url:?} {url}").contains("hunter22"));
        assert!(url.expose().contains("hunter22"));
        assert!("mysql://x@y/z".parse::<DatabaseUrl>().is_err());
    }

    /// libpq takes credentials as query parameters too (`password`, `sslpassword`).
    #[test]
    fn database_url_hides_credentials_in_its_query() {
        let text = "postgres://prov@db.example.com:5433/pbx?sslmode=require&password=hunter2&application_name=mbgp";
        let url: DatabaseUrl = text.parse().unwrap();
        for shown in [url.to_string(), format!("{url:?}"), format!("{url:#?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(
                shown.contains("prov@db.example.com:5433/pbx")
                    && shown.contains("sslmode=require")
                    && shown.contains("application_name=mbgp"),
                "what is not a credential stays readable: {shown}"
            );
        }
        assert_eq!(url.expose(), text);
        let refused = "postgres://prov@db/pbx?sslpassword=pw-2"
            .parse::<DatabaseUrl>()
            .unwrap_err();
        assert!(
            refused.contains("sslpassword") && !refused.contains("pw-2"),
            "{refused}"
        );
        let plain = "sqlite://mbg-provision.db?mode=rwc";
        assert_eq!(plain.parse::<DatabaseUrl>().unwrap().to_string(), plain);
    }

    #[test]
    fn a_reload_applies_what_it_can_and_names_what_needs_a_restart() {
        let mut running = Config::default();
        let mut new = Config::default();
        new.database.url = "postgres://u:pw@db/x".parse().unwrap();
        new.http.listen = "127.0.0.1:9999".parse().unwrap();
        new.mbg.max_in_flight = 3;
        new.health.grace = Duration::from_secs(5);
        let needs_restart = running.reload(new);
        assert_eq!(needs_restart, ["database.url", "http.listen"]);
        assert_eq!(running.mbg.max_in_flight, 3, "applied");
        assert_eq!(running.health.grace, Duration::from_secs(5), "applied");
        assert_eq!(running.database.url, Config::default().database.url, "kept");
        assert_eq!(running.http.listen, Config::default().http.listen, "kept");
        // The file put back as it runs: nothing pending any more.
        assert!(running.reload(Config::default()).is_empty());
    }
}
