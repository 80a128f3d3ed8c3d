//! MBG call errors, by what the caller can do about them.

use std::fmt;
use std::time::Duration;

/// What went wrong, in the terms the reconciler acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MbgErrorKind {
    /// 401: the token is gone (expired, revoked) or the credentials are wrong. Stop calling.
    Unauthorized(String),
    /// 403: the consumer lacks the named permission on the MBG.
    Forbidden {
        permission: &'static str,
    },
    NotFound,
    /// 400 with the MBG's message.
    BadRequest(String),
    /// 400 "no teleworker licence available".
    NoLicence,
    /// 429 (or 503 with `Retry-After`): try again after this long.
    RateLimited(Option<Duration>),
    /// 5xx, connection reset, timeout: try again with backoff.
    Unavailable(String),
    /// The MBG answered something that is not the contract (HTML page, bad JSON, wrong type).
    Malformed(String),
    /// Our side: a CA file that does not load, a URL we cannot build.
    Setup(String),
}

/// An MBG call that failed: which endpoint, and why. Never holds a secret: bodies are redacted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct MbgError {
    /// e.g. `GET mbg/v1/devices/sip/all/`
    pub endpoint: String,
    pub kind: MbgErrorKind,
}

impl MbgError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            MbgErrorKind::RateLimited(_) | MbgErrorKind::Unavailable(_)
        )
    }
}

impl fmt::Display for MbgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MBG {}: ", self.endpoint)?;
        match &self.kind {
            MbgErrorKind::Unauthorized(why) => {
                let hint = if self.endpoint.ends_with("initiate") {
                    "check the consumer ID and its shared secret on the MBG"
                } else if self.endpoint.ends_with(" token") {
                    "check the verifier, and that the temporary token was approved"
                } else {
                    "the access token is expired, revoked or wrong; see `mbg-provision token status`"
                };
                write!(f, "401 unauthorized ({why}): {hint}")
            }
            MbgErrorKind::Forbidden { permission } => write!(
                f,
                "403 forbidden: the web-services consumer lacks the permission {permission}; add it on the MBG"
            ),
            MbgErrorKind::NotFound => write!(f, "404 not found"),
            MbgErrorKind::BadRequest(message) => write!(f, "400 bad request: {message}"),
            MbgErrorKind::NoLicence => write!(f, "no teleworker licence available on the MBG"),
            MbgErrorKind::RateLimited(Some(after)) => {
                write!(f, "rate limited, retry after {} s", after.as_secs())
            }
            MbgErrorKind::RateLimited(None) => write!(f, "rate limited"),
            MbgErrorKind::Unavailable(why) => write!(f, "unavailable: {why}"),
            MbgErrorKind::Malformed(what) => write!(f, "unexpected answer: {what}"),
            MbgErrorKind::Setup(why) => write!(f, "{why}"),
        }
    }
}

/// Blanks the values of anything that looks like a password, secret or token in a body excerpt,
/// in JSON (`"setside_password": "..."`) and in forms (`oauth_token_secret=...`).
pub fn redact(text: &str) -> String {
    const SENSITIVE: [&str; 3] = ["password", "secret", "token"];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        // The next key: a JSON string followed by ':' or a form name followed by '='.
        let Some(pos) = rest.find([':', '=']) else {
            out.push_str(rest);
            break;
        };
        let (before, after) = rest.split_at(pos);
        out.push_str(before);
        out.push_str(&after[..1]);
        rest = &after[1..];
        let key_start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '"' || c == ' '))
            .map_or(0, |i| i + 1);
        let key = before[key_start..].to_ascii_lowercase();
        if SENSITIVE.iter().any(|s| key.contains(s)) {
            let trimmed = rest.trim_start();
            out.push_str(&rest[..rest.len() - trimmed.len()]);
            if let Some(quoted) = trimmed.strip_prefix('"') {
                let end = quoted.find('"').map_or(quoted.len(), |i| i + 1);
                out.push_str("\"***\"");
                rest = &quoted[end.min(quoted.len())..];
            } else {
                let end = trimmed.find(['&', ',', '}', ' ']).unwrap_or(trimmed.len());
                out.push_str("***");
                rest = &trimmed[end..];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_json_and_form_secrets() {
        let json = r#"{"guid":"g1","setside_password": "hunter22x","icpside_username":"1001","icpside_password":"pbxpass1"}"#;
        let redacted = redact(json);
        assert!(
            !redacted.contains("hunter22x") && !redacted.contains("pbxpass1"),
            "{redacted}"
        );
        assert!(
            redacted.contains("\"icpside_username\":\"1001\""),
            "{redacted}"
        );
        let form = "oauth_token=abc%2B%3D&oauth_token_secret=xyz&oauth_callback_confirmed=true";
        let redacted = redact(form);
        assert!(
            !redacted.contains("abc") && !redacted.contains("xyz"),
            "{redacted}"
        );
        assert!(
            redacted.contains("oauth_callback_confirmed=true"),
            "{redacted}"
        );
        assert_eq!(
            redact("<html>Server Error</html>"),
            "<html>Server Error</html>"
        );
    }
}
