//! The simulator's own OAuth 1.0a verification, written from RFC 5849 section 3.4 without the
//! client's signer, so that a bug in the client cannot hide behind the same bug here.

use base64::Engine;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha1::Sha1;

/// RFC 5849 section 3.6: everything but ALPHA, DIGIT, `-`, `.`, `_`, `~` is encoded.
const RFC3986: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub fn encode(text: &str) -> String {
    utf8_percent_encode(text, RFC3986).to_string()
}

fn decode(text: &str) -> Result<String, String> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("parameter {text:?} is not UTF-8"))
}

/// The parameters of an `Authorization: OAuth ...` header, decoded (section 3.5.1).
/// `realm` is dropped: it is not part of the signature.
pub fn header_params(header: &str) -> Result<Vec<(String, String)>, String> {
    let rest = header
        .trim()
        .strip_prefix("OAuth ")
        .ok_or("Authorization is not of the OAuth scheme")?;
    let mut params = Vec::new();
    for pair in rest.split(',') {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("malformed OAuth parameter {pair:?}"))?;
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or_else(|| format!("OAuth parameter {name} is not quoted"))?;
        let name = decode(name.trim())?;
        if name != "realm" {
            params.push((name, decode(value)?));
        }
    }
    Ok(params)
}

/// The parameters of a query string or form body, decoded (`+` is a space in forms).
pub fn form_params(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((
                decode(&name.replace('+', " "))?,
                decode(&value.replace('+', " "))?,
            ))
        })
        .collect()
}

/// Section 3.4.1.2: lowercase scheme and host, the port only when it is not the default.
pub fn base_uri(scheme: &str, host_header: &str, path: &str) -> String {
    let scheme = scheme.to_ascii_lowercase();
    let host = host_header.to_ascii_lowercase();
    let host = match (scheme.as_str(), host.rsplit_once(':')) {
        ("http", Some((h, "80"))) | ("https", Some((h, "443"))) => h.to_string(),
        _ => host,
    };
    format!("{scheme}://{host}{path}")
}

/// Section 3.4.1: method, base URI and the normalized parameters, `oauth_signature` excluded.
pub fn base_string(method: &str, base_uri: &str, params: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> = params
        .iter()
        .filter(|(name, _)| name != "oauth_signature")
        .map(|(n, v)| (encode(n), encode(v)))
        .collect();
    encoded.sort();
    let normalized = encoded
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    format!(
        "{}&{}&{}",
        method.to_ascii_uppercase(),
        encode(base_uri),
        encode(&normalized)
    )
}

/// Section 3.4.2, compared in constant time.
pub fn verify_hmac_sha1(
    base_string: &str,
    consumer_secret: &str,
    token_secret: &str,
    signature_base64: &str,
) -> bool {
    let Ok(signature) = base64::engine::general_purpose::STANDARD.decode(signature_base64) else {
        return false;
    };
    let key = format!("{}&{}", encode(consumer_secret), encode(token_secret));
    let mut mac = Hmac::<Sha1>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
    mac.update(base_string.as_bytes());
    mac.verify_slice(&signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5849 section 1.2, the protected resource request, as the RFC prints it.
    #[test]
    fn verifies_the_rfc_example_and_nothing_else() {
        let header = r#"OAuth realm="Photos", oauth_consumer_key="dpf43f3p2l4k3l03", oauth_token="nnch734d00sl2jdk", oauth_signature_method="HMAC-SHA1", oauth_timestamp="137131202", oauth_nonce="chapoH", oauth_signature="MdpQcU8iPSUjWoN%2FUDMsK2sui9I%3D""#;
        let mut params = header_params(header).unwrap();
        let signature = params
            .iter()
            .find(|(n, _)| n == "oauth_signature")
            .unwrap()
            .1
            .clone();
        params.extend(form_params("file=vacation.jpg&size=original").unwrap());
        let uri = base_uri("http", "photos.example.net:80", "/photos");
        assert_eq!(uri, "http://photos.example.net/photos");
        let base = base_string("GET", &uri, &params);
        assert_eq!(
            base,
            "GET&http%3A%2F%2Fphotos.example.net%2Fphotos&file%3Dvacation.jpg%26\
             oauth_consumer_key%3Ddpf43f3p2l4k3l03%26oauth_nonce%3DchapoH%26\
             oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D137131202%26\
             oauth_token%3Dnnch734d00sl2jdk%26size%3Doriginal"
        );
        assert!(verify_hmac_sha1(
            &base,
            "kd94hf93k423kf44",
            "pfkkdhi9sl3r4s00",
            &signature
        ));
        assert!(!verify_hmac_sha1(
            &base,
            "kd94hf93k423kf45",
            "pfkkdhi9sl3r4s00",
            &signature
        ));
        let other = base_string("POST", &uri, &params);
        assert!(!verify_hmac_sha1(
            &other,
            "kd94hf93k423kf44",
            "pfkkdhi9sl3r4s00",
            &signature
        ));
    }

    #[test]
    fn encodes_as_section_3_6_says() {
        assert_eq!(
            encode("or7z4alsrn2+pyuwm33djq=="),
            "or7z4alsrn2%2Bpyuwm33djq%3D%3D"
        );
        assert_eq!(encode("a b~c-d_e.f/g"), "a%20b~c-d_e.f%2Fg");
        assert_eq!(encode("é"), "%C3%A9");
    }
}
