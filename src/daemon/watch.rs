//! On PostgreSQL, `LISTEN extension_changes`: the trigger's `pg_notify` wakes the worker the
//! moment a change commits. The worker polls the change table as well, so a notification lost
//! while the listener reconnects costs at most `watch.poll_interval`; and every (re)connect wakes
//! it once, to drain what was recorded meanwhile.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::app::App;
use crate::shutdown::Shutdown;

const CHANNEL: &str = "extension_changes";
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

pub(crate) fn listen(app: &App, wake: Arc<Notify>, shutdown: Shutdown) {
    let url = app.store.url().expose().to_string();
    tokio::spawn(async move {
        loop {
            let listened = async {
                let mut listener = PgListener::connect(&url).await?;
                listener.listen(CHANNEL).await?;
                debug!("listening for extension changes");
                wake.notify_one();
                loop {
                    let notification = listener.recv().await?;
                    debug!(extension_id = notification.payload(), "change notified");
                    wake.notify_one();
                }
                #[allow(unreachable_code)]
                Ok::<(), sqlx::Error>(())
            };
            tokio::select! {
                result = listened => {
                    if let Err(e) = result {
                        warn!(error = %e, "the change listener lost its connection; polling until it is back");
                    }
                }
                _ = shutdown.triggered() => return,
            }
            wake.notify_one();
            tokio::select! {
                _ = tokio::time::sleep(RECONNECT_DELAY) => {}
                _ = shutdown.triggered() => return,
            }
        }
    });
}
