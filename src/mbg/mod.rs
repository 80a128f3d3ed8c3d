//! A typed client for the MBG REST API of `docs/mbg-api.md`: every call signed with OAuth 1.0a,
//! every answer checked against the contract, every failure turned into an [`MbgErrorKind`] the
//! reconciler can act on.

mod error;

use std::path::Path;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::config::MbgUrl;
use crate::health::HealthState;
use crate::lease::Lease;
use crate::oauth::{self, ClientCredentials, Grant, TokenCredentials};

pub use error::{MbgError, MbgErrorKind, redact};

/// How much of an unexpected answer an error quotes.
const EXCERPT_BYTES: usize = 200;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Icp {
    pub guid: String,
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub icptype: String,
}

/// A SIP device as the MBG returns it (unknown fields ignored). Passwords come back in clear.
#[derive(Debug, Clone, Deserialize)]
pub struct SipDevice {
    pub guid: String,
    pub icp: String,
    pub setside_username: String,
    pub setside_password: SecretString,
    pub icpside_username: String,
    pub icpside_password: SecretString,
    #[serde(default)]
    pub description: String,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

/// A device to create: every field the contract requires.
#[derive(Debug, Clone)]
pub struct NewSipDevice {
    pub icp: String,
    pub setside_username: String,
    pub setside_password: SecretString,
    pub icpside_username: String,
    pub icpside_password: SecretString,
    pub description: String,
    pub enabled: bool,
}

impl NewSipDevice {
    /// The device as the MBG holds it once created under `guid`.
    pub(crate) fn created(&self, guid: &str) -> SipDevice {
        SipDevice {
            guid: guid.to_string(),
            icp: self.icp.clone(),
            setside_username: self.setside_username.clone(),
            setside_password: self.setside_password.clone(),
            icpside_username: self.icpside_username.clone(),
            icpside_password: self.icpside_password.clone(),
            description: self.description.clone(),
            enabled: self.enabled,
        }
    }

    /// The create's JSON body, serialized from borrowed fields: one is built per create.
    fn to_body(&self) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            icp: &'a str,
            setside_username: &'a str,
            setside_password: &'a str,
            icpside_username: &'a str,
            icpside_password: &'a str,
            description: &'a str,
            enabled: bool,
        }
        json_body(&Body {
            icp: &self.icp,
            setside_username: &self.setside_username,
            setside_password: self.setside_password.expose_secret(),
            icpside_username: &self.icpside_username,
            icpside_password: self.icpside_password.expose_secret(),
            description: &self.description,
            enabled: self.enabled,
        })
    }
}

/// A request body of JSON.
fn json_body(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("strings, numbers and booleans always serialize")
}

/// The fields of a device to change; `None` leaves a field as the MBG has it.
#[derive(Debug, Clone, Default)]
pub struct SipDevicePatch {
    pub icp: Option<String>,
    pub setside_username: Option<String>,
    pub setside_password: Option<SecretString>,
    pub icpside_username: Option<String>,
    pub icpside_password: Option<SecretString>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

impl SipDevicePatch {
    #[cfg(test)]
    /// `device` as the MBG holds it once this patch is applied.
    pub(crate) fn apply_to(&self, device: &mut SipDevice) {
        let set = |field: &mut String, value: &Option<String>| {
            if let Some(value) = value {
                field.clone_from(value);
            }
        };
        set(&mut device.icp, &self.icp);
        set(&mut device.setside_username, &self.setside_username);
        set(&mut device.icpside_username, &self.icpside_username);
        set(&mut device.description, &self.description);
        if let Some(password) = &self.setside_password {
            device.setside_password = password.clone();
        }
        if let Some(password) = &self.icpside_password {
            device.icpside_password = password.clone();
        }
        if let Some(enabled) = self.enabled {
            device.enabled = enabled;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.to_json().as_object().is_none_or(|o| o.is_empty())
    }

    fn to_json(&self) -> Value {
        let mut body = serde_json::Map::new();
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                body.insert(key.to_string(), value);
            }
        };
        put("icp", self.icp.clone().map(Value::from));
        put(
            "setside_username",
            self.setside_username.clone().map(Value::from),
        );
        put(
            "setside_password",
            self.setside_password
                .as_ref()
                .map(|p| Value::from(p.expose_secret())),
        );
        put(
            "icpside_username",
            self.icpside_username.clone().map(Value::from),
        );
        put(
            "icpside_password",
            self.icpside_password
                .as_ref()
                .map(|p| Value::from(p.expose_secret())),
        );
        put("description", self.description.clone().map(Value::from));
        put("enabled", self.enabled.map(Value::from));
        Value::Object(body)
    }
}

