//! `/extensions`: the list, and the SIP Authorization form of one extension. Saving writes the
//! database only, through the store function `extension set` uses; the daemon does the rest, and
//! the page follows the extension's state live (`/extensions/{number}/live`).

use axum::Json;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use maud::html;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::pages::{self, FormView};
use super::{Console, PageError};
use crate::credentials;
use crate::store::{
    AuditEntry, ConsoleUser, Extension, ExtensionFilter, ExtensionKind, ExtensionSpec, Role,
    StoreError,
};

/// Rows per page of the list.
const PAGE: u32 = 100;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    node: String,
    /// The last row of the previous page, as `NUMBER:ID`.
    after: Option<String>,
}

pub(crate) async fn list(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    Query(query): Query<ListQuery>,
) -> Result<Response, PageError> {
    let session = console.require(&headers, &uri, Role::Viewer).await?;
    let bad = |message: String| PageError::new(StatusCode::BAD_REQUEST, message);
    let prefix = query.prefix.trim();
    if !prefix.bytes().all(|b| b.is_ascii_digit()) || prefix.len() > 10 {
        return Err(bad("number prefix: digits only, at most 10".into()));
    }
    let state = match query.state.as_str() {
        "" => None,
        state => Some(state.parse().map_err(bad)?),
    };
    let filter = ExtensionFilter {
        prefix: Some(prefix.to_string()).filter(|p| !p.is_empty()),
        state,
        node: Some(query.node.trim().to_string()).filter(|n| !n.is_empty()),
    };
    let after = query.after.as_deref().and_then(|a| {
        let (number, id) = a.rsplit_once(':')?;
        Some((number.to_string(), id.parse::<i64>().ok()?))
    });
    let rows = console
        .0
        .store
        .extension_page(
            &filter,
            after.as_ref().map(|(n, id)| (n.as_str(), *id)),
            PAGE,
        )
        .await?;
    let next = (rows.len() == PAGE as usize)
        .then(|| rows.last())
        .flatten()
        .map(|last| {
            format!(
                "/extensions?prefix={}&state={}&node={}&after={}:{}",
                super::percent(prefix),
                super::percent(&query.state),
                super::percent(query.node.trim()),
                last.number,
                last.id
            )
        });
    Ok(pages::layout(
        "Extensions",
        &session.user,
        html! {
            form method="get" action="/extensions" class="filters" {
                label for="prefix" { "Number starts with" }
                input id="prefix" name="prefix" inputmode="numeric" value=(prefix);
                label for="state" { "State" }
                select id="state" name="state" {
                    option value="" { "any" }
                    @for s in ["idle", "pending", "provisioned", "failed", "needs_attention"] {
                        option value=(s) selected[query.state == s] { (s) }
                    }
                }
                label for="node" { "Node" }
                input id="node" name="node" value=(query.node.trim());
                button type="submit" { "Search" }
            }
            table class="extensions" {
                thead { tr { th { "Number" } th { "Node" } th { "Kind" } th { "Remote credentials" } th { "State" } th { "The MBG's ID" } } }
                tbody data-live-rows="/extensions/live" { (pages::extension_rows(&rows)) }
            }
            @if let Some(next) = next {
                p { a href=(next) rel="next" { "Next page" } }
            }
            @if session.user.role >= Role::Operator {
                form method="get" action="/extensions/new" class="new" {
                    label for="number" { "New extension number" }
                    input id="number" name="number" inputmode="numeric" required;
                    button type="submit" { "Open" }
                }
            }
        },
    )
    .into_response())
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct FormQuery {
    /// `/extensions/new?number=N`: the new extension's number.
    number: Option<String>,
    /// The node of the row meant, where the number lives on several.
    node: Option<String>,
}

/// The form of `number`; `/extensions/new?number=N` opens the form of a new extension N.
pub(crate) async fn form(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    Path(number): Path<String>,
    Query(query): Query<FormQuery>,
) -> Result<Response, PageError> {
    let session = console.require(&headers, &uri, Role::Viewer).await?;
    if number == "new" {
        let number = query.number.unwrap_or_default();
        let number = number.trim();
        crate::store::validate_number(number)
            .map_err(|e| PageError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        return Ok((
            StatusCode::SEE_OTHER,
            [(header::LOCATION, format!("/extensions/{number}"))],
        )
            .into_response());
    }
    crate::store::validate_number(&number)
        .map_err(|e| PageError::new(StatusCode::NOT_FOUND, e.to_string()))?;
    let extension = find(&console, &number, query.node.as_deref()).await?;
    let view = console
        .view(&session.user, &number, extension.as_ref(), None, None)
        .await?;
    Ok(pages::extension_form(&session.user, &view).into_response())
}

/// The form as posted: fields named as the database columns.
#[derive(Deserialize)]
pub(crate) struct Posted {
    node: Option<String>,
    kind: Option<String>,
    use_remote_auth: Option<String>,
    #[serde(default)]
    remote_auth_name: String,
    #[serde(default)]
    remote_auth_password: String,
}

pub(crate) async fn save(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    Path(number): Path<String>,
    Query(query): Query<FormQuery>,
    Form(posted): Form<Posted>,
) -> Result<Response, PageError> {
    let session = console.require(&headers, &uri, Role::Operator).await?;
    crate::store::validate_number(&number)
        .map_err(|e| PageError::new(StatusCode::NOT_FOUND, e.to_string()))?;
    let current = find(&console, &number, query.node.as_deref()).await?;
    match console
        .write(&session.user, &number, current.as_ref(), &posted)
        .await
    {
        Ok(saved) => Ok((
            StatusCode::SEE_OTHER,
            [(header::LOCATION, pages::form_url(&saved))],
        )
            .into_response()),
        // Shown on the form with what was typed, naming the field; nothing was written.
        Err((field, message)) => {
            let view = console
                .view(
                    &session.user,
                    &number,
                    current.as_ref(),
                    Some(&posted),
                    Some((field, message)),
                )
                .await?;
            Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                pages::extension_form(&session.user, &view),
            )
                .into_response())
        }
    }
}

