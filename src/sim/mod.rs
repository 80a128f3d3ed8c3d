//! The MBG simulator: a real HTTP server that serves the contract in `docs/mbg-api.md` from
//! memory, verifies every OAuth signature, and injects the faults a real MBG shows under load.
//! Tests start it in-process on `127.0.0.1:0`; `mbg-provision simulate` serves it standalone.
//!
//! Every request goes through one handler (`serve`) rather than an axum router, so that logging,
//! fault injection and authentication happen in one place, in the same order for every path.

pub(crate) mod signature;
mod state;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rand::RngExt;
use serde_json::json;

use crate::oauth;

use state::{
    ACCESS_TOKEN_LIFETIME, AccessToken, Consumer, SimState, TEMPORARY_TOKEN_LIFETIME,
    TIMESTAMP_WINDOW,
};
pub use state::{
    ALL_PERMISSIONS, Device, DeviceFields, Faults, Icp, Injected, LoggedRequest,
    PERMISSION_DEVICES, PERMISSION_ICPS, PERMISSION_TOKEN,
};

/// The path under which the simulator serves the API, as a real MBG does.
pub(crate) const BASE_PATH: &str = "/mslrest";

#[derive(Debug, Clone)]
pub struct SimConsumer {
    pub id: String,
    pub secret: String,
    pub permissions: Vec<String>,
}

