//! How the simulator reads a signed request: the `Authorization` header and the query as the
//! server received them, and the base string URI from the `Host` the client addressed. The base
//! string and the HMAC are [`crate::oauth`]'s, the one RFC 5849 implementation of this crate,
//! which its tests check against the RFC and against `oauth1-request`.

use percent_encoding::percent_decode_str;

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

/// The request as section 3.4.1 sees it: the base string URI and the query's parameters.
pub fn request_url(
    scheme: &str,
    host_header: &str,
    path_and_query: &str,
) -> Result<url::Url, String> {
    url::Url::parse(&format!("{scheme}://{host_header}{path_and_query}"))
        .map_err(|e| format!("cannot read the request URL: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth;

    /// RFC 5849 section 1.2, the protected resource request, as the RFC prints it: header with
    /// `realm` and spaces, port 80 in `Host`.
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
        let url = request_url(
            "http",
            "photos.example.net:80",
            "/photos?file=vacation.jpg&size=original",
        )
        .unwrap();
        params.extend(oauth::query_params(&url));
        let uri = oauth::base_uri(&url);
        assert_eq!(uri, "http://photos.example.net/photos");
        let base = oauth::base_string("GET", &uri, &params);
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
        let other = oauth::base_string("POST", &uri, &params);
        assert!(!oauth::verify(
            &other,
            "kd94hf93k423kf44",
            "pfkkdhi9sl3r4s00",
            &signature
        ));
    }
}
