//! `status`: per extension, wanted, provisioned, MBG guid, last error, next retry.

use std::borrow::Cow;
use std::process::ExitCode;

use anyhow::Result;
use mbg_provision::app::App;
use mbg_provision::store::{BadRow, Extension, ExtensionState};
use mbg_provision::token::{self, TokenStatus};
use serde::Serialize;

use super::context::warn_about_token;
use super::output::{attention_if, print_bad_rows, print_json};

/// `status --json`.
#[derive(Serialize)]
struct StatusOutput<'a> {
    /// The access token, as `token status --json` prints it (`state`, and its dates).
    token: &'a TokenStatus,
    /// Every usable extension row.
    extensions: Vec<ExtensionStatus<'a>>,
    /// Rows that cannot be used, each with its `id`, `number` (when readable), `mbg_device_id`,
    /// the `column` to fix and why (exit code 2 when there are any).
    bad_rows: &'a [BadRow],
}

/// One extension in `status --json`.
#[derive(Serialize)]
struct ExtensionStatus<'a> {
    /// The extension number.
    extension: &'a str,
    /// Its node's name.
    node: &'a str,
    /// "Use remote authorization credentials" is on: it should have a SIP user.
    wanted: bool,
    /// A SIP user that we own is recorded for it.
    provisioned: bool,
    /// The recorded SIP user's guid, ours or not.
    mbg_guid: Option<&'a str>,
    /// `idle`, `pending`, `provisioned`, `failed` (retried at `next_retry`) or
    /// `needs_attention` (see `last_error`).
    state: &'static str,
    /// Why the last attempt failed or needs attention, or why the extension waits.
    last_error: Option<Cow<'a, str>>,
    /// When a failed extension is retried, in epoch seconds (UTC).
    next_retry: Option<i64>,
}

impl<'a> ExtensionStatus<'a> {
    /// The row as recorded, or pending with the reason while the token holds every call back.
    fn of(e: &'a Extension, token: &TokenStatus) -> Self {
        let held_back = token.holds_back(e);
        ExtensionStatus {
            extension: &e.number,
            node: &e.node_name,
            wanted: e.use_remote_auth,
            provisioned: e.recorded_guid().is_some(),
            mbg_guid: e.mbg_device_id.as_deref(),
            state: match held_back {
                Some(_) => ExtensionState::Pending.as_str(),
                None => e.state.as_str(),
            },
            last_error: held_back
                .map(Cow::Owned)
                .or(e.last_error.as_deref().map(Cow::Borrowed)),
            next_retry: e.next_attempt_at,
        }
    }
}

pub async fn run(app: &App, json: bool) -> Result<ExitCode> {
    let rows = app.store.extension_rows().await?;
    let token = TokenStatus::of(&app.store.mbg_settings().await?, app.clock.now());
    warn_about_token(&token, &app.config);
    let code = attention_if(!rows.bad.is_empty());
    if json {
        print_json(&StatusOutput {
            token: &token,
            extensions: rows
                .good
                .iter()
                .map(|e| ExtensionStatus::of(e, &token))
                .collect(),
            bad_rows: &rows.bad,
        })?;
        return Ok(code);
    }
    println!("token: {token}");
    println!(
        "{:<11} {:<12} {:<7} {:<38} {:<16} {:<20} LAST ERROR",
        "EXTENSION", "NODE", "WANTED", "MBG GUID", "STATE", "NEXT RETRY"
    );
    for e in &rows.good {
        let shown = ExtensionStatus::of(e, &token);
        println!(
            "{:<11} {:<12} {:<7} {:<38} {:<16} {:<20} {}",
            e.number,
            e.node_name,
            if e.use_remote_auth { "yes" } else { "no" },
            e.mbg_device_id.as_deref().unwrap_or("-"),
            shown.state,
            e.next_attempt_at.map_or("-".into(), token::date),
            shown.last_error.as_deref().unwrap_or("")
        );
    }
    print_bad_rows(&rows.bad);
    Ok(code)
}