impl SimConsumer {
    /// A consumer with every permission the contract names.
    pub fn new(id: &str, secret: &str) -> Self {
        SimConsumer {
            id: id.into(),
            secret: secret.into(),
            permissions: ALL_PERMISSIONS.iter().map(|p| p.to_string()).collect(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub consumers: Vec<SimConsumer>,
    pub auto_approve: bool,
    /// Approve temporary tokens at once with this verifier (a scripted walkthrough knows it in
    /// advance); implies `auto_approve`.
    pub approve_with: Option<String>,
    /// (name, address)
    pub icps: Vec<(String, String)>,
    pub licences: Option<usize>,
    pub faults: Faults,
    /// `false`: token info and renew answer 404, as on an MBG without them.
    pub token_api: bool,
    /// Accept a set-side name already in use: no public document says a real MBG refuses it,
    /// so the client must not rely on the refusal to avoid duplicates.
    pub duplicate_setside_names: bool,
    /// `true`: the token answers carry tokens and secrets as they are, `+ / =` unencoded, as a
    /// real MBG may; `false`: percent-encoded, as the form encoding asks.
    pub unencoded_token_answers: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            consumers: Vec::new(),
            auto_approve: false,
            approve_with: None,
            icps: Vec::new(),
            licences: None,
            faults: Faults::default(),
            token_api: true,
            duplicate_setside_names: false,
            unencoded_token_answers: false,
        }
    }
}

/// A running simulator. Dropping it stops the server.
pub struct SimHandle {
    addr: SocketAddr,
    state: Arc<Mutex<SimState>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Starts the simulator on `addr` (port 0 for any free port).
pub async fn start(config: SimConfig, addr: SocketAddr) -> std::io::Result<SimHandle> {
    let mut state = SimState {
        consumers: config
            .consumers
            .iter()
            .map(|c| {
                let consumer = Consumer {
                    secret: c.secret.clone(),
                    permissions: c.permissions.iter().cloned().collect(),
                    active: true,
                };
                (c.id.clone(), consumer)
            })
            .collect(),
        temporary: HashMap::new(),
        access: HashMap::new(),
        nonces: HashSet::new(),
        icps: Vec::new(),
        devices: BTreeMap::new(),
        setside_names: HashMap::new(),
        nonces_pruned_at: i64::MIN,
        licences: config.licences,
        auto_approve: config.auto_approve,
        approve_with: config.approve_with,
        token_api: config.token_api,
        duplicate_setside_names: config.duplicate_setside_names,
        unencoded_token_answers: config.unencoded_token_answers,
        clock_offset: 0,
        faults: config.faults,
        requests: Default::default(),
        requests_seen: 0,
        injected: Injected::default(),
    };
    for (name, address) in &config.icps {
        state.add_icp(name, address);
    }
    let state = Arc::new(Mutex::new(state));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new()
        .fallback(serve)
        .with_state(state.clone())
        .into_make_service_with_connect_info::<SocketAddr>();
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(SimHandle {
        addr,
        state,
        shutdown: Some(shutdown),
    })
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL a client is configured with, e.g. `http://127.0.0.1:41234/mslrest`.
    pub fn base_url(&self) -> String {
        format!("http://{}{BASE_PATH}", self.addr)
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Approves a temporary token as an administrator would; returns the verifier.
    pub fn approve(&self, temporary_token: &str) -> Option<String> {
        self.state().approve(temporary_token)
    }

    pub fn revoke(&self, token: &str) -> bool {
        self.state().revoke(token)
    }

    /// Moves the simulator's clock (token expiry, timestamp checks).
    pub fn advance_clock(&self, seconds: i64) {
        self.state().clock_offset += seconds;
    }

    pub fn set_faults(&self, faults: Faults) {
        self.state().faults = faults;
    }

    pub fn set_permissions(&self, consumer: &str, permissions: &[&str]) {
        if let Some(c) = self.state().consumers.get_mut(consumer) {
            c.permissions = permissions.iter().map(|p| p.to_string()).collect();
        }
    }

    /// Adds a SIP device "by hand", as an administrator on the MBG page would.
    pub fn add_device(&self, fields: DeviceFields) -> Result<String, String> {
        self.state().create_device(fields)
    }

    pub fn devices(&self) -> Vec<Device> {
        self.state().devices.values().cloned().collect()
    }

    /// The requests received, in order (admin requests under `/sim/` included): the latest
    /// [`REQUEST_LOG`](state::REQUEST_LOG) of them.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.state().requests.iter().cloned().collect()
    }

    /// How many requests were received since the log was last cleared, all of them counted.
    /// The requests logged after the first `count` of [`SimHandle::request_count`] (those the
    /// ring still holds).
    pub fn requests_after(&self, count: u64) -> Vec<LoggedRequest> {
        let state = self.state();
        let newer =
            usize::try_from(state.requests_seen.saturating_sub(count)).unwrap_or(usize::MAX);
        let skip = state.requests.len().saturating_sub(newer);
        state.requests.iter().skip(skip).cloned().collect()
    }

    pub fn request_count(&self) -> u64 {
        self.state().requests_seen
    }

    /// The faults injected so far.
    pub fn injected(&self) -> Injected {
        self.state().injected
    }

    pub fn clear_requests(&self) {
        self.state().clear_requests();
    }

    /// The access token's expiry as the simulator sees it.
    pub fn access_token_expiry(&self, token: &str) -> Option<i64> {
        self.state().access.get(token).map(|a| a.expires_at)
    }
}

type Shared = Arc<Mutex<SimState>>;

fn lock(state: &Shared) -> MutexGuard<'_, SimState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn form(body: String) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-www-form-urlencoded")],
        body,
    )
        .into_response()
}

fn ok_json(value: serde_json::Value) -> Response {
    axum::Json(value).into_response()
}

async fn serve(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let received_at = std::time::Instant::now();
    let response = if let Some(admin_path) = path.strip_prefix("/sim/") {
        if peer.ip().is_loopback() {
            admin(&state, &method, admin_path, &body)
        } else {
            error(StatusCode::FORBIDDEN, "the /sim/ API answers loopback only")
        }
    } else {
        // In a task of its own: a real MBG carries out a request whose client has gone (timed
        // out, killed), and so must the simulator, or late creates never happen here.
        let (state, method, uri, headers) =
            (state.clone(), method.clone(), uri.clone(), headers.clone());
        tokio::spawn(async move { api(&state, &method, &uri, &headers, &body).await })
            .await
            .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "the simulator failed"))
    };
    lock(&state).log_request(LoggedRequest {
        method: method.to_string(),
        path,
        status: response.status().as_u16(),
        host: headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        received_at: Some(received_at),
        answered_at: Some(std::time::Instant::now()),
    });
    response
}

