//! The MBG client, the token exchange and its renewal, against the in-process simulator, which
//! verifies every signature it receives (with `oauth`'s base string, which the unit tests check
//! against RFC 5849 and against `oauth1-request`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mbg_provision::config::Config;
use mbg_provision::mbg::{MbgClient, MbgErrorKind, NewSipDevice, SipDevicePatch};
use mbg_provision::oauth::{self, ClientCredentials, Grant, Pinned, TokenCredentials};
use mbg_provision::sim::{self, DeviceFields, Faults, SimConfig, SimConsumer, SimHandle};
use mbg_provision::store::TokenState;
use mbg_provision::token::{self, Renewal, TokenError, TokenStatus};
use secrecy::{ExposeSecret, SecretString};

use crate::support::TestDb;

pub const CONSUMER: &str = "MiVOAppSuite";
pub const SECRET: &str = "shared+secret/42=";
const DAY: i64 = 86_400;

pub struct Harness {
    pub sim: SimHandle,
    pub db: TestDb,
    pub config: Config,
}

pub async fn start_sim(config: SimConfig) -> SimHandle {
    sim::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts")
}

/// The fields of a SIP user made on the MBG by hand (or by a create of ours, given our
/// credentials): `number` under `icp`, set-side name `setside`.
pub fn sip_user(icp: &str, number: &str, setside: &str, setside_password: &str) -> DeviceFields {
    DeviceFields {
        icp: Some(icp.into()),
        setside_username: Some(setside.into()),
        setside_password: Some(setside_password.into()),
        icpside_username: Some(number.into()),
        icpside_password: Some("another-password-1".into()),
        description: None,
        enabled: Some(true),
    }
}

/// What a create whose answer was lost leaves behind for the wanted extension `number` on
/// MiVO250-1: its remote credentials stored (written ahead) and a SIP user carrying them whose
/// guid no row records. Returns that guid.
pub async fn lost_create(
    store: &mbg_provision::store::Store,
    sim: &SimHandle,
    number: &str,
) -> String {
    let (name, password) = (format!("lostanswer{number}"), "lost-answer-password");
    let id = store.extension_by_number(number).await.unwrap().id;
    store
        .fill_remote_credentials(id, &name, &SecretString::from(password))
        .await
        .unwrap();
    sim.add_device(sip_user("MiVO250-1", number, &name, password))
        .unwrap()
}

pub fn sim_config() -> SimConfig {
    SimConfig {
        consumers: vec![SimConsumer::new(CONSUMER, SECRET)],
        icps: vec![
            ("MiVO250-1".into(), "10.0.0.20".into()),
            ("MiVO250-2".into(), "10.0.0.21".into()),
        ],
        ..SimConfig::default()
    }
}