/// Shows the stored remote password to an operator or admin, and audits it.
pub(crate) async fn reveal(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    Path(number): Path<String>,
    Query(query): Query<FormQuery>,
) -> Result<Response, PageError> {
    let session = console.require(&headers, &uri, Role::Operator).await?;
    let extension = existing(&console, &number, query.node.as_deref()).await?;
    console
        .audit(
            &session.user.name,
            Some(&extension.number),
            "reveal",
            "remote password shown in the console",
        )
        .await?;
    let mut view = console
        .view(&session.user, &number, Some(&extension), None, None)
        .await?;
    view.remote_auth_password = extension
        .remote_auth_password
        .as_ref()
        .map(|p| p.expose_secret().to_string());
    Ok(pages::extension_form(&session.user, &view).into_response())
}

/// New random remote credentials, as `extension rotate`: refused, on the form, while a change
/// to the SIP user is still pending. The new password stays hidden until Reveal.
pub(crate) async fn rotate(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    Path(number): Path<String>,
    Query(query): Query<FormQuery>,
) -> Result<Response, PageError> {
    let session = console.require(&headers, &uri, Role::Operator).await?;
    let extension = existing(&console, &number, query.node.as_deref()).await?;
    let rules = &console.config().credentials;
    let rotated = console
        .0
        .store
        .rotate_remote_credentials(
            extension.id,
            &credentials::random_auth_name(rules.name_length),
            &credentials::random_password(rules.password_length),
            &audit(
                &session.user,
                &number,
                "rotate",
                "new remote credentials drawn in the console",
            ),
        )
        .await;
    match rotated {
        Ok(rotated) => Ok((
            StatusCode::SEE_OTHER,
            [(header::LOCATION, pages::form_url(&rotated))],
        )
            .into_response()),
        Err(e @ StoreError::NotSettled { .. }) => {
            let error = Some(("remote_auth_name".to_string(), e.to_string()));
            let view = console
                .view(&session.user, &number, Some(&extension), None, error)
                .await?;
            Ok((
                StatusCode::CONFLICT,
                pages::extension_form(&session.user, &view),
            )
                .into_response())
        }
        Err(e) => Err(e.into()),
    }
}

/// What the page follows live: the row's state as the engine records it.
#[derive(Serialize)]
pub(crate) struct Live {
    state: &'static str,
    mbg_device_id: Option<String>,
    last_error: Option<String>,
    use_remote_auth: bool,
}

pub(crate) async fn live(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(number): Path<String>,
    Query(query): Query<FormQuery>,
) -> Result<Response, PageError> {
    if console
        .session(&headers, crate::store::SessionUse::Poll)
        .await?
        .is_none()
    {
        return Ok((StatusCode::UNAUTHORIZED, "sign in first").into_response());
    }
    let extension = existing(&console, &number, query.node.as_deref()).await?;
    Ok(Json(Live {
        state: extension.state.as_str(),
        mbg_device_id: extension.mbg_device_id,
        last_error: extension.last_error,
        use_remote_auth: extension.use_remote_auth,
    })
    .into_response())
}