/// The signed API, after fault injection.
async fn api(
    state: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let faults = lock(state).faults.clone();
    let chance = |p: f64| p > 0.0 && rand::rng().random_bool(p.min(1.0));
    let mut delay = faults.latency_ms;
    let slow = *method != Method::GET && {
        let mut s = lock(state);
        let slow = s.faults.slow_changes_next > 0;
        s.faults.slow_changes_next = s.faults.slow_changes_next.saturating_sub(1);
        slow
    };
    if slow || chance(faults.spike_rate) {
        delay += faults.spike_ms;
        lock(state).injected.spikes += 1;
    }
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    {
        let mut s = lock(state);
        if chance(faults.burst_rate) {
            s.faults.rate_limit_next += faults.burst_len.max(1);
        }
        let drop = chance(faults.drop_rate);
        if drop || s.faults.drop_next > 0 {
            if !drop {
                s.faults.drop_next -= 1;
            }
            s.injected.dropped += 1;
            // Headers go out, then the body fails: the client sees the connection cut.
            return Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(failing_body())
                .unwrap();
        }
        if s.faults.rate_limit_next > 0 {
            s.faults.rate_limit_next -= 1;
            s.injected.rate_limited += 1;
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, "too many requests");
            response.headers_mut().insert(
                header::RETRY_AFTER,
                s.faults.retry_after_secs.to_string().parse().unwrap(),
            );
            return response;
        }
    }
    if chance(faults.fail_rate) {
        lock(state).injected.errors_5xx += 1;
        return error(StatusCode::SERVICE_UNAVAILABLE, "service unavailable");
    }
    let Some(resource) = uri.path().strip_prefix(BASE_PATH) else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    // Headers tell us the host the client addressed, as the signature base string needs.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let path_and_query = uri.path_and_query().map_or("", |p| p.as_str());
    let oauth = match authenticate(state, method, host, path_and_query, headers) {
        Ok(oauth) => oauth,
        Err(message) => return unauthorized(&message),
    };
    let response = route(state, method, resource, oauth, body);
    let mut s = lock(state);
    let lose = *method != Method::GET && chance(faults.lose_answer_rate);
    if *method != Method::GET && (lose || s.faults.lose_answer_next > 0) {
        if !lose {
            s.faults.lose_answer_next -= 1;
        }
        s.injected.lost_answers += 1;
        // Carried out, but the client never learns it: a timeout or reset after the work.
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(failing_body())
            .unwrap();
    }
    response
}

/// A body that fails after the headers were sent.
fn failing_body() -> Body {
    Body::from_stream(futures_util::stream::once(async {
        Err::<Bytes, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "dropped by the simulator",
        ))
    }))
}

/// Who signed a request, and with which token.
enum Signer {
    /// Consumer only (initiate).
    Consumer { consumer: String, callback: String },
    /// Consumer + temporary token + verifier.
    Temporary {
        token: String,
        verifier: Option<String>,
    },
    /// Consumer + access token.
    Access { token: String, consumer: String },
}

fn unauthorized(message: &str) -> Response {
    error(StatusCode::UNAUTHORIZED, message)
}

