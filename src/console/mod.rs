//! The console: the phone system's pages in a browser, served by the daemon beside `/healthz`
//! and `/metrics`, on the leader and on a standby alike (it writes the database only; the
//! leader applies what changed).
//!
//! Server-rendered HTML that works without JavaScript; `console.js` only follows an extension's
//! state live. Every page needs a signed-in account, and the server checks the account's role
//! on every request: a hidden button is not the check. Sessions live in the database (a standby
//! that takes over keeps them). A request that changes something must come from the console's
//! own pages (`Sec-Fetch-Site` / `Origin`), and a GET never changes anything.

mod audit;
mod auth;
mod extensions;
mod mbg;
mod nodes;
mod pages;
pub mod secrets;
mod users;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::clock::Clock;
use crate::config::{Config, HttpConfig};
use crate::health::HealthState;
use crate::store::{AuditEntry, Role, Session, SessionUse, Store};

pub use auth::{SECURE_SESSION_COOKIE, SESSION_COOKIE};

/// What the daemon and the console in one process tell each other.
#[derive(Clone, Default)]
pub struct Link {
    /// The console stored a new token: a daemon waiting for one resumes at once rather than at
    /// its next `token.recheck_interval`.
    pub token_stored: Arc<tokio::sync::Notify>,
    /// The daemon's configuration, as a SIGHUP last reloaded it (the credential rules, the
    /// session limits, and for the token steps and preflight the MBG's address).
    pub config: Arc<tokio::sync::watch::Sender<Arc<Config>>>,
}

impl Link {
    pub(crate) fn new(config: &Config) -> Link {
        Link {
            token_stored: Arc::default(),
            config: Arc::new(tokio::sync::watch::Sender::new(Arc::new(config.clone()))),
        }
    }
}

/// What every console handler needs.
#[derive(Clone)]
pub struct Console(Arc<Inner>);

struct Inner {
    store: Store,
    link: Link,
    health: HealthState,
    /// The daemon's: token states and the renewal shown as the daemon judges them.
    clock: Clock,
    /// Held while a page reads the MBG's whole list of SIP users.
    reading_the_mbg: tokio::sync::Mutex<()>,
}

impl Console {
    pub(crate) fn new(store: Store, health: HealthState, link: Link, clock: Clock) -> Console {
        Console(Arc::new(Inner {
            store,
            link,
            health,
            clock,
            reading_the_mbg: tokio::sync::Mutex::new(()),
        }))
    }

    /// Epoch seconds on the daemon's clock.
    fn now(&self) -> i64 {
        self.0.clock.now()
    }

    /// The configuration as the daemon runs it now.
    fn config(&self) -> Arc<Config> {
        self.0.link.config.borrow().clone()
    }

    /// The console's routes, to merge with the operations endpoints.
    pub(crate) fn router(self) -> Router {
        Router::new()
            .route("/", get(pages::dashboard))
            .route("/login", get(auth::login_page).post(auth::login))
            .route("/logout", post(auth::logout))
            .route("/extensions", get(extensions::list))
            .route("/extensions/live", get(extensions::live_rows))
            .route("/live/dashboard", get(pages::live_dashboard))
            .route(
                "/extensions/{number}",
                get(extensions::form).post(extensions::save),
            )
            .route("/extensions/{number}/live", get(extensions::live))
            .route("/extensions/{number}/mbg", get(extensions::on_the_mbg))
            .route("/extensions/{number}/reveal", post(extensions::reveal))
            .route("/extensions/{number}/rotate", post(extensions::rotate))
            .route("/nodes", get(nodes::list).post(nodes::add))
            .route("/nodes/{name}", post(nodes::change))
            .route("/audit", get(audit::list))
            .route("/mbg", get(mbg::page))
            .route("/mbg/request", post(mbg::request))
            .route("/mbg/verify", post(mbg::verify))
            .route("/mbg/renew", post(mbg::renew))
            .route("/mbg/renewed", post(mbg::renewed))
            .route("/mbg/preflight", post(mbg::preflight))
            .route("/users", get(users::list).post(users::add))
            .route("/users/{name}/role", post(users::change_role))
            .route("/users/{name}/password", post(users::set_password))
            .route("/users/{name}/remove", post(users::remove))
            .route("/assets/console.js", get(script))
            .route("/assets/console.css", get(style))
            .layer(middleware::from_fn(same_origin_only))
            .layer(middleware::from_fn_with_state(
                self.secure(),
                security_headers,
            ))
            .layer(middleware::from_fn_with_state(self.clone(), reach))
            .with_state(self)
    }
}

