//! `extension set`, `list`, `import`, `show` and `rotate`: only the database is written, as the
//! phone system's own page would; the daemon (or `sync`) does the rest.

use std::collections::HashSet;
use std::process::ExitCode;

use std::io::IsTerminal;

use anyhow::{Context, Result, bail};
use mbg_provision::app::App;
use mbg_provision::credentials;
use mbg_provision::import;
use mbg_provision::reconcile::{self, OnTheMbg, Row, SipUser, Whose};
use mbg_provision::store::{AuditEntry, Extension, ExtensionKind, ExtensionSpec, StoreError};
use mbg_provision::token::TokenStatus;
use secrecy::ExposeSecret;
use serde::Serialize;

use super::args::{ExtensionCommand, Kind, Switch};
use super::context::warn_about_token;
use super::files::{self, read_secret_file};
use super::output::{attention_if, print_bad_rows, print_json};

/// `extension show --json`: the extension, where its ICP and its phone's registrar are, and,
/// with `--reveal`, the set-side password.
#[derive(Serialize)]
struct ShowView<'a> {
    #[serde(flatten)]
    extension: ExtensionView<'a>,
    /// The ICP on the MBG whose address is the node's; `null` when none matches or the MBG
    /// could not be asked (then `icp_unknown` says why).
    icp: Option<String>,
    icp_unknown: Option<String>,
    /// Where the phone registers: the node's NAT address (the MBG's external address).
    registrar_address: Option<&'a str>,
    registrar_port: u16,
    /// The SIP users on the MBG with its number, its set-side name or its recorded guid, and
    /// whose each is; `null` when the MBG could not be asked (then `sip_users_unknown` says why).
    sip_users: Option<Vec<SipUserView<'a>>>,
    sip_users_unknown: Option<String>,
    /// Only with `--reveal`.
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_auth_password: Option<&'a str>,
}

/// A SIP user in `extension show`: its names, and whose it is by the rule every pass applies.
#[derive(Serialize)]
struct SipUserView<'a> {
    guid: &'a str,
    icp: &'a str,
    icpside_username: &'a str,
    setside_username: &'a str,
    /// `recorded`, `proven`, `duplicate` (ours) or `foreign` (added by hand; never touched).
    owner: &'static str,
    /// The number of the row it is ours by; `null` for a foreign one.
    belongs_to: Option<&'a str>,
    /// That row was deleted.
    released: bool,
    /// Why, in words.
    whose: String,
}

impl<'a> From<&'a SipUser> for SipUserView<'a> {
    fn from(user: &'a SipUser) -> Self {
        let (owner, row) = match &user.whose {
            Whose::Recorded(row) => ("recorded", Some(row)),
            Whose::Proven(row) => ("proven", Some(row)),
            Whose::Duplicate(row) => ("duplicate", Some(row)),
            Whose::Foreign => ("foreign", None),
        };
        SipUserView {
            guid: &user.guid,
            icp: &user.icp,
            icpside_username: &user.icpside_username,
            setside_username: &user.setside_username,
            owner,
            belongs_to: row.map(Row::number),
            released: matches!(row, Some(Row::Released { .. })),
            whose: user.whose.to_string(),
        }
    }
}

/// One extension in `extension set --json` and `extension list --json` (a list of these):
/// everything but the secrets.
#[derive(Serialize)]
struct ExtensionView<'a> {
    /// The extension number.
    number: &'a str,
    /// Its node's name and address.
    node: &'a str,
    node_address: &'a str,
    /// `sip` or `sip_hot_desk`.
    kind: ExtensionKind,
    /// "Use remote authorization credentials": it should have a SIP user on the MBG.
    use_remote_auth: bool,
    /// The set-side name the phone uses, once generated.
    remote_auth_name: Option<&'a str>,
    /// Whether a set-side password is stored (it is never printed here).
    has_remote_auth_password: bool,
    /// The SIP user recorded for it.
    mbg_device_id: Option<&'a str>,
    /// That SIP user is ours (created or adopted by us).
    provisioned_by_us: bool,
    /// `idle`, `pending`, `provisioned`, `failed` or `needs_attention`.
    state: &'a str,
    /// Why the last attempt failed or needs attention.
    last_error: Option<&'a str>,
    /// Failed attempts since the last success.
    attempts: u32,
    /// When a failed extension is retried, in epoch seconds (UTC).
    next_attempt_at: Option<i64>,
}

