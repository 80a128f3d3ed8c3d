//! `preflight`: the checks an engineer runs before going live, each one pass, warn or fail with
//! the fix. It only reads: no migration, no token write, no MBG change. A check that cannot run
//! because an earlier one failed says so (`skip`) instead of piling up the same failure.

pub mod network;
pub mod tls;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, MbgUrl};
use crate::mbg::{Icp, MbgClient, MbgError, MbgErrorKind, SipDevice};
use crate::reconcile::plan::whose;
use crate::reconcile::{Whose, held_by_bad_rows};
use crate::secrets::{self, SecretKey};
use crate::store::{Extension, ExtensionRows, OpenOptions, Store, StoreError};
use crate::stun;
use crate::token::{self, TokenStatus};

use network::{Client, Rule, SiteRule};

const DAY: i64 = 86_400;
/// How long the daemon's `/healthz` may take: it answers from memory.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    /// Not applicable here, or not possible after an earlier failure (which carries the exit code).
    Skip,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// What to do about a warning or a failure.
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Firewall {
    /// The MBG's host as `mbg.base_url` names it (its internal address).
    pub destination: Option<String>,
    /// The MBG's *Port Forwarding* page: to the application server.
    pub rules: Vec<Rule>,
    pub notes: [&'static str; 3],
    /// The site firewall: from the internet to the MBG's external address.
    pub site: Vec<SiteRule>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    /// With `--clients`: the forwarding rules those clients need.
    pub firewall: Option<Firewall>,
}

impl Report {
    /// The worst status of any check: the exit code follows it.
    pub fn outcome(&self) -> Status {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Pass)
    }

    fn add(&mut self, name: impl Into<String>, status: Status, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            status,
            detail: detail.into(),
            fix: None,
        });
    }

    fn pass(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.add(name, Status::Pass, detail);
    }

    fn skip(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.add(name, Status::Skip, detail);
    }

    fn problem(
        &mut self,
        name: impl Into<String>,
        status: Status,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.checks.push(Check {
            name: name.into(),
            status,
            detail: detail.into(),
            fix: Some(fix.into()),
        });
    }

    /// A report for a configuration that does not load: only the checks that need none can run.
    pub fn bad_configuration(error: &crate::config::ConfigError) -> Report {
        let mut report = Report::default();
        let fix = match error {
            crate::config::ConfigError::MissingFile(_) => {
                "give --config the path of a configuration file (config.toml.example shows every key)"
            }
            crate::config::ConfigError::Invalid(_) => {
                "correct each key named, in the file or the MBG_PROVISION_* variable named"
            }
        };
        report.problem("configuration", Status::Fail, error.to_string(), fix);
        report
    }
}

pub struct Options {
    pub clients: Vec<Client>,
    /// `HOST[:PORT]` of a STUN server to send a Binding request to.
    pub stun: Option<String>,
    pub now: i64,
}