/// The page an error becomes: its status and the words a user can act on; or, for a request
/// without a session, the way to the sign-in page and back.
#[derive(Debug)]
pub(crate) struct PageError {
    status: StatusCode,
    message: String,
    sign_in: Option<String>,
}

impl PageError {
    fn new(status: StatusCode, message: impl Into<String>) -> PageError {
        PageError {
            status,
            message: message.into(),
            sign_in: None,
        }
    }

    fn forbidden(role: Role, needed: Role) -> PageError {
        PageError::new(
            StatusCode::FORBIDDEN,
            format!(
                "your role ({}) cannot do this: it needs {}",
                role.as_str(),
                needed.as_str()
            ),
        )
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(error: crate::store::StoreError) -> PageError {
        tracing::warn!(error = %error, "console: a database request failed");
        PageError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self.sign_in {
            Some(to) => (
                StatusCode::SEE_OTHER,
                [(header::LOCATION, to)],
                "sign in first",
            )
                .into_response(),
            None => (self.status, pages::error_page(self.status, &self.message)).into_response(),
        }
    }
}

impl Console {
    /// Browsers reach the console over TLS (here or at a declared proxy): `Secure` cookies
    /// with the `__Host-` prefix, and HSTS.
    fn secure(&self) -> bool {
        self.config().http.is_tls()
    }

    fn cookie_name(&self) -> &'static str {
        if self.secure() {
            SECURE_SESSION_COOKIE
        } else {
            SESSION_COOKIE
        }
    }

    /// The cookie that carries `value` (empty: the one that ends the session).
    fn cookie(&self, value: &str) -> String {
        let secure = if self.secure() { "; Secure" } else { "" };
        let expiry = if value.is_empty() { "; Max-Age=0" } else { "" };
        format!(
            "{}={value}; HttpOnly; SameSite=Strict; Path=/{secure}{expiry}",
            self.cookie_name()
        )
    }

    /// The session of this request, if its cookie names a live one.
    async fn session(
        &self,
        headers: &HeaderMap,
        by: SessionUse,
    ) -> Result<Option<Session>, PageError> {
        let Some(id) = auth::session_cookie(headers, self.cookie_name()) else {
            return Ok(None);
        };
        let config = self.config();
        Ok(self
            .0
            .store
            .console_session(
                &secrets::session_hash(&id),
                config.console.idle_timeout.as_secs() as i64,
                config.console.absolute_timeout.as_secs() as i64,
                by,
            )
            .await?)
    }

    /// The session, with at least `role`; a request without one is sent to sign in and back.
    async fn require(
        &self,
        headers: &HeaderMap,
        uri: &axum::http::Uri,
        role: Role,
    ) -> Result<Session, PageError> {
        match self.session(headers, SessionUse::Activity).await? {
            Some(session) if session.user.role >= role => Ok(session),
            Some(session) => Err(PageError::forbidden(session.user.role, role)),
            None => {
                let next = uri
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_else(|| "/".into());
                Err(PageError {
                    sign_in: Some(format!("/login?next={}", percent(&next))),
                    ..PageError::new(StatusCode::SEE_OTHER, "sign in first")
                })
            }
        }
    }
}

impl Console {
    /// Records a change made in the console, with the account's name.
    async fn audit(
        &self,
        actor: &str,
        extension: Option<&str>,
        action: &str,
        detail: &str,
    ) -> Result<(), PageError> {
        let entry = audit_entry(actor, extension, action, detail);
        self.0.store.audit(&entry).await?;
        Ok(())
    }
}

/// An audit entry of a change made in the console, with the account's name as its actor.
pub(crate) fn audit_entry(
    actor: &str,
    extension: Option<&str>,
    action: &str,
    detail: &str,
) -> AuditEntry {
    AuditEntry {
        at: chrono::Utc::now().timestamp(),
        actor: Some(actor.to_string()),
        extension: extension.map(str::to_string),
        action: action.to_string(),
        outcome: "ok".to_string(),
        detail: Some(detail.to_string()),
        repeats: 1,
        last_at: None,
    }
}

pub(crate) fn percent(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Refuses a request that changes something unless it comes from the console's own pages: a
/// browser says where a request comes from (`Sec-Fetch-Site`, else `Origin`), and a page of
/// another site must not be able to post here with the user's cookie. Clients that send
/// neither header (curl, scripts) are not browsers carrying someone else's cookie.
async fn same_origin_only(request: Request, next: Next) -> Response {
    let safe = matches!(*request.method(), Method::GET | Method::HEAD);
    if safe || from_this_site(request.headers()) {
        return next.run(request).await;
    }
    tracing::warn!(path = %request.uri().path(), "console: a cross-site request was refused");
    PageError::new(
        StatusCode::FORBIDDEN,
        "refused: this request came from another site's page",
    )
    .into_response()
}

fn from_this_site(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return matches!(site, "same-origin" | "none");
    }
    match (text("origin"), text("host")) {
        (None, _) => true,
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority == host),
        (Some(_), None) => false,
    }
}