/// Checks consumer, timestamp, token, signature and nonce; the error is the 401's message.
fn authenticate(
    state: &Shared,
    method: &Method,
    host: &str,
    path_and_query: &str,
    headers: &HeaderMap,
) -> Result<Signer, String> {
    let header_params = match headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
    {
        Some(value) => signature::header_params(value)?,
        None => Vec::new(),
    };
    let mut params = header_params.clone();
    params.extend(signature::query_params(path_and_query)?);
    let get = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let Some(consumer_key) = get("oauth_consumer_key") else {
        return Err("missing oauth_consumer_key".into());
    };
    if get("oauth_signature_method").as_deref() != Some("HMAC-SHA1") {
        return Err("signature method must be HMAC-SHA1".into());
    }
    let (Some(signature), Some(nonce), Some(timestamp)) = (
        get("oauth_signature"),
        get("oauth_nonce"),
        get("oauth_timestamp").and_then(|t| t.parse::<i64>().ok()),
    ) else {
        return Err("missing oauth_signature, oauth_nonce or oauth_timestamp".into());
    };
    let token = get("oauth_token").unwrap_or_default();

    let mut s = lock(state);
    let consumer = match s.consumers.get(&consumer_key) {
        Some(c) if c.active => c.clone(),
        _ => return Err("unknown or inactive consumer".into()),
    };
    // Timestamps are checked against the wall clock, not the movable one: moving the clock is for
    // token expiry, and a client cannot follow it.
    let now = s.now();
    if (timestamp - chrono::Utc::now().timestamp()).abs() > TIMESTAMP_WINDOW {
        return Err("timestamp too far from the server's clock".into());
    }
    let (token_secret, signer) = if token.is_empty() {
        let signer = Signer::Consumer {
            consumer: consumer_key.clone(),
            callback: get("oauth_callback").unwrap_or_default(),
        };
        (String::new(), signer)
    } else if let Some(access) = s.access.get(&token) {
        if access.consumer != consumer_key || access.revoked || access.expires_at <= now {
            return Err("token revoked or expired".into());
        }
        let signer = Signer::Access {
            token: token.clone(),
            consumer: consumer_key.clone(),
        };
        (access.secret.clone(), signer)
    } else if let Some(temporary) = s.temporary.get(&token) {
        if temporary.consumer != consumer_key {
            return Err("unknown token".into());
        }
        let signer = Signer::Temporary {
            token: token.clone(),
            verifier: get("oauth_verifier"),
        };
        (temporary.secret.clone(), signer)
    } else {
        return Err("unknown token".into());
    };
    let base = signature::base_string(
        method.as_str(),
        "http",
        host,
        path_and_query,
        &header_params,
    )?;
    if !oauth::verify(&base, &consumer.secret, &token_secret, &signature) {
        return Err("invalid signature".into());
    }
    if !s.fresh_nonce(timestamp, &nonce, &token) {
        return Err("nonce already used".into());
    }
    Ok(signer)
}