#[derive(Deserialize)]
struct List<T> {
    response: T,
}

#[derive(Deserialize)]
struct Count {
    count: u64,
}

#[derive(Deserialize)]
struct Guid {
    guid: String,
}

#[derive(Deserialize)]
struct Expiry {
    expires: i64,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// The body an endpoint answers with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    Json,
    Form,
}

/// The most an answer may hold unless the call allows more: a device, an ICP, a count, a
/// token or an error fits many times over. An MBG (or whatever answers in its place) that sends
/// more is refused rather than read without end.
const ANSWER_LIMIT: usize = 1 << 20;

/// What one SIP user may take in the device list (a real one takes a few hundred bytes): the
/// list's limit is this times the count the MBG gives, plus [`LIST_SLACK`] users added meanwhile.
const DEVICE_ANSWER_BYTES: usize = 4 << 10;
const LIST_SLACK: usize = 1_000;

/// How long a connection to the MBG is kept open unused. A pass opens up to `max_in_flight` of
/// them, each with its buffers (and its TLS state): kept 90 s (reqwest's default) they are an
/// idle daemon's largest holding after the MBG view. Longer than the daemon's idle check at its
/// default interval (15 s), which so keeps one open for the next change.
const IDLE_CONNECTION_KEPT: Duration = Duration::from_secs(20);

#[derive(Clone)]
pub struct MbgClient {
    http: reqwest::Client,
    base: MbgUrl,
    /// `base` parsed once, with a trailing `/`: each call's URL is joined onto it, which parses
    /// only the call's path, not the scheme and host again (it showed in a creating sync's
    /// profile).
    resources: url::Url,
    consumer: ClientCredentials,
    access: Option<TokenCredentials>,
    /// Told of every attempt, answered or not, so that `/healthz` knows whether the MBG answers
    /// without waiting for a pass to end.
    observer: Option<HealthState>,
    /// Asked before every attempt, retries included: a holder of the pass lock whose lease
    /// lapsed sends nothing.
    lease: Option<Lease>,
}