/// The headers of every console answer: no inline script, no framing, no form posted
/// elsewhere, no referrer, nothing cached.
async fn security_headers(
    axum::extract::State(secure): axum::extract::State<bool>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if secure {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("console.js"),
    )
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
}

/// Who is asking, as far as the console can trust it: the connection's peer, or behind a
/// declared TLS proxy the address the proxy appended to `X-Forwarded-For` (a client can write
/// anything to the left of it). Keys the sign-in lock-out.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub address: String,
}

tokio::task_local! {
    /// Set for the duration of a request that crossed a network in plain HTTP: every page
    /// then carries a red warning (see [`pages::layout`]).
    static IN_CLEAR: bool;
}

/// Whether the request being answered crossed a network in plain HTTP.
pub(crate) fn in_clear() -> bool {
    IN_CLEAR.try_with(|in_clear| *in_clear).unwrap_or(false)
}

/// Works out [`Client`] and [`in_clear`] for the handlers.
async fn reach(State(console): State<Console>, mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip());
    let (client, in_clear) = client_of(
        &console.config().http,
        peer,
        text("x-forwarded-for"),
        text("x-forwarded-proto"),
    );
    request.extensions_mut().insert(client);
    IN_CLEAR.scope(in_clear, next.run(request)).await
}

/// The client, and whether its request crossed a network in plain HTTP. Without TLS here, it
/// did when the declared proxy says it received plain HTTP (`X-Forwarded-Proto: http`), or
/// when a client other than this host reached the listener without the proxy (no
/// `X-Forwarded-For`).
fn client_of(
    http: &HttpConfig,
    peer: Option<IpAddr>,
    forwarded_for: Option<&str>,
    forwarded_proto: Option<&str>,
) -> (Client, bool) {
    let forwarded_for = forwarded_for
        .filter(|_| http.behind_tls_proxy)
        .and_then(|list| list.rsplit(',').next())
        .and_then(|last| last.trim().parse::<IpAddr>().ok());
    let in_clear = http.tls_cert.is_none()
        && ((http.behind_tls_proxy
            && forwarded_proto.is_some_and(|p| p.eq_ignore_ascii_case("http")))
            || (forwarded_for.is_none() && peer.is_some_and(|p| !p.is_loopback())));
    let address = forwarded_for
        .or(peer)
        .map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
    (Client { address }, in_clear)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(behind_tls_proxy: bool, tls: bool) -> HttpConfig {
        HttpConfig {
            behind_tls_proxy,
            tls_cert: tls.then(|| "cert.pem".into()),
            tls_key: tls.then(|| "key.pem".into()),
            ..HttpConfig::default()
        }
    }

    #[test]
    fn the_client_is_the_peer_unless_a_declared_proxy_names_it() {
        let peer = Some("127.0.0.1".parse().unwrap());
        let forged = Some("203.0.113.9, 198.51.100.1");
        assert_eq!(
            client_of(&http(false, false), peer, forged, None).0.address,
            "127.0.0.1"
        );
        assert_eq!(
            client_of(&http(true, false), peer, forged, None).0.address,
            "198.51.100.1"
        );
        assert_eq!(
            client_of(&http(true, false), peer, Some("junk"), None)
                .0
                .address,
            "127.0.0.1"
        );
    }

    #[test]
    fn plain_http_across_a_network_is_flagged() {
        let local = Some("127.0.0.1".parse().unwrap());
        let remote = Some("192.0.2.5".parse().unwrap());
        let via = Some("198.51.100.1");
        let in_clear = |config: HttpConfig, peer, forwarded_for, proto| {
            client_of(&config, peer, forwarded_for, proto).1
        };
        assert!(!in_clear(http(false, false), local, None, None), "loopback");
        assert!(
            in_clear(http(true, false), local, via, Some("http")),
            "the proxy got plain HTTP"
        );
        assert!(
            !in_clear(http(true, false), local, via, Some("https")),
            "the proxy got TLS"
        );
        assert!(
            in_clear(http(true, false), remote, None, None),
            "around the proxy"
        );
        assert!(
            !in_clear(http(true, false), remote, via, None),
            "through the proxy"
        );
        assert!(
            !in_clear(http(false, true), remote, None, Some("http")),
            "TLS here"
        );
    }
}
