//! The console's HTML, checked at compile time (maud escapes every value it is given). Shown
//! values carry `data-field="COLUMN"` and form fields are named as the database columns, so
//! that scripts and tests find them by meaning, not by layout.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::{Console, PageError};
use crate::reconcile::{AskError, OnTheMbg};
use crate::store::{
    AuditEntry, ConsoleUser, Extension, ExtensionFilter, ExtensionState, RecordedIcp, Role,
};
use crate::token::TokenStatus;

/// Every state, in the order the dashboard lists them: a state with no extension shows 0, so
/// that the live count has a cell to write into.
const ALL_STATES: [ExtensionState; 5] = [
    ExtensionState::Idle,
    ExtensionState::Pending,
    ExtensionState::Provisioned,
    ExtensionState::Failed,
    ExtensionState::NeedsAttention,
];

pub(crate) fn render(markup: Markup) -> Html<String> {
    Html(markup.into_string())
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · mbg-provision" }
            link rel="stylesheet" href="/assets/console.css";
            script src="/assets/console.js" defer {}
        }
    }
}

/// A signed-in page: the navigation, who is signed in, and the content.
pub(crate) fn layout(title: &str, user: &ConsoleUser, content: Markup) -> Html<String> {
    render(html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                (in_clear_warning())
                header {
                    nav aria-label="Main" {
                        a href="/" { "Dashboard" }
                        a href="/extensions" { "Extensions" }
                        a href="/nodes" { "Nodes" }
                        a href="/mbg" { "MiVoice Border Gateway" }
                        a href="/audit" { "Audit" }
                        @if user.role >= Role::Admin {
                            a href="/users" { "Users" }
                        }
                    }
                    form method="post" action="/logout" class="signout" {
                        span data-field="username" { (user.name) }
                        " (" span data-field="role" { (user.role.as_str()) } ") "
                        button type="submit" { "Sign out" }
                    }
                }
                main {
                    h1 { (title) }
                    (content)
                }
            }
        }
    })
}

/// The red banner of a page that crossed a network in plain HTTP (see [`super::reach`]).
fn in_clear_warning() -> Markup {
    html! {
        @if super::in_clear() {
            p role="alert" class="in-clear" data-field="in_clear" {
                "Warning: this page reached you over plain HTTP across a network: your password and session can be read on the way. "
                "Serve the console over TLS (http.tls_cert and http.tls_key), or make the TLS proxy the only way in and have it send X-Forwarded-Proto: https."
            }
        }
    }
}

/// A page for someone not signed in.
fn bare(title: &str, content: Markup) -> Html<String> {
    render(html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { (in_clear_warning()) main { h1 { (title) } (content) } }
        }
    })
}

pub(crate) fn login(error: Option<&str>, next: &str) -> Html<String> {
    bare(
        "Sign in",
        html! {
            @if let Some(error) = error {
                p role="alert" class="error" data-field="error" { (error) }
            }
            form method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                label for="username" { "Name" }
                input id="username" name="username" autocomplete="username" required autofocus;
                label for="password" { "Password" }
                input id="password" name="password" type="password" autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
        },
    )
}

pub(crate) fn closed() -> Html<String> {
    bare(
        "The console is not open yet",
        html! {
            p { "No console administrator exists yet. On the server, add one:" }
            pre { "sudo -u mbg-provision mbg-provision --config /etc/mbg-provision/config.toml console user add NAME --role admin" }
            p { "then reload this page." }
        },
    )
}

pub(crate) fn error_page(status: StatusCode, message: &str) -> Html<String> {
    bare(
        status.canonical_reason().unwrap_or("Error"),
        html! {
            p role="alert" class="error" data-field="error" { (message) }
            p { a href="/" { "Back to the dashboard" } }
        },
    )
}