/// `/extensions/N/mbg`: asks the MBG, on a click, not on every view of the form (it reads the
/// whole list of SIP users).
pub(crate) async fn on_the_mbg(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    Path(number): Path<String>,
    Query(query): Query<FormQuery>,
) -> Result<Response, PageError> {
    let session = console.require(&headers, &uri, Role::Viewer).await?;
    let extension = existing(&console, &number, query.node.as_deref()).await?;
    // One list read at a time, whoever asks: a page reloaded in a loop must not keep the MBG
    // sending its whole list.
    let Ok(_reading) = console.0.reading_the_mbg.try_lock() else {
        return Err(PageError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "the MBG's list of SIP users is being read for another page: try again in a moment"
                .to_string(),
        ));
    };
    let asked = crate::reconcile::ask_the_mbg(
        &console.0.store,
        &console.config(),
        &extension,
        console.now(),
    )
    .await;
    Ok(pages::extension_on_the_mbg(&session.user, &extension, &asked).into_response())
}

/// [`find`], for a request about an extension that must exist: 404 otherwise.
async fn existing(
    console: &Console,
    number: &str,
    node: Option<&str>,
) -> Result<Extension, PageError> {
    find(console, number, node)
        .await?
        .ok_or_else(|| PageError::new(StatusCode::NOT_FOUND, format!("no extension {number}")))
}