fn route(
    state: &Shared,
    method: &Method,
    resource: &str,
    signer: Signer,
    body: &Bytes,
) -> Response {
    let segments: Vec<&str> = resource.trim_matches('/').split('/').collect();
    let mut s = lock(state);
    match (method.clone(), segments.as_slice(), signer) {
        (Method::POST, ["initiate"], Signer::Consumer { consumer, callback }) => {
            if callback != "oob" && !callback.starts_with("http") {
                return unauthorized("oauth_callback is required");
            }
            let (token, secret) = s.new_temporary_token(&consumer);
            let (token, secret) = s.token_answer(&token, &secret);
            form(format!(
                "oauth_token={token}&oauth_token_secret={secret}&oauth_callback_confirmed=true"
            ))
        }
        (Method::POST, ["token"], Signer::Temporary { token, verifier }) => {
            let now = s.now();
            let Some(temporary) = s.temporary.get(&token).cloned() else {
                return unauthorized("unknown token");
            };
            if temporary.exchanged || now - temporary.created_at > TEMPORARY_TOKEN_LIFETIME {
                return unauthorized("temporary token expired or already used");
            }
            match (&temporary.verifier, &verifier) {
                (None, _) => return unauthorized("temporary token not approved"),
                (Some(expected), Some(given)) if expected == given => {}
                _ => return unauthorized("wrong verifier"),
            }
            s.temporary.get_mut(&token).unwrap().exchanged = true;
            let (access, secret) = (state::random_token(), state::random_token());
            s.access.insert(
                access.clone(),
                AccessToken {
                    consumer: temporary.consumer,
                    secret: secret.clone(),
                    expires_at: now + ACCESS_TOKEN_LIFETIME,
                    revoked: false,
                },
            );
            let (access, secret) = s.token_answer(&access, &secret);
            form(format!(
                "oauth_token={access}&oauth_token_secret={secret}&oauth_authorized_realms="
            ))
        }
        (_, ["initiate"] | ["token"], _) => unauthorized("wrong credentials for this step"),
        (_, _, Signer::Consumer { .. } | Signer::Temporary { .. }) => {
            unauthorized("an access token is required")
        }
        (method, segments, Signer::Access { token, consumer }) => {
            let permissions = &s.consumers[&consumer].permissions;
            let needed = match segments {
                ["ping"] => None,
                ["base", "v1", "managetoken"] => Some(PERMISSION_TOKEN),
                ["mbg", "v1", "icps", ..] => Some(PERMISSION_ICPS),
                ["mbg", "v1", "devices", ..] => Some(PERMISSION_DEVICES),
                _ => return error(StatusCode::NOT_FOUND, "no such resource"),
            };
            if let Some(needed) = needed
                && !permissions.contains(needed)
            {
                return error(
                    StatusCode::FORBIDDEN,
                    format!("consumer lacks permission {needed}"),
                );
            }
            resource_call(&mut s, &method, segments, &token, body)
        }
    }
}

fn resource_call(
    s: &mut SimState,
    method: &Method,
    segments: &[&str],
    token: &str,
    body: &Bytes,
) -> Response {
    match (method.clone(), segments) {
        (Method::GET, ["ping"]) => ok_json(json!({ "status": "ok" })),
        (Method::GET | Method::PUT, ["base", "v1", "managetoken"]) if !s.token_api => {
            error(StatusCode::NOT_FOUND, "not found")
        }
        (Method::GET, ["base", "v1", "managetoken"]) => {
            ok_json(json!({ "expires": s.access[token].expires_at }))
        }
        (Method::PUT, ["base", "v1", "managetoken"]) => {
            let expires = s.now() + ACCESS_TOKEN_LIFETIME;
            s.access.get_mut(token).unwrap().expires_at = expires;
            ok_json(json!({ "expires": expires }))
        }
        (Method::GET, ["mbg", "v1", "icps", "all"]) => ok_json(json!({ "response": s.icps })),
        (Method::GET, ["mbg", "v1", "icps", "count"]) => ok_json(json!({ "count": s.icps.len() })),
        (Method::GET, ["mbg", "v1", "icps", guid]) => match s.icps.iter().find(|i| i.guid == *guid)
        {
            Some(icp) => ok_json(json!(icp)),
            None => error(StatusCode::NOT_FOUND, "no such ICP"),
        },
        (Method::GET, ["mbg", "v1", "devices", "sip", "all"]) => {
            let devices: Vec<&Device> = s.devices.values().collect();
            ok_json(json!({ "response": devices }))
        }
        (Method::GET, ["mbg", "v1", "devices", "sip", "count"]) => {
            ok_json(json!({ "count": s.devices.len() }))
        }
        (Method::GET, ["mbg", "v1", "devices", "sip", guid]) => match s.devices.get(*guid) {
            Some(device) => ok_json(json!(device)),
            None => error(StatusCode::NOT_FOUND, "no such device"),
        },
        (Method::POST, ["mbg", "v1", "devices", "sip"]) => match device_fields(body) {
            Ok(fields) => match s.create_device(fields) {
                Ok(guid) => ok_json(json!({ "guid": guid })),
                Err(message) => error(StatusCode::BAD_REQUEST, message),
            },
            Err(message) => error(StatusCode::BAD_REQUEST, message),
        },
        (Method::PUT, ["mbg", "v1", "devices", "sip", guid]) => match device_fields(body) {
            Ok(fields) => match s.update_device(guid, fields) {
                Ok(true) => ok_json(json!({})),
                Ok(false) => error(StatusCode::NOT_FOUND, "no such device"),
                Err(message) => error(StatusCode::BAD_REQUEST, message),
            },
            Err(message) => error(StatusCode::BAD_REQUEST, message),
        },
        (Method::DELETE, ["mbg", "v1", "devices", "sip", guid]) => match s.remove_device(guid) {
            Some(_) => ok_json(json!({})),
            None => error(StatusCode::NOT_FOUND, "no such device"),
        },
        _ => error(StatusCode::NOT_FOUND, "no such resource"),
    }
}