/// Every check, in the order an engineer fixes things.
pub async fn run(config: &Config, config_source: &str, options: &Options) -> Report {
    let mut report = Report::default();
    report.pass("configuration", format!("{config_source} is valid"));
    let store = database(config, &mut report).await;
    secret_files(config, &mut report);
    if let Some(store) = &store {
        key_file(config, store, &mut report).await;
    }
    let extensions = match &store {
        Some(store) => extensions(store, &mut report).await,
        None => None,
    };
    let mbg = mbg(config, store.as_ref(), options.now, &mut report).await;
    match (&mbg, &store) {
        (Some(mbg), Some(store)) => {
            mapping(store, &mbg.icps, &mut report).await;
            if let Some(rows) = &extensions {
                licences(config, &rows.good, &mbg.devices, &mut report);
                icpside_names(&rows.good, &mbg.devices, &mut report);
                owners(store, rows, &mbg.devices, &mut report).await;
            }
        }
        _ => {
            for name in ["nodes and ICPs", "licences", "ICP-side names", OWNERS] {
                report.skip(name, "needs the database and the MBG's answers");
            }
        }
    }
    let database_id = match &store {
        Some(store) => store.database_id().await.ok(),
        None => None,
    };
    daemon(config, database_id.as_deref(), &mut report).await;
    // The ports the phones are told to register on: what the site firewall must let through.
    let nat_sip_ports: Vec<u16> = match &store {
        Some(store) => store
            .nodes()
            .await
            .map(|nodes| nodes.iter().map(|n| n.registrar_port()).collect())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    network_checks(
        config.mbg.base_url.as_ref(),
        &nat_sip_ports,
        options,
        &mut report,
    )
    .await;
    if let Some(store) = store {
        store.close().await;
    }
    report
}

/// The STUN check and the firewall rules: they need no configuration, so they run even when it
/// does not load.
pub async fn network_checks(
    base: Option<&MbgUrl>,
    nat_sip_ports: &[u16],
    options: &Options,
    report: &mut Report,
) {
    if let Some(server) = &options.stun {
        stun_check(server, report).await;
    }
    if !options.clients.is_empty() {
        report.firewall = Some(Firewall {
            destination: base
                .and_then(|u| url::Url::parse(u.as_str()).ok())
                .and_then(|u| u.host_str().map(str::to_string)),
            rules: network::rules(&options.clients),
            notes: network::NOTES,
            site: network::site_rules(nat_sip_ports),
        });
    }
}

async fn database(config: &Config, report: &mut Report) -> Option<Store> {
    const NAME: &str = "database";
    let url = &config.database.url;
    let options = OpenOptions {
        connect_timeout: config.database.connect_timeout,
        create: false,
        migrate: false,
    };
    let store = match Store::open_with(url, &options).await {
        Ok(store) => store.with_secret_key(SecretKey::new(secrets::key_file(config))),
        Err(e) => {
            let fix = match e {
                crate::store::StoreError::MissingDatabase(_) => {
                    "create it with `mbg-provision migrate` (or check database.url)"
                }
                _ => {
                    "check database.url, that the server runs, and that this user can read and write the file and its folder"
                }
            };
            report.problem(NAME, Status::Fail, format!("cannot open {url}: {e}"), fix);
            return None;
        }
    };
    match store.migration_status().await {
        Err(e) => report.problem(
            NAME,
            Status::Fail,
            format!("cannot read the schema version of {url}: {e}"),
            "check that database.url names this program's database",
        ),
        Ok(status) if status.applied == 0 => {
            report.problem(
                NAME,
                Status::Fail,
                format!("{url} has no mbg-provision schema"),
                "run `mbg-provision migrate`",
            );
            return None;
        }
        Ok(status) if !status.unknown.is_empty() => report.problem(
            NAME,
            Status::Fail,
            format!(
                "{url} was migrated by a newer mbg-provision (versions {:?})",
                status.unknown
            ),
            "run the newer mbg-provision here too",
        ),
        Ok(status) if !status.pending.is_empty() => report.problem(
            NAME,
            Status::Warn,
            format!("{url} lacks {}", status.pending.join(", ")),
            "run `mbg-provision migrate` (every other command would also apply them on start)",
        ),
        Ok(_) => report.pass(NAME, format!("{url}: reachable, schema up to date")),
    }
    Some(store)
}

/// The SQLite file and the key file hold secrets: only their owner may read them.
fn secret_files(config: &Config, report: &mut Report) {
    const NAME: &str = "secret files";
    let files: Vec<_> = config
        .database
        .url
        .sqlite_file()
        .into_iter()
        .chain([secrets::key_file(config)])
        .filter(|f| f.exists())
        .collect();
    let warnings: Vec<String> = files
        .iter()
        .filter_map(|f| secrets::exposure_warning(f))
        .collect();
    if warnings.is_empty() {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        report.pass(
            NAME,
            if names.is_empty() {
                "none yet".to_string()
            } else {
                format!("{}: readable by their owner only", names.join(", "))
            },
        );
    } else {
        report.problem(
            NAME,
            Status::Warn,
            warnings.join("; "),
            "chmod 600 each file named (and keep its folder closed to others)",
        );
    }
}

/// Whether this instance's key opens the secrets stored in the database: with PostgreSQL, every
/// instance needs the key of the one that stored them, and a wrong one is otherwise found only
/// when the daemon first needs the token.
async fn key_file(config: &Config, store: &Store, report: &mut Report) {
    const NAME: &str = "key file";
    let key = secrets::key_file(config);
    let key = std::path::absolute(&key).unwrap_or(key);
    match store.mbg_settings().await {
        Ok(settings) if settings.consumer_secret.is_some() || settings.access_token.is_some() => {
            report.pass(NAME, format!("{} opens the secrets stored in the database", key.display()))
        }
        Ok(_) => report.pass(NAME, format!("{}: no secrets stored yet", key.display())),
        Err(StoreError::Secrets(e)) if e.needs_new_exchange() => report.problem(
            NAME,
            Status::Fail,
            e.to_string(),
            "use the key file of the instance that stored the token (with PostgreSQL every instance needs the same key: copy it, mode 0600, owned by the service's user), or store new secrets with this key: `mbg-provision token request`, approve, `token verify CODE`",
        ),
        Err(e) => report.problem(
            NAME,
            Status::Fail,
            e.to_string(),
            "fix the key file named (secrets.key_file), or run `mbg-provision token request` and `token verify`",
        ),
    }
}

async fn extensions(store: &Store, report: &mut Report) -> Option<ExtensionRows> {
    const NAME: &str = "extensions";
    match store.extension_rows().await {
        Err(e) => {
            report.problem(
                NAME,
                Status::Fail,
                format!("cannot read them: {e}"),
                "run `mbg-provision migrate`",
            );
            None
        }
        Ok(rows) => {
            let wanted = rows.good.iter().filter(|e| e.use_remote_auth).count();
            let detail = format!(
                "{} extensions, {wanted} with remote credentials wanted",
                rows.good.len()
            );
            if rows.bad.is_empty() {
                report.pass(NAME, detail);
            } else {
                let first = &rows.bad[0];
                report.problem(
                    NAME,
                    Status::Warn,
                    format!(
                        "{detail}; {} rows cannot be used, e.g. id {} (column {}: {})",
                        rows.bad.len(),
                        first.id,
                        first.column,
                        first.reason
                    ),
                    "correct those rows in the phone system; `mbg-provision status` lists them all",
                );
            }
            Some(rows)
        }
    }
}

/// What the MBG answered, for the checks that compare it with the database.
struct MbgFacts {
    icps: Vec<Icp>,
    devices: Vec<SipDevice>,
}

async fn mbg(
    config: &Config,
    store: Option<&Store>,
    now: i64,
    report: &mut Report,
) -> Option<MbgFacts> {
    const CALLS: [&str; 5] = [
        "token",
        "permission Base/managetoken",
        "permission MBG/v1/icps",
        "permission MBG/v1/devices",
        "MBG reachable",
    ];
    let skip_calls = |report: &mut Report, why: &str| {
        for name in CALLS {
            if !report.checks.iter().any(|c| c.name == name) {
                report.skip(name, why);
            }
        }
    };
    let Some(base) = &config.mbg.base_url else {
        report.problem(
            "MBG address",
            Status::Fail,
            "mbg.base_url is not set",
            "set mbg.base_url to the MBG's internal web-services address, e.g. https://10.0.0.5/mslrest",
        );
        skip_calls(report, "needs mbg.base_url");
        return None;
    };
    if !certificate(config, base.as_str(), report).await {
        skip_calls(report, "needs a trusted connection to the MBG");
        return None;
    }
    let Some(store) = store else {
        skip_calls(report, "needs the database (the token is stored there)");
        return None;
    };
    let settings = match store.mbg_settings().await {
        Ok(settings) => settings,
        Err(e) => {
            report.problem(
                "token",
                Status::Fail,
                format!("cannot read the stored token: {e}"),
                "run `mbg-provision token request` and `token verify`",
            );
            skip_calls(report, "needs a token");
            return None;
        }
    };
    let status = TokenStatus::of(&settings, now);
    if !status.is_usable() {
        let fix = match status {
            TokenStatus::PendingApproval { .. } => {
                "approve the temporary token on the MBG page (Administration > Web services > Temporary tokens), then run `mbg-provision token verify CODE` within 10 minutes of the request; after that, `token request` again"
            }
            _ => {
                "run `mbg-provision token request`, approve it on the MBG, then `token verify CODE`"
            }
        };
        report.problem("token", Status::Fail, status.to_string(), fix);
        skip_calls(report, "needs a valid token");
        return None;
    }
    let client = match token::client(config, &settings) {
        Ok(client) => client,
        Err(e) => {
            report.problem(
                "MBG reachable",
                Status::Fail,
                e.to_string(),
                "correct the setting the message names (mbg.base_url or mbg.ca_file)",
            );
            skip_calls(report, "needs an MBG client");
            return None;
        }
    };
    if let Err(e) = client.ping().await {
        match e.kind {
            MbgErrorKind::Unauthorized(_) => {
                report.pass("MBG reachable", format!("{base} answers"));
                let why = match &e.kind {
                    MbgErrorKind::Unauthorized(why) => why.clone(),
                    _ => String::new(),
                };
                // Not the client's own hint ("see token status"): preflight records nothing,
                // so `token status` would still read "valid".
                report.problem(
                    "token",
                    Status::Fail,
                    format!("the MBG refuses the stored token (401 on {}: {why})", e.endpoint),
                    "the token was revoked or has expired: run `mbg-provision token request`, approve it, then `token verify CODE`",
                );
                skip_calls(report, "needs a token the MBG accepts");
            }
            MbgErrorKind::RateLimited(after) => {
                report.problem(
                    "MBG reachable",
                    Status::Fail,
                    format!("{base} answers, but is rate limiting this consumer: {e}"),
                    format!(
                        "another client (the daemon?) keeps the MBG busy: run preflight again {}",
                        after.map_or("in a minute".to_string(), |a| format!(
                            "after {} s",
                            a.as_secs()
                        ))
                    ),
                );
                skip_calls(report, "needs the MBG to answer");
            }
            _ => {
                report.problem(
                    "MBG reachable",
                    Status::Fail,
                    e.to_string(),
                    "check mbg.base_url (the MBG's internal address), the route to it, and that its web services run",
                );
                skip_calls(report, "needs the MBG to answer");
            }
        }
        return None;
    }
    report.pass("MBG reachable", format!("{base} answers"));
    let consumer = settings.consumer_id.as_deref().unwrap_or("(unknown)");
    token_check(config, &client, &status, consumer, now, report).await;
    let icps = permission(client.icps().await, "MBG/v1/icps", consumer, report);
    let devices = permission(client.devices().await, "MBG/v1/devices", consumer, report);
    Some(MbgFacts {
        icps: icps?,
        devices: devices?,
    })
}

/// Whether the MBG can be talked to: a trusted certificate, or plain HTTP on loopback.
async fn certificate(config: &Config, base: &str, report: &mut Report) -> bool {
    const NAME: &str = "MBG certificate";
    let Ok(url) = url::Url::parse(base) else {
        return false;
    };
    let host = url.host_str().unwrap_or_default().to_string();
    if url.scheme() != "https" {
        report.pass(
            NAME,
            "plain HTTP to a loopback address (a simulator): no certificate to check",
        );
        return true;
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let ca_file = config.mbg.ca_file.as_deref();
    let fix_trust = match ca_file {
        Some(file) => format!(
            "mbg.ca_file ({}) is not the CA that signed it: point mbg.ca_file at that CA's PEM file",
            file.display()
        ),
        None => "set mbg.ca_file to the PEM file of the CA that signed the MBG's certificate (MBG: Administration > Certificate management)".into(),
    };
    match tls::probe(&host, port, ca_file, config.mbg.timeout).await {
        Ok(tls::Certificate::Trusted) => {
            report.pass(NAME, format!("trusted for {host}"));
            return true;
        }
        Ok(tls::Certificate::SelfSigned) => report.problem(
            NAME,
            Status::Fail,
            format!("the certificate of {host}:{port} is self-signed"),
            match ca_file {
                Some(file) => format!(
                    "mbg.ca_file ({}) is not this certificate: save the MBG's certificate as PEM and point mbg.ca_file at it, or give the MBG one signed by a CA",
                    file.display()
                ),
                None => "save the MBG's certificate as PEM and set mbg.ca_file to it, or give the MBG one signed by a CA and set mbg.ca_file to that CA".into(),
            },
        ),
        Ok(tls::Certificate::CaAsServer) => report.problem(
            NAME,
            Status::Fail,
            format!(
                "the certificate of {host}:{port} is a CA certificate used as the server's own (openssl's default for a self-signed one): it is refused even when trusted"
            ),
            "give the MBG a server certificate (basicConstraints CA:FALSE), self-signed or signed by a CA, and set mbg.ca_file to it or to that CA",
        ),
        Ok(tls::Certificate::UnknownIssuer) => report.problem(
            NAME,
            Status::Fail,
            format!(
                "the certificate of {host}:{port} was issued by a CA that this machine does not trust"
            ),
            fix_trust,
        ),
        Ok(tls::Certificate::Expired { not_after }) => report.problem(
            NAME,
            Status::Fail,
            format!(
                "the certificate of {host}:{port} has expired{}",
                not_after.map_or(String::new(), |at| format!(" (on {})", token::date(at)))
            ),
            "renew the MBG's certificate (MBG: Administration > Certificate management)",
        ),
        Ok(tls::Certificate::NotYetValid) => report.problem(
            NAME,
            Status::Fail,
            format!("the certificate of {host}:{port} is not valid yet"),
            "check the clocks of this machine and of the MBG",
        ),
        Ok(tls::Certificate::WrongHost { host, presented }) => report.problem(
            NAME,
            Status::Fail,
            format!(
                "the certificate is not valid for {host}{}",
                if presented.is_empty() {
                    String::new()
                } else {
                    format!(": it names {}", presented.join(", "))
                }
            ),
            "set mbg.base_url to a name the certificate carries, or issue the MBG a certificate that names this address",
        ),
        Ok(tls::Certificate::Other(why)) => report.problem(
            NAME,
            Status::Fail,
            format!("the certificate of {host}:{port} is refused: {why}"),
            "inspect it with `openssl s_client -connect HOST:PORT`",
        ),
        Err(tls::ProbeError::Setup(why)) => report.problem(
            NAME,
            Status::Fail,
            why,
            "correct mbg.ca_file",
        ),
        Err(e) => {
            let fix = match e {
                tls::ProbeError::Handshake { .. } => {
                    "the port does not speak TLS: check the port in mbg.base_url (the MBG serves its API over https on 443)"
                }
                _ => {
                    "check mbg.base_url (the MBG's internal address), the route to it, and that its web services run"
                }
            };
            report.problem("MBG reachable", Status::Fail, e.to_string(), fix);
            report.skip(NAME, "needs a connection to the MBG");
        }
    }
    false
}

async fn token_check(
    config: &Config,
    client: &MbgClient,
    stored: &TokenStatus,
    consumer: &str,
    now: i64,
    report: &mut Report,
) {
    const PERMISSION: &str = "permission Base/managetoken";
    let renew_within = i64::from(config.token.renew_within_days);
    let expires_at = match client.token_expiry().await {
        Ok(expires_at) => {
            report.pass(
                PERMISSION,
                "token information readable (renewal uses the same permission, written)",
            );
            Some(expires_at)
        }
        Err(e) => {
            match e.kind {
                MbgErrorKind::NotFound => report.problem(
                    PERMISSION,
                    Status::Warn,
                    "this MBG does not offer the token API (404): the token cannot be renewed from here",
                    "press Renew on the MBG page (Administration > Web services) before the expiry, then run `mbg-provision token renewed`",
                ),
                _ => permission_problem(&e, consumer, report),
            }
            match stored {
                TokenStatus::Valid { expires_at, .. } => Some(*expires_at),
                _ => None,
            }
        }
    };
    const NAME: &str = "token";
    match expires_at {
        Some(expires_at) if (expires_at - now) / DAY < renew_within => report.problem(
            NAME,
            Status::Warn,
            format!(
                "accepted; expires on {} ({} days left)",
                token::date(expires_at),
                (expires_at - now) / DAY
            ),
            "run `mbg-provision token renew`, or press Renew on the MBG page and run `mbg-provision token renewed`",
        ),
        Some(expires_at) => report.pass(
            NAME,
            format!(
                "accepted; expires on {} ({} days left)",
                token::date(expires_at),
                (expires_at - now) / DAY
            ),
        ),
        None => report.problem(
            NAME,
            Status::Warn,
            format!("accepted by the MBG, but {stored}"),
            "if you pressed Renew on the MBG, run `mbg-provision token renewed`",
        ),
    }
}

/// The answer of a read that needs a permission, recording whether the consumer has it.
fn permission<T>(
    answer: Result<T, MbgError>,
    permission: &str,
    consumer: &str,
    report: &mut Report,
) -> Option<T> {
    match answer {
        Ok(value) => {
            report.pass(
                format!("permission {permission}"),
                "read checked (a write cannot be probed without changing the MBG)",
            );
            Some(value)
        }
        Err(e) => {
            permission_problem(&e, consumer, report);
            None
        }
    }
}

fn permission_problem(error: &MbgError, consumer: &str, report: &mut Report) {
    let permission =
        crate::mbg::permission_for(error.endpoint.split_once(' ').map_or("", |(_, path)| path));
    let name = format!("permission {permission}");
    match error.kind {
        MbgErrorKind::Forbidden { permission } => report.problem(
            name,
            Status::Fail,
            format!("the consumer lacks {permission} ({error})"),
            format!(
                "on the MBG (Administration > Web services), give the consumer {consumer} the permission {permission}{}",
                if permission == "MBG/v1/icps" {
                    " (read)"
                } else {
                    " (read/write)"
                }
            ),
        ),
        _ => report.problem(
            name,
            Status::Fail,
            error.to_string(),
            "run preflight again; if it persists, check the MBG's web services",
        ),
    }
}

async fn mapping(store: &Store, icps: &[Icp], report: &mut Report) {
    const NAME: &str = "nodes and ICPs";
    let nodes = match store.nodes().await {
        Ok(nodes) => nodes,
        Err(e) => {
            report.problem(
                NAME,
                Status::Fail,
                e.to_string(),
                "run `mbg-provision migrate`",
            );
            return;
        }
    };
    let matched: HashSet<&str> = nodes.iter().map(|n| n.address.as_str()).collect();
    let spare: Vec<String> = icps
        .iter()
        .filter(|i| !matched.contains(i.address.as_str()))
        .map(|i| format!("{} ({})", i.name, i.address))
        .collect();
    let spare = if spare.is_empty() {
        String::new()
    } else {
        format!("; ICPs with no node: {}", spare.join(", "))
    };
    let mut pairs = Vec::new();
    let mut unmatched = Vec::new();
    for node in &nodes {
        match icps.iter().find(|i| i.address == node.address) {
            Some(icp) => pairs.push(format!("{} -> {}", node.name, icp.name)),
            None => unmatched.push(format!("{} ({})", node.name, node.address)),
        }
    }
    let addresses = icps
        .iter()
        .map(|i| format!("{} {}", i.name, i.address))
        .collect::<Vec<_>>()
        .join(", ");
    if nodes.is_empty() {
        report.problem(
            NAME,
            Status::Warn,
            format!("no node is defined{spare}"),
            "add each PBX node with `mbg-provision node add NAME --address ICP_ADDRESS`",
        );
    } else if !unmatched.is_empty() {
        report.problem(
            NAME,
            Status::Fail,
            format!(
                "no ICP has the address of node {}{spare}",
                unmatched.join(", ")
            ),
            format!(
                "give the node its ICP's address with `mbg-provision node set NAME --address ADDRESS` (the MBG's ICPs: {addresses})"
            ),
        );
    } else {
        report.pass(NAME, format!("{}{spare}", pairs.join(", ")));
    }
}

fn licences(config: &Config, extensions: &[Extension], devices: &[SipDevice], report: &mut Report) {
    const NAME: &str = "licences";
    let Some(licences) = config.mbg.teleworker_licences else {
        report.skip(NAME, "mbg.teleworker_licences is not set");
        return;
    };
    let on_mbg: HashSet<&str> = devices.iter().map(|d| d.guid.as_str()).collect();
    let to_create = extensions
        .iter()
        .filter(|e| e.use_remote_auth)
        .filter(|e| {
            !e.mbg_device_id
                .as_deref()
                .is_some_and(|g| on_mbg.contains(g))
        })
        .count();
    let free = (licences as usize).saturating_sub(devices.len());
    let detail = format!(
        "{licences} licences, {} SIP users on the MBG, {to_create} more wanted",
        devices.len()
    );
    if to_create > free {
        report.problem(
            NAME,
            Status::Fail,
            format!("{detail}: {} short", to_create - free),
            "add teleworker licences on the MBG and raise mbg.teleworker_licences, or switch extensions off",
        );
    } else if free - to_create < (licences as usize).div_ceil(10) {
        report.problem(
            NAME,
            Status::Warn,
            format!("{detail}: {} left after them", free - to_create),
            "fewer than 10 % will be left: plan more teleworker licences",
        );
    } else {
        report.pass(
            NAME,
            format!("{detail}: {} left after them", free - to_create),
        );
    }
}

fn icpside_names(extensions: &[Extension], devices: &[SipDevice], report: &mut Report) {
    const NAME: &str = "ICP-side names";
    let by_guid: HashMap<&str, &SipDevice> = devices.iter().map(|d| (d.guid.as_str(), d)).collect();
    let mut wrong = Vec::new();
    let mut missing = 0;
    let mut checked = 0;
    for extension in extensions {
        let Some(guid) = extension.recorded_guid() else {
            continue;
        };
        match by_guid.get(guid) {
            Some(device) if device.icpside_username == extension.number => checked += 1,
            Some(device) => wrong.push(format!(
                "{} (SIP user {guid} has {:?})",
                extension.number, device.icpside_username
            )),
            None => missing += 1,
        }
    }
    if !wrong.is_empty() {
        report.problem(
            NAME,
            Status::Fail,
            format!(
                "{} SIP users of ours do not carry their extension number: {}",
                wrong.len(),
                wrong.join(", ")
            ),
            "run `mbg-provision sync`: it sets the ICP-side name back to the number (the PBX accepts no other)",
        );
    } else if missing > 0 {
        report.problem(
            NAME,
            Status::Warn,
            format!("{checked} SIP users checked; {missing} recorded ones are gone from the MBG"),
            "run `mbg-provision sync`: it creates them again",
        );
    } else {
        report.pass(NAME, format!("{checked} SIP users of ours checked"));
    }
}

const OWNERS: &str = "SIP users' owners";

/// Whose the MBG's SIP users are, by the rule every pass applies. Ours that a pass has still to
/// record or delete are a warning; those added by hand are counted, and never a fault.
async fn owners(store: &Store, rows: &ExtensionRows, devices: &[SipDevice], report: &mut Report) {
    let released = match store.released().await {
        Ok(released) => released,
        Err(e) => {
            report.problem(
                OWNERS,
                Status::Fail,
                format!("cannot read the deleted extensions' SIP users: {e}"),
                "run `mbg-provision migrate`",
            );
            return;
        }
    };
    // A row that cannot be read still holds its SIP user, as in a pass.
    let held = held_by_bad_rows(&rows.bad);
    let judged: Vec<SipDevice> = devices
        .iter()
        .filter(|d| !held.contains(d.guid.as_str()))
        .cloned()
        .collect();
    let whose = whose(&rows.good, &released, &judged);
    let mut ours = 0;
    let mut foreign = 0;
    let mut unsettled = Vec::new();
    for (device, whose) in judged.iter().zip(&whose) {
        match whose {
            Whose::Foreign => foreign += 1,
            settled if settled.is_settled() => ours += 1,
            other => {
                ours += 1;
                unsettled.push(format!("{} ({other})", device.guid));
            }
        }
    }
    let hidden = devices.len() - judged.len();
    let detail = format!(
        "{} SIP users: {ours} ours, {foreign} added by hand (left alone){}",
        devices.len(),
        if hidden == 0 {
            String::new()
        } else {
            format!(", {hidden} held by rows that cannot be read")
        }
    );
    if unsettled.is_empty() {
        report.pass(OWNERS, detail);
    } else {
        let shown = unsettled
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        report.problem(
            OWNERS,
            Status::Warn,
            format!(
                "{detail}; {} of ours not recorded or to delete: {shown}{}",
                unsettled.len(),
                if unsettled.len() > 5 { "; ..." } else { "" }
            ),
            "run `mbg-provision sync` (or let the daemon's next pass settle them)",
        );
    }
}

/// The health of the daemon answering on `http.listen`, when it works on this database: one
/// started with another configuration (a trial folder, another site) says nothing about this one.
async fn daemon(config: &Config, database_id: Option<&str>, report: &mut Report) {
    const NAME: &str = "daemon";
    let mut address = config.http.listen;
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let mut builder = reqwest::Client::builder().timeout(HEALTH_TIMEOUT);
    let scheme = match &config.http.tls_cert {
        // The daemon's own certificate (or the chain that holds its CA) is what to trust.
        Some(cert) => {
            let pem = std::fs::read(cert).unwrap_or_default();
            if let Ok(certs) = reqwest::Certificate::from_pem_bundle(&pem) {
                builder = builder.tls_certs_merge(certs);
            }
            "https"
        }
        None => "http",
    };
    let url = format!("{scheme}://{address}/healthz");
    let Ok(http) = builder.build() else {
        report.skip(NAME, "cannot build an HTTP client");
        return;
    };
    let answer = match http.get(&url).send().await {
        Ok(answer) => answer,
        Err(e) if e.is_connect() => {
            report.skip(
                NAME,
                format!("none answers at {address} (http.listen): not running here"),
            );
            return;
        }
        Err(e) => {
            report.problem(
                NAME,
                Status::Warn,
                format!("{url}: {e}"),
                "check that http.listen is the daemon's and that nothing else listens there",
            );
            return;
        }
    };
    let code = answer.status();
    let body: serde_json::Value = answer.json().await.unwrap_or_default();
    let reasons = |key: &str| {
        body[key]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default()
    };
    let role = body["role"].as_str().unwrap_or("unknown").to_string();
    let theirs = body["database_id"].as_str();
    if theirs.is_none() || theirs != database_id {
        report.skip(
            NAME,
            format!(
                "a daemon answers at {address} (http.listen), but it works on {}: its health is not this database's",
                if theirs.is_some() { "another database" } else { "a database it does not name" }
            ),
        );
        return;
    }
    if code.is_success() && body.get("role").is_some() {
        let degraded = reasons("degraded");
        if degraded.is_empty() {
            report.pass(NAME, format!("running at {address}, {role}, healthy"));
        } else {
            report.problem(
                NAME,
                Status::Warn,
                format!("running at {address}, {role}: {degraded}"),
                "see the daemon's log (journalctl -u mbg-provision)",
            );
        }
    } else if code == reqwest::StatusCode::SERVICE_UNAVAILABLE {
        report.problem(
            NAME,
            Status::Fail,
            format!(
                "running at {address}, {role}, unhealthy: {}",
                reasons("unhealthy")
            ),
            "see the daemon's log (journalctl -u mbg-provision) and the checks above",
        );
    } else {
        report.problem(
            NAME,
            Status::Warn,
            format!("{url} answered {code}, not as mbg-provision does"),
            "check http.listen: another program may listen there",
        );
    }
}

async fn stun_check(server: &str, report: &mut Report) {
    let name = format!("STUN {server}");
    match stun::binding(server).await {
        Ok((from, mapped)) => report.pass(
            name,
            format!("{from} answered: this host is seen as {mapped}"),
        ),
        Err(e) => report.problem(
            name,
            Status::Fail,
            e.to_string(),
            "check the STUN server's address, and that UDP to its port (3478 by default) is open from here and from the internet",
        ),
    }
}
