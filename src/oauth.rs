//! OAuth 1.0a request signing (RFC 5849, HMAC-SHA1, `Authorization` header), for the three kinds of
//! call the MBG takes: getting a temporary token, trading it for an access token, and everything
//! else. The signing itself is `oauth1-request`'s; this module decides which credentials and
//! protocol parameters go into each kind of call.
//!
//! The header carries the token, so it is as secret as the token: never log it.

use std::fmt;
use std::num::NonZeroU64;

use secrecy::{ExposeSecret, SecretString};

/// The consumer as registered on the MBG: "ConsumerID" and its "shared secret".
#[derive(Clone)]
pub struct ClientCredentials {
    pub key: String,
    pub secret: SecretString,
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("key", &self.key)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

/// A temporary or access token and its secret. Both are secret: the token alone identifies the
/// administrator's approval.
#[derive(Debug, Clone)]
pub struct TokenCredentials {
    pub token: SecretString,
    pub secret: SecretString,
}

/// Which stage of OAuth a request belongs to.
#[derive(Debug, Clone, Copy)]
pub enum Grant<'a> {
    /// Step 1: consumer credentials only. The MBG flow has no browser to call back, so the
    /// client always passes [`OUT_OF_BAND`].
    Temporary { callback: &'a str },
    /// Step 3: consumer + the approved temporary token + the verifier the administrator copied.
    Exchange {
        temporary: &'a TokenCredentials,
        verifier: &'a str,
    },
    /// Every API call: consumer + access token.
    Access(&'a TokenCredentials),
}

/// The callback value for "no callback": the administrator copies the verifier by hand.
pub const OUT_OF_BAND: &str = "oob";

/// Fixed nonce and timestamp, for test vectors; `None` in real use.
#[derive(Debug, Clone, Copy)]
pub struct Pinned<'a> {
    pub nonce: &'a str,
    pub timestamp: u64,
}

/// The `Authorization` header value for `method uri` with the given query parameters
/// (`uri` without its query; JSON bodies are not signed, as RFC 5849 says).
pub fn authorization(
    method: &str,
    uri: &str,
    query: &[(&str, &str)],
    client: &ClientCredentials,
    grant: Grant<'_>,
    pinned: Option<Pinned<'_>>,
) -> String {
    let consumer = oauth::Credentials::new(client.key.as_str(), client.secret.expose_secret());
    let mut builder = oauth::Builder::<_, _, &str>::new(consumer, oauth::HMAC_SHA1);
    match grant {
        Grant::Temporary { callback } => {
            builder.callback(callback);
        }
        Grant::Exchange {
            temporary,
            verifier,
        } => {
            builder
                .token(oauth::Credentials::new(
                    temporary.token.expose_secret(),
                    temporary.secret.expose_secret(),
                ))
                .verifier(verifier);
        }
        Grant::Access(access) => {
            builder.token(oauth::Credentials::new(
                access.token.expose_secret(),
                access.secret.expose_secret(),
            ));
        }
    }
    if let Some(pinned) = pinned {
        builder
            .nonce(pinned.nonce)
            .timestamp(NonZeroU64::new(pinned.timestamp));
    }
    builder.authorize(method, uri, &oauth::ParameterList::new(query.to_vec()))
}

#[cfg(test)]
mod tests {
    //! The worked examples of RFC 5849 section 1.2 (the photo-printing service), all HMAC-SHA1.

    use super::*;

    fn printer() -> ClientCredentials {
        ClientCredentials {
            key: "dpf43f3p2l4k3l03".into(),
            secret: "kd94hf93k423kf44".into(),
        }
    }

    /// The `oauth_*` parameters of a header, decoded, sorted by name.
    fn params(header: &str) -> Vec<(String, String)> {
        let rest = header.strip_prefix("OAuth ").expect("OAuth scheme");
        let mut params: Vec<(String, String)> = rest
            .split(',')
            .map(|pair| {
                let (name, value) = pair.trim().split_once('=').unwrap();
                let value = value.trim_matches('"');
                (
                    name.to_string(),
                    percent_encoding::percent_decode_str(value)
                        .decode_utf8()
                        .unwrap()
                        .into_owned(),
                )
            })
            .collect();
        params.sort();
        params
    }