async fn find(
    console: &Console,
    number: &str,
    node: Option<&str>,
) -> Result<Option<Extension>, PageError> {
    match console.0.store.extension_meant(number, node).await {
        Ok(extension) => Ok(Some(extension)),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(StoreError::Invalid { reason, .. }) => Err(PageError::new(
            StatusCode::CONFLICT,
            format!(
                "{reason}: add ?node=NAME to the address, or pick the row on the Extensions page"
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

fn audit(user: &ConsoleUser, number: &str, action: &str, detail: &str) -> AuditEntry {
    super::audit_entry(&user.name, Some(number), action, detail)
}

impl Console {
    /// The form's content: the row as stored, or what was posted when it is shown again with an
    /// error. A row with no remote credentials arrives with random candidates, so that ticking
    /// the box fills them without JavaScript.
    async fn view<'a>(
        &self,
        user: &ConsoleUser,
        number: &'a str,
        extension: Option<&'a Extension>,
        posted: Option<&Posted>,
        error: Option<(String, String)>,
    ) -> Result<FormView<'a>, PageError> {
        let store = &self.0.store;
        let nodes = store.nodes().await?;
        let node_name = posted
            .and_then(|p| p.node.clone())
            .or_else(|| extension.map(|e| e.node_name.clone()))
            .or_else(|| nodes.first().map(|n| n.name.clone()))
            .unwrap_or_default();
        let node = nodes.iter().find(|n| n.name == node_name);
        let registrar = node.and_then(|n| {
            Some(format!(
                "{}:{}",
                n.nat_address.as_ref()?,
                n.registrar_port()
            ))
        });
        let node_address = node.map(|n| n.address.clone());
        let stored_name = extension.and_then(|e| e.remote_auth_name.clone());
        let (name, password) = match (posted, &stored_name) {
            (Some(p), _) => (
                p.remote_auth_name.clone(),
                Some(p.remote_auth_password.clone()).filter(|p| !p.is_empty()),
            ),
            (None, Some(name)) => (name.clone(), None),
            (None, None) => (
                credentials::random_auth_name(self.config().credentials.name_length),
                Some(
                    credentials::random_password(self.config().credentials.password_length)
                        .expose_secret()
                        .to_string(),
                ),
            ),
        };
        let kind = posted
            .and_then(|p| p.kind.as_deref())
            .map(|k| {
                if k == "sip_hot_desk" {
                    "sip_hot_desk"
                } else {
                    "sip"
                }
            })
            .or_else(|| extension.map(|e| e.kind.as_str()))
            .unwrap_or("sip");
        let audit = match extension {
            Some(e) => store.audit_of(&e.number, 20).await?,
            None => Vec::new(),
        };
        Ok(FormView {
            number,
            extension,
            nodes: nodes.into_iter().map(|n| n.name).collect(),
            node: node_name,
            kind,
            use_remote_auth: posted.map_or_else(
                || extension.is_some_and(|e| e.use_remote_auth),
                |p| p.use_remote_auth.is_some(),
            ),
            remote_auth_name: name,
            remote_auth_password: password,
            error,
            registrar,
            node_address,
            icps: store.recorded_icps().await?,
            can_edit: user.role >= Role::Operator,
            can_reveal: user.role >= Role::Operator,
            audit,
        })
    }

    /// Checks the posted form as the CLI would and writes it in one transaction; an error names
    /// the form field at fault and nothing is written.
    async fn write(
        &self,
        user: &ConsoleUser,
        number: &str,
        current: Option<&Extension>,
        posted: &Posted,
    ) -> Result<Extension, (String, String)> {
        let field = |field: &str, message: String| (field.to_string(), message);
        let node = posted
            .node
            .clone()
            .filter(|n| !n.trim().is_empty())
            .or_else(|| current.map(|e| e.node_name.clone()))
            .ok_or_else(|| field("node", "node: choose the extension's node".into()))?;
        let kind: Option<ExtensionKind> = match posted.kind.as_deref() {
            None | Some("") => None,
            Some(kind) => Some(kind.parse().map_err(|e: String| field("kind", e))?),
        };
        let wanted = posted.use_remote_auth.is_some();
        let name = posted.remote_auth_name.trim();
        let typed = &posted.remote_auth_password;
        let stored_password = current.and_then(|e| e.remote_auth_password.as_ref());
        // Unticked, the credentials stay as stored; ticked, they are what the form holds (an
        // empty password field keeps the stored password).
        let credentials = match (wanted, stored_password) {
            (false, _) => None,
            (true, Some(stored)) if typed.is_empty() => {
                if current.and_then(|e| e.remote_auth_name.as_deref()) == Some(name) {
                    None
                } else {
                    Some((name.to_string(), stored.clone()))
                }
            }
            (true, _) => Some((name.to_string(), SecretString::from(typed.clone()))),
        };
        let spec = ExtensionSpec {
            number: number.to_string(),
            node,
            kind,
            use_remote_auth: Some(wanted),
            sip_password: None,
        };
        let detail = format!(
            "saved in the console: remote credentials {}{}",
            if wanted { "on" } else { "off" },
            if credentials.is_some() {
                ", new name or password"
            } else {
                ""
            }
        );
        let pbx_password = credentials::random_password(self.config().credentials.password_length);
        self.0
            .store
            .set_extension_with_credentials(
                &spec,
                &pbx_password,
                credentials.as_ref().map(|(n, p)| (n.as_str(), p)),
                &audit(user, number, "save", &detail),
            )
            .await
            .map(|(saved, _)| saved)
            .map_err(|e| match e {
                StoreError::Invalid { field: f, .. } | StoreError::Duplicate { field: f, .. } => {
                    let name = match f {
                        "node" | "node name" => "node",
                        "remote_auth_name" => "remote_auth_name",
                        "extension number" => "number",
                        other => other,
                    };
                    field(name, e.to_string())
                }
                StoreError::NotFound(_) => field("node", e.to_string()),
                StoreError::NotSettled { .. } => field("remote_auth_name", e.to_string()),
                other => field("form", other.to_string()),
            })
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RowsQuery {
    #[serde(default)]
    numbers: String,
}

/// What the list follows live: per number shown, its state and the MBG's ID.
pub(crate) async fn live_rows(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(query): Query<RowsQuery>,
) -> Result<Response, PageError> {
    if console
        .session(&headers, crate::store::SessionUse::Poll)
        .await?
        .is_none()
    {
        return Ok((StatusCode::UNAUTHORIZED, "sign in first").into_response());
    }
    let numbers: Vec<String> = query
        .numbers
        .split(',')
        .map(str::trim)
        .filter(|n| crate::store::validate_number(n).is_ok())
        .take(PAGE as usize)
        .map(str::to_string)
        .collect();
    let rows = console.0.store.extensions_by_numbers(&numbers).await?;
    let live: std::collections::BTreeMap<String, Live> = rows
        .into_iter()
        .map(|e| {
            (
                pages::row_key(&e),
                Live {
                    state: e.state.as_str(),
                    mbg_device_id: e.mbg_device_id,
                    last_error: e.last_error,
                    use_remote_auth: e.use_remote_auth,
                },
            )
        })
        .collect();
    Ok(Json(live).into_response())
}
