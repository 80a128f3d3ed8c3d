//! `run`: the daemon. Watches the database for changes and applies each at once, reconciles in
//! full at start-up and every `reconcile.interval`, retries failed extensions when due, renews
//! the token on `token.renew_schedule`, and reports its health.
//!
//! One instance leads: it holds the database's pass lock (the one `sync` takes), on PostgreSQL an
//! advisory lock on a connection of its own. Others wait as standby and take over when the
//! leader's connection dies. The MBG, not the daemon, is the limit on throughput, so there is
//! nothing to gain from sharing the work.

mod rows;
mod watch;
mod worker;

use std::time::Duration;

use tracing::{info, warn};

use crate::app::App;
use crate::health::{Concern, HealthState, Role};
use crate::shutdown::Shutdown;
use crate::store::{Backend, Holder, LeaseTerms, LockError, StoreError};
use crate::telemetry::{self, Telemetry};
use crate::{http, systemd};

/// How often a standby tries the leader lock.
const STANDBY_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Lock(#[from] LockError),
    #[error(
        "another mbg-provision daemon or sync runs on this SQLite database: {}; stop it first (a SQLite database has one daemon)",
        .0.as_ref().map_or("holder unknown".to_string(), Holder::to_string)
    )]
    AlreadyRunning(Option<Holder>),
    #[error("cannot serve http.listen {addr}: {error}")]
    Listen {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
    #[error("{0}")]
    Tls(#[from] http::tls::TlsError),
}

/// Runs until `shutdown` is triggered; then lets the calls in flight finish, records them and
/// returns `Ok`. Serves `/healthz` and `/metrics` on `http.listen` meanwhile, and tells systemd
/// (when it started us with `Type=notify`) that it is ready, alive and stopping.
pub async fn run(app: App, shutdown: Shutdown) -> Result<(), DaemonError> {
    let health = HealthState::new(app.config.health.grace);
    let telemetry = Telemetry::install();
    telemetry::leader(false);
    let listener = http::bind(app.config.http.listen)
        .await
        .map_err(|e| DaemonError::Listen {
            addr: e.addr,
            error: e.error,
        })?;
    info!(listen = %app.config.http.listen, "serving /healthz and /metrics");
    let link = crate::console::Link::new(&app.config);
    let tls = match (&app.config.http.tls_cert, &app.config.http.tls_key) {
        (Some(cert), Some(key)) => Some(http::tls::acceptor(cert, key)?),
        _ => None,
    };
    // A password and a session cookie never cross a network in clear: the console is served
    // on loopback, or over TLS (here or at a declared proxy).
    let http_config = &app.config.http;
    let console = if http_config.listen.ip().is_loopback() || http_config.is_tls() {
        Some(crate::console::Console::new(
            app.store.clone(),
            health.clone(),
            link.clone(),
            app.clock.clone(),
        ))
    } else {
        warn!(listen = %app.config.http.listen, "the console is off: http.listen is not a loopback address and there is no TLS (set http.tls_cert and http.tls_key, or http.behind_tls_proxy), or reach a loopback http.listen through an SSH tunnel");
        None
    };
    let server = tokio::spawn(http::serve(
        listener,
        health.clone(),
        telemetry,
        console,
        tls,
        shutdown.clone(),
    ));
    systemd::ready();
    let result = run_with(app, shutdown.clone(), health, link).await;
    systemd::stopping();
    if result.is_err() {
        server.abort();
    }
    let _ = server.await;
    result
}

/// [`run`], reporting into `health` (which the HTTP endpoints read), and through `link` to the
/// console in this process.
pub async fn run_with(
    app: App,
    shutdown: Shutdown,
    health: HealthState,
    link: crate::console::Link,
) -> Result<(), DaemonError> {
    // From the start, so that a SIGHUP never ends the process (its default): the standby's
    // wait and the leader's loop both reload on it.
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    match app.store.database_id().await {
        Ok(id) => health.update(|h| h.database_id = Some(id)),
        Err(e) => {
            warn!(error = %e, "cannot read the database id; preflight will not recognise this daemon")
        }
    }
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    if app.store.backend() == Backend::Postgres {
        watch::listen(&app, wake.clone(), shutdown.clone());
    }
    let mut worker = worker::Worker::new(app, health.clone(), shutdown.clone(), wake, link);
    loop {
        let Some(mut lock) = acquire(&mut worker, &health, &shutdown, &mut hangups).await? else {
            break;
        };
        info!("leading: this instance applies the changes");
        health.update(|h| h.role = Role::Leader);
        telemetry::leader(true);
        systemd::status("leader");
        let lost = worker.lead(&mut lock, &mut hangups).await;
        telemetry::leader(false);
        match lost {
            worker::Ended::Stopped => {
                health.update(|h| h.role = Role::Stopping);
                lock.release().await;
                break;
            }
            worker::Ended::LostLeadership => {
                warn!(
                    "lost the leader lock (its database connection died): stopped calling the MBG"
                );
                health.update(|h| {
                    h.role = Role::Standby;
                    // A leader's finding: the one that takes over reports its own.
                    h.clear(Concern::UnloggedChanges);
                });
                drop(lock);
                // Two standby polls before trying again, so that a standby that saw the lock
                // free takes it rather than the instance that just lost its connection.
                let clock = worker.app.clock.clone();
                tokio::select! {
                    _ = clock.sleep(2 * STANDBY_POLL) => {}
                    _ = shutdown.triggered() => {}
                }
            }
        }
    }
    health.update(|h| h.role = Role::Stopping);
    info!("stopped");
    Ok(())
}

/// The leader lock, or `None` once a stop is asked while waiting. On SQLite a second daemon
/// refuses to start; on PostgreSQL it waits as standby.
async fn acquire(
    worker: &mut worker::Worker,
    health: &HealthState,
    shutdown: &Shutdown,
    hangups: &mut worker::Hangups,
) -> Result<Option<crate::store::PassLock>, DaemonError> {
    let store = worker.app.store.clone();
    let mut said = false;
    loop {
        if shutdown.is_triggered() {
            return Ok(None);
        }
        match store
            .try_lock_passes(LeaseTerms::of(&worker.app.config))
            .await
        {
            Ok(Some(lock)) => return Ok(Some(lock)),
            Ok(None) if store.backend() == Backend::Sqlite => {
                return Err(DaemonError::AlreadyRunning(store.pass_holder().await?));
            }
            Ok(None) => {
                if !said {
                    let holder = store.pass_holder().await.ok().flatten();
                    info!(
                        leader = %holder.map_or("unknown".to_string(), |h| h.to_string()),
                        "standby: another instance leads; taking over if it stops"
                    );
                    said = true;
                }
                health.update(|h| {
                    h.role = Role::Standby;
                    h.database.succeeded(chrono::Utc::now().timestamp());
                });
                systemd::status("standby");
            }
            Err(e) => {
                warn!(error = %e, "cannot reach the database for the leader lock");
                health.update(|h| {
                    h.database
                        .failed(chrono::Utc::now().timestamp(), e.to_string())
                });
            }
        }
        systemd::watchdog_ping();
        let clock = worker.app.clock.clone();
        tokio::select! {
            _ = clock.sleep(STANDBY_POLL) => {}
            _ = shutdown.triggered() => return Ok(None),
            _ = worker::hangup(hangups) => worker.reload().await,
        }
    }
}
