//! `/users`: the console's accounts, for admins: add one, change a role, set a password, remove
//! one. The same store functions as `console user …`; the last admin stays.

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use maud::html;
use secrecy::SecretString;
use serde::Deserialize;

use super::{Console, PageError, pages, secrets};
use crate::store::{ConsoleUser, Role, StoreError};

pub(crate) async fn list(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, PageError> {
    let session = console.require(&headers, &uri, Role::Admin).await?;
    page(&console, &session.user, None).await
}

async fn page(
    console: &Console,
    user: &ConsoleUser,
    error: Option<(&str, String)>,
) -> Result<Response, PageError> {
    let users = console.0.store.console_users().await?;
    let code = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let roles = [Role::Viewer, Role::Operator, Role::Admin];
    let html = pages::layout(
        "Users",
        user,
        html! {
            @if let Some((field, message)) = &error {
                p role="alert" class="error" data-field="error" data-error-field=(field) { (message) }
            }
            table class="users" {
                thead { tr { th { "Name" } th { "Role" } th { "" } th { "" } } }
                tbody {
                    @for account in &users {
                        tr data-user=(account.name) {
                            td data-field="username" { (account.name) }
                            td {
                                form method="post" action={ "/users/" (account.name) "/role" } {
                                    select name="role" aria-label={ "Role of " (account.name) } {
                                        @for role in roles {
                                            option value=(role.as_str()) selected[role == account.role] { (role.as_str()) }
                                        }
                                    }
                                    button type="submit" { "Change role" }
                                }
                            }
                            td {
                                form method="post" action={ "/users/" (account.name) "/password" } {
                                    input name="password" type="password" autocomplete="new-password" aria-label={ "New password of " (account.name) } required;
                                    button type="submit" { "Set password" }
                                }
                            }
                            td {
                                form method="post" action={ "/users/" (account.name) "/remove" } {
                                    button type="submit" { "Remove" }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Add a user" }
            form method="post" action="/users" class="new-user" {
                label for="username" { "Name" }
                input id="username" name="username" autocomplete="off" required;
                label for="role" { "Role" }
                select id="role" name="role" {
                    @for role in roles { option value=(role.as_str()) { (role.as_str()) } }
                }
                label for="password" { "Password (12 characters or more)" }
                input id="password" name="password" type="password" autocomplete="new-password" required;
                button type="submit" { "Add" }
            }
        },
    );
    Ok((code, html).into_response())
}

#[derive(Deserialize)]
pub(crate) struct NewUser {
    #[serde(default)]
    username: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    password: String,
}

/// The password's argon2id hash, computed off the threads that serve requests.
async fn hash(password: String) -> Result<String, (&'static str, String)> {
    tokio::task::spawn_blocking(move || secrets::hash_password(&SecretString::from(password)))
        .await
        .map_err(|e| ("password", e.to_string()))?
        .map_err(|e| ("password", e.to_string()))
}

fn role(text: &str) -> Result<Role, (&'static str, String)> {
    text.parse().map_err(|e| ("role", e))
}

fn to_users() -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, "/users")]).into_response()
}

/// The form field a store error is about.
fn field_of(error: &StoreError) -> &'static str {
    match error {
        StoreError::Invalid { field, .. } if *field == "username" => "username",
        StoreError::Duplicate { .. } => "username",
        _ => "form",
    }
}

pub(crate) async fn add(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    Form(form): Form<NewUser>,
) -> Result<Response, PageError> {
    let session = console.require(&headers, &uri, Role::Admin).await?;
    let name = form.username.trim().to_string();
    let checked = match crate::store::validate_user_name(&name) {
        Err(e) => Err(("username", e.to_string())),
        Ok(()) => match role(&form.role) {
            Err(e) => Err(e),
            Ok(role) => hash(form.password).await.map(|hash| (role, hash)),
        },
    };
    let (role, hash) = match checked {
        Ok(checked) => checked,
        Err((field, message)) => {
            return page(&console, &session.user, Some((field, message))).await;
        }
    };
    match console.0.store.add_console_user(&name, role, &hash).await {
        Ok(_) => {
            console
                .audit(
                    &session.user.name,
                    None,
                    "console user add",
                    &format!("{name} as {}", role.as_str()),
                )
                .await?;
            Ok(to_users())
        }
        Err(e @ (StoreError::Invalid { .. } | StoreError::Duplicate { .. })) => {
            page(&console, &session.user, Some((field_of(&e), e.to_string()))).await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub(crate) struct RoleForm {
    #[serde(default)]
    role: String,
}

pub(crate) async fn change_role(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    Path(name): Path<String>,
    Form(form): Form<RoleForm>,
) -> Result<Response, PageError> {
    let session = console.require(&headers, &uri, Role::Admin).await?;
    let role = match role(&form.role) {
        Ok(role) => role,
        Err((field, message)) => {
            return page(&console, &session.user, Some((field, message))).await;
        }
    };
    match console.0.store.set_console_role(&name, role).await {
        Ok(()) => {
            console
                .audit(
                    &session.user.name,
                    None,
                    "console user role",
                    &format!("{name} as {}", role.as_str()),
                )
                .await?;
            Ok(to_users())
        }
        Err(e @ (StoreError::Invalid { .. } | StoreError::InUse { .. })) => {
            page(&console, &session.user, Some(("role", e.to_string()))).await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub(crate) struct PasswordForm {
    #[serde(default)]
    password: String,
}

/// A new password ends the account's other sessions (all of them, unless it is the admin's own).
pub(crate) async fn set_password(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    Path(name): Path<String>,
    Form(form): Form<PasswordForm>,
) -> Result<Response, PageError> {
    let session = console.require(&headers, &uri, Role::Admin).await?;
    let hash = match hash(form.password).await {
        Ok(hash) => hash,
        Err((field, message)) => {
            return page(&console, &session.user, Some((field, message))).await;
        }
    };
    let own = super::auth::session_cookie(&headers, console.cookie_name())
        .filter(|_| session.user.name == name)
        .map(|id| secrets::session_hash(&id));
    match console
        .0
        .store
        .set_console_password(&name, &hash, own.as_deref())
        .await
    {
        Ok(()) => {
            console
                .audit(&session.user.name, None, "console user passwd", &name)
                .await?;
            Ok(to_users())
        }
        Err(e @ StoreError::Invalid { .. }) => {
            page(&console, &session.user, Some(("username", e.to_string()))).await
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn remove(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    Path(name): Path<String>,
) -> Result<Response, PageError> {
    let session = console.require(&headers, &uri, Role::Admin).await?;
    match console.0.store.remove_console_user(&name).await {
        Ok(()) => {
            console
                .audit(&session.user.name, None, "console user remove", &name)
                .await?;
            Ok(to_users())
        }
        Err(e @ (StoreError::Invalid { .. } | StoreError::InUse { .. })) => {
            page(&console, &session.user, Some(("username", e.to_string()))).await
        }
        Err(e) => Err(e.into()),
    }
}