impl std::fmt::Debug for MbgClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MbgClient")
            .field("base", &self.base)
            .field("consumer", &self.consumer)
            .field("access", &self.access.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

impl MbgClient {
    /// A client for the MBG at `base`, trusting the extra CA in `ca_file` if given.
    pub fn new(
        base: MbgUrl,
        ca_file: Option<&Path>,
        timeout: Duration,
        consumer: ClientCredentials,
    ) -> Result<Self, MbgError> {
        let setup = |why: String| MbgError {
            endpoint: "setup".into(),
            kind: MbgErrorKind::Setup(why),
        };
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(IDLE_CONNECTION_KEPT)
            .user_agent(concat!("mbg-provision/", env!("CARGO_PKG_VERSION")));
        if let Some(ca_file) = ca_file {
            let pem = std::fs::read(ca_file).map_err(|e| {
                setup(format!(
                    "cannot read mbg.ca_file {}: {e}",
                    ca_file.display()
                ))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| setup(format!("mbg.ca_file {} is not PEM: {e}", ca_file.display())))?;
            if certs.is_empty() {
                return Err(setup(format!(
                    "mbg.ca_file {} holds no certificate",
                    ca_file.display()
                )));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| setup(format!("cannot build the HTTP client: {e}")))?;
        let resources = url::Url::parse(&base.join(""))
            .map_err(|e| setup(format!("cannot parse mbg.base_url {base}: {e}")))?;
        Ok(MbgClient {
            http,
            resources,
            base,
            consumer,
            access: None,
            observer: None,
            lease: None,
        })
    }

    /// The HTTP client underneath, for the bench's bare loop (the same stack and settings).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The same client, sending only while `lease` holds (see [`crate::lease`]).
    pub fn with_lease(mut self, lease: Lease) -> Self {
        self.lease = Some(lease);
        self
    }

    /// The same client, reporting whether the MBG answers each request into `health`.
    pub(crate) fn with_observer(mut self, health: HealthState) -> Self {
        self.observer = Some(health);
        self
    }

    fn observe(&self, answered: Result<(), &str>) {
        if let Some(health) = &self.observer {
            health.mbg_answered(answered);
        }
    }

    /// The same client, signing with this access token from now on.
    pub fn with_access_token(mut self, access: TokenCredentials) -> Self {
        self.access = Some(access);
        self
    }

    /// Step 1 of the exchange: a temporary token for the administrator to approve.
    pub(crate) async fn initiate(&self) -> Result<TokenCredentials, MbgError> {
        let grant = Grant::Temporary {
            callback: oauth::OUT_OF_BAND,
        };
        let form = self.form(Method::POST, "initiate", grant).await?;
        token_from_form("POST initiate", &form)
    }

    /// Step 3: trades the approved temporary token and its verifier for an access token.
    pub(crate) async fn exchange(
        &self,
        temporary: &TokenCredentials,
        verifier: &str,
    ) -> Result<TokenCredentials, MbgError> {
        let grant = Grant::Exchange {
            temporary,
            verifier,
        };
        let form = self.form(Method::POST, "token", grant).await?;
        token_from_form("POST token", &form)
    }

    pub async fn ping(&self) -> Result<(), MbgError> {
        self.json::<Value>(Method::GET, "ping/", None)
            .await
            .map(|_| ())
    }

    /// The access token's expiry (epoch seconds); `NotFound` if this MBG does not say.
    pub async fn token_expiry(&self) -> Result<i64, MbgError> {
        let expiry: Expiry = self.json(Method::GET, "base/v1/managetoken/", None).await?;
        Ok(expiry.expires)
    }

    /// Extends the access token by 12 months; `NotFound` if this MBG cannot do it by API.
    pub(crate) async fn renew_token(&self) -> Result<i64, MbgError> {
        let expiry: Expiry = self
            .json(
                Method::PUT,
                "base/v1/managetoken/",
                Some(json_body(&json!({ "action": "renew" }))),
            )
            .await?;
        Ok(expiry.expires)
    }

    pub async fn icps(&self) -> Result<Vec<Icp>, MbgError> {
        let list: List<Vec<Icp>> = self.json(Method::GET, "mbg/v1/icps/all/", None).await?;
        Ok(list.response)
    }

    pub async fn icp(&self, guid: &str) -> Result<Icp, MbgError> {
        self.json(
            Method::GET,
            &format!("mbg/v1/icps/{}/", path_segment(guid)),
            None,
        )
        .await
    }

    pub async fn icp_count(&self) -> Result<u64, MbgError> {
        let count: Count = self.json(Method::GET, "mbg/v1/icps/count/", None).await?;
        Ok(count.count)
    }

    /// Every SIP user. The answer is bounded by the MBG's own count of them, asked first.
    pub async fn devices(&self) -> Result<Vec<SipDevice>, MbgError> {
        self.devices_as().await
    }

    /// Every SIP user, parsed as `L` parses a list of them: a caller that keeps only part of
    /// each one never holds the whole parsed list.
    pub(crate) async fn devices_as<L: DeserializeOwned>(&self) -> Result<L, MbgError> {
        let count = usize::try_from(self.device_count().await?).unwrap_or(usize::MAX);
        let limit = count
            .saturating_add(LIST_SLACK)
            .saturating_mul(DEVICE_ANSWER_BYTES);
        let list: List<L> = self
            .json_within(Method::GET, "mbg/v1/devices/sip/all/", None, limit)
            .await?;
        Ok(list.response)
    }

    pub async fn device(&self, guid: &str) -> Result<SipDevice, MbgError> {
        self.json(Method::GET, &device_path(guid), None).await
    }

    pub async fn device_count(&self) -> Result<u64, MbgError> {
        let count: Count = self
            .json(Method::GET, "mbg/v1/devices/sip/count/", None)
            .await?;
        Ok(count.count)
    }

    /// Creates a device; returns its guid.
    pub async fn create_device(&self, device: &NewSipDevice) -> Result<String, MbgError> {
        let created: Guid = self
            .json(Method::POST, "mbg/v1/devices/sip/", Some(device.to_body()))
            .await?;
        Ok(created.guid)
    }

    pub async fn update_device(&self, guid: &str, patch: &SipDevicePatch) -> Result<(), MbgError> {
        self.json::<Value>(
            Method::PUT,
            &device_path(guid),
            Some(json_body(&patch.to_json())),
        )
        .await
        .map(|_| ())
    }

    pub async fn delete_device(&self, guid: &str) -> Result<(), MbgError> {
        self.json::<Value>(Method::DELETE, &device_path(guid), None)
            .await
            .map(|_| ())
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, MbgError> {
        self.json_within(method, path, body, ANSWER_LIMIT).await
    }

    /// [`MbgClient::json`] with an answer of at most `limit` bytes.
    async fn json_within<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<T, MbgError> {
        let access = self.access.as_ref().ok_or_else(|| MbgError {
            endpoint: format!("{method} {path}"),
            kind: MbgErrorKind::Unauthorized(
                "no access token stored: run `mbg-provision token request` first".into(),
            ),
        })?;
        let bytes = self
            .send(
                method.clone(),
                path,
                Grant::Access(access),
                body,
                (Answer::Json, limit),
            )
            .await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| malformed(&format!("{method} {path}"), e, &bytes))
    }

    async fn form(&self, method: Method, path: &str, grant: Grant<'_>) -> Result<String, MbgError> {
        let bytes = self
            .send(
                method.clone(),
                path,
                grant,
                None,
                (Answer::Form, ANSWER_LIMIT),
            )
            .await?;
        String::from_utf8(bytes).map_err(|_| MbgError {
            endpoint: format!("{method} {path}"),
            kind: MbgErrorKind::Malformed("token answer is not UTF-8".into()),
        })
    }

    /// Signs and sends one request; returns the body of a 2xx answer of the expected type, of
    /// at most `limit` bytes.
    async fn send(
        &self,
        method: Method,
        path: &str,
        grant: Grant<'_>,
        json_body: Option<Vec<u8>>,
        (answer, limit): (Answer, usize),
    ) -> Result<Vec<u8>, MbgError> {
        // Formatted only for an error: this runs for every call.
        let endpoint = || format!("{method} {path}");
        let fail = |kind| MbgError {
            endpoint: endpoint(),
            kind,
        };
        if let Some(lease) = &self.lease {
            lease
                .permit()
                .await
                .map_err(|lapsed| fail(MbgErrorKind::NotLeading(lapsed)))?;
        }
        // Parsed once, so that what is signed is exactly what is sent.
        let path = path.trim_start_matches('/');
        let url = self.resources.join(path).map_err(|e| {
            fail(MbgErrorKind::Setup(format!(
                "cannot build the URL of {}: {e}",
                endpoint()
            )))
        })?;
        // A guid of `.` or `..` (encoded or not) is a dot segment, which URL parsing resolves
        // away: a DELETE of it would address the collection or its parent. Whatever the MBG or
        // a row says a guid is, a path that does not stay as given is not sent.
        if url.path().strip_prefix(self.resources.path()) != Some(path) {
            return Err(fail(MbgErrorKind::Malformed(
                "a guid of \".\" or \"..\" names no single SIP user or ICP: not sent".into(),
            )));
        }
        let authorization =
            oauth::authorization(method.as_str(), &url, &self.consumer, grant, None);
        let mut request = self
            .http
            .request(method.clone(), url)
            .header(AUTHORIZATION, authorization);
        if let Some(body) = json_body {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        // Latency metric: from sending to the whole body read, failures included. Labelled by
        // method and endpoint group only (telemetry::endpoint_group), never by path or guid.
        let started = std::time::Instant::now();
        let record = || crate::telemetry::mbg_request(method.as_str(), path, started.elapsed());
        let response = request.send().await.map_err(|e| {
            record();
            let why = transport_error(&e);
            self.observe(Err(&why));
            match connect_error(&e, &self.base) {
                Some(unreachable) => fail(MbgErrorKind::Unreachable(unreachable)),
                None => fail(MbgErrorKind::Unavailable(why)),
            }
        })?;
        let status = response.status();
        if status.is_server_error() {
            self.observe(Err(&format!("{} answered {status}", endpoint())));
        } else {
            self.observe(Ok(()));
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let bytes = read_within(response, limit).await;
        record();
        let bytes = bytes.map_err(|e| match e {
            Unread::Transport(e) => fail(MbgErrorKind::Unavailable(transport_error(&e))),
            Unread::TooLarge => fail(MbgErrorKind::Malformed(format!(
                "the answer is larger than {limit} bytes: refused unread"
            ))),
        })?;
        if !status.is_success() {
            return Err(fail(error_kind(status, retry_after, path, &bytes)));
        }
        let expected = match answer {
            Answer::Json => "application/json",
            Answer::Form => "application/x-www-form-urlencoded",
        };
        if !content_type.starts_with(expected) {
            // A token answer carries secrets: never quote it.
            let quoted = match answer {
                Answer::Json => excerpt(&bytes),
                Answer::Form => "(body withheld)".into(),
            };
            return Err(fail(MbgErrorKind::Malformed(format!(
                "expected {expected}, got {:?}: {quoted}",
                if content_type.is_empty() {
                    "no content type"
                } else {
                    &content_type
                }
            ))));
        }
        Ok(bytes)
    }
}

/// Why an answer's body was not read.
enum Unread {
    Transport(reqwest::Error),
    TooLarge,
}

/// The body, chunk by chunk, refused as soon as it passes `limit` bytes (or announces more).
async fn read_within(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, Unread> {
    let announced = response.content_length().unwrap_or(0);
    if announced > limit as u64 {
        return Err(Unread::TooLarge);
    }
    let mut body = Vec::with_capacity(announced as usize);
    while let Some(chunk) = response.chunk().await.map_err(Unread::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(Unread::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn device_path(guid: &str) -> String {
    format!("mbg/v1/devices/sip/{}/", path_segment(guid))
}

/// Guids come from the MBG; refuse to let one add path segments.
fn path_segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC)
        .to_string()
        .replace("%2D", "-")
}

/// The start of a body, for an error message. Redacted whole before it is cut: a cut can turn a
/// JSON document into text that only the weaker scan reads, or end inside a secret.
fn excerpt(bytes: &[u8]) -> String {
    let redacted = redact(&String::from_utf8_lossy(bytes));
    let mut end = redacted.len().min(EXCERPT_BYTES);
    while !redacted.is_char_boundary(end) {
        end -= 1;
    }
    let more = if end < redacted.len() { "…" } else { "" };
    format!("{:?}{more}", &redacted[..end])
}

/// A connection that could not be made, in words an administrator can act on; `None` for a
/// failure after connecting (a reset, a timeout), which a retry may mend.
fn connect_error(error: &reqwest::Error, base: &MbgUrl) -> Option<String> {
    if !error.is_connect() || error.is_timeout() {
        return None;
    }
    let address = url::Url::parse(base.as_str())
        .ok()
        .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
        .unwrap_or_else(|| "the MBG".into());
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = next {
        // io::Errors nest (hyper's around tokio-rustls's around rustls's), and their `source`
        // skips the error each wraps: unwrap them by hand.
        let mut inner = Some(cause);
        while let Some(candidate) = inner {
            if let Some(tls) = candidate.downcast_ref::<rustls::Error>() {
                return Some(certificate_words(tls, &address));
            }
            let io = candidate.downcast_ref::<std::io::Error>();
            if io.is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused) {
                return Some(format!(
                    "connection refused at {address}: nothing listens there; check mbg.base_url"
                ));
            }
            inner = io
                .and_then(|io| io.get_ref())
                .map(|wrapped| wrapped as &(dyn std::error::Error + 'static));
        }
        if cause.to_string().starts_with("dns error") {
            return Some(format!(
                "the host of mbg.base_url ({address}) cannot be resolved: check the name, or use the MBG's address"
            ));
        }
        next = cause.source();
    }
    Some(format!("{}; check mbg.base_url", transport_error(error)))
}

/// Why rustls refused the MBG's certificate, and the fix.
fn certificate_words(error: &rustls::Error, address: &str) -> String {
    use rustls::CertificateError as Why;
    let rustls::Error::InvalidCertificate(why) = error else {
        return format!("the TLS handshake with {address} failed: {error}");
    };
    match why {
        Why::UnknownIssuer => format!(
            "the certificate of {address} is signed by a CA this machine does not trust (a self-signed certificate, as MBGs ship with, or the site's own CA): put that CA's certificate, or the MBG's own, in mbg.ca_file"
        ),
        Why::Expired | Why::ExpiredContext { .. } => {
            format!("the certificate of {address} has expired: renew it on the MBG (or its CA)")
        }
        Why::NotValidYet | Why::NotValidYetContext { .. } => format!(
            "the certificate of {address} is not valid yet: check this machine's clock and the MBG's"
        ),
        Why::NotValidForName | Why::NotValidForNameContext { .. } => format!(
            "the certificate of {address} is not for that name: put a name the certificate carries in mbg.base_url"
        ),
        other => format!("the certificate of {address} is refused ({other:?}): check mbg.ca_file"),
    }
}

/// reqwest's message with its causes (connection refused, timed out, reset).
fn transport_error(error: &reqwest::Error) -> String {
    let mut message = if error.is_timeout() {
        "timed out".to_string()
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

/// A JSON answer as `T`; a malformed one is quoted redacted and cut (see [`excerpt`]).
fn decode<T: DeserializeOwned>(endpoint: &str, bytes: &[u8]) -> Result<T, MbgError> {
    serde_json::from_slice(bytes).map_err(|e| malformed(endpoint, e, bytes))
}

fn malformed(endpoint: &str, error: serde_json::Error, bytes: &[u8]) -> MbgError {
    MbgError {
        endpoint: endpoint.to_string(),
        kind: MbgErrorKind::Malformed(format!("{error}: {}", excerpt(bytes))),
    }
}

/// The parsers of what an MBG answers, as the client uses them: for the fuzz targets
/// (`fuzz/`) and their proptest stand-ins, which feed them hostile bytes.
pub mod answers {
    use super::*;

    /// `GET mbg/v1/devices/sip/all/`.
    pub fn devices(bytes: &[u8]) -> Result<Vec<SipDevice>, MbgError> {
        decode::<List<Vec<SipDevice>>>("GET mbg/v1/devices/sip/all/", bytes).map(|l| l.response)
    }

    /// `GET mbg/v1/icps/all/`.
    pub fn icps(bytes: &[u8]) -> Result<Vec<Icp>, MbgError> {
        decode::<List<Vec<Icp>>>("GET mbg/v1/icps/all/", bytes).map(|l| l.response)
    }

    /// The answer of `POST initiate` or `POST token`.
    pub fn token(bytes: &[u8]) -> Result<TokenCredentials, MbgError> {
        let form = std::str::from_utf8(bytes).map_err(|_| MbgError {
            endpoint: "POST token".into(),
            kind: MbgErrorKind::Malformed("token answer is not UTF-8".into()),
        })?;
        token_from_form("POST token", form)
    }

    /// A refusal: what the client makes of `status` and `body`.
    pub fn refusal(status: u16, body: &[u8]) -> MbgErrorKind {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        error_kind(status, None, "mbg/v1/devices/sip/", body)
    }
}

fn error_kind(
    status: StatusCode,
    retry_after: Option<Duration>,
    path: &str,
    body: &[u8],
) -> MbgErrorKind {
    let message = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| redact(&b.error))
        .unwrap_or_else(|_| excerpt(body));
    match status.as_u16() {
        400 if message.contains("no teleworker licence") => MbgErrorKind::NoLicence,
        400 => MbgErrorKind::BadRequest(message),
        401 => MbgErrorKind::Unauthorized(message),
        403 => MbgErrorKind::Forbidden {
            permission: permission_for(path),
        },
        404 => MbgErrorKind::NotFound,
        429 => MbgErrorKind::RateLimited(retry_after),
        503 if retry_after.is_some() => MbgErrorKind::RateLimited(retry_after),
        500..=599 => MbgErrorKind::Unavailable(format!("{status}: {message}")),
        _ => MbgErrorKind::Malformed(format!("unexpected status {status}: {message}")),
    }
}

/// The consumer permission the contract names for a resource path.
pub(crate) fn permission_for(path: &str) -> &'static str {
    if path.starts_with("base/v1/managetoken") {
        "Base/managetoken"
    } else if path.starts_with("mbg/v1/icps") {
        "MBG/v1/icps"
    } else if path.starts_with("mbg/v1/devices") {
        "MBG/v1/devices"
    } else {
        "(unknown)"
    }
}

/// Reads `oauth_token` and `oauth_token_secret` from a token answer, ignoring other parameters.
///
/// Not a form decoder: a server may leave a token's `+ / =` unencoded, and tokens never hold a
/// space, so a bare `+` is a `+` here. Percent-escapes are decoded.
fn token_from_form(endpoint: &str, form: &str) -> Result<TokenCredentials, MbgError> {
    let malformed = |why: &str| MbgError {
        endpoint: endpoint.to_string(),
        kind: MbgErrorKind::Malformed(why.into()),
    };
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| malformed("the token answer is not UTF-8 once decoded"))
    };
    let mut token = None;
    let mut secret = None;
    for pair in form.trim().split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match decode(name)?.as_str() {
            "oauth_token" => token = Some(decode(value)?),
            "oauth_token_secret" => secret = Some(decode(value)?),
            _ => {}
        }
    }
    match (token, secret) {
        (Some(token), Some(secret)) if !token.is_empty() => Ok(TokenCredentials {
            token: token.into(),
            secret: secret.into(),
        }),
        _ => Err(malformed(
            "the answer lacks oauth_token or oauth_token_secret",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_answers_keep_plus_slash_and_equals_encoded_or_not() {
        let encoded = token_from_form(
            "POST token",
            "oauth_token=or7z4alsrn2%2Bpyuwm33djq%3D%3D&oauth_token_secret=a%2Fb%3D&oauth_authorized_realms=",
        )
        .unwrap();
        assert_eq!(encoded.token.expose_secret(), "or7z4alsrn2+pyuwm33djq==");
        assert_eq!(encoded.secret.expose_secret(), "a/b=");
        // The shape of a real MBG's answer, left unencoded (docs/mbg-api.md: `+ / =` must survive).
        let bare = token_from_form(
            "POST initiate",
            "oauth_token=or7z4alsrn2+pyuwm33djq==&oauth_token_secret=ab/c+d==&oauth_callback_confirmed=true\n",
        )
        .unwrap();
        assert_eq!(bare.token.expose_secret(), "or7z4alsrn2+pyuwm33djq==");
        assert_eq!(bare.secret.expose_secret(), "ab/c+d==");
        // A literal `%2B` next to a bare `+`: escapes decode, the bare `+` stays.
        let mixed =
            token_from_form("POST token", "oauth_token=a+b%2Bc&oauth_token_secret=").unwrap();
        assert_eq!(mixed.token.expose_secret(), "a+b+c");
        assert_eq!(mixed.secret.expose_secret(), "");
        assert!(token_from_form("POST token", "oauth_callback_confirmed=true").is_err());
        assert!(token_from_form("POST token", "oauth_token=&oauth_token_secret=s").is_err());
        assert!(token_from_form("POST token", "oauth_token=%FF&oauth_token_secret=s").is_err());
    }

    /// Found by the hostile-input suite: a key after a multi-byte character (an accented
    /// description, or the U+FFFD of a body that is not UTF-8) panicked the redactor.
    #[test]
    fn a_key_after_a_multibyte_character_is_redacted_without_a_panic() {
        for body in [
            "Büro:x password: hunter22 more",
            "caf\u{e9}\u{fffd}password=hunter22&x",
            "<p>\u{fffd}:setside_password: hunter22</p>",
        ] {
            let quoted = excerpt(body.as_bytes());
            assert!(!quoted.contains("hunter22"), "{quoted}");
        }
        let broken = b"{\"description\":\"\xff\xfe\",\"setside_password\":\"hunter22\"";
        assert!(!excerpt(broken).contains("hunter22"));
    }

    #[test]
    fn excerpts_are_redacted_before_they_are_cut() {
        // The escaped quote is inside the first 200 bytes and the closing quote beyond them.
        let body = format!(
            r#"{{"description":"{}","setside_password":"Leak\"Pass-{}"}}"#,
            "x".repeat(150),
            "1".repeat(100)
        );
        let quoted = excerpt(body.as_bytes());
        assert!(
            !quoted.contains("Pass") && !quoted.contains("Leak"),
            "{quoted}"
        );
        assert!(
            quoted.contains(r#"\"setside_password\":\"***\""#),
            "{quoted}"
        );
        let long = excerpt(format!(r#"{{"error":"{}"}}"#, "é".repeat(300)).as_bytes());
        assert!(long.len() <= EXCERPT_BYTES + 8, "{long}");
        assert!(long.ends_with('…'), "says that it was cut: {long}");
        let short = excerpt(b"<html>\xc3\xa9</html>");
        assert_eq!(short, "\"<html>é</html>\"");
    }

    #[test]
    fn patches_carry_only_what_changes() {
        let patch = SipDevicePatch {
            icp: Some("MiVO250-2".into()),
            ..SipDevicePatch::default()
        };
        assert_eq!(patch.to_json(), json!({ "icp": "MiVO250-2" }));
        assert!(SipDevicePatch::default().is_empty());
        assert!(!patch.is_empty());
    }

    #[test]
    fn statuses_map_to_what_the_caller_can_do() {
        let kind = |status: u16, retry: Option<u64>, body: &str| {
            error_kind(
                StatusCode::from_u16(status).unwrap(),
                retry.map(Duration::from_secs),
                "mbg/v1/devices/sip/",
                body.as_bytes(),
            )
        };
        assert_eq!(
            kind(400, None, r#"{"error":"no teleworker licence available"}"#),
            MbgErrorKind::NoLicence
        );
        assert_eq!(
            kind(400, None, r#"{"error":"unknown ICP"}"#),
            MbgErrorKind::BadRequest("unknown ICP".into())
        );
        assert_eq!(
            kind(403, None, "{}"),
            MbgErrorKind::Forbidden {
                permission: "MBG/v1/devices"
            }
        );
        assert_eq!(
            kind(429, Some(7), ""),
            MbgErrorKind::RateLimited(Some(Duration::from_secs(7)))
        );
        assert_eq!(
            kind(503, Some(3), ""),
            MbgErrorKind::RateLimited(Some(Duration::from_secs(3)))
        );
        assert!(matches!(
            kind(502, None, "<html>"),
            MbgErrorKind::Unavailable(_)
        ));
        assert_eq!(path_segment("a/../b"), "a%2F%2E%2E%2Fb");
    }
}
