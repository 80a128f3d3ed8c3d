//! `/healthz` and `/metrics` over real HTTP: the server on 127.0.0.1:0, reqwest as the client.

use std::net::SocketAddr;
use std::time::Duration;

use mbg_provision::health::{Concern, HealthState, Reachability, Role, Severity, TokenHealth};
use mbg_provision::http;
use mbg_provision::mbg::NewSipDevice;
use mbg_provision::reconcile::{Outcome, Status};
use mbg_provision::shutdown::{SIGTERM, Shutdown};
use mbg_provision::store::ExtensionState;
use mbg_provision::telemetry::{self, ActionKind, ActionOutcome, Telemetry, names};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::Value;

use crate::mbg::{Harness, sim_config};
use crate::support::TestDb;

struct Server {
    addr: SocketAddr,
    health: HealthState,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start() -> Server {
        let listener = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = HealthState::default();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(http::serve(
            listener,
            health.clone(),
            Telemetry::install(),
            None,
            None,
            shutdown.clone(),
        ));
        Server {
            addr,
            health,
            shutdown,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::get(self.url(path)).await.expect("server answers")
    }

    async fn healthz(&self) -> (StatusCode, Value) {
        let response = self.get("/healthz").await;
        let code = response.status();
        let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(content_type, "application/json");
        (code, response.json().await.expect("JSON body"))
    }

    async fn metrics(&self) -> String {
        let response = self.get("/metrics").await;
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        response.text().await.unwrap()
    }
}

fn healthy_leader(health: &HealthState) {
    health.update(|h| {
        h.role = Role::Leader;
        h.token = TokenHealth {
            state: "valid".into(),
            days_left: Some(300),
            problem: None,
        };
        h.database = Reachability {
            ok: true,
            error: None,
            checked_at: Some(1_700_000_000),
            failing_since: None,
        };
        h.mbg = Reachability {
            ok: true,
            error: None,
            checked_at: Some(1_700_000_001),
            failing_since: None,
        };
        h.queue_depth = 3;
        h.last_full_reconcile = Some(1_700_000_002);
        h.database_id = Some("0123456789abcdef0123456789abcdef".into());
    });
}

#[tokio::test]
async fn healthz_reports_a_healthy_leader_with_every_field() {
    let server = Server::start().await;
    healthy_leader(&server.health);
    let (code, body) = server.healthz().await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["role"], "leader");
    assert_eq!(body["token"]["state"], "valid");
    assert_eq!(body["token"]["days_left"], 300);
    assert_eq!(body["token"]["problem"], Value::Null);
    assert_eq!(body["database"]["ok"], true);
    assert_eq!(body["database"]["checked_at"], 1_700_000_000);
    assert_eq!(body["mbg"]["ok"], true);
    assert_eq!(body["queue_depth"], 3);
    assert_eq!(body["last_full_reconcile"], 1_700_000_002);
    assert_eq!(body["database_id"], "0123456789abcdef0123456789abcdef");
    assert_eq!(body["unhealthy"], serde_json::json!([]));
    assert_eq!(body["degraded"], serde_json::json!([]));
    let mut keys: Vec<&str> = body.as_object().unwrap().keys().map(|k| &**k).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "database",
            "database_id",
            "degraded",
            "last_full_reconcile",
            "mbg",
            "queue_depth",
            "role",
            "status",
            "token",
            "unhealthy"
        ]
    );
}