fn device_fields(body: &Bytes) -> Result<DeviceFields, String> {
    serde_json::from_slice(body).map_err(|e| format!("malformed device: {e}"))
}

/// The unsigned admin API under `/sim/` (loopback only).
fn admin(state: &Shared, method: &Method, path: &str, body: &Bytes) -> Response {
    // Tokens hold `/`, `+` and `=`: callers percent-encode them within a segment.
    let decoded: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let mut s = lock(state);
    match (method.clone(), segments.as_slice()) {
        (Method::POST, ["tokens", token, "approve"]) => match s.approve(token) {
            Some(verifier) => ok_json(json!({ "verifier": verifier })),
            None => error(StatusCode::NOT_FOUND, "no such temporary token"),
        },
        (Method::POST, ["tokens", token, "revoke"]) => {
            if s.revoke(token) {
                ok_json(json!({}))
            } else {
                error(StatusCode::NOT_FOUND, "no such token")
            }
        }
        (Method::POST, ["clock", "advance"]) => {
            match serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["seconds"].as_i64())
            {
                Some(seconds) => {
                    s.clock_offset += seconds;
                    ok_json(json!({ "now": s.now() }))
                }
                None => error(StatusCode::BAD_REQUEST, "expected {\"seconds\": N}"),
            }
        }
        (Method::POST, ["devices"]) => match device_fields(body) {
            Ok(fields) => match s.create_device(fields) {
                Ok(guid) => ok_json(json!({ "guid": guid })),
                Err(message) => error(StatusCode::BAD_REQUEST, message),
            },
            Err(message) => error(StatusCode::BAD_REQUEST, message),
        },
        (Method::PUT, ["faults"]) => match serde_json::from_slice::<Faults>(body) {
            Ok(faults) => {
                s.faults = faults;
                ok_json(json!({}))
            }
            Err(e) => error(StatusCode::BAD_REQUEST, format!("malformed faults: {e}")),
        },
        (Method::GET, ["requests"]) => ok_json(json!(s.requests)),
        (Method::DELETE, ["requests"]) => {
            s.clear_requests();
            ok_json(json!({}))
        }
        _ => error(StatusCode::NOT_FOUND, "no such admin resource"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `simulate` runs for months: its request log keeps the latest requests only, and the
    /// count goes on.
    #[tokio::test]
    async fn the_request_log_is_a_bounded_ring() {
        let sim = start(SimConfig::default(), SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let request = |n: usize| LoggedRequest {
            method: "GET".into(),
            path: format!("/{n}"),
            status: 200,
            host: String::new(),
            received_at: None,
            answered_at: None,
        };
        for n in 0..state::REQUEST_LOG + 5 {
            sim.state().log_request(request(n));
        }
        let kept = sim.requests();
        assert_eq!(kept.len(), state::REQUEST_LOG);
        assert_eq!(kept[0].path, "/5", "the oldest went first");
        assert_eq!(sim.request_count(), (state::REQUEST_LOG + 5) as u64);
        sim.clear_requests();
        assert_eq!((sim.requests().len(), sim.request_count()), (0, 0));
    }
}