fn when(at: Option<i64>) -> String {
    at.and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// The ICP whose address is `address` among those the leader last listed (the plan's rule:
/// the node's address equals the ICP's), or why there is none, with the MBG's ICPs to choose
/// from, as `icps` and preflight say it.
pub(crate) fn icp_cell(icps: &[RecordedIcp], address: &str) -> Markup {
    let listed_at = icps.first().map(|icp| icp.seen_at);
    match icps.iter().find(|icp| icp.address == address) {
        Some(icp) => html! { span data-field="icp" { (icp.name) } },
        None if icps.is_empty() => html! {
            span data-field="icp" { "not known yet: the leader lists the MBG's ICPs at its next full reconcile" }
        },
        None => html! {
            span data-field="icp" class="attention" { "no ICP on the MBG has this address" }
            " (the MBG's ICPs as listed at " (when(listed_at)) ": "
            @for (i, icp) in icps.iter().enumerate() {
                @if i > 0 { ", " }
                (icp.name) " " code { (icp.address) }
            }
            ")"
        },
    }
}

pub(crate) fn audit_table(entries: &[AuditEntry]) -> Markup {
    html! {
        table class="audit" {
            thead { tr { th { "When" } th { "Who" } th { "Extension" } th { "Action" } th { "Outcome" } th { "Detail" } } }
            tbody {
                @for entry in entries {
                    tr {
                        td { (when(Some(entry.at))) }
                        td { (entry.actor.as_deref().unwrap_or("mbg-provision")) }
                        td { (entry.extension.as_deref().unwrap_or("")) }
                        td { (entry.action) }
                        td { (entry.outcome) }
                        td {
                            (entry.detail.as_deref().unwrap_or(""))
                            @if entry.repeats > 1 {
                                " " span data-field="repeats" { "(" (entry.repeats) " times, the last at " (when(entry.last_at)) ")" }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `/`: the token, this instance's role, the extensions by state, what needs a human, and the
/// latest audit entries.
pub(crate) async fn dashboard(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, PageError> {
    let session = console.require(&headers, &uri, Role::Viewer).await?;
    let store = &console.0.store;
    let token = match store.mbg_settings().await {
        Ok(settings) => TokenStatus::of(&settings, console.now()).to_string(),
        Err(e) => format!("cannot be read: {e}"),
    };
    let health = console.0.health.snapshot();
    let counts = store.count_by_state().await?;
    let attention = store
        .extension_page(
            &ExtensionFilter {
                state: Some(ExtensionState::NeedsAttention),
                ..Default::default()
            },
            None,
            50,
        )
        .await?;
    let audit = store.audit_log(15).await?;
    let config = console.config();
    let next_renewal = config
        .token
        .renew_schedule
        .schedule()
        .after(&console.0.clock.utc())
        .next()
        .map(|at| at.timestamp());
    let last_renewal = store
        .latest_audit_of(&[crate::token::RENEWAL_JOB, "token renew", "token renewed"])
        .await?;
    let leader = store.pass_holder().await.ok().flatten();
    let provisioned = counts
        .iter()
        .find(|(state, _)| *state == ExtensionState::Provisioned)
        .map_or(0, |(_, n)| *n);
    let licences = config.mbg.teleworker_licences.map(|budget| {
        format!(
            "{provisioned} of {budget} used by provisioned extensions, {} left (SIP users added by hand on the MBG count too)",
            u64::from(budget).saturating_sub(provisioned)
        )
    });
    let role = serde_json::to_value(health.role)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    Ok(layout(
        "Dashboard",
        &session.user,
        html! {
            section {
                h2 { "Service" }
                dl {
                    dt { "This instance" } dd data-field="role" { (role) }
                    dt { "Health" } dd data-field="health" { (format!("{:?}", health.status()).to_lowercase()) }
                    @if let Some(leader) = &leader {
                        dt { "Leader" } dd data-field="leader" { (leader.to_string()) }
                    }
                    dt { "MBG access token" } dd data-field="token_state" { (token) }
                    dt { "Next scheduled renewal" } dd data-field="next_renewal" {
                        (when(next_renewal)) " (renews when fewer than " (config.token.renew_within_days) " days are left)"
                    }
                    dt { "Last renewal" } dd data-field="last_renewal" {
                        @match &last_renewal {
                            Some(entry) => { (when(Some(entry.at))) ": " (entry.action) ", " (entry.outcome) " " (entry.detail.as_deref().unwrap_or("")) }
                            None => { "none yet" }
                        }
                    }
                    dt { "Teleworker licences" } dd data-field="licences" {
                        (licences.as_deref().unwrap_or("no budget set (mbg.teleworker_licences)"))
                    }
                    dt { "Last full reconcile" } dd data-field="last_full_reconcile" { (when(health.last_full_reconcile)) }
                }
            }
            section data-live="/live/dashboard" {
                h2 { "Extensions" }
                table {
                    thead { tr { th { "State" } th { "Extensions" } } }
                    tbody {
                        @for state in ALL_STATES {
                            @let count = counts.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
                            tr {
                                td { a href={ "/extensions?state=" (state.as_str()) } { (state.as_str()) } }
                                td data-field={ "count_" (state.as_str()) } { (count) }
                            }
                        }
                    }
                }
            }
            section {
                h2 { "Needs attention" }
                @if attention.is_empty() {
                    p { "Nothing needs a human." }
                } @else {
                    ul {
                        @for extension in &attention {
                            li {
                                a href=(form_url(extension)) { (extension.number) }
                                ": " (extension.last_error.as_deref().unwrap_or(""))
                            }
                        }
                    }
                }
            }
            section {
                h2 { "Latest changes" }
                (audit_table(&audit))
            }
        },
    )
    .into_response())
}

/// The SIP Authorization form of `extension`: with its node, since a number can live on two.
pub(crate) fn form_url(extension: &Extension) -> String {
    format!(
        "/extensions/{}?node={}",
        extension.number,
        super::percent(&extension.node_name)
    )
}

/// What tells one list row from another: a number can live on two nodes.
pub(crate) fn row_key(extension: &Extension) -> String {
    format!("{}@{}", extension.number, extension.node_name)
}

/// One row of the extension list.
pub(crate) fn extension_rows(extensions: &[Extension]) -> Markup {
    html! {
        @for extension in extensions {
            tr data-number=(extension.number) data-key=(row_key(extension)) {
                td { a href=(form_url(extension)) data-field="number" { (extension.number) } }
                td data-field="node" { (extension.node_name) }
                td data-field="kind" { (extension.kind.as_str()) }
                td data-field="use_remote_auth" { (extension.use_remote_auth) }
                td data-field="state" { (extension.state.as_str()) }
                td data-field="mbg_device_id" { (extension.mbg_device_id.as_deref().unwrap_or("")) }
            }
        }
    }
}

/// What the SIP Authorization form shows.
pub(crate) struct FormView<'a> {
    pub number: &'a str,
    pub extension: Option<&'a Extension>,
    pub nodes: Vec<String>,
    pub node: String,
    pub kind: &'a str,
    pub use_remote_auth: bool,
    pub remote_auth_name: String,
    /// Shown in the password field: new candidates, what was typed, or a revealed password.
    pub remote_auth_password: Option<String>,
    pub error: Option<(String, String)>,
    pub registrar: Option<String>,
    /// The ICP the node's address matches, and the ICPs the leader last listed.
    pub node_address: Option<String>,
    pub icps: Vec<RecordedIcp>,
    pub can_edit: bool,
    pub can_reveal: bool,
    pub audit: Vec<AuditEntry>,
}

impl FormView<'_> {
    /// `?node=NAME` of the stored row, for the form's own requests.
    fn node_query(&self) -> String {
        self.extension
            .map(|e| format!("?node={}", super::percent(&e.node_name)))
            .unwrap_or_default()
    }
}

pub(crate) fn extension_form(user: &ConsoleUser, view: &FormView<'_>) -> Html<String> {
    let title = format!("Extension {}", view.number);
    let stored = view
        .extension
        .is_some_and(|e| e.remote_auth_password.is_some());
    let field_error = |field: &str| -> Option<String> {
        view.error
            .as_ref()
            .filter(|(f, _)| f == field)
            .map(|(_, m)| m.clone())
    };
    let readonly = !view.can_edit;
    layout(
        &title,
        user,
        html! {
            @if let Some((field, message)) = &view.error {
                p role="alert" class="error" data-field="error" data-error-field=(field) { (message) }
            }
            form method="post" action={ "/extensions/" (view.number) (view.node_query()) } class="sip-authorization" {
                fieldset disabled[readonly] {
                    legend { "SIP Authorization" }
                    label for="node" { "Node" }
                    select id="node" name="node" {
                        @for node in &view.nodes {
                            option value=(node) selected[*node == view.node] { (node) }
                        }
                    }
                    label for="kind" { "Kind" }
                    select id="kind" name="kind" {
                        option value="sip" selected[view.kind == "sip"] { "SIP" }
                        option value="sip_hot_desk" selected[view.kind == "sip_hot_desk"] { "SIP hot desk" }
                    }
                    div class="check" {
                        input id="use_remote_auth" name="use_remote_auth" type="checkbox" value="on" checked[view.use_remote_auth];
                        label for="use_remote_auth" { "Use remote authorization credentials" }
                    }
                    label for="remote_auth_name" { "Remote authorization name" }
                    input id="remote_auth_name" name="remote_auth_name" value=(view.remote_auth_name)
                        autocomplete="off" aria-invalid=[field_error("remote_auth_name").map(|_| "true")];
                    label for="remote_auth_password" { "Remote authorization password" }
                    @match &view.remote_auth_password {
                        Some(password) => {
                            input id="remote_auth_password" name="remote_auth_password" value=(password)
                                autocomplete="off" data-field="remote_auth_password"
                                aria-invalid=[field_error("remote_auth_password").map(|_| "true")];
                        }
                        None => {
                            input id="remote_auth_password" name="remote_auth_password" type="password" value=""
                                autocomplete="new-password"
                                placeholder=(if stored { "unchanged (Reveal shows it)" } else { "" })
                                aria-invalid=[field_error("remote_auth_password").map(|_| "true")];
                        }
                    }
                    @if view.can_edit {
                        button type="submit" { "Save" }
                    }
                }
            }
            @if view.can_reveal && stored && view.remote_auth_password.is_none() {
                form method="post" action={ "/extensions/" (view.number) "/reveal" (view.node_query()) } {
                    button type="submit" { "Reveal" }
                }
            }
            @if view.can_edit && stored {
                form method="post" action={ "/extensions/" (view.number) "/rotate" (view.node_query()) } {
                    button type="submit" { "Rotate" }
                    " new random remote credentials (the daemon updates the SIP user; the phone needs them too)"
                }
            }
            @if let Some(extension) = view.extension {
                section data-live={ "/extensions/" (view.number) "/live" (view.node_query()) } {
                    h2 { "On the MBG" }
                    dl {
                        dt { "State" } dd data-field="state" { (extension.state.as_str()) }
                        dt { "The MBG's ID for the SIP user" } dd data-field="mbg_device_id" { (extension.mbg_device_id.as_deref().unwrap_or("")) }
                        dt { "Last error" } dd data-field="last_error" { (extension.last_error.as_deref().unwrap_or("")) }
                        dt { "Next retry" } dd data-field="next_attempt_at" { (when(extension.next_attempt_at)) }
                        dt { "ICP" } dd { @if let Some(address) = &view.node_address { (icp_cell(&view.icps, address)) } }
                        dt { "The phone registers at" } dd data-field="registrar" { (view.registrar.as_deref().unwrap_or("(the node has no NAT address)")) }
                    }
                    p {
                        a data-field="ask_the_mbg" href={ "/extensions/" (view.number) "/mbg" (view.node_query()) } {
                            "Ask the MBG whose SIP users carry this number"
                        }
                        " (reads its whole list of SIP users)"
                    }
                }
                section {
                    h2 { "History" }
                    (audit_table(&view.audit))
                }
            }
        },
    )
}

/// `/extensions/N/mbg`: the SIP users on the MBG that bear on one extension, and whose each is,
/// by the rule every pass applies; or why the MBG could not be asked.
pub(crate) fn extension_on_the_mbg(
    user: &ConsoleUser,
    extension: &Extension,
    asked: &Result<OnTheMbg, AskError>,
) -> Html<String> {
    let back = format!(
        "/extensions/{}?node={}",
        extension.number,
        super::percent(&extension.node_name)
    );
    layout(
        &format!("Extension {} on the MBG", extension.number),
        user,
        html! {
            p { a href=(back) { "Back to extension " (extension.number) } }
            @match asked {
                Err(why) => p role="alert" class="error" data-field="error" { (why.to_string()) },
                Ok(on_the_mbg) => {
                    dl {
                        dt { "ICP of node " (extension.node_name) }
                        dd data-field="icp" {
                            (on_the_mbg.icp.as_deref().map_or_else(
                                || format!("none: no ICP on the MBG has the address {}", extension.node_address),
                                str::to_string,
                            ))
                        }
                    }
                    @match &on_the_mbg.sip_users {
                        Err(why) => p role="alert" class="error" data-field="error" { (why.to_string()) },
                        Ok(users) if users.is_empty() => {
                            p data-field="no_sip_users" { "No SIP user on the MBG has its number, its set-side name or its recorded ID." }
                        },
                        Ok(users) => {
                            table class="sip-users" {
                                thead { tr { th { "MBG ID" } th { "ICP" } th { "ICP-side name" } th { "Set-side name" } th { "Whose" } } }
                                tbody {
                                    @for user in users {
                                        tr data-guid=(user.guid) {
                                            td { (user.guid) }
                                            td { (user.icp) }
                                            td { (user.icpside_username) }
                                            td { (user.setside_username) }
                                            td data-field="whose" { (user.whose.to_string()) }
                                        }
                                    }
                                }
                            }
                        },
                    }
                }
            }
        },
    )
}

/// What the dashboard follows live: the count of extensions in each state.
pub(crate) async fn live_dashboard(
    State(console): State<Console>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    if console
        .session(&headers, crate::store::SessionUse::Poll)
        .await?
        .is_none()
    {
        return Ok((StatusCode::UNAUTHORIZED, "sign in first").into_response());
    }
    let counted = console.0.store.count_by_state().await?;
    let counts: std::collections::BTreeMap<String, u64> = ALL_STATES
        .iter()
        .map(|state| {
            let count = counted
                .iter()
                .find(|(s, _)| s == state)
                .map_or(0, |(_, n)| *n);
            (format!("count_{}", state.as_str()), count)
        })
        .collect();
    Ok(axum::Json(counts).into_response())
}