impl Harness {
    pub async fn new(db: TestDb, sim_config: SimConfig) -> Harness {
        let sim = start_sim(sim_config).await;
        let mut config = Config::default();
        config.mbg.base_url = Some(sim.base_url().parse().unwrap());
        config.mbg.timeout = Duration::from_secs(5);
        Harness { sim, db, config }
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    /// The whole exchange: request, approval on the "MBG page", verify.
    pub async fn with_token(self) -> Harness {
        let temporary = token::request(
            &self.db.store,
            &self.config,
            "test",
            CONSUMER,
            SECRET.into(),
            Self::now(),
        )
        .await
        .expect("temporary token");
        let verifier = self
            .sim
            .approve(temporary.expose_secret())
            .expect("approve");
        token::verify(&self.db.store, &self.config, &verifier, Self::now())
            .await
            .expect("verify");
        self
    }

    pub async fn client(&self) -> MbgClient {
        let settings = self.db.store.mbg_settings().await.unwrap();
        token::client(&self.config, &settings).unwrap()
    }

    async fn access_token(&self) -> TokenCredentials {
        let settings = self.db.store.mbg_settings().await.unwrap();
        TokenCredentials {
            token: settings.access_token.unwrap(),
            secret: settings.access_token_secret.unwrap(),
        }
    }
}

crate::on_both_backends!(
    the_whole_exchange_stores_a_working_token,
    unencoded_token_answers_still_give_working_signed_calls
);

/// A real MBG may leave `+ / =` unencoded in its token answers (mbg-api.md); a `+` read as a
/// space would store a token the MBG never issued.
async fn unencoded_token_answers_still_give_working_signed_calls(db: TestDb) {
    let mut config = sim_config();
    config.unencoded_token_answers = true;
    let h = Harness::new(db, config).await.with_token().await;
    let access = h.access_token().await;
    for value in [access.token.expose_secret(), access.secret.expose_secret()] {
        assert!(
            ['+', '/', '='].iter().all(|c| value.contains(*c)),
            "the simulator issues MBG-shaped tokens"
        );
    }
    assert!(
        h.sim
            .access_token_expiry(access.token.expose_secret())
            .is_some(),
        "the stored token is the one the MBG issued"
    );
    let client = h.client().await;
    client.ping().await.unwrap();
    assert_eq!(client.icps().await.unwrap().len(), 2);
    let guid = client
        .create_device(&device("dave01", "1004", "MiVO250-1"))
        .await
        .unwrap();
    client.delete_device(&guid).await.unwrap();
}

async fn the_whole_exchange_stores_a_working_token(db: TestDb) {
    let h = Harness::new(db, sim_config()).await;
    let now = Harness::now();
    let temporary = token::request(&h.db.store, &h.config, "test", CONSUMER, SECRET.into(), now)
        .await
        .unwrap();
    let pending = h.db.store.mbg_settings().await.unwrap();
    assert_eq!(pending.token_state, TokenState::Pending);
    assert!(matches!(
        TokenStatus::of(&pending, now),
        TokenStatus::PendingApproval { .. }
    ));
    let verifier = h.sim.approve(temporary.expose_secret()).unwrap();
    assert_eq!(verifier.len(), 6);
    let expires_at = token::verify(&h.db.store, &h.config, &verifier, now)
        .await
        .unwrap();
    let sim_expiry = h
        .sim
        .access_token_expiry(h.access_token().await.token.expose_secret())
        .unwrap();
    assert_eq!(expires_at, sim_expiry, "expiry read from the MBG");
    assert!((expires_at - now - 365 * DAY).abs() < 60);

    let settings = h.db.store.mbg_settings().await.unwrap();
    assert_eq!(settings.token_state, TokenState::Valid);
    assert!(settings.temp_token.is_none(), "temporary token consumed");
    assert_eq!(settings.consumer_id.as_deref(), Some(CONSUMER));
    assert!(matches!(
        TokenStatus::of(&settings, now),
        TokenStatus::Valid {
            days_left: 364 | 365,
            ..
        }
    ));
    h.client().await.ping().await.expect("signed ping accepted");
    let paths: Vec<String> = h.sim.requests().into_iter().map(|r| r.path).collect();
    assert!(paths.contains(&"/mslrest/initiate".to_string()));
    assert!(paths.contains(&"/mslrest/token".to_string()));
    assert!(paths.contains(&"/mslrest/ping/".to_string()));
}

#[tokio::test]
async fn a_wrong_shared_secret_is_refused_and_nothing_is_stored() {
    let h = Harness::new(TestDb::sqlite().await, sim_config()).await;
    let err = token::request(
        &h.db.store,
        &h.config,
        "t",
        CONSUMER,
        "wrong".into(),
        Harness::now(),
    )
    .await
    .unwrap_err();
    let TokenError::Mbg(e) = &err else {
        panic!("{err:?}")
    };
    assert!(matches!(e.kind, MbgErrorKind::Unauthorized(_)), "{e}");
    assert!(err.to_string().contains("shared secret"), "{err}");
    assert!(
        h.db.store
            .mbg_settings()
            .await
            .unwrap()
            .consumer_id
            .is_none()
    );
}

#[tokio::test]
async fn unapproved_tokens_and_wrong_verifiers_are_refused() {
    let h = Harness::new(TestDb::sqlite().await, sim_config()).await;
    let now = Harness::now();
    let temporary = token::request(&h.db.store, &h.config, "t", CONSUMER, SECRET.into(), now)
        .await
        .unwrap();
    let err = token::verify(&h.db.store, &h.config, "123456", now)
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::Refused(_)), "{err:?}");
    assert!(err.to_string().contains("not approved"), "{err}");

    let verifier = h.sim.approve(temporary.expose_secret()).unwrap();
    let wrong = if verifier == "000000" {
        "000001"
    } else {
        "000000"
    };
    let err = token::verify(&h.db.store, &h.config, wrong, now)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("wrong verifier"), "{err}");
    let err = token::verify(&h.db.store, &h.config, "12ab", now)
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::BadVerifier(_)));
    assert_eq!(
        h.db.store.mbg_settings().await.unwrap().token_state,
        TokenState::Pending,
        "still waiting: a typo must not lose the temporary token"
    );
    // Too late: the temporary token is older than 10 minutes.
    let err = token::verify(&h.db.store, &h.config, &verifier, now + 601)
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::TemporaryTokenExpired), "{err:?}");
    token::verify(&h.db.store, &h.config, &verifier, now)
        .await
        .unwrap();
}

