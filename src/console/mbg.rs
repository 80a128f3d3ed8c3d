//! `/mbg`: the MiVoice Border Gateway page. The token exchange in the browser, in the three
//! steps an MBG administrator knows (request a token with the consumer's ID and shared secret,
//! approve it on the MBG's *Administration > Web services* page, type the verifier back), the
//! token's state, renewal, and preflight's checks. The same functions as `token request`,
//! `token verify`, `token renew` and `token renewed`; only an admin may use them.

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use secrecy::SecretString;
use serde::Deserialize;

use super::{Console, PageError, pages};
use crate::store::{ConsoleUser, Role};
use crate::token::{self, Renewal, TokenStatus};

/// What a step left to say on the page: its outcome, or the error naming what to fix.
enum Said {
    Nothing,
    Done(String),
    Failed {
        field: &'static str,
        message: String,
    },
}

pub(crate) async fn page(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, PageError> {
    let session = console.require(&headers, &uri, Role::Viewer).await?;
    Ok(render(&console, &session.user, Said::Nothing, None)
        .await?
        .into_response())
}

async fn render(
    console: &Console,
    user: &ConsoleUser,
    said: Said,
    checks: Option<Markup>,
) -> Result<Response, PageError> {
    let settings = console.0.store.mbg_settings().await?;
    let now = console.now();
    let status = TokenStatus::of(&settings, now);
    let pending = matches!(status, TokenStatus::PendingApproval { .. });
    let admin = user.role >= Role::Admin;
    let code = match &said {
        Said::Failed { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::OK,
    };
    let base = console
        .config()
        .mbg
        .base_url
        .as_ref()
        .map(|u| u.to_string())
        .unwrap_or_else(|| "(mbg.base_url is not set)".into());
    let page = pages::layout(
        "MiVoice Border Gateway",
        user,
        html! {
            @match &said {
                Said::Done(message) => p role="status" class="done" data-field="outcome" { (message) },
                Said::Failed { field, message } => p role="alert" class="error" data-field="error" data-error-field=(field) { (message) },
                Said::Nothing => {},
            }
            dl {
                dt { "MBG" } dd data-field="base_url" { (base) }
                dt { "Consumer" } dd data-field="consumer_id" { (settings.consumer_id.as_deref().unwrap_or("")) }
                dt { "Access token" } dd data-field="token_state" { (status.to_string()) }
            }
            @if admin {
                @if pending {
                    section {
                        h2 { "2. Approve, 3. Verify" }
                        p {
                            "On the MBG, open " strong { "Administration > Web services > Temporary tokens" }
                            ", approve the token of consumer " strong { (settings.consumer_id.as_deref().unwrap_or("")) }
                            " within 10 minutes of the request, and type the verifier it shows:"
                        }
                        form method="post" action="/mbg/verify" {
                            label for="verifier" { "Verifier" }
                            input id="verifier" name="verifier" inputmode="numeric" autocomplete="one-time-code" required;
                            button type="submit" { "Verify" }
                        }
                    }
                }
                section {
                    h2 { "1. Request a token" }
                    form method="post" action="/mbg/request" {
                        label for="consumer_name" { "Token name" }
                        input id="consumer_name" name="consumer_name" value="provisioning" required;
                        label for="consumer_id" { "Consumer ID" }
                        input id="consumer_id" name="consumer_id" value=(settings.consumer_id.as_deref().unwrap_or("")) required;
                        label for="consumer_secret" { "Shared secret" }
                        input id="consumer_secret" name="consumer_secret" type="password" autocomplete="off" required;
                        button type="submit" { "Request token" }
                    }
                }
                section {
                    h2 { "Renewal" }
                    form method="post" action="/mbg/renew" { button type="submit" { "Renew now" } }
                    form method="post" action="/mbg/renewed" { button type="submit" { "I pressed Renew on the MBG" } }
                }
                section {
                    h2 { "Preflight" }
                    form method="post" action="/mbg/preflight" { button type="submit" { "Run preflight" } }
                    @if let Some(checks) = &checks { (checks) }
                }
            }
        },
    );
    Ok((code, page).into_response())
}

#[derive(Deserialize)]
pub(crate) struct RequestForm {
    #[serde(default)]
    consumer_name: String,
    #[serde(default)]
    consumer_id: String,
    #[serde(default)]
    consumer_secret: String,
}

pub(crate) async fn request(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    Form(form): Form<RequestForm>,
) -> Result<Response, PageError> {
    let session = console.require(&headers, &uri, Role::Admin).await?;
    let empty = [
        ("consumer_name", form.consumer_name.trim()),
        ("consumer_id", form.consumer_id.trim()),
        ("consumer_secret", form.consumer_secret.as_str()),
    ]
    .into_iter()
    .find(|(_, value)| value.is_empty());
    let said = if let Some((field, _)) = empty {
        Said::Failed {
            field,
            message: format!("{field}: required"),
        }
    } else {
        match token::request(
            &console.0.store,
            &console.config(),
            form.consumer_name.trim(),
            form.consumer_id.trim(),
            SecretString::from(form.consumer_secret),
            console.now(),
        )
        .await
        {
            Ok(_) => {
                console
                    .audit(
                        &session.user.name,
                        None,
                        "token request",
                        form.consumer_id.trim(),
                    )
                    .await?;
                return Ok(to_page());
            }
            Err(e) => Said::Failed {
                field: "consumer_secret",
                message: e.to_string(),
            },
        }
    };
    render(&console, &session.user, said, None).await
}

#[derive(Deserialize)]
pub(crate) struct VerifyForm {
    #[serde(default)]
    verifier: String,
}

pub(crate) async fn verify(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    Form(form): Form<VerifyForm>,
) -> Result<Response, PageError> {
    let session = console.require(&headers, &uri, Role::Admin).await?;
    let now = console.now();
    let said = match token::verify(&console.0.store, &console.config(), &form.verifier, now).await {
        Ok(expires_at) => {
            console.0.link.token_stored.notify_one();
            console
                .audit(
                    &session.user.name,
                    None,
                    "token verify",
                    "access token stored",
                )
                .await?;
            Said::Done(format!(
                "Access token stored, valid until {}.",
                token::date(expires_at)
            ))
        }
        Err(e) => Said::Failed {
            field: "verifier",
            message: e.to_string(),
        },
    };
    render(&console, &session.user, said, None).await
}

pub(crate) async fn renew(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, PageError> {
    let session = console.require(&headers, &uri, Role::Admin).await?;
    let now = console.now();
    let said = match token::renew_if_due(&console.0.store, &console.config(), now, None).await {
        Ok(Renewal::Renewed { expires_at, .. }) => {
            console.audit(&session.user.name, None, "token renew", "renewed").await?;
            Said::Done(format!("Renewed until {}.", token::date(expires_at)))
        }
        Ok(Renewal::NotDue { expires_at }) => {
            Said::Done(format!("Not due: valid until {}.", token::date(expires_at)))
        }
        Ok(Renewal::NotOffered { .. }) => Said::Failed {
            field: "renew",
            message: "This MBG cannot renew through its API: press Renew on its Web services page, then \"I pressed Renew on the MBG\".".into(),
        },
        Err(e) => Said::Failed {
            field: "renew",
            message: e.to_string(),
        },
    };
    render(&console, &session.user, said, None).await
}

pub(crate) async fn renewed(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, PageError> {
    let session = console.require(&headers, &uri, Role::Admin).await?;
    let now = console.now();
    let said = match token::record_renewal(&console.0.store, &console.config(), None, now).await {
        Ok((expires_at, _)) => {
            console
                .audit(&session.user.name, None, "token renewed", "recorded")
                .await?;
            Said::Done(format!(
                "Recorded: valid until {}.",
                token::date(expires_at)
            ))
        }
        Err(e) => Said::Failed {
            field: "renewed",
            message: e.to_string(),
        },
    };
    render(&console, &session.user, said, None).await
}

/// Preflight's checks, each with its fix: it reads, it changes nothing.
pub(crate) async fn preflight(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, PageError> {
    let session = console.require(&headers, &uri, Role::Admin).await?;
    // Every kind of client: the checklist then lists each rule with whom it serves.
    use crate::preflight::network::Client;
    let options = crate::preflight::Options {
        clients: vec![Client::Desktop, Client::Mobile, Client::Phones69xx],
        stun: None,
        now: console.now(),
    };
    let report =
        crate::preflight::run(&console.config(), "the daemon's configuration", &options).await;
    let checks = html! {
        table class="preflight" {
            thead { tr { th { "Check" } th { "Result" } th { "Detail" } th { "Fix" } } }
            tbody {
                @for check in &report.checks {
                    tr data-check=(check.name) {
                        td { (check.name) }
                        td data-field="status" { (serde_json::to_value(check.status).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()) }
                        td { (check.detail) }
                        td { (check.fix.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        @if let Some(firewall) = &report.firewall {
            section data-field="firewall" {
                h2 { "Firewall checklist" }
                h3 { "On the MBG's Port Forwarding page (to the application server, SNAT on)" }
                table {
                    thead { tr { th { "For" } th { "Protocol" } th { "Ports" } th { "Purpose" } th { "Source" } } }
                    tbody {
                        @for rule in &firewall.rules {
                            tr {
                                td { (serde_json::to_value(rule.client).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()) }
                                td { (rule.protocol) }
                                td { (rule.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")) }
                                td { (rule.purpose) }
                                td { (rule.source) }
                            }
                        }
                    }
                }
                ul { @for note in firewall.notes { li { (note) } } }
                h3 {
                    "On the site firewall, from the internet to the MBG's external address (the nodes' NAT address; internally "
                    (firewall.destination.as_deref().unwrap_or("see mbg.base_url, not set")) ")"
                }
                table {
                    thead { tr { th { "Protocol" } th { "Ports" } th { "Purpose" } th { "Source" } } }
                    tbody {
                        @for rule in &firewall.site {
                            tr { td { (rule.protocol) } td { (rule.ports) } td { (rule.purpose) } td { (rule.source) } }
                        }
                    }
                }
            }
        }
    };
    render(&console, &session.user, Said::Nothing, Some(checks)).await
}

fn to_page() -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, "/mbg")]).into_response()
}