impl<'a> From<&'a Extension> for ExtensionView<'a> {
    fn from(e: &'a Extension) -> Self {
        ExtensionView {
            number: &e.number,
            node: &e.node_name,
            node_address: &e.node_address,
            kind: e.kind,
            use_remote_auth: e.use_remote_auth,
            remote_auth_name: e.remote_auth_name.as_deref(),
            has_remote_auth_password: e.remote_auth_password.is_some(),
            mbg_device_id: e.mbg_device_id.as_deref(),
            provisioned_by_us: e.provisioned_by_us,
            state: e.state.as_str(),
            last_error: e.last_error.as_deref(),
            attempts: e.attempts,
            next_attempt_at: e.next_attempt_at,
        }
    }
}

/// `extension import --json`.
#[derive(Serialize)]
struct ImportCounts {
    /// Rows that made a new extension.
    created: usize,
    /// Rows that changed (or restated) an existing one.
    updated: usize,
}

pub async fn run(app: &App, command: ExtensionCommand) -> Result<ExitCode> {
    let store = &app.store;
    let new_password = || credentials::random_password(app.config.credentials.password_length);
    match command {
        ExtensionCommand::Set {
            number,
            node,
            kind,
            remote,
            sip_password_file,
            remote_name,
            remote_password_file,
            output,
        } => {
            let node = match node {
                Some(node) => node,
                None => store.node_of_number(&number).await?.ok_or_else(|| {
                    anyhow::anyhow!("no extension {number}: give --node NAME to create it")
                })?,
            };
            let spec = ExtensionSpec {
                number,
                node,
                kind: kind.map(|k| match k {
                    Kind::Sip => ExtensionKind::Sip,
                    Kind::SipHotDesk => ExtensionKind::SipHotDesk,
                }),
                use_remote_auth: remote.map(|s| matches!(s, Switch::On)),
                sip_password: sip_password_file
                    .as_deref()
                    .map(read_secret_file)
                    .transpose()?,
            };
            let remote_password = remote_password_file
                .as_deref()
                .map(read_secret_file)
                .transpose()?;
            let (extension, created) = match remote_name.as_deref().zip(remote_password.as_ref()) {
                None => store.set_extension(&spec, &new_password()).await?,
                Some(credentials) => {
                    let audit = AuditEntry {
                        extension: Some(spec.number.clone()),
                        ..os_audit_entry(app, "set", "remote credentials typed")
                    };
                    store
                        .set_extension_with_credentials(
                            &spec,
                            &new_password(),
                            Some(credentials),
                            &audit,
                        )
                        .await?
                }
            };
            if output.json {
                print_json(&ExtensionView::from(&extension))?;
            } else {
                println!(
                    "{} extension {} on node {} (remote credentials {})",
                    if created { "created" } else { "updated" },
                    extension.number,
                    extension.node_name,
                    if extension.use_remote_auth {
                        "on"
                    } else {
                        "off"
                    }
                );
            }
        }
        ExtensionCommand::List { output } => {
            let rows = store.extension_rows().await?;
            if output.json {
                // The JSON stays a list of usable extensions; bad rows go to stderr and the
                // exit code, where a script notices them.
                let views: Vec<ExtensionView> = rows.good.iter().map(Into::into).collect();
                print_json(&views)?;
                for bad in &rows.bad {
                    eprintln!("needs attention: {bad}");
                }
            } else {
                print_extensions(&rows.good);
                print_bad_rows(&rows.bad);
            }
            return Ok(attention_if(!rows.bad.is_empty()));
        }
        ExtensionCommand::Import { file, output } => {
            let reader = std::fs::File::open(&file)
                .with_context(|| format!("cannot read {}", files::absolute(&file).display()))?;
            let nodes: HashSet<String> = store.nodes().await?.into_iter().map(|n| n.name).collect();
            let rows = import::parse(reader, &nodes)
                .with_context(|| format!("cannot import {}", file.display()))?;
            let specs: Vec<ExtensionSpec> = rows.iter().map(|r| r.spec.clone()).collect();
            let created = store
                .set_extensions(&specs, new_password)
                .await
                .map_err(|(index, error)| import::ImportError::Store {
                    line: rows.get(index).map_or(0, |r| r.line),
                    error,
                })
                .with_context(|| format!("cannot import {}", file.display()))?;
            let updated = specs.len() - created;
            if output.json {
                print_json(&ImportCounts { created, updated })?;
            } else {
                println!(
                    "imported {}: {created} created, {updated} updated",
                    file.display()
                );
            }
        }
        ExtensionCommand::Show {
            number,
            node,
            reveal,
            output,
        } => return show(app, &number, node.as_deref(), reveal, output.json).await,
        ExtensionCommand::Rotate {
            number,
            node,
            output,
        } => {
            let extension = find(app, &number, node.as_deref()).await?;
            let config = &app.config.credentials;
            let rotated = store
                .rotate_remote_credentials(
                    extension.id,
                    &credentials::random_auth_name(config.name_length),
                    &credentials::random_password(config.password_length),
                    &audit_entry(app, &extension, "rotate", "new remote credentials drawn"),
                )
                .await
                .with_context(|| format!("cannot rotate the credentials of {number}"))?;
            if output.json {
                print_json(&ExtensionView::from(&rotated))?;
            } else {
                println!(
                    "extension {} has a new set-side name {} and password; the daemon (or `sync`) updates its SIP user; configure the phone with `extension show {} --reveal`",
                    rotated.number,
                    rotated.remote_auth_name.as_deref().unwrap_or("-"),
                    rotated.number
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The one extension with this number (on `node`, when given).
async fn find(app: &App, number: &str, node: Option<&str>) -> Result<Extension> {
    app.store
        .extension_meant(number, node)
        .await
        .map_err(|e| match e {
            StoreError::Invalid { reason, .. } => anyhow::anyhow!("{reason} with --node"),
            other => other.into(),
        })
}

fn audit_entry(app: &App, extension: &Extension, action: &str, what: &str) -> AuditEntry {
    AuditEntry {
        extension: Some(extension.number.clone()),
        ..os_audit_entry(app, action, what)
    }
}

/// An audit entry of a command, with the OS user who ran it as its actor.
fn os_audit_entry(app: &App, action: &str, what: &str) -> AuditEntry {
    let user = super::context::os_user();
    AuditEntry {
        at: app.clock.now(),
        actor: Some(format!("os:{user}")),
        extension: None,
        action: action.to_string(),
        outcome: "ok".to_string(),
        detail: Some(format!("{what}, by OS user {user}")),
        repeats: 1,
        last_at: None,
    }
}

async fn show(
    app: &App,
    number: &str,
    node: Option<&str>,
    reveal: bool,
    json: bool,
) -> Result<ExitCode> {
    if reveal && !json && !std::io::stdout().is_terminal() {
        bail!(
            "--reveal prints a password: run it on a terminal, or ask for it in JSON explicitly with --reveal --json"
        );
    }
    let extension = find(app, number, node).await?;
    let node = app.store.node_by_name(&extension.node_name).await?;
    let settings = app.store.mbg_settings().await?;
    warn_about_token(&TokenStatus::of(&settings, app.clock.now()), &app.config);
    let asked = reconcile::ask_the_mbg(&app.store, &app.config, &extension, app.clock.now()).await;
    let (icp, icp_unknown, sip_users) = match asked {
        Ok(OnTheMbg { icp, sip_users }) => {
            let unknown = icp.is_none().then(|| {
                format!(
                    "no ICP on the MBG has the node's address {}",
                    extension.node_address
                )
            });
            (icp, unknown, sip_users.map_err(|why| why.to_string()))
        }
        Err(why) => (None, Some(why.to_string()), Err(why.to_string())),
    };
    if reveal {
        app.store
            .audit(&audit_entry(
                app,
                &extension,
                "reveal",
                "set-side password shown",
            ))
            .await?;
    }
    let password = extension
        .remote_auth_password
        .as_ref()
        .filter(|_| reveal)
        .map(|p| p.expose_secret());
    let view = ShowView {
        extension: ExtensionView::from(&extension),
        icp,
        icp_unknown,
        registrar_address: node.nat_address.as_deref(),
        registrar_port: node.registrar_port(),
        sip_users: sip_users
            .as_ref()
            .ok()
            .map(|users| users.iter().map(SipUserView::from).collect()),
        sip_users_unknown: sip_users.as_ref().err().cloned(),
        remote_auth_password: password,
    };
    if json {
        print_json(&view)?;
        return Ok(ExitCode::SUCCESS);
    }
    let e = &extension;
    let or_dash = |v: Option<&str>| v.unwrap_or("-").to_string();
    println!("extension      {} ({})", e.number, e.kind.as_str());
    println!("node           {} ({})", e.node_name, e.node_address);
    match (&view.icp, &view.icp_unknown) {
        (Some(icp), _) => println!("ICP            {icp}"),
        (None, why) => println!("ICP            unknown: {}", or_dash(why.as_deref())),
    }
    println!(
        "remote         {}",
        if e.use_remote_auth { "on" } else { "off" }
    );
    println!("state          {}", e.state);
    println!("SIP user       {}", or_dash(e.mbg_device_id.as_deref()));
    println!("set-side name  {}", or_dash(e.remote_auth_name.as_deref()));
    if let Some(password) = password {
        println!("set-side pass  {password}");
    }
    match view.registrar_address {
        Some(address) => println!("registers at   {address}:{}", view.registrar_port),
        None => println!(
            "registers at   not set: give node {} the MBG's external address with `mbg-provision node set {} --nat-address IP`",
            e.node_name, e.node_name
        ),
    }
    match (&view.sip_users, &view.sip_users_unknown) {
        (Some(users), _) if users.is_empty() => {
            println!("on the MBG     no SIP user has its number, set-side name or recorded guid");
        }
        (Some(users), _) => {
            for user in users {
                println!(
                    "on the MBG     {} under {} ({} / {}): {}",
                    user.guid, user.icp, user.icpside_username, user.setside_username, user.whose
                );
            }
        }
        (None, why) => println!("on the MBG     unknown: {}", or_dash(why.as_deref())),
    }
    if let Some(error) = &e.last_error {
        println!("last error     {error}");
    }
    if let Some(at) = e.next_attempt_at {
        let when = chrono::DateTime::from_timestamp(at, 0)
            .map_or_else(|| at.to_string(), |t| t.to_rfc3339());
        println!("next retry     {when}");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_extensions(extensions: &[Extension]) {
    if extensions.is_empty() {
        println!(
            "no extensions yet: add one with `mbg-provision extension set NUMBER --node NAME`"
        );
        return;
    }
    println!(
        "{:<11} {:<16} {:<13} {:<7} {:<16} {:<38} STATE",
        "NUMBER", "NODE", "KIND", "REMOTE", "REMOTE NAME", "MBG DEVICE"
    );
    for e in extensions {
        println!(
            "{:<11} {:<16} {:<13} {:<7} {:<16} {:<38} {}",
            e.number,
            e.node_name,
            e.kind.as_str(),
            if e.use_remote_auth { "on" } else { "off" },
            e.remote_auth_name.as_deref().unwrap_or("-"),
            e.mbg_device_id.as_deref().unwrap_or("-"),
            e.state
        );
    }
}