/// Sends a signed GET built by hand, for the tests that tamper with requests.
async fn send_signed(
    sim: &SimHandle,
    access: &TokenCredentials,
    sign: (&str, &str, &[(&str, &str)]),
    send: (reqwest::Method, &str),
    pinned: Option<Pinned<'_>>,
    tamper: impl FnOnce(String) -> String,
) -> u16 {
    let consumer = ClientCredentials {
        key: CONSUMER.into(),
        secret: SECRET.into(),
    };
    let (method, path, query) = sign;
    let mut uri = url::Url::parse(&format!("{}/{path}", sim.base_url())).unwrap();
    if !query.is_empty() {
        uri.query_pairs_mut().extend_pairs(query);
    }
    let header = oauth::authorization(method, &uri, &consumer, Grant::Access(access), pinned);
    let url = format!("{}/{}", sim.base_url(), send.1);
    reqwest::Client::new()
        .request(send.0, url)
        .header("Authorization", tamper(header))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The simulator reads RFC 5849 on its own (`src/sim/signature.rs`), not with the client's
/// code: plant the classic sorting bug in a client (pairs sorted before they are encoded) and
/// the simulator refuses its signature, while the real client's is accepted for the same request.
#[tokio::test]
async fn a_client_that_sorts_before_encoding_is_refused() {
    let h = Harness::new(TestDb::sqlite().await, sim_config())
        .await
        .with_token()
        .await;
    let access = h.access_token().await;
    // `a-` sorts before `a=` raw; encoded, `a%3D` sorts before `a-`.
    let query: &[(&str, &str)] = &[("a-", "1"), ("a=", "2")];
    let sent = "ping/?a-=1&a%3D=2";
    let same: fn(String) -> String = |header| header;
    let real = ("GET", "ping/", query);
    let status = send_signed(
        &h.sim,
        &access,
        real,
        (reqwest::Method::GET, sent),
        None,
        same,
    )
    .await;
    assert_eq!(status, 200, "the client's own signature");

    let url = url::Url::parse(&format!("{}/{sent}", h.sim.base_url())).unwrap();
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let token = access.token.expose_secret().to_string();
    let signed: Vec<(&str, &str)> = vec![
        ("oauth_consumer_key", CONSUMER),
        ("oauth_nonce", "plantedsortingbug"),
        ("oauth_signature_method", "HMAC-SHA1"),
        ("oauth_timestamp", &timestamp),
        ("oauth_token", &token),
    ];
    let mut pairs: Vec<(&str, &str)> = signed.iter().chain(query).copied().collect();
    pairs.sort(); // the planted bug: raw pairs sorted, then encoded
    let normalized: Vec<String> = pairs
        .iter()
        .map(|(n, v)| format!("{}={}", oauth::encode(n), oauth::encode(v)))
        .collect();
    let base = format!(
        "GET&{}&{}",
        oauth::encode(&oauth::base_uri(&url)),
        oauth::encode(&normalized.join("&"))
    );
    let signature = oauth::sign(&base, SECRET, access.secret.expose_secret());
    let header = signed
        .iter()
        .map(|(n, v)| format!("{n}=\"{}\"", oauth::encode(v)))
        .chain([format!("oauth_signature=\"{}\"", oauth::encode(&signature))])
        .collect::<Vec<_>>()
        .join(",");
    let answer = reqwest::Client::new()
        .get(url.as_str())
        .header("Authorization", format!("OAuth {header}"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401, "the planted bug is refused");
    assert!(answer.text().await.unwrap().contains("invalid signature"));
}

#[tokio::test]
async fn tampered_replayed_and_stale_requests_are_rejected() {
    let h = Harness::new(TestDb::sqlite().await, sim_config())
        .await
        .with_token()
        .await;
    let access = h.access_token().await;
    let same: fn(String) -> String = |header| header;
    let flip_signature_byte: fn(String) -> String = |header| {
        let at = header.find("oauth_signature=\"").unwrap() + "oauth_signature=\"".len();
        let mut bytes = header.into_bytes();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).unwrap()
    };
    let now = chrono::Utc::now().timestamp() as u64;
    let pinned = |nonce, timestamp| Some(Pinned { nonce, timestamp });
    let (get, put) = (reqwest::Method::GET, reqwest::Method::PUT);
    let page: &[(&str, &str)] = &[("page", "1")];
    // (what, signed as, sent as, nonce and timestamp, tampering, expected status), in order:
    // the replay case depends on the request before it.
    let cases = [
        (
            "untouched",
            ("GET", "ping/", page),
            (get.clone(), "ping/?page=1"),
            None,
            same,
            200,
        ),
        (
            // RFC 5849 section 3.4.1.3.2 sorts encoded pairs: `a%2Fb` before `a.b`.
            "one name twice, ordered by encoded value",
            ("GET", "ping/", &[("x", "a.b"), ("x", "a/b")]),
            (get.clone(), "ping/?x=a.b&x=a%2Fb"),
            None,
            same,
            200,
        ),
        (
            "signature byte flipped",
            ("GET", "ping/", page),
            (get.clone(), "ping/?page=1"),
            None,
            flip_signature_byte,
            401,
        ),
        (
            "query changed after signing",
            ("GET", "ping/", page),
            (get.clone(), "ping/?page=2"),
            None,
            same,
            401,
        ),
        (
            "signed GET, sent PUT",
            ("GET", "base/v1/managetoken/", &[]),
            (put, "base/v1/managetoken/"),
            None,
            same,
            401,
        ),
        (
            "first use of a nonce",
            ("GET", "ping/", &[]),
            (get.clone(), "ping/"),
            pinned("replayed-nonce", now),
            same,
            200,
        ),
        (
            "the same nonce again",
            ("GET", "ping/", &[]),
            (get.clone(), "ping/"),
            pinned("replayed-nonce", now),
            same,
            401,
        ),
        (
            "timestamp 301 s old",
            ("GET", "ping/", &[]),
            (get.clone(), "ping/"),
            pinned("fresh-nonce", now - 301),
            same,
            401,
        ),
        (
            // Not 301: `now` was read before the earlier cases ran, and on a busy machine a
            // second may pass, which would bring the timestamp back inside the window.
            "timestamp 310 s ahead",
            ("GET", "ping/", &[]),
            (get, "ping/"),
            pinned("fresh-nonce-2", now + 310),
            same,
            401,
        ),
    ];
    for (what, sign, send, pinned, tamper, expected) in cases {
        let status = send_signed(&h.sim, &access, sign, send, pinned, tamper).await;
        assert_eq!(status, expected, "{what}");
    }
}

#[tokio::test]
async fn expired_and_revoked_tokens_get_401() {
    let h = Harness::new(TestDb::sqlite().await, sim_config())
        .await
        .with_token()
        .await;
    let client = h.client().await;
    client.ping().await.unwrap();
    h.sim.advance_clock(366 * DAY);
    let err = client.ping().await.unwrap_err();
    assert!(matches!(err.kind, MbgErrorKind::Unauthorized(_)), "{err}");
    assert!(err.to_string().contains("token status"), "{err}");
    h.sim.advance_clock(-366 * DAY);
    client.ping().await.unwrap();
    assert!(h.sim.revoke(h.access_token().await.token.expose_secret()));
    let err = client.devices().await.unwrap_err();
    assert!(matches!(err.kind, MbgErrorKind::Unauthorized(_)), "{err}");

    // The renewal job then marks the token unusable, so the daemon stops calling.
    let err = token::renew_if_due(&h.db.store, &h.config, Harness::now(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::Mbg(_)), "{err:?}");
    let settings = h.db.store.mbg_settings().await.unwrap();
    assert_eq!(settings.token_state, TokenState::Rejected);
    assert!(!TokenStatus::of(&settings, Harness::now()).is_usable());
}

#[tokio::test]
async fn a_consumer_without_device_permission_gets_403_naming_it() {
    let h = Harness::new(TestDb::sqlite().await, sim_config())
        .await
        .with_token()
        .await;
    h.sim
        .set_permissions(CONSUMER, &[sim::PERMISSION_TOKEN, sim::PERMISSION_ICPS]);
    let client = h.client().await;
    assert_eq!(client.icps().await.unwrap().len(), 2);
    let err = client.devices().await.unwrap_err();
    assert_eq!(
        err.kind,
        MbgErrorKind::Forbidden {
            permission: "MBG/v1/devices"
        }
    );
    assert!(err.to_string().contains("MBG/v1/devices"), "{err}");
    // The device count, asked before the list to bound its answer, is the call refused.
    assert!(
        err.to_string().contains("GET mbg/v1/devices/sip/count/"),
        "{err}"
    );
}

#[tokio::test]
async fn renewal_is_due_only_within_the_window_and_happens_once() {
    let h = Harness::new(TestDb::sqlite().await, sim_config())
        .await
        .with_token()
        .await;
    let (store, config) = (&h.db.store, &h.config);
    let issued = store
        .mbg_settings()
        .await
        .unwrap()
        .token_expires_at
        .unwrap();
    let renewals = || {
        h.sim
            .requests()
            .iter()
            .filter(|r| r.method == "PUT" && r.path.ends_with("/managetoken/"))
            .count()
    };

    let far = Harness::now();
    assert_eq!(
        token::renew_if_due(store, config, far, Some(30))
            .await
            .unwrap(),
        Renewal::NotDue { expires_at: issued }
    );
    assert_eq!(renewals(), 0, "far from expiry: no call");

    // 340 days later, on both clocks: 25 days left, inside the 30-day window.
    h.sim.advance_clock(340 * DAY);
    let later = far + 340 * DAY;
    let renewed = token::renew_if_due(store, config, later, Some(30))
        .await
        .unwrap();
    let Renewal::Renewed {
        previous,
        expires_at,
    } = renewed
    else {
        panic!("expected a renewal, got {renewed:?}")
    };
    assert_eq!(previous, issued);
    assert!(
        (expires_at - later - 365 * DAY).abs() < 60,
        "12 months from renewal"
    );
    assert_eq!(renewals(), 1);
    let again = token::renew_if_due(store, config, later, Some(30))
        .await
        .unwrap();
    assert_eq!(again, Renewal::NotDue { expires_at });
    assert_eq!(renewals(), 1, "called twice, renewed once");
    assert_eq!(
        store.mbg_settings().await.unwrap().token_expires_at,
        Some(expires_at)
    );
}

#[tokio::test]
async fn an_mbg_without_token_endpoints_gets_a_plain_instruction() {
    let mut config = sim_config();
    config.token_api = false;
    let h = Harness::new(TestDb::sqlite().await, config)
        .await
        .with_token()
        .await;
    let settings = h.db.store.mbg_settings().await.unwrap();
    let (issued, expires) = (
        settings.token_issued_at.unwrap(),
        settings.token_expires_at.unwrap(),
    );
    assert_eq!(expires - issued, 365 * DAY, "assumed 12 months");
    let client = h.client().await;
    assert_eq!(
        client.token_expiry().await.unwrap_err().kind,
        MbgErrorKind::NotFound
    );

    let near = expires - 10 * DAY;
    let renewal = token::renew_if_due(&h.db.store, &h.config, near, Some(30))
        .await
        .unwrap();
    assert_eq!(
        renewal,
        Renewal::NotOffered {
            expires_at: expires
        }
    );
    let message = renewal.to_string();
    assert!(message.contains("press Renew on the MBG page"), "{message}");
    assert!(message.contains(&token::date(expires)), "{message}");
    assert_eq!(
        h.db.store.mbg_settings().await.unwrap().token_state,
        TokenState::Valid,
        "still valid until it expires"
    );
}

fn device(setside: &str, number: &str, icp: &str) -> NewSipDevice {
    NewSipDevice {
        icp: icp.into(),
        setside_username: setside.into(),
        setside_password: SecretString::from("set-side-pass-1"),
        icpside_username: number.into(),
        icpside_password: SecretString::from("icp-side-pass-1"),
        description: format!("mbg-provision ext {number}"),
        enabled: true,
    }
}

#[tokio::test]
async fn devices_and_icps_follow_the_contract() {
    let mut config = sim_config();
    config.licences = Some(3);
    let h = Harness::new(TestDb::sqlite().await, config)
        .await
        .with_token()
        .await;
    let client = h.client().await;

    let icps = client.icps().await.unwrap();
    assert_eq!(client.icp_count().await.unwrap(), 2);
    assert_eq!(client.icp(&icps[1].guid).await.unwrap(), icps[1]);
    assert_eq!(
        client.icp("no-such-guid").await.unwrap_err().kind,
        MbgErrorKind::NotFound
    );
    // A guid that is a dot segment would be resolved away, and a DELETE of it would address
    // the collection: refused before anything is sent.
    let sent = h.sim.request_count();
    for guid in [".", ".."] {
        for error in [
            client.delete_device(guid).await.unwrap_err(),
            client.icp(guid).await.unwrap_err(),
        ] {
            assert!(
                matches!(&error.kind, MbgErrorKind::Malformed(why) if why.contains("not sent")),
                "{guid}: {error}"
            );
        }
    }
    assert_eq!(h.sim.request_count(), sent, "nothing reached the MBG");
    // A guid that only looks like one once decoded is a guid like any other.
    assert_eq!(
        client.delete_device("%2e").await.unwrap_err().kind,
        MbgErrorKind::NotFound
    );

    let guid = client
        .create_device(&device("alice01", "1001", "MiVO250-1"))
        .await
        .unwrap();
    let read = client.device(&guid).await.unwrap();
    assert_eq!(read.icpside_username, "1001");
    assert_eq!(read.setside_password.expose_secret(), "set-side-pass-1");
    assert_eq!(read.description, "mbg-provision ext 1001");

    let bad = |err: mbg_provision::mbg::MbgError| match err.kind {
        MbgErrorKind::BadRequest(message) => message,
        other => panic!("expected 400, got {other:?}"),
    };
    let dup = bad(client
        .create_device(&device("alice01", "1002", "MiVO250-1"))
        .await
        .unwrap_err());
    assert!(dup.contains("already used"), "{dup}");
    let mut weak = device("bob01", "1002", "MiVO250-1");
    weak.setside_password = SecretString::from("short");
    assert!(bad(client.create_device(&weak).await.unwrap_err()).contains("weak"));
    let unknown = bad(client
        .create_device(&device("bob01", "1002", "MiVO999"))
        .await
        .unwrap_err());
    assert!(unknown.contains("unknown ICP"), "{unknown}");

    client
        .update_device(
            &guid,
            &SipDevicePatch {
                icp: Some("MiVO250-2".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let moved = client.device(&guid).await.unwrap();
    assert_eq!(moved.icp, "MiVO250-2");
    assert_eq!(
        moved.setside_username, "alice01",
        "a PUT changes only what it carries"
    );
    let missing = client
        .update_device("gone", &SipDevicePatch::default())
        .await
        .unwrap_err();
    assert_eq!(missing.kind, MbgErrorKind::NotFound);

    let bob = client
        .create_device(&device("bob01", "1002", "MiVO250-1"))
        .await
        .unwrap();
    // A set-side name is unique across devices, on update too.
    let taken = bad(client
        .update_device(
            &bob,
            &SipDevicePatch {
                setside_username: Some("alice01".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err());
    assert!(taken.contains("already used"), "{taken}");
    client
        .create_device(&device("carol01", "1003", "MiVO250-1"))
        .await
        .unwrap();
    let err = client
        .create_device(&device("dave01", "1004", "MiVO250-1"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, MbgErrorKind::NoLicence);
    assert_eq!(client.device_count().await.unwrap(), 3);
    assert_eq!(client.devices().await.unwrap().len(), 3);

    client.delete_device(&guid).await.unwrap();
    assert_eq!(
        client.delete_device(&guid).await.unwrap_err().kind,
        MbgErrorKind::NotFound
    );
    // A deleted device's set-side name is free again.
    client
        .update_device(
            &bob,
            &SipDevicePatch {
                setside_username: Some("alice01".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        client.device(&bob).await.unwrap().setside_username,
        "alice01"
    );
    assert_eq!(
        client.device(&guid).await.unwrap_err().kind,
        MbgErrorKind::NotFound
    );

    // A device added by hand on the MBG is listed like any other.
    h.sim
        .add_device(DeviceFields {
            icp: Some("MiVO250-2".into()),
            setside_username: Some("manual01".into()),
            setside_password: Some("manual-pass-1".into()),
            icpside_username: Some("2001".into()),
            icpside_password: Some("manual-pass-2".into()),
            ..Default::default()
        })
        .unwrap();
    assert!(
        client
            .devices()
            .await
            .unwrap()
            .iter()
            .any(|d| d.setside_username == "manual01")
    );
}

#[tokio::test]
async fn faults_become_errors_the_reconciler_can_act_on() {
    let h = Harness::new(TestDb::sqlite().await, sim_config())
        .await
        .with_token()
        .await;
    let client = h.client().await;
    h.sim.set_faults(Faults {
        rate_limit_next: 1,
        retry_after_secs: 7,
        ..Faults::default()
    });
    let err = client.devices().await.unwrap_err();
    assert_eq!(
        err.kind,
        MbgErrorKind::RateLimited(Some(Duration::from_secs(7)))
    );
    assert!(err.is_retryable());
    client
        .devices()
        .await
        .expect("the limit was for one request");

    h.sim.set_faults(Faults {
        drop_next: 1,
        ..Faults::default()
    });
    let err = client.devices().await.unwrap_err();
    assert!(matches!(err.kind, MbgErrorKind::Unavailable(_)), "{err}");
    client.devices().await.unwrap();

    h.sim.set_faults(Faults {
        fail_rate: 1.0,
        ..Faults::default()
    });
    let err = client.ping().await.unwrap_err();
    assert!(
        matches!(err.kind, MbgErrorKind::Unavailable(ref m) if m.contains("503")),
        "{err}"
    );
    h.sim.set_faults(Faults::default());

    // Nothing listening: connection refused is "unavailable", not a crash.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let dead = MbgClient::new(
        format!("http://127.0.0.1:{port}/mslrest").parse().unwrap(),
        None,
        Duration::from_secs(2),
        ClientCredentials {
            key: CONSUMER.into(),
            secret: SECRET.into(),
        },
    )
    .unwrap()
    .with_access_token(h.access_token().await);
    // Nothing listens: not a passing fault to retry, but a connection to check.
    let refused = dead.ping().await.unwrap_err();
    assert!(
        matches!(&refused.kind, MbgErrorKind::Unreachable(why) if why.contains("connection refused") && why.contains("mbg.base_url")),
        "{refused}"
    );
    assert!(!refused.is_retryable());
}

#[tokio::test]
async fn html_pages_and_bad_json_are_typed_errors_with_an_excerpt() {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/mslrest/ping/",
            get(|| async { axum::response::Html("<html><body>Proxy error</body></html>") }),
        )
        .route(
            "/mslrest/mbg/v1/icps/all/",
            get(|| async {
                (
                    [("content-type", "application/json")],
                    "{\"response\": [{\"guid\": 1",
                )
            }),
        )
        .route(
            "/mslrest/mbg/v1/devices/sip/count/",
            get(|| async { ([("content-type", "application/json")], "{\"count\": 1}") }),
        )
        .route(
            "/mslrest/mbg/v1/devices/sip/all/",
            get(|| async {
                (
                    [("content-type", "application/json")],
                    "{\"response\": [{\"setside_password\": \"leaky-secret\"",
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = MbgClient::new(
        format!("http://{addr}/mslrest").parse().unwrap(),
        None,
        Duration::from_secs(2),
        ClientCredentials {
            key: CONSUMER.into(),
            secret: SECRET.into(),
        },
    )
    .unwrap()
    .with_access_token(TokenCredentials {
        token: "t".into(),
        secret: "s".into(),
    });
    let err = client.ping().await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err.kind, MbgErrorKind::Malformed(_)));
    assert!(
        message.contains("GET ping/")
            && message.contains("text/html")
            && message.contains("Proxy error"),
        "{message}"
    );
    let err = client.icps().await.unwrap_err();
    assert!(matches!(err.kind, MbgErrorKind::Malformed(_)), "{err}");
    assert!(err.to_string().contains("GET mbg/v1/icps/all/"), "{err}");
    let err = client.devices().await.unwrap_err();
    assert!(matches!(err.kind, MbgErrorKind::Malformed(_)), "{err}");
    assert!(!err.to_string().contains("leaky-secret"), "{err}");
}

/// Answers are read up to a limit, not whatever their size: an ordinary answer past 1 MiB is
/// refused naming the call, announced (Content-Length) or streamed (chunked); the device list
/// may be as long as the MBG's own count of SIP users allows, and no longer.
#[tokio::test]
async fn an_answer_larger_than_its_limit_is_refused_naming_the_call() {
    use axum::body::Body;
    use axum::routing::get;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let json = [("content-type", "application/json")];
    let padded = |bytes: usize| format!("{{\"pad\": \"{}\", \"response\": []}}", "x".repeat(bytes));
    let streamed = |bytes: usize| {
        let chunks = (0..bytes / 65_536 + 1).map(|_| Ok::<_, std::io::Error>(vec![b' '; 65_536]));
        Body::from_stream(futures_util::stream::iter(chunks))
    };
    static USERS: AtomicU64 = AtomicU64::new(1_000);
    let users = &USERS;
    let app = axum::Router::new()
        .route(
            "/mslrest/mbg/v1/icps/all/",
            get(move || async move { (json, padded(2 << 20)) }),
        )
        .route(
            "/mslrest/ping/",
            get(move || async move { (json, streamed(2 << 20)) }),
        )
        .route(
            "/mslrest/mbg/v1/devices/sip/count/",
            get(move || async move { (json, format!("{{\"count\": {}}}", users.load(Relaxed))) }),
        )
        .route(
            // 6 MB: within the limit of 1,000 users (and the slack), past that of 100.
            "/mslrest/mbg/v1/devices/sip/all/",
            get(move || async move { (json, padded(6 << 20)) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = MbgClient::new(
        format!("http://{addr}/mslrest").parse().unwrap(),
        None,
        Duration::from_secs(10),
        ClientCredentials {
            key: CONSUMER.into(),
            secret: SECRET.into(),
        },
    )
    .unwrap()
    .with_access_token(TokenCredentials {
        token: "t".into(),
        secret: "s".into(),
    });
    let err = client.icps().await.unwrap_err();
    assert!(matches!(err.kind, MbgErrorKind::Malformed(_)), "{err}");
    assert!(
        err.to_string().contains("GET mbg/v1/icps/all/")
            && err.to_string().contains("larger than 1048576 bytes"),
        "{err}"
    );
    let err = client.ping().await.unwrap_err();
    assert!(
        err.to_string().contains("GET ping/") && err.to_string().contains("larger than"),
        "{err}"
    );
    assert_eq!(
        client.devices().await.unwrap().len(),
        0,
        "within the count's limit"
    );
    USERS.store(100, Relaxed);
    let err = client.devices().await.unwrap_err();
    assert!(
        err.to_string().contains("GET mbg/v1/devices/sip/all/")
            && err.to_string().contains("larger than"),
        "{err}"
    );
}

/// A `tracing` writer into a shared buffer, to read back what was logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_reaches_a_log_line_or_an_error_message() {
    let captured = Captured::default();
    let writer = captured.clone();
    // While only one subscriber exists, tracing asks the *calling thread's* subscriber whether a
    // log line is wanted and caches the answer for every thread: other tests' threads, which have
    // none, would switch this test's lines off. A second, silent subscriber makes it ask both.
    let _second = tracing::Dispatch::new(tracing_subscriber::registry());
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut config = sim_config();
    config.token_api = false;
    let h = Harness::new(TestDb::sqlite().await, config).await;
    let mut messages = Vec::new();
    let now = Harness::now();
    // Failures first: a wrong secret, a wrong verifier.
    messages.push(
        token::request(
            &h.db.store,
            &h.config,
            "t",
            CONSUMER,
            "wrong-secret-xyz".into(),
            now,
        )
        .await
        .unwrap_err()
        .to_string(),
    );
    let temporary = token::request(&h.db.store, &h.config, "t", CONSUMER, SECRET.into(), now)
        .await
        .unwrap();
    let verifier = h.sim.approve(temporary.expose_secret()).unwrap();
    let wrong = if verifier == "999999" {
        "999998"
    } else {
        "999999"
    };
    messages.push(
        token::verify(&h.db.store, &h.config, wrong, now)
            .await
            .unwrap_err()
            .to_string(),
    );
    token::verify(&h.db.store, &h.config, &verifier, now)
        .await
        .unwrap();
    let settings = h.db.store.mbg_settings().await.unwrap();
    let renewal = token::renew_if_due(&h.db.store, &h.config, now + 360 * DAY, Some(30))
        .await
        .unwrap();
    messages.push(renewal.to_string());
    let client = h.client().await;
    let mut weak = device("erin01", "1005", "MiVO250-1");
    weak.icpside_password = SecretString::from("tiny");
    messages.push(client.create_device(&weak).await.unwrap_err().to_string());
    h.sim
        .revoke(settings.access_token.as_ref().unwrap().expose_secret());
    messages.push(client.ping().await.unwrap_err().to_string());
    messages.push(format!("{client:?} {settings:?}"));

    let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("access token stored"),
        "logging was captured: {logged}"
    );
    let secrets = [
        SECRET.to_string(),
        "wrong-secret-xyz".to_string(),
        temporary.expose_secret().to_string(),
        settings.access_token.unwrap().expose_secret().to_string(),
        settings
            .access_token_secret
            .unwrap()
            .expose_secret()
            .to_string(),
        "set-side-pass-1".to_string(),
        "tiny".to_string(),
    ];
    let text = format!("{logged}\n{}", messages.join("\n"));
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "{secret} leaked: {text}");
    }
}

/// The unsigned admin API under `/sim/`, as users' own scripts drive it.
#[tokio::test]
async fn the_simulator_admin_api_works_over_http() {
    let h = Harness::new(TestDb::sqlite().await, sim_config()).await;
    let admin = format!("http://{}/sim", h.sim.addr());
    let http = reqwest::Client::new();
    let temporary = token::request(
        &h.db.store,
        &h.config,
        "t",
        CONSUMER,
        SECRET.into(),
        Harness::now(),
    )
    .await
    .unwrap();
    let encoded: String = percent_encoding::utf8_percent_encode(
        temporary.expose_secret(),
        percent_encoding::NON_ALPHANUMERIC,
    )
    .to_string();
    let approved: serde_json::Value = http
        .post(format!("{admin}/tokens/{encoded}/approve"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let verifier = approved["verifier"].as_str().unwrap().to_string();
    assert_eq!(verifier.len(), 6);
    token::verify(&h.db.store, &h.config, &verifier, Harness::now())
        .await
        .unwrap();
    let client = h.client().await;

    let added: serde_json::Value = http
        .post(format!("{admin}/devices"))
        .json(&serde_json::json!({
            "icp": "MiVO250-1", "setside_username": "byhand", "setside_password": "hand-pass-1",
            "icpside_username": "1999", "icpside_password": "hand-pass-2"
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let guid = added["guid"].as_str().unwrap();
    assert_eq!(
        client.device(guid).await.unwrap().setside_username,
        "byhand"
    );

    let faults = http
        .put(format!("{admin}/faults"))
        .json(&serde_json::json!({ "rate_limit_next": 1, "retry_after_secs": 3 }))
        .send()
        .await
        .unwrap();
    assert_eq!(faults.status(), 200);
    assert_eq!(
        client.ping().await.unwrap_err().kind,
        MbgErrorKind::RateLimited(Some(Duration::from_secs(3)))
    );

    let advanced: serde_json::Value = http
        .post(format!("{admin}/clock/advance"))
        .json(&serde_json::json!({ "seconds": 400 * DAY }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(advanced["now"].as_i64().unwrap() > Harness::now() + 399 * DAY);
    assert!(matches!(
        client.ping().await.unwrap_err().kind,
        MbgErrorKind::Unauthorized(_)
    ));

    let log: Vec<serde_json::Value> = http
        .get(format!("{admin}/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        log.iter()
            .any(|r| r["path"] == "/mslrest/ping/" && r["status"] == 429)
    );
    let unknown = http
        .post(format!("{admin}/tokens/nope/revoke"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

/// `token renewed`, for an MBG whose admin pressed *Renew* on its page (issue 7, item 5).
#[tokio::test]
async fn token_renewed_records_a_manual_renewal_once_the_mbg_accepts_the_token() {
    let mut config = sim_config();
    config.token_api = false;
    let h = Harness::new(TestDb::sqlite().await, config)
        .await
        .with_token()
        .await;
    let store = &h.db.store;
    let now = Harness::now();
    let generation = store.mbg_settings().await.unwrap().token_generation;
    assert!(
        store
            .save_token_expiry(generation, now - DAY)
            .await
            .unwrap()
    );
    let past = TokenStatus::of(&store.mbg_settings().await.unwrap(), now);
    assert!(
        matches!(past, TokenStatus::ValidPastStoredExpiry { .. }),
        "{past:?}"
    );
    assert!(past.is_usable(), "the stored date is only a hint");
    let text = past.to_string();
    assert!(
        text.starts_with("valid by the MBG's last answer; the stored expiry")
            && text.contains("mbg-provision token renewed"),
        "{text}"
    );

    let (expires_at, source) = token::record_renewal(store, &h.config, None, now)
        .await
        .unwrap();
    assert_eq!(source, token::ExpirySource::Assumed);
    assert_eq!(expires_at, now + 365 * DAY);
    let until = now + 200 * DAY;
    assert_eq!(
        token::record_renewal(store, &h.config, Some(until), now)
            .await
            .unwrap(),
        (until, token::ExpirySource::Given)
    );
    assert!(matches!(
        TokenStatus::of(&store.mbg_settings().await.unwrap(), now),
        TokenStatus::Valid {
            days_left: 199 | 200,
            ..
        }
    ));

    // A renewal is recorded only for a token the MBG accepts.
    assert!(h.sim.revoke(h.access_token().await.token.expose_secret()));
    let err = token::record_renewal(store, &h.config, None, now)
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::Mbg(_)), "{err:?}");
    let settings = store.mbg_settings().await.unwrap();
    assert_eq!(settings.token_state, TokenState::Rejected);
    assert_eq!(settings.token_rejected_at, Some(now));
    assert_eq!(
        settings.token_expires_at,
        Some(until),
        "nothing else written"
    );
}

#[tokio::test]
async fn token_renewed_takes_the_expiry_from_the_mbg_when_it_tells_it() {
    let h = Harness::new(TestDb::sqlite().await, sim_config())
        .await
        .with_token()
        .await;
    let store = &h.db.store;
    let now = Harness::now();
    let generation = store.mbg_settings().await.unwrap().token_generation;
    store
        .save_token_expiry(generation, now - DAY)
        .await
        .unwrap();
    let (expires_at, source) = token::record_renewal(store, &h.config, Some(now + DAY), now)
        .await
        .unwrap();
    assert_eq!(source, token::ExpirySource::Mbg);
    assert_eq!(
        Some(expires_at),
        h.sim
            .access_token_expiry(h.access_token().await.token.expose_secret())
    );
}

/// Every 401 marks the token rejected, whatever the stored date says.
#[tokio::test]
async fn a_401_on_renewal_marks_the_token_rejected_with_time_and_reason() {
    let h = Harness::new(TestDb::sqlite().await, sim_config())
        .await
        .with_token()
        .await;
    let store = &h.db.store;
    assert!(h.sim.revoke(h.access_token().await.token.expose_secret()));
    let now = Harness::now();
    token::renew_if_due(store, &h.config, now, None)
        .await
        .unwrap_err();
    let status = TokenStatus::of(&store.mbg_settings().await.unwrap(), now);
    let TokenStatus::Rejected {
        rejected_at: Some(at),
        reason: Some(reason),
    } = &status
    else {
        panic!("{status:?}")
    };
    assert_eq!(*at, now);
    assert!(
        reason.contains("managetoken") && reason.contains("401"),
        "{reason}"
    );
    assert!(status.to_string().contains(&token::date(now)), "{status}");
}

/// A lost or replaced key file: the message says so, and `token request` starts over.
#[tokio::test]
async fn token_request_recovers_from_a_key_that_does_not_match() {
    let h = Harness::new(TestDb::sqlite().await, sim_config())
        .await
        .with_token()
        .await;
    let elsewhere = tempfile::tempdir().unwrap();
    let store = mbg_provision::store::Store::open(&h.db.url.parse().unwrap())
        .await
        .unwrap()
        .with_secret_key(mbg_provision::secrets::SecretKey::new(
            elsewhere.path().join("new.key"),
        ));
    let err = store.mbg_settings().await.unwrap_err();
    assert!(err.to_string().contains("token request"), "{err}");
    let now = Harness::now();
    let temporary = token::request(&store, &h.config, "t", CONSUMER, SECRET.into(), now)
        .await
        .expect("a new exchange works without the old key");
    let verifier = h.sim.approve(temporary.expose_secret()).unwrap();
    token::verify(&store, &h.config, &verifier, now)
        .await
        .unwrap();
    let settings = store.mbg_settings().await.unwrap();
    assert!(TokenStatus::of(&settings, now).is_usable());
    token::client(&h.config, &settings)
        .unwrap()
        .ping()
        .await
        .expect("the new token signs");
    assert!(
        h.db.store.mbg_settings().await.is_err(),
        "the old key no longer opens the new secrets"
    );
}
