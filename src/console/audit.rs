//! `/audit`: the audit log, newest first, narrowed by extension, user and action, 100 entries
//! a page. It never holds a secret: nothing that writes it passes one.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use super::{Console, PageError, pages, percent};
use crate::store::Role;

const PAGE: u32 = 100;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct AuditQuery {
    #[serde(default)]
    extension: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    before: Option<i64>,
}

pub(crate) async fn list(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    Query(query): Query<AuditQuery>,
) -> Result<Response, PageError> {
    let session = console.require(&headers, &uri, Role::Viewer).await?;
    let given = |text: &str| Some(text.trim().to_string()).filter(|t| !t.is_empty());
    let (extension, actor, action) = (
        given(&query.extension),
        given(&query.actor),
        given(&query.action),
    );
    let rows = console
        .0
        .store
        .audit_page(
            extension.as_deref(),
            actor.as_deref(),
            action.as_deref(),
            query.before,
            PAGE,
        )
        .await?;
    let next = (rows.len() == PAGE as usize)
        .then(|| rows.last())
        .flatten()
        .map(|(id, _)| {
            format!(
                "/audit?extension={}&actor={}&action={}&before={id}",
                percent(query.extension.trim()),
                percent(query.actor.trim()),
                percent(query.action.trim()),
            )
        });
    let entries: Vec<_> = rows.into_iter().map(|(_, entry)| entry).collect();
    Ok(pages::layout(
        "Audit",
        &session.user,
        html! {
            form method="get" action="/audit" class="filters" {
                label for="extension" { "Extension" }
                input id="extension" name="extension" inputmode="numeric" value=(query.extension.trim());
                label for="actor" { "User" }
                input id="actor" name="actor" value=(query.actor.trim());
                label for="action" { "Action" }
                input id="action" name="action" value=(query.action.trim());
                button type="submit" { "Search" }
            }
            (pages::audit_table(&entries))
            @if let Some(next) = next {
                p { a href=(next) rel="next" { "Older entries" } }
            }
        },
    )
    .into_response())
}