    fn get<'a>(params: &'a [(String, String)], name: &str) -> &'a str {
        &params.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn temporary_credentials_request_of_rfc_5849_section_1_2() {
        let header = authorization(
            "POST",
            "https://photos.example.net/initiate",
            &[],
            &printer(),
            Grant::Temporary {
                callback: "http://printer.example.com/ready",
            },
            Some(Pinned {
                nonce: "wIjqoS",
                timestamp: 137131200,
            }),
        );
        let p = params(&header);
        assert_eq!(
            get(&p, "oauth_callback"),
            "http://printer.example.com/ready"
        );
        assert_eq!(get(&p, "oauth_consumer_key"), "dpf43f3p2l4k3l03");
        assert_eq!(get(&p, "oauth_nonce"), "wIjqoS");
        assert_eq!(get(&p, "oauth_timestamp"), "137131200");
        assert_eq!(get(&p, "oauth_signature_method"), "HMAC-SHA1");
        assert!(!p.iter().any(|(n, _)| n == "oauth_token"));
        assert_eq!(get(&p, "oauth_signature"), "74KNZJeDHnMBp0EMJ9ZHt/XKycU=");
    }

    #[test]
    fn token_credentials_request_of_rfc_5849_section_1_2() {
        let temporary = TokenCredentials {
            token: "hh5s93j4hdidpola".into(),
            secret: "hdhd0244k9j7ao03".into(),
        };
        let header = authorization(
            "POST",
            "https://photos.example.net/token",
            &[],
            &printer(),
            Grant::Exchange {
                temporary: &temporary,
                verifier: "hfdp7dh39dks9884",
            },
            Some(Pinned {
                nonce: "walatlh",
                timestamp: 137131201,
            }),
        );
        let p = params(&header);
        assert_eq!(get(&p, "oauth_token"), "hh5s93j4hdidpola");
        assert_eq!(get(&p, "oauth_verifier"), "hfdp7dh39dks9884");
        assert_eq!(get(&p, "oauth_signature"), "gKgrFCywp7rO0OXSjdot/IHF7IU=");
    }

    #[test]
    fn protected_resource_request_of_rfc_5849_section_1_2() {
        let access = TokenCredentials {
            token: "nnch734d00sl2jdk".into(),
            secret: "pfkkdhi9sl3r4s00".into(),
        };
        let header = authorization(
            "GET",
            "http://photos.example.net/photos",
            &[("file", "vacation.jpg"), ("size", "original")],
            &printer(),
            Grant::Access(&access),
            Some(Pinned {
                nonce: "chapoH",
                timestamp: 137131202,
            }),
        );
        assert_eq!(
            header,
            "OAuth oauth_consumer_key=\"dpf43f3p2l4k3l03\",oauth_nonce=\"chapoH\",\
             oauth_signature_method=\"HMAC-SHA1\",oauth_timestamp=\"137131202\",\
             oauth_token=\"nnch734d00sl2jdk\",oauth_signature=\"MdpQcU8iPSUjWoN%2FUDMsK2sui9I%3D\""
        );
    }

    #[test]
    fn secrets_with_reserved_characters_are_encoded_in_the_key() {
        // MBG tokens look like `or7z4alsrn2+pyuwm33djq==`: `+`, `/` and `=` must be encoded in the
        // header (RFC 5849 section 3.6), or the MBG reads a different token.
        let access = TokenCredentials {
            token: "or7z4alsrn2+pyuwm33djq==".into(),
            secret: "ab/cd+ef==".into(),
        };
        let header = authorization(
            "GET",
            "https://10.0.0.5/mslrest/ping/",
            &[],
            &printer(),
            Grant::Access(&access),
            Some(Pinned {
                nonce: "n",
                timestamp: 1,
            }),
        );
        assert!(
            header.contains("oauth_token=\"or7z4alsrn2%2Bpyuwm33djq%3D%3D\""),
            "{header}"
        );
        assert_eq!(
            get(&params(&header), "oauth_token"),
            "or7z4alsrn2+pyuwm33djq=="
        );
    }

    #[test]
    fn debug_hides_the_shared_secret() {
        let debug = format!("{:?}", printer());
        assert!(debug.contains("dpf43f3p2l4k3l03"));
        assert!(!debug.contains("kd94hf93k423kf44"));
    }
}
