//! The daemon's operations endpoints on `http.listen`:
//!
//! - `GET /healthz`: 200 while the service can do its job (`ok` or `degraded`; a standby is
//!   healthy), 503 when it cannot (`unhealthy`), with the [`Health`] snapshot as JSON so the
//!   reason is one `curl` away;
//! - `GET /metrics`: Prometheus text format, from [`Telemetry`];
//! - the console's pages (`crate::console`), when the daemon serves them;
//! - anything else: 404.
//!
//! Handlers only read a snapshot: a scrape never waits for the daemon, nor the daemon for it.
//! There is no authentication, which is why `http.listen` defaults to loopback; the bodies carry
//! no secret.

pub(crate) mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::console::Console;
use crate::health::{Health, HealthState, HealthStatus};
use crate::shutdown::Shutdown;
use crate::telemetry::{Telemetry, UPKEEP_INTERVAL};

/// The content type of the Prometheus text exposition format.
pub(crate) const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long requests in progress may take to finish once a stop is asked. A scrape is quick;
/// a stuck client must not hold up the daemon's exit.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// `http.listen` could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (http.listen): {error}{hint}", hint = hint(error))]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub error: std::io::Error,
}

fn hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => {
            "; another mbg-provision may already be running here (`systemctl status mbg-provision`), or another program uses the port: stop it, or change http.listen"
        }
        std::io::ErrorKind::AddrNotAvailable => "; no interface of this machine has that address",
        std::io::ErrorKind::PermissionDenied => "; ports below 1024 need privileges",
        _ => "",
    }
}

/// Binds `http.listen`, so that a taken port is reported before any work starts.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| BindError { addr, error })
}

/// What `/healthz` answers: the summary word first, then every field of [`Health`].
#[derive(Debug, Serialize)]
pub(crate) struct HealthReport {
    pub status: HealthStatus,
    #[serde(flatten)]
    pub health: Health,
}

#[derive(Clone)]
struct Endpoints {
    health: HealthState,
    telemetry: Telemetry,
}

/// The routes, for [`serve`] and for tests that drive the router directly.
pub(crate) fn router(health: HealthState, telemetry: Telemetry) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(Endpoints { health, telemetry })
}

/// Serves `/healthz`, `/metrics` and, when given, the console on `listener` until `shutdown`
/// is triggered, then lets requests in progress finish (at most [`SHUTDOWN_GRACE`]) and returns
/// `Ok`. While serving, it also runs the metrics upkeep every [`UPKEEP_INTERVAL`], so histograms
/// stay bounded even when nothing scrapes.
pub async fn serve(
    listener: TcpListener,
    health: HealthState,
    telemetry: Telemetry,
    console: Option<Console>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let mut app = router(health, telemetry.clone());
    if let Some(console) = console {
        app = app.merge(console.router());
    }
    let graceful = {
        let shutdown = shutdown.clone();
        async move { shutdown.triggered().await }
    };
    // The peer's address reaches the console's sign-in throttling.
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    let server: std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> = match tls {
        None => Box::pin(
            axum::serve(listener, service)
                .with_graceful_shutdown(graceful)
                .into_future(),
        ),
        Some(acceptor) => {
            use axum::serve::ListenerExt;
            // `tap_io` lends the listener axum's `ConnectInfo<SocketAddr>`.
            let listener = tls::TlsListener::new(listener, acceptor)?.tap_io(|_| {});
            Box::pin(
                axum::serve(listener, service)
                    .with_graceful_shutdown(graceful)
                    .into_future(),
            )
        }
    };
    let upkeep = async {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            telemetry.run_upkeep();
        }
    };
    let deadline = async {
        shutdown.triggered().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        result = server => result,
        () = upkeep => unreachable!("the upkeep loop never ends"),
        () = deadline => {
            tracing::debug!("http: requests still open after the shutdown grace period, dropped");
            Ok(())
        }
    }
}

async fn healthz(State(endpoints): State<Endpoints>) -> Response {
    let health = endpoints.health.snapshot();
    let code = if health.is_healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let report = HealthReport {
        status: health.status(),
        health,
    };
    (
        code,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        axum::Json(report),
    )
        .into_response()
}

async fn metrics(State(endpoints): State<Endpoints>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        endpoints.telemetry.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "not found: this server answers GET /healthz, GET /metrics and the console's pages (GET /)\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_port_names_the_address_and_the_key() {
        let taken = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr).await.unwrap_err();
        assert_eq!(err.addr, addr);
        assert_eq!(err.error.kind(), std::io::ErrorKind::AddrInUse);
        let text = err.to_string();
        assert!(text.contains(&addr.to_string()), "{text}");
        assert!(text.contains("http.listen"), "{text}");
        assert!(
            text.contains("another mbg-provision may already be running"),
            "{text}"
        );
    }

    #[test]
    fn the_report_puts_status_beside_the_health_fields() {
        let state = HealthState::default();
        state.update(|h| {
            h.set(
                crate::health::Concern::TokenExpiry,
                crate::health::Severity::Degraded,
                "10 days left",
            )
        });
        let health = state.snapshot();
        let report = HealthReport {
            status: health.status(),
            health,
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["status"], "degraded");
        assert_eq!(json["role"], "starting");
        assert_eq!(json["degraded"][0], "token expiry: 10 days left");
    }
}
