//! `run`: the daemon. Watches the database for changes and applies each at once, reconciles in
//! full at start-up and every `reconcile.interval`, retries failed extensions when due, renews
//! the token on `token.renew_schedule`, and serves `/healthz` and `/metrics`.

use crate::app::App;
use crate::shutdown::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Lock(#[from] crate::store::LockError),
    #[error("cannot serve http.listen {addr}: {error}")]
    Listen {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
}

/// Runs until `shutdown` is triggered; then finishes the calls in flight and returns `Ok`.
pub async fn run(app: App, shutdown: Shutdown) -> Result<(), DaemonError> {
    let _ = (app, shutdown);
    unimplemented!("the daemon is being built")
}
