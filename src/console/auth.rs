//! Signing in and out: the session cookie, password checks off the async threads, and the
//! lock-out of a (name, client address) pair after repeated failures.

use axum::Extension;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use serde::Deserialize;

use super::{Client, Console, PageError, pages, secrets};

/// The cookie that carries the session id over plain HTTP (loopback only).
pub const SESSION_COOKIE: &str = "mbgp_session";
/// Over TLS: `Secure`, and `__Host-`, which browsers keep to this host and path `/`.
pub const SECURE_SESSION_COOKIE: &str = "__Host-mbgp_session";

/// Failed sign-ins allowed per (name, client address) within [`FAILURE_WINDOW`] seconds; then
/// that pair is refused until the oldest failure leaves the window.
const FAILURES_ALLOWED: i64 = 5;
const FAILURE_WINDOW: i64 = 600;

/// The session id in the request's cookies.
pub(crate) fn session_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(found, _)| *found == name)
        .map(|(_, value)| value.to_string())
        .filter(|value| !value.is_empty())
}

/// Where to go after signing in: a path of this site only, never another site.
fn local_path(next: Option<&str>) -> String {
    match next {
        Some(path) if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') => {
            path.to_string()
        }
        _ => "/".to_string(),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct NextPage {
    next: Option<String>,
}

pub(crate) async fn login_page(
    State(console): State<Console>,
    Query(query): Query<NextPage>,
) -> Result<Response, PageError> {
    if !console.0.store.has_console_admin().await? {
        return Ok((StatusCode::SERVICE_UNAVAILABLE, pages::closed()).into_response());
    }
    Ok(pages::login(None, &local_path(query.next.as_deref())).into_response())
}

#[derive(Deserialize)]
pub(crate) struct Credentials {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

pub(crate) async fn login(
    State(console): State<Console>,
    Extension(Client { address: client }): Extension<Client>,
    Form(form): Form<Credentials>,
) -> Result<Response, PageError> {
    let store = &console.0.store;
    if !store.has_console_admin().await? {
        return Ok((StatusCode::SERVICE_UNAVAILABLE, pages::closed()).into_response());
    }
    let name = form.username.trim().to_string();
    let next = local_path(form.next.as_deref());
    let since = chrono::Utc::now().timestamp() - FAILURE_WINDOW;
    if store.login_failures(&name, &client, since).await? >= FAILURES_ALLOWED {
        tracing::warn!(user = %name, client = %client, "console: sign-in refused, locked out");
        crate::telemetry::console_sign_in_refused("locked_out");
        let message = format!(
            "Too many failed sign-ins for this name from {client}: try again in {} minutes.",
            FAILURE_WINDOW / 60
        );
        return Ok((
            StatusCode::TOO_MANY_REQUESTS,
            pages::login(Some(&message), &next),
        )
            .into_response());
    }
    let user = store.console_user(&name).await?;
    let password = SecretString::from(form.password);
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    // Argon2 takes tens of milliseconds of CPU: not on the threads that serve requests.
    let matches =
        tokio::task::spawn_blocking(move || secrets::verify_password(&password, hash.as_deref()))
            .await
            .unwrap_or(false);
    let Some(user) = user.filter(|_| matches) else {
        let failures = store.record_login_failure(&name, &client, since).await?;
        tracing::warn!(user = %name, client = %client, failures, "console: a sign-in failed");
        crate::telemetry::console_sign_in_refused("wrong_password");
        return Ok((
            StatusCode::UNAUTHORIZED,
            pages::login(Some("Wrong name or password."), &next),
        )
            .into_response());
    };
    store.clear_login_failures(&name, &client).await?;
    let id = secrets::new_session_id();
    store
        .create_console_session(&secrets::session_hash(&id), user.id)
        .await?;
    tracing::info!(user = %user.name, client = %client, "console: signed in");
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, console.cookie(&id)),
            (header::LOCATION, next),
        ],
    )
        .into_response())
}

pub(crate) async fn logout(
    State(console): State<Console>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    if let Some(id) = session_cookie(&headers, console.cookie_name()) {
        console
            .0
            .store
            .end_console_session(&secrets::session_hash(&id))
            .await?;
    }
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, console.cookie("")),
            (header::LOCATION, "/login".to_string()),
        ],
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(local_path(Some("/extensions/1001")), "/extensions/1001");
        assert_eq!(local_path(Some("//evil.example/")), "/");
        assert_eq!(local_path(Some("https://evil.example/")), "/");
        assert_eq!(local_path(Some("/\\evil.example")), "/");
        assert_eq!(local_path(None), "/");
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("a=1; {SESSION_COOKIE}=abc; b=2").parse().unwrap(),
        );
        assert_eq!(
            session_cookie(&headers, SESSION_COOKIE).as_deref(),
            Some("abc")
        );
        assert_eq!(session_cookie(&headers, SECURE_SESSION_COOKIE), None);
        headers.insert(header::COOKIE, "a=1".parse().unwrap());
        assert_eq!(session_cookie(&headers, SESSION_COOKIE), None);
    }
}
