//! `/nodes`: the PBX nodes, as the phone system's Nodes page shows them; an admin adds them and
//! changes their address, NAT IP address and NAT SIP port. The store checks every value (the
//! same rules as `node add` and `node set`); an error names the field and writes nothing.

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use super::pages;
use super::{Console, PageError};
use crate::store::{NewNode, NodeChange, Role, StoreError};

/// The node form as posted: fields named as the database columns.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Posted {
    #[serde(default)]
    name: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    nat_address: String,
    #[serde(default)]
    nat_sip_port: String,
}

pub(crate) async fn list(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, PageError> {
    let session = console.require(&headers, &uri, Role::Viewer).await?;
    Ok(page(&console, &session.user, None).await?.into_response())
}

async fn page(
    console: &Console,
    user: &crate::store::ConsoleUser,
    error: Option<(&str, String)>,
) -> Result<axum::response::Html<String>, PageError> {
    let nodes = console.0.store.nodes().await?;
    let icps = console.0.store.recorded_icps().await?;
    let admin = user.role >= Role::Admin;
    Ok(pages::layout(
        "Nodes",
        user,
        html! {
            @if let Some((field, message)) = &error {
                p role="alert" class="error" data-field="error" data-error-field=(field) { (message) }
            }
            table class="nodes" {
                thead { tr { th { "Name" } th { "Address (the ICP's)" } th { "NAT IP address" } th { "NAT SIP port" } th { "ICP on the MBG" } @if admin { th { "" } } } }
                tbody {
                    @for node in &nodes {
                        tr data-node=(node.name) {
                            @if admin {
                                td data-field="name" { (node.name) }
                                td { input form={ "node-" (node.name) } name="address" aria-label="Address" value=(node.address); }
                                td { input form={ "node-" (node.name) } name="nat_address" aria-label="NAT IP address" value=(node.nat_address.as_deref().unwrap_or("")); }
                                td { input form={ "node-" (node.name) } name="nat_sip_port" aria-label="NAT SIP port" inputmode="numeric" value=(node.nat_sip_port.map(|p| p.to_string()).unwrap_or_default()); }
                                td { (pages::icp_cell(&icps, &node.address)) }
                                td { form id={ "node-" (node.name) } method="post" action={ "/nodes/" (node.name) } { button type="submit" { "Save" } } }
                            } @else {
                                td data-field="name" { (node.name) }
                                td data-field="address" { (node.address) }
                                td data-field="nat_address" { (node.nat_address.as_deref().unwrap_or("")) }
                                td data-field="nat_sip_port" { (node.registrar_port()) }
                                td { (pages::icp_cell(&icps, &node.address)) }
                            }
                        }
                    }
                }
            }
            @if admin {
                h2 { "Add a node" }
                form method="post" action="/nodes" class="new-node" {
                    label for="name" { "Name" }
                    input id="name" name="name" required;
                    label for="address" { "Address (must equal the ICP's \"hostname or IP address\" on the MBG)" }
                    input id="address" name="address" required;
                    label for="nat_address" { "NAT IP address (the MBG's external address)" }
                    input id="nat_address" name="nat_address";
                    label for="nat_sip_port" { "NAT SIP port (5060 when empty)" }
                    input id="nat_sip_port" name="nat_sip_port" inputmode="numeric";
                    button type="submit" { "Add" }
                }
            }
        },
    ))
}

fn port(text: &str) -> Result<Option<u16>, (&'static str, String)> {
    match text.trim() {
        "" => Ok(None),
        text => text
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .map(Some)
            .ok_or((
                "nat_sip_port",
                format!("invalid nat_sip_port: {text:?} is not a port (1 to 65535)"),
            )),
    }
}

fn optional(text: &str) -> Option<String> {
    Some(text.trim().to_string()).filter(|t| !t.is_empty())
}

/// The field a store error is about, as the form names it.
fn field_of(error: &StoreError) -> &'static str {
    match error {
        StoreError::Invalid { field, .. } | StoreError::Duplicate { field, .. } => match *field {
            "node name" => "name",
            "node address" => "address",
            "node NAT address" => "nat_address",
            "node NAT SIP port" => "nat_sip_port",
            other => other,
        },
        _ => "form",
    }
}

pub(crate) async fn add(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    Form(posted): Form<Posted>,
) -> Result<Response, PageError> {
    let session = console.require(&headers, &uri, Role::Admin).await?;
    let node = match port(&posted.nat_sip_port) {
        Ok(nat_sip_port) => NewNode {
            name: posted.name.trim().to_string(),
            address: posted.address.trim().to_string(),
            nat_address: optional(&posted.nat_address),
            nat_sip_port,
        },
        Err((field, message)) => return refused(&console, &session.user, field, message).await,
    };
    match console.0.store.add_node(&node).await {
        Ok(node) => {
            console
                .audit(
                    &session.user.name,
                    None,
                    "node add",
                    &format!("{} ({})", node.name, node.address),
                )
                .await?;
            Ok(to_nodes())
        }
        Err(e @ (StoreError::Invalid { .. } | StoreError::Duplicate { .. })) => {
            refused(&console, &session.user, field_of(&e), e.to_string()).await
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn change(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    Path(name): Path<String>,
    Form(posted): Form<Posted>,
) -> Result<Response, PageError> {
    let session = console.require(&headers, &uri, Role::Admin).await?;
    let change = match port(&posted.nat_sip_port) {
        Ok(nat_sip_port) => NodeChange {
            address: optional(&posted.address),
            nat_address: optional(&posted.nat_address),
            nat_sip_port,
        },
        Err((field, message)) => return refused(&console, &session.user, field, message).await,
    };
    match console.0.store.update_node(&name, &change).await {
        Ok(node) => {
            console
                .audit(
                    &session.user.name,
                    None,
                    "node set",
                    &format!("{} ({})", node.name, node.address),
                )
                .await?;
            Ok(to_nodes())
        }
        Err(
            e @ (StoreError::Invalid { .. }
            | StoreError::Duplicate { .. }
            | StoreError::NotFound(_)),
        ) => refused(&console, &session.user, field_of(&e), e.to_string()).await,
        Err(e) => Err(e.into()),
    }
}

async fn refused(
    console: &Console,
    user: &crate::store::ConsoleUser,
    field: &str,
    message: String,
) -> Result<Response, PageError> {
    Ok((
        StatusCode::UNPROCESSABLE_ENTITY,
        page(console, user, Some((field, message))).await?,
    )
        .into_response())
}

fn to_nodes() -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, "/nodes")]).into_response()
}
