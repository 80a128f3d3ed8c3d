//! How the simulator reads a signed request: the `Authorization` header and the query as the
//! server received them, and the base string URI from the `Host` the client addressed. The base
//! string is built here, apart from the client's ([`crate::oauth`]): a simulator that shared
//! the client's reading of RFC 5849 would agree with the client's bugs. Only the HMAC-SHA1
//! primitive is shared.

use percent_encoding::percent_decode_str;

fn decode(text: &str) -> Result<String, String> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("parameter {text:?} is not UTF-8"))
}

/// The parameters of an `Authorization: OAuth ...` header, decoded (section 3.5.1).
/// `realm` is dropped: it is not part of the signature.
pub(crate) fn header_params(header: &str) -> Result<Vec<(String, String)>, String> {
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

/// RFC 5849 section 3.6, byte by byte: everything but ALPHA, DIGIT, `-`, `.`, `_`, `~` as
/// `%XX` with uppercase hex digits.
fn rfc5849_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// A query's name or value as section 3.4.1.3.1 reads it: a form, so `+` is a space.
fn form_decode(text: &str) -> Result<String, String> {
    decode(&text.replace('+', " "))
}

/// The signature base string of section 3.4.1, from the request as the server received it:
/// the method, the scheme, the `Host` header, the path and query as sent, and the decoded
/// parameters of the `Authorization` header. Written apart from [`crate::oauth::base_string`]
/// (the client's) on purpose: a misreading of the RFC in one is refused by the other.
pub(crate) fn base_string(
    method: &str,
    scheme: &str,
    host: &str,
    path_and_query: &str,
    header_params: &[(String, String)],
) -> Result<String, String> {
    // Section 3.4.1.2: lowercase scheme and host, no default port, the path as sent, no query.
    let host = host.to_ascii_lowercase();
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    let host = host.strip_suffix(default_port).unwrap_or(&host);
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let uri = format!("{}://{host}{path}", scheme.to_ascii_lowercase());
    // Section 3.4.1.3.2: every name and value encoded, then sorted by name, then by value,
    // as bytes.
    let mut pairs: Vec<(String, String)> = header_params
        .iter()
        .filter(|(name, _)| name != "oauth_signature")
        .map(|(name, value)| (rfc5849_encode(name), rfc5849_encode(value)))
        .collect();
    for part in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        pairs.push((
            rfc5849_encode(&form_decode(name)?),
            rfc5849_encode(&form_decode(value)?),
        ));
    }
    pairs.sort_by(|a, b| {
        a.0.as_bytes()
            .cmp(b.0.as_bytes())
            .then_with(|| a.1.as_bytes().cmp(b.1.as_bytes()))
    });
    let normalized: Vec<String> = pairs
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    Ok(format!(
        "{}&{}&{}",
        method.to_ascii_uppercase(),
        rfc5849_encode(&uri),
        rfc5849_encode(&normalized.join("&"))
    ))
}

/// The parameters of the query as sent, decoded as section 3.4.1.3.1 reads them.
pub(crate) fn query_params(path_and_query: &str) -> Result<Vec<(String, String)>, String> {
    let query = path_and_query.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|part| {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            Ok((form_decode(name)?, form_decode(value)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth;
    use proptest::prelude::*;

    /// RFC 5849 section 1.2, the protected resource request, as the RFC prints it: header with
    /// `realm` and spaces, port 80 in `Host`.
    #[test]
    fn verifies_the_rfc_example_and_nothing_else() {
        let header = r#"OAuth realm="Photos", oauth_consumer_key="dpf43f3p2l4k3l03", oauth_token="nnch734d00sl2jdk", oauth_signature_method="HMAC-SHA1", oauth_timestamp="137131202", oauth_nonce="chapoH", oauth_signature="MdpQcU8iPSUjWoN%2FUDMsK2sui9I%3D""#;
        let params = header_params(header).unwrap();
        let signature = params
            .iter()
            .find(|(n, _)| n == "oauth_signature")
            .unwrap()
            .1
            .clone();
        let base = base_string(
            "GET",
            "http",
            "photos.example.net:80",
            "/photos?file=vacation.jpg&size=original",
            &params,
        )
        .unwrap();
        assert_eq!(
            base,
            "GET&http%3A%2F%2Fphotos.example.net%2Fphotos&file%3Dvacation.jpg%26\
             oauth_consumer_key%3Ddpf43f3p2l4k3l03%26oauth_nonce%3DchapoH%26\
             oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D137131202%26\
             oauth_token%3Dnnch734d00sl2jdk%26size%3Doriginal"
        );
        assert!(oauth::verify(
            &base,
            "kd94hf93k423kf44",
            "pfkkdhi9sl3r4s00",
            &signature
        ));
        assert!(!oauth::verify(
            &base,
            "kd94hf93k423kf45",
            "pfkkdhi9sl3r4s00",
            &signature
        ));
        let other = base_string(
            "POST",
            "http",
            "photos.example.net",
            "/photos?file=vacation.jpg&size=original",
            &params,
        )
        .unwrap();
        assert!(!oauth::verify(
            &other,
            "kd94hf93k423kf44",
            "pfkkdhi9sl3r4s00",
            &signature
        ));
    }

    /// Section 3.4.1.3.2's order is of the *encoded* pairs: `a%3D` sorts before `a-`, though
    /// `=` sorts after `-`. A client that sorted before encoding would sign another string.
    #[test]
    fn sorts_the_encoded_pairs_not_the_raw_ones() {
        let base = base_string("GET", "http", "h", "/p?a-=1&a%3D=2", &[]).unwrap();
        assert!(base.ends_with("&a%253D%3D2%26a-%3D1"), "{base}");
    }

    proptest! {
        /// The two readings of RFC 5849 (the client's and this one) agree on any request:
        /// names and values with spaces, `+`, `=`, `&`, `%`, non-ASCII, repeated names.
        #[test]
        fn agrees_with_the_clients_base_string(
            query in proptest::collection::vec(("[a-c=+ &%é~-]{0,4}", "[a-c=+ &%é~-]{0,4}"), 0..5),
            oauth_params in proptest::collection::vec(("oauth_[a-z]{1,3}", "[A-Za-z0-9+/=]{0,6}"), 0..4),
            port in proptest::option::of(1u16..),
        ) {
            let encoded_query: Vec<String> = query
                .iter()
                .map(|(n, v)| format!("{}={}", oauth::encode(n), oauth::encode(v)))
                .collect();
            let path_and_query = if query.is_empty() {
                "/mbg/v1/devices/sip/".to_string()
            } else {
                format!("/mbg/v1/devices/sip/?{}", encoded_query.join("&"))
            };
            let host = match port {
                Some(port) => format!("MBG.Example:{port}"),
                None => "MBG.Example".to_string(),
            };
            let url = url::Url::parse(&format!("http://{host}{path_and_query}")).unwrap();
            let mut client_params = oauth::query_params(&url);
            client_params.extend(oauth_params.iter().cloned());
            let client = oauth::base_string("PUT", &oauth::base_uri(&url), &client_params);
            let server = base_string("PUT", "http", &host, &path_and_query, &oauth_params).unwrap();
            prop_assert_eq!(client, server);
        }
    }
}
