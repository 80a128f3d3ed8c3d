//! `run`: the daemon. Watches the database and applies each change, reconciles in full every
//! `reconcile.interval`, renews the token on `token.renew_schedule`, and serves `/healthz` and
//! `/metrics` on `http.listen`; SIGTERM/SIGINT let the calls in flight finish, then exit 0.

use std::process::ExitCode;

use anyhow::{Context, Result};
use mbg_provision::app::App;
use mbg_provision::daemon;
use mbg_provision::shutdown::Shutdown;

/// Listens for SIGINT and SIGTERM before the database is opened, so that a stop during
/// start-up (a slow database, systemd stopping a unit that just started) also ends with exit 0
/// instead of the signal's default death.
pub fn listen_for_signals() -> Result<Shutdown> {
    let shutdown = Shutdown::new();
    shutdown
        .on_signals()
        .context("cannot listen for SIGINT/SIGTERM")?;
    Ok(shutdown)
}

/// Runs the daemon on `app` until a signal stops it: exit 0 then, 1 (an error) when it cannot
/// start or stops by itself.
pub async fn run(app: App, shutdown: Shutdown) -> Result<ExitCode> {
    let store = app.store.clone();
    let result = daemon::run(app, shutdown).await;
    store.close().await;
    result.context("the daemon stopped")?;
    Ok(ExitCode::SUCCESS)
}
