//! `extension set`, `extension list` and `extension import`: only the database is written, as
//! the phone system's own page would; the daemon (or `sync`) does the rest.

use std::collections::HashSet;
use std::process::ExitCode;

use anyhow::{Context, Result};
use mbg_provision::app::App;
use mbg_provision::credentials;
use mbg_provision::import;
use mbg_provision::store::{Extension, ExtensionKind, ExtensionSpec};
use serde::Serialize;

use super::args::{ExtensionCommand, Kind, Switch};
use super::files::read_secret_file;
use super::output::{attention_if, print_bad_rows, print_json};

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
            output,
        } => {
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
            let (extension, created) = store.set_extension(&spec, &new_password()).await?;
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
                .with_context(|| format!("cannot read {}", file.display()))?;
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
