//! `preflight` against the simulator, a TLS server with certificates from a test CA (rcgen), the
//! daemon's real `/healthz`, and a real STUN server (coturn) on loopback.

use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use mbg_provision::health::{Concern, HealthState, Severity};
use mbg_provision::preflight::tls::{self, Certificate};
use mbg_provision::shutdown::Shutdown;
use mbg_provision::telemetry::Telemetry;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::cli::{ok, run_with, stderr, stdout, with_cli_token};

/// A port on which nothing listens (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn json(output: &Output) -> Value {
    serde_json::from_str(&stdout(output))
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(output), stderr(output)))
}

/// The check called `name` in a `preflight --json` report.
fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {report:#}"))
}

/// Every preflight run of these tests: the simulator's setup, with a daemon address nobody
/// listens on unless the test says otherwise.
struct Site {
    sim: mbg_provision::sim::SimHandle,
    db: crate::support::TestDb,
    dir: tempfile::TempDir,
    env: Vec<(&'static str, String)>,
}

impl Site {
    async fn new(config: mbg_provision::sim::SimConfig) -> Site {
        let (sim, db, dir, mut env) = with_cli_token(config).await;
        env.push((
            "MBG_PROVISION_HTTP__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        ));
        Site { sim, db, dir, env }
    }

    fn run(&self, args: &[&str]) -> Output {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_with(self.dir.path(), &self.db.url, &env, args)
    }

    fn set(&mut self, key: &'static str, value: String) {
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_setup_passes_every_check() {
    let site = Site::new(crate::mbg::sim_config()).await;
    ok(site.run(&["sync"]));
    let output = site.run(&["preflight", "--json"]);
    let report = json(&output);
    assert_eq!(output.status.code(), Some(0), "{report:#}");
    assert_eq!(report["outcome"], "pass");
    for check in report["checks"].as_array().unwrap() {
        assert!(
            check["status"] == "pass" || check["status"] == "skip",
            "{check:#}"
        );
    }
    for name in [
        "configuration",
        "database",
        "extensions",
        "MBG certificate",
        "MBG reachable",
        "token",
        "permission Base/managetoken",
        "permission MBG/v1/icps",
        "permission MBG/v1/devices",
        "ICP-side names",
        "SIP users' owners",
        "key file",
    ] {
        assert_eq!(check(&report, name)["status"], "pass", "{name}: {report:#}");
    }
    let mapping = check(&report, "nodes and ICPs");
    assert_eq!(mapping["status"], "pass");
    let detail = mapping["detail"].as_str().unwrap();
    assert!(detail.contains("pbx1 -> MiVO250-1"), "{detail}");
    assert!(
        detail.contains("ICPs with no node: MiVO250-2 (10.0.0.21)"),
        "{detail}"
    );
    assert!(
        check(&report, "token")["detail"]
            .as_str()
            .unwrap()
            .contains("days left"),
    );
    assert!(
        check(&report, "ICP-side names")["detail"]
            .as_str()
            .unwrap()
            .starts_with("1 SIP users")
    );
    assert_eq!(check(&report, "daemon")["status"], "skip", "none runs");
    assert_eq!(
        check(&report, "licences")["status"],
        "skip",
        "no budget set"
    );

    // The text form says the same, one line per check, and the verdict.
    let text = site.run(&["preflight"]);
    assert_eq!(text.status.code(), Some(0));
    let text = stdout(&text);
    assert!(text.contains("pass  permission MBG/v1/devices"), "{text}");
    assert!(text.contains("ready"), "{text}");
    // It changed nothing on the MBG: reads only.
    site.sim.clear_requests();
    ok(site.run(&["preflight"]));
    let requests = site.sim.requests();
    assert!(requests.len() >= 4, "{requests:?}");
    assert!(requests.iter().all(|r| r.method == "GET"), "{requests:?}");
}

/// Each failure: its check fails with a fix, and the exit code is 1.
/// Issue 19, item 1: preflight counts whose the SIP users are by the rule a pass applies; one
/// added by hand is never a fault, one of ours not recorded yet is a warning that `sync` settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sip_users_owners_are_counted_and_unsettled_ones_named() {
    let site = Site::new(crate::mbg::sim_config()).await;
    ok(site.run(&["sync"]));
    site.sim
        .add_device(crate::mbg::sip_user(
            "MiVO250-2",
            "1001",
            "by-hand-1001",
            "a-long-password-1",
        ))
        .unwrap();
    let output = site.run(&["preflight", "--json"]);
    let report = json(&output);
    assert_eq!(output.status.code(), Some(0), "{report:#}");
    let owners = check(&report, "SIP users' owners");
    assert_eq!(owners["status"], "pass", "{owners:#}");
    assert_eq!(
        owners["detail"], "2 SIP users: 1 ours, 1 added by hand (left alone)",
        "{owners:#}"
    );

    // 1002's credentials were stored and a create made its SIP user, whose answer was lost.
    ok(site.run(&[
        "extension",
        "set",
        "1002",
        "--node",
        "pbx1",
        "--remote",
        "on",
    ]));
    let lost = crate::mbg::lost_create(&site.db.store, &site.sim, "1002").await;
    let output = site.run(&["preflight", "--json"]);
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    let report = json(&output);
    let owners = check(&report, "SIP users' owners");
    assert_eq!(owners["status"], "warn", "{owners:#}");
    let detail = owners["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("3 SIP users: 2 ours, 1 added by hand (left alone); 1 of ours")
            && detail.contains(&format!(
                "{lost} (ours, carrying the remote credentials of extension 1002"
            )),
        "{detail}"
    );
    assert!(
        owners["fix"]
            .as_str()
            .unwrap()
            .contains("mbg-provision sync"),
        "{owners:#}"
    );
    ok(site.run(&["sync"]));
    let recorded = site.db.store.extension_by_number("1002").await.unwrap();
    assert_eq!(recorded.mbg_device_id.as_deref(), Some(lost.as_str()));
    let report = json(&site.run(&["preflight", "--json"]));
    assert_eq!(check(&report, "SIP users' owners")["status"], "pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_is_named_with_its_fix() {
    let mut site = Site::new(crate::mbg::sim_config()).await;
    ok(site.run(&["sync"]));
    let fails = |output: &Output, name: &str, detail: &str, fix: &str| {
        let report = json(output);
        assert_eq!(output.status.code(), Some(1), "{report:#}");
        assert_eq!(report["outcome"], "fail");
        let check = check(&report, name);
        assert_eq!(check["status"], "fail", "{check:#}");
        let (d, f) = (
            check["detail"].as_str().unwrap(),
            check["fix"].as_str().unwrap_or_default(),
        );
        assert!(d.contains(detail), "{detail:?} in {d:?}");
        assert!(f.contains(fix), "{fix:?} in {f:?}");
    };

    // A missing permission is named, and so is the consumer to give it to.
    site.sim
        .set_permissions(crate::mbg::CONSUMER, &["Base/managetoken", "MBG/v1/icps"]);
    fails(
        &site.run(&["preflight", "--json"]),
        "permission MBG/v1/devices",
        "lacks MBG/v1/devices",
        "give the consumer MiVOAppSuite the permission MBG/v1/devices (read/write)",
    );
    site.sim
        .set_permissions(crate::mbg::CONSUMER, &["MBG/v1/icps", "MBG/v1/devices"]);
    fails(
        &site.run(&["preflight", "--json"]),
        "permission Base/managetoken",
        "lacks Base/managetoken",
        "the permission Base/managetoken",
    );
    site.sim.set_permissions(
        crate::mbg::CONSUMER,
        &["Base/managetoken", "MBG/v1/icps", "MBG/v1/devices"],
    );

    // A node whose address no ICP has.
    ok(site.run(&["node", "add", "pbx9", "--address", "10.0.0.99"]));
    fails(
        &site.run(&["preflight", "--json"]),
        "nodes and ICPs",
        "pbx9 (10.0.0.99)",
        "node set NAME --address ADDRESS",
    );
    ok(site.run(&["node", "set", "pbx9", "--address", "10.0.0.21"]));
    assert_eq!(site.run(&["preflight"]).status.code(), Some(0));

    // Licences: none left after the wanted ones is a warning (exit 2), too few a failure.
    site.set("MBG_PROVISION_MBG__TELEWORKER_LICENCES", "1".into());
    let output = site.run(&["preflight", "--json"]);
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    assert_eq!(check(&json(&output), "licences")["status"], "warn");
    ok(site.run(&[
        "extension",
        "set",
        "1002",
        "--node",
        "pbx1",
        "--remote",
        "on",
    ]));
    fails(
        &site.run(&["preflight", "--json"]),
        "licences",
        "1 licences, 1 SIP users on the MBG, 1 more wanted: 1 short",
        "teleworker licences",
    );
    site.env
        .retain(|(k, _)| *k != "MBG_PROVISION_MBG__TELEWORKER_LICENCES");

    // A SIP user recorded as ours whose ICP-side name is not the number (changed by hand).
    let guid = site
        .sim
        .add_device(mbg_provision::sim::DeviceFields {
            icp: Some("MiVO250-1".into()),
            setside_username: Some("by-hand-1001".into()),
            setside_password: Some("a-long-password-1".into()),
            icpside_username: Some("9999".into()),
            icpside_password: Some("another-password-1".into()),
            description: None,
            enabled: Some(true),
        })
        .unwrap();
    let id = site.db.store.extension_by_number("1001").await.unwrap().id;
    site.db
        .store
        .record_device(id, Some(&guid), true)
        .await
        .unwrap();
    fails(
        &site.run(&["preflight", "--json"]),
        "ICP-side names",
        "1001 (SIP user",
        "mbg-provision sync",
    );
    ok(site.run(&["sync"]));

    // Another instance's key: it cannot open the secrets this database holds.
    let other_key = site.dir.path().join("other.key");
    std::fs::write(&other_key, [7u8; 32]).unwrap();
    std::fs::set_permissions(
        &other_key,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    site.set(
        "MBG_PROVISION_SECRETS__KEY_FILE",
        other_key.display().to_string(),
    );
    fails(
        &site.run(&["preflight", "--json"]),
        "key file",
        &format!(
            "with the key file {}: the key file does not match",
            other_key.display()
        ),
        "every instance needs the same key",
    );
    site.env
        .retain(|(k, _)| *k != "MBG_PROVISION_SECRETS__KEY_FILE");

    // A rate-limiting MBG answered: not "unreachable", and when to try again.
    site.sim.set_faults(mbg_provision::sim::Faults {
        rate_limit_next: 100,
        retry_after_secs: 120,
        ..Default::default()
    });
    fails(
        &site.run(&["preflight", "--json"]),
        "MBG reachable",
        "rate limiting",
        "after 120 s",
    );
    site.sim.set_faults(mbg_provision::sim::Faults::default());

    // A revoked token: the MBG's 401, and the fix is a new exchange.
    let settings = site.db.store.mbg_settings().await.unwrap();
    let token = settings.access_token.unwrap();
    assert!(site.sim.revoke(token.expose_secret()));
    let output = site.run(&["preflight", "--json"]);
    fails(
        &output,
        "token",
        "refuses the stored token",
        "token request",
    );
    let report = json(&output);
    assert_eq!(
        check(&report, "permission MBG/v1/devices")["status"],
        "skip"
    );
    assert_eq!(check(&report, "MBG reachable")["status"], "pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_and_database_problems_are_reported_not_thrown() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "[mbg]\nmax_in_fligth = 4\n").unwrap();
    let output = run_with(
        dir.path(),
        "sqlite://unused.db",
        &[],
        &["--config", "bad.toml", "preflight", "--json"],
    );
    assert_eq!(output.status.code(), Some(1));
    let report = json(&output);
    let detail = check(&report, "configuration")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.contains("max_in_fligth") && detail.contains("bad.toml"),
        "{detail}"
    );

    // No database file: named, with the command that makes it; nothing is created.
    let missing = dir.path().join("none.db");
    let output = run_with(
        dir.path(),
        &format!("sqlite://{}", missing.display()),
        &[(
            "MBG_PROVISION_HTTP__LISTEN",
            &format!("127.0.0.1:{}", free_port()),
        )],
        &["preflight", "--json"],
    );
    assert_eq!(output.status.code(), Some(1));
    let report = json(&output);
    let database = check(&report, "database");
    assert_eq!(database["status"], "fail");
    assert!(
        database["fix"]
            .as_str()
            .unwrap()
            .contains("mbg-provision migrate")
    );
    assert_eq!(check(&report, "MBG address")["status"], "fail");
    assert!(!missing.exists(), "preflight creates no database");
}

/// The database and key file hold secrets: readable by others is a warning (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_files_readable_by_others_are_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let site = Site::new(crate::mbg::sim_config()).await;
    let report = json(&site.run(&["preflight", "--json"]));
    assert_eq!(
        check(&report, "secret files")["status"],
        "pass",
        "{report:#}"
    );
    let key = site.db.key_file.clone();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = site.run(&["preflight", "--json"]);
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    let files = check(&json(&output), "secret files").clone();
    assert_eq!(files["status"], "warn");
    assert!(
        files["fix"].as_str().unwrap().contains("chmod 600"),
        "{files:#}"
    );
}

/// A pending token's fix is to approve it, not to request another (which would abandon the
/// one the administrator is about to approve).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_token_is_to_be_approved() {
    let sim = crate::mbg::start_sim(crate::mbg::sim_config()).await;
    let db = crate::support::TestDb::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let port = format!("127.0.0.1:{}", free_port());
    let env = [
        ("MBG_PROVISION_MBG__BASE_URL", sim.base_url()),
        (
            "MBG_PROVISION_CONSUMER_SECRET",
            crate::mbg::SECRET.to_string(),
        ),
        ("MBG_PROVISION_HTTP__LISTEN", port),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = |args: &[&str]| run_with(dir.path(), &db.url, &env, args);
    ok(run(&[
        "token",
        "request",
        "--name",
        "first",
        "--consumer-id",
        crate::mbg::CONSUMER,
    ]));
    let output = run(&["preflight", "--json"]);
    assert_eq!(output.status.code(), Some(1));
    let report = json(&output);
    let token = check(&report, "token");
    assert_eq!(token["status"], "fail");
    assert!(
        token["detail"]
            .as_str()
            .unwrap()
            .contains("pending approval"),
        "{token:#}"
    );
    assert!(
        token["fix"].as_str().unwrap().starts_with("approve"),
        "{token:#}"
    );
}

/// A daemon that answers `/healthz`: healthy passes, unhealthy fails with its reasons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemons_health_is_read_from_healthz() {
    let mut site = Site::new(crate::mbg::sim_config()).await;
    let listener = mbg_provision::http::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let health = HealthState::default();
    // A daemon on another database first: its health is not this one's.
    health.update(|h| {
        h.role = mbg_provision::health::Role::Leader;
        h.database_id = Some("another-database".into());
        h.set(Concern::Token, Severity::Unhealthy, "another site's token");
    });
    let shutdown = Shutdown::new();
    let server = tokio::spawn(mbg_provision::http::serve(
        listener,
        health.clone(),
        Telemetry::install(),
        None,
        None,
        shutdown.clone(),
    ));
    site.set("MBG_PROVISION_HTTP__LISTEN", addr.to_string());
    let output = site.run(&["preflight", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let daemon = check(&json(&output), "daemon").clone();
    assert_eq!(daemon["status"], "skip", "{daemon:#}");
    assert!(
        daemon["detail"]
            .as_str()
            .unwrap()
            .contains("another database"),
        "{daemon:#}"
    );

    let id = site.db.store.database_id().await.unwrap();
    assert_eq!(id.len(), 32, "{id}");
    health.update(|h| {
        h.database_id = Some(id);
        h.clear(Concern::Token);
    });
    let report = json(&site.run(&["preflight", "--json"]));
    let daemon = check(&report, "daemon");
    assert_eq!(daemon["status"], "pass", "{daemon:#}");
    assert!(daemon["detail"].as_str().unwrap().contains("leader"));

    health.update(|h| {
        h.set(
            Concern::Token,
            Severity::Unhealthy,
            "the MBG refused the token",
        )
    });
    let output = site.run(&["preflight", "--json"]);
    assert_eq!(output.status.code(), Some(1));
    let report = json(&output);
    let daemon = check(&report, "daemon");
    assert_eq!(daemon["status"], "fail");
    assert!(
        daemon["detail"]
            .as_str()
            .unwrap()
            .contains("the MBG refused the token"),
        "{daemon:#}"
    );
    shutdown.trigger(mbg_provision::shutdown::SIGTERM);
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_firewall_checklist_names_each_clients_ports() {
    let site = Site::new(crate::mbg::sim_config()).await;
    let text = stdout(&site.run(&["preflight", "--clients", "desktop,mobile,69xx"]));
    for expected in [
        "On the MBG's Port Forwarding page",
        "TCP 8186, 8187",
        "TCP 8188",
        "TCP 2001",
        "TCP 8200, 8204",
        "TCP 8185",
        "TCP 8190",
        "TCP 8202",
        "SNAT on every rule",
        "no 5060 (SIP) rule on the MBG's Port Forwarding page",
        "UDP 3478",
        "On the site firewall, from the internet to the MBG's external address",
        "internally 127.0.0.1",
        "UDP 20000-31000",
        "MiVoice Border Gateway Engineering Guidelines, Release 8.0",
        "MiVoice Office Application Suite Technical Manual",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }
    // The site firewall lets SIP reach the MBG on the port `extension show` gives the phones.
    let node = site.run(&["node", "list", "--json"]);
    let nodes: serde_json::Value = serde_json::from_slice(&node.stdout).unwrap();
    for node in nodes.as_array().unwrap() {
        let port = node["nat_sip_port"].as_u64().unwrap_or(5060);
        assert!(
            text.contains(&format!("UDP and TCP {port}")),
            "SIP port {port} in:\n{text}"
        );
    }
    let report = json(&site.run(&["preflight", "--clients", "69xx", "--json"]));
    let rules = report["firewall"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["client"], "69xx");
    assert_eq!(rules[0]["ports"], serde_json::json!([8202]));
    let site_rules = report["firewall"]["site"].as_array().unwrap();
    assert!(
        site_rules.iter().any(|r| r["ports"] == "20000-31000"),
        "{site_rules:?}"
    );
    assert!(site_rules.iter().all(|r| r["source"].is_string()));
    let unknown = site.run(&["preflight", "--clients", "fax"]);
    assert_eq!(unknown.status.code(), Some(64));
    assert!(
        stderr(&unknown).contains("desktop, mobile, 69xx"),
        "{}",
        stderr(&unknown)
    );
}

// ---- TLS: certificates from a test CA --------------------------------------------------------

pub(crate) struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub(crate) pem: String,
}

impl TestCa {
    pub(crate) fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "mbg-provision test CA");
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names`, valid from `not_before` to `not_after`.
    pub(crate) fn leaf(
        &self,
        names: &[&str],
        expired: bool,
    ) -> (Vec<CertificateDer<'static>>, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (vec![cert.der().clone()], key)
    }
}

fn self_signed(names: &[&str]) -> (Vec<CertificateDer<'static>>, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.self_signed(&key).unwrap();
    (vec![cert.der().clone()], key)
}

/// A TLS server on loopback that completes handshakes with `chain` and then closes.
async fn tls_server(chain: Vec<CertificateDer<'static>>, key: KeyPair) -> SocketAddr {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(stream).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_certificate_problem_is_told_apart() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let probe = |addr: SocketAddr, ca: Option<std::path::PathBuf>, host: &'static str| async move {
        tls::probe(host, addr.port(), ca.as_deref(), Duration::from_secs(5)).await
    };

    let (chain, key) = ca.leaf(&["127.0.0.1", "localhost"], false);
    let good = tls_server(chain, key).await;
    assert_eq!(
        probe(good, Some(ca_file.clone()), "127.0.0.1").await,
        Ok(Certificate::Trusted)
    );
    assert_eq!(
        probe(good, Some(ca_file.clone()), "localhost").await,
        Ok(Certificate::Trusted)
    );
    assert_eq!(
        probe(good, None, "127.0.0.1").await,
        Ok(Certificate::UnknownIssuer),
        "the test CA is not trusted without mbg.ca_file"
    );

    let (chain, key) = self_signed(&["127.0.0.1"]);
    let own = tls_server(chain, key).await;
    assert_eq!(
        probe(own, None, "127.0.0.1").await,
        Ok(Certificate::SelfSigned)
    );
    assert_eq!(
        probe(own, Some(ca_file.clone()), "127.0.0.1").await,
        Ok(Certificate::SelfSigned)
    );

    let (chain, key) = ca.leaf(&["127.0.0.1"], true);
    let old = tls_server(chain, key).await;
    match probe(old, Some(ca_file.clone()), "127.0.0.1").await {
        Ok(Certificate::Expired { not_after }) => {
            if let Some(at) = not_after {
                assert_eq!(at, 1_609_459_200, "2021-01-01");
            }
        }
        other => panic!("expected expired, got {other:?}"),
    }

    let (chain, key) = ca.leaf(&["mbg.example"], false);
    let other_name = tls_server(chain, key).await;
    match probe(other_name, Some(ca_file.clone()), "127.0.0.1").await {
        Ok(Certificate::WrongHost { host, presented }) => {
            assert_eq!(host, "127.0.0.1");
            assert!(
                presented.is_empty() || presented.iter().any(|p| p.contains("mbg.example")),
                "{presented:?}"
            );
        }
        other => panic!("expected wrong host, got {other:?}"),
    }

    // openssl's default for a self-signed certificate: CA:TRUE. WebPKI refuses it even as its
    // own trust anchor; say so rather than print rustls's debug text.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("own.pem"), cert.pem()).unwrap();
    let ca_server = tls_server(vec![cert.der().clone()], key).await;
    for trust in [None, Some(dir.path().join("own.pem"))] {
        assert_eq!(
            probe(ca_server, trust, "127.0.0.1").await,
            Ok(Certificate::CaAsServer)
        );
    }

    let closed = free_port();
    assert!(matches!(
        tls::probe("127.0.0.1", closed, None, Duration::from_secs(2)).await,
        Err(tls::ProbeError::Connect { .. })
    ));
}

/// The command: an MBG with a self-signed certificate fails preflight with the fix, exit 1,
/// before any signed call is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_mbg_certificate_fails_preflight() {
    let mut site = Site::new(crate::mbg::sim_config()).await;
    let (chain, key) = self_signed(&["127.0.0.1"]);
    let addr = tls_server(chain, key).await;
    site.set(
        "MBG_PROVISION_MBG__BASE_URL",
        format!("https://127.0.0.1:{}/mslrest", addr.port()),
    );
    let output = site.run(&["preflight", "--json"]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let report = json(&output);
    let certificate = check(&report, "MBG certificate");
    assert_eq!(certificate["status"], "fail");
    assert!(
        certificate["detail"]
            .as_str()
            .unwrap()
            .contains("self-signed")
    );
    assert!(certificate["fix"].as_str().unwrap().contains("mbg.ca_file"));
    assert_eq!(check(&report, "token")["status"], "skip");

    let ca = TestCa::new();
    let (chain, key) = ca.leaf(&["127.0.0.1"], false);
    let addr = tls_server(chain, key).await;
    site.set(
        "MBG_PROVISION_MBG__BASE_URL",
        format!("https://127.0.0.1:{}/mslrest", addr.port()),
    );
    let report = json(&site.run(&["preflight", "--json"]));
    let certificate = check(&report, "MBG certificate");
    assert!(
        certificate["detail"]
            .as_str()
            .unwrap()
            .contains("issued by a CA that this machine does not trust"),
        "{certificate:#}"
    );
    std::fs::write(site.dir.path().join("ca.pem"), &ca.pem).unwrap();
    site.set("MBG_PROVISION_MBG__CA_FILE", "ca.pem".into());
    let report = json(&site.run(&["preflight", "--json"]));
    assert_eq!(
        check(&report, "MBG certificate")["status"],
        "pass",
        "{report:#}"
    );
    // Trusted now; this server speaks no HTTP, so the MBG check is what fails.
    assert_eq!(check(&report, "MBG reachable")["status"], "fail");
}

// ---- STUN against coturn ------------------------------------------------------------------------

/// coturn's `turnserver` as a plain STUN server on a loopback UDP port, killed on drop.
struct Coturn {
    child: std::process::Child,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts coturn, or says loudly why not: CI (`TEST_REQUIRE_COTURN=1`, set by `.ci/run`, which
/// installs it) fails instead of skipping.
fn coturn() -> Option<Coturn> {
    let binary = ["/usr/bin/turnserver", "/usr/sbin/turnserver"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(binary) = binary else {
        assert!(
            std::env::var_os("TEST_REQUIRE_COTURN").is_none(),
            "coturn is required here (TEST_REQUIRE_COTURN): apt-get install coturn"
        );
        eprintln!(
            "\n*** SKIPPED: coturn's turnserver is not installed (apt-get install coturn); the STUN check ran against no real server ***\n"
        );
        return None;
    };
    let port = free_udp_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = std::process::Command::new(binary)
        .args([
            "-n",
            "--stun-only",
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            &port.to_string(),
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--simple-log",
            "--log-file",
        ])
        .arg(log.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start turnserver");
    Some(Coturn { child, port, log })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stun_asks_a_real_server_for_the_mapped_address() {
    let Some(server) = coturn() else { return };
    let target = format!("127.0.0.1:{}", server.port);
    // coturn takes a moment to bind (seconds on a loaded machine); a request before that is
    // refused (ICMP), so wait for it.
    let mut answer = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        match mbg_provision::stun::binding(&target).await {
            Ok(found) => {
                answer = Some(found);
                break;
            }
            Err(mbg_provision::stun::StunError::Refused { .. }) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    let (from, mapped) = answer.unwrap_or_else(|| {
        panic!(
            "coturn did not answer within 30 s; its log:\n{}",
            std::fs::read_to_string(server.log.path()).unwrap_or_default()
        )
    });
    assert_eq!(from.to_string(), target);
    assert_eq!(
        mapped.ip().to_string(),
        "127.0.0.1",
        "loopback sees loopback"
    );
    assert_ne!(
        mapped.port(),
        server.port,
        "the client's port, not the server's"
    );

    let site = Site::new(crate::mbg::sim_config()).await;
    let output = site.run(&["preflight", "--stun", &target, "--json"]);
    let report = json(&output);
    let stun = check(&report, &format!("STUN {target}"));
    assert_eq!(stun["status"], "pass", "{stun:#}");
    assert!(
        stun["detail"]
            .as_str()
            .unwrap()
            .contains("seen as 127.0.0.1:")
    );
    assert_eq!(output.status.code(), Some(0), "{report:#}");

    drop(server);
    let output = site.run(&["preflight", "--stun", &target, "--json"]);
    assert_eq!(output.status.code(), Some(1));
    let report = json(&output);
    let stun = check(&report, &format!("STUN {target}"));
    assert_eq!(stun["status"], "fail");
    assert!(
        stun["detail"]
            .as_str()
            .unwrap()
            .contains("no STUN server listens"),
        "{stun:#}"
    );
    assert!(stun["fix"].as_str().unwrap().contains("UDP"));
}

/// Every command that calls the MBG says what is wrong with the connection and what to do,
/// within seconds and without a library's log line: a certificate from a CA this machine does
/// not trust (a CA made here), an expired one, one for another name, and a closed port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_name_an_unreachable_mbg_in_words_within_seconds() {
    let mut site = Site::new(crate::mbg::sim_config()).await;
    let ca = TestCa::new();
    let ca_file = site.dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let (chain, key) = ca.leaf(&["127.0.0.1"], false);
    let untrusted = tls_server(chain, key).await;
    let (chain, key) = ca.leaf(&["127.0.0.1"], true);
    let expired = tls_server(chain, key).await;
    let (chain, key) = ca.leaf(&["mbg.example"], false);
    let other_name = tls_server(chain, key).await;
    let closed = free_port();
    let cases = [
        (
            format!("https://127.0.0.1:{}/mslrest", untrusted.port()),
            None,
            "is signed by a CA this machine does not trust",
            "mbg.ca_file",
        ),
        (
            format!("https://127.0.0.1:{}/mslrest", expired.port()),
            Some(&ca_file),
            "has expired",
            "renew it",
        ),
        (
            format!("https://127.0.0.1:{}/mslrest", other_name.port()),
            Some(&ca_file),
            "is not for that name",
            "mbg.base_url",
        ),
        (
            format!("http://127.0.0.1:{closed}/mslrest"),
            None,
            "connection refused at 127.0.0.1:",
            "check mbg.base_url",
        ),
    ];
    for (base_url, trust, problem, fix) in cases {
        site.set("MBG_PROVISION_MBG__BASE_URL", base_url.clone());
        match trust {
            Some(ca) => site.set("MBG_PROVISION_MBG__CA_FILE", ca.display().to_string()),
            None => site.env.retain(|(k, _)| *k != "MBG_PROVISION_MBG__CA_FILE"),
        }
        for command in [&["sync"][..], &["token", "renew"]] {
            let started = std::time::Instant::now();
            let output = site.run(command);
            let message = stderr(&output);
            assert_ne!(
                output.status.code(),
                Some(0),
                "{command:?} {base_url}: {message}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{command:?} {base_url}: {:?}",
                started.elapsed()
            );
            assert!(
                message.contains(problem) && message.contains(fix),
                "{command:?} {base_url}: {message}"
            );
            assert!(
                !message.contains("rustls") && !message.contains(" WARN "),
                "{command:?} {base_url}: a library's log line: {message}"
            );
        }
    }
}