#[tokio::test]
async fn healthz_a_standby_is_healthy() {
    let server = Server::start().await;
    server.health.update(|h| h.role = Role::Standby);
    let (code, body) = server.healthz().await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["role"], "standby");
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn healthz_answers_503_with_the_reason_and_follows_changes_live() {
    let server = Server::start().await;
    healthy_leader(&server.health);
    assert_eq!(server.healthz().await.0, StatusCode::OK);

    // Degraded still answers 200: the work goes on.
    server.health.update(|h| {
        h.set(
            Concern::TokenExpiry,
            Severity::Degraded,
            "the token expires in 12 days and cannot be renewed by API",
        )
    });
    let (code, body) = server.healthz().await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["status"], "degraded");

    let reason = "the MBG rejected the access token (401): run `mbg-provision token request`";
    server.health.update(|h| {
        h.token.state = "rejected".into();
        h.token.problem = Some(reason.into());
        h.set(Concern::Token, Severity::Unhealthy, reason);
    });
    let (code, body) = server.healthz().await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["unhealthy"][0], format!("token: {reason}"));
    assert_eq!(body["unhealthy"].as_array().unwrap().len(), 1);
    assert_eq!(body["token"]["state"], "rejected");
    assert_eq!(body["role"], "leader");

    // And back, without a restart.
    server.health.update(|h| {
        h.clear(Concern::Token);
        h.clear(Concern::TokenExpiry);
    });
    let (code, body) = server.healthz().await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn metrics_has_every_family_and_the_latency_buckets() {
    let server = Server::start().await;
    let text = server.metrics().await;
    // Described up front, so a scraper sees HELP/TYPE even before the first value.
    let before = counter_value(&text, names::CHANGES_SEEN).unwrap_or(0.0);

    telemetry::changes_seen(5);
    telemetry::action(ActionKind::Create, ActionOutcome::Done);
    mbg_provision::reconcile::count_outcomes(&[Outcome {
        extension_id: Some(1),
        number: "1001".into(),
        verb: "delete",
        status: Status::NeedsAttention,
        detail: String::new(),
        effect: None,
    }]);
    telemetry::mbg_request(
        "PUT",
        "mbg/v1/devices/sip/guid-xyz/",
        Duration::from_millis(7),
    );
    telemetry::extensions_by_state(&[(ExtensionState::Provisioned, 42)]);
    telemetry::token_expiry(1_000 + 86_400, 1_000);
    telemetry::token_needs_attention(true);
    telemetry::full_reconcile_done(1_700_000_000);
    telemetry::leader(true);
    telemetry::console_sign_in_refused("wrong_password");
    telemetry::mbg_drift(2);
    telemetry::unexpected_row_changes(1);

    let text = server.metrics().await;
    for name in names::ALL {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
    assert!(text.contains("# TYPE mbg_provision_mbg_request_duration_seconds histogram"));
    assert!(text.contains("# HELP mbg_provision_leader "));
    let after = counter_value(&text, names::CHANGES_SEEN).unwrap();
    assert!(after >= before + 5.0, "{before} -> {after}");
    for line in [
        r#"mbg_provision_actions_total{action="create",outcome="done"} "#,
        r#"mbg_provision_actions_total{action="delete",outcome="needs_attention"} "#,
        r#"mbg_provision_extensions{state="provisioned"} 42"#,
        r#"mbg_provision_extensions{state="failed"} 0"#,
        "mbg_provision_token_expiry_seconds 86400",
        "mbg_provision_token_needs_attention 1",
        "mbg_provision_last_full_reconcile_timestamp_seconds 1700000000",
        "mbg_provision_leader 1",
        "mbg_provision_mbg_drift_total ",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    for le in ["0.005", "0.01", "0.1", "1", "30", "+Inf"] {
        let bucket = format!(
            r#"mbg_provision_mbg_request_duration_seconds_bucket{{method="PUT",endpoint="devices",le="{le}"}} "#
        );
        assert!(text.contains(&bucket), "{bucket} missing:\n{text}");
    }
    // 7 ms lands between the 5 ms and 10 ms bounds (buckets are cumulative; samples recorded
    // by other tests only add to the difference).
    let bucket = |le: &str| {
        counter_value(
            &text,
            &format!(
                r#"mbg_provision_mbg_request_duration_seconds_bucket{{method="PUT",endpoint="devices",le="{le}"}}"#
            ),
        )
        .unwrap()
    };
    assert!(bucket("0.01") >= bucket("0.005") + 1.0);
    assert!(!text.contains("guid-xyz"), "a path reached a label");
}

/// The client times its own requests, labelled by group: no guid from a device path.
async fn mbg_requests_are_timed_without_guids(db: TestDb) {
    let server = Server::start().await;
    let h = Harness::new(db, sim_config()).await.with_token().await;
    let client = h.client().await;
    let count = |text: &str| {
        counter_value(
            text,
            r#"mbg_provision_mbg_request_duration_seconds_count{method="GET",endpoint="devices"}"#,
        )
        .unwrap_or(0.0)
    };
    let before = count(&server.metrics().await);
    client.ping().await.unwrap();
    let guid = client
        .create_device(&NewSipDevice {
            icp: "MiVO250-1".into(),
            setside_username: "metric01".into(),
            setside_password: SecretString::from("set-side-pass-1"),
            icpside_username: "1077".into(),
            icpside_password: SecretString::from("icp-side-pass-1"),
            description: "metrics test".into(),
            enabled: true,
        })
        .await
        .unwrap();
    client.device(&guid).await.unwrap();
    client.delete_device(&guid).await.unwrap();
    // A 404 is timed too.
    client.device(&guid).await.unwrap_err();

    let text = server.metrics().await;
    assert!(count(&text) >= before + 2.0, "{text}");
    for series in [
        r#"mbg_provision_mbg_request_duration_seconds_count{method="GET",endpoint="ping"}"#,
        r#"mbg_provision_mbg_request_duration_seconds_count{method="POST",endpoint="devices"}"#,
        r#"mbg_provision_mbg_request_duration_seconds_count{method="DELETE",endpoint="devices"}"#,
        r#"mbg_provision_mbg_request_duration_seconds_count{method="POST",endpoint="token"}"#,
    ] {
        assert!(
            counter_value(&text, series).is_some_and(|n| n >= 1.0),
            "{series} missing:\n{text}"
        );
    }
    assert!(!text.contains(&guid), "a guid reached a label");
    assert!(!text.contains("pass-1"), "a secret reached the metrics");
}

crate::on_both_backends!(mbg_requests_are_timed_without_guids);

#[tokio::test]
async fn anything_else_is_404() {
    let server = Server::start().await;
    for path in [
        "/",
        "/health",
        "/healthz/extra",
        "/metrics.json",
        "/sim/tokens",
    ] {
        let response = server.get(path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let post = reqwest::Client::new()
        .post(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn serve_stops_when_shutdown_is_triggered() {
    let server = Server::start().await;
    // A pooled keep-alive connection stays open after this request: it must not hold the stop.
    let client = reqwest::Client::new();
    let response = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.bytes().await.unwrap();
    assert!(!server.task.is_finished());

    server.shutdown.trigger(SIGTERM);
    let result = tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("serve returns within the grace period")
        .expect("serve did not panic");
    assert!(result.is_ok(), "{result:?}");
    let after = reqwest::Client::new()
        .get(format!("http://{}/healthz", server.addr))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(after.is_err(), "still answering after the stop");
}

/// The value of the sample line `series VALUE` (`series` with its labels, if any).
fn counter_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
