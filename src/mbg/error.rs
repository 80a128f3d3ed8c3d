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
    /// No connection at all: refused, a name that does not resolve, a certificate refused. Not
    /// retried within a pass (it will not mend in seconds); the words say what to check.
    Unreachable(String),
    /// The MBG answered something that is not the contract (HTML page, bad JSON, wrong type).
    Malformed(String),
    /// Our side: a CA file that does not load, a URL we cannot build.
    Setup(String),
    /// Not sent: this instance's lease lapsed, so another may lead (see [`crate::lease`]).
    NotLeading(crate::lease::Lapsed),
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
            MbgErrorKind::Unreachable(why) => write!(
                f,
                "cannot connect: {why} (`mbg-provision preflight` checks the whole way to the MBG)"
            ),
            MbgErrorKind::Malformed(what) => write!(f, "unexpected answer: {what}"),
            MbgErrorKind::Setup(why) => write!(f, "{why}"),
            MbgErrorKind::NotLeading(lapsed) => write!(f, "not sent: {lapsed}"),
        }
    }
}

/// What a blanked value is replaced with.
const BLANK: &str = "***";

/// Whether a key names a secret: the device passwords, the consumer secret, the OAuth tokens.
fn is_sensitive(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token"]
        .iter()
        .any(|s| key.contains(s))
}

/// Blanks every value whose key names a secret in a body that an error message quotes: a JSON
/// document (at any depth), a form (`oauth_token_secret=...`), or, for anything else (an HTML
/// page, a body cut short), every `key: value` or `key=value` whose key names a secret, to the end
/// of its value or, when the value does not end, of the text.
pub fn redact(text: &str) -> String {
    if let Ok(mut value) = serde_json::from_str::<serde_json::Value>(text) {
        blank_json(&mut value);
        return value.to_string();
    }
    if let Some(form) = redact_form(text.trim()) {
        return form;
    }
    redact_text(text)
}

fn blank_json(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if is_sensitive(key) {
                    *value = Value::from(BLANK);
                } else {
                    blank_json(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(blank_json),
        _ => {}
    }
}

/// A form body (`name=value&...`, no spaces, quotes or brackets), with secret values blanked;
/// `None` when the text is not shaped like one.
fn redact_form(text: &str) -> Option<String> {
    let is_form = !text.is_empty()
        && !text.contains(|c: char| c.is_whitespace() || "\"'{}[]<>:,".contains(c))
        && text.split('&').all(|pair| pair.contains('='));
    if !is_form {
        return None;
    }
    let pairs: Vec<String> = text
        .split('&')
        .map(|pair| {
            let (name, _) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
            if is_sensitive(&decoded) {
                format!("{name}={BLANK}")
            } else {
                pair.to_string()
            }
        })
        .collect();
    Some(pairs.join("&"))
}

/// The conservative scan, for text that is neither JSON nor a form.
fn redact_text(text: &str) -> String {
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
        // After the last character that cannot be part of a key; that character may be several
        // bytes long (a lossily decoded body holds U+FFFD), so step over all of it.
        let key_start = before
            .char_indices()
            .rev()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_' || c == '"' || c == ' '))
            .map_or(0, |(i, c)| i + c.len_utf8());
        if !is_sensitive(&before[key_start..]) {
            continue;
        }
        let value = rest.trim_start();
        out.push_str(&rest[..rest.len() - value.len()]);
        let end = match value.chars().next() {
            Some('"') => quoted_end(value),
            Some('{' | '[') => nested_end(value),
            _ => value.find(['&', ',', '}', ']', ' ']).unwrap_or(value.len()),
        };
        out.push_str(if value.starts_with('"') {
            "\"***\""
        } else {
            BLANK
        });
        rest = &value[end..];
    }
    out
}

/// The length of a JSON string at the start of `text`, escapes included; all of `text` when the
/// string does not end.
fn quoted_end(text: &str) -> usize {
    let mut escaped = false;
    for (i, c) in text.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return i + 1,
            _ => {}
        }
    }
    text.len()
}

/// The length of the object or array at the start of `text`; all of `text` when it does not end.
fn nested_end(text: &str) -> usize {
    let mut depth = 0usize;
    let mut i = 0;
    while i < text.len() {
        match text.as_bytes()[i] {
            b'"' => {
                i += quoted_end(&text[i..]);
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_hidden(redacted: &str, secrets: &[&str]) {
        for secret in secrets {
            assert!(!redacted.contains(secret), "{secret} in {redacted}");
        }
    }

    #[test]
    fn redacts_json_at_any_depth_escaped_quotes_included() {
        let json = r#"{"guid":"g1","setside_password":"Leak\"Pass-111111","icpside_username":"1001","icpside_password":"pbxpass1","nested":{"list":[{"oauth_token_secret":"deep-s3cret"}]},"Password":12345678}"#;
        let redacted = redact(json);
        assert_hidden(
            &redacted,
            &["Leak", "Pass-111111", "pbxpass1", "deep-s3cret", "12345678"],
        );
        let value: serde_json::Value = serde_json::from_str(&redacted).unwrap();
        assert_eq!(value["icpside_username"], "1001");
        assert_eq!(value["guid"], "g1");
        assert_eq!(value["setside_password"], "***");
        assert_eq!(value["nested"]["list"][0]["oauth_token_secret"], "***");
    }

    #[test]
    fn redacts_forms_encoded_or_not() {
        let form = "oauth_token=or7z4alsrn2+pyuwm33djq==&oauth_token_secret=ab/c+d==&oauth_callback_confirmed=true";
        let redacted = redact(form);
        assert_hidden(&redacted, &["or7z4alsrn2", "pyuwm33djq", "ab/c", "+d=="]);
        assert!(
            redacted.contains("oauth_callback_confirmed=true"),
            "{redacted}"
        );
        let encoded = redact("oauth%5Ftoken=abc%2B%3D&x=1");
        assert_hidden(&encoded, &["abc"]);
        assert!(encoded.ends_with("&x=1"), "{encoded}");
    }

    #[test]
    fn redacts_bodies_that_are_cut_short_or_not_json() {
        // Invalid JSON (cut by the server): the scan must step over the escaped quote.
        let cut = r#"{"response": [{"setside_password": "Leak\"Pass-111111", "icpside_password": {"x": "nested-pass"}, "icp": "MiVO250-1""#;
        let redacted = redact(cut);
        assert_hidden(&redacted, &["Leak", "Pass-111111", "nested-pass"]);
        assert!(redacted.contains(r#""icp": "MiVO250-1""#), "{redacted}");
        // A value that never ends is blanked to the end.
        let open = r#"{"guid": "g1", "setside_password": "Leak\"Pass-111111, more"#;
        assert_hidden(&redact(open), &["Pass-111111", "more"]);
        assert_eq!(
            redact("<html>Server Error</html>"),
            "<html>Server Error</html>"
        );
        assert_hidden(
            &redact("weak password: hunter22x, try again"),
            &["hunter22x"],
        );
    }
}
