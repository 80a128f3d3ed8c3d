//! Remote credentials for the rows a pass read that lack them: drawn in memory, so that the plan
//! is made at once, then stored chunk by chunk in the order the plan calls the MBG for them,
//! while the calls go on. A call for an extension waits for its own chunk's commit, never for
//! the whole fill: credentials still reach the database before the MBG (write-ahead), but a
//! first sync of 10,000 rows no longer waits ~150 ms for all of them before its first create.
//!
//! The first chunk is stored before any call of the pass: a database that cannot take a few
//! rows (a full disk) stops the pass before the MBG hears of it.

use std::collections::HashMap;

use secrecy::SecretString;
use tokio::sync::watch;
use tracing::info;

use super::apply::Superseded;
use crate::shutdown::Shutdown;
use crate::store::{CredentialFill, Extension, Store, StoreError};

/// Rows in the largest chunk: one transaction, holding SQLite's write lock while the pass's
/// outcome groups wait. The chunks before it double from the first, which is as large as the
/// calls the pass makes at once.
const LARGEST_CHUNK: usize = 1024;

/// Whether an extension wants remote credentials it does not have.
pub(super) fn lacks_credentials(extension: &Extension) -> bool {
    extension.use_remote_auth
        && (extension.remote_auth_name.is_none() || extension.remote_auth_password.is_none())
}

/// Fills in memory the remote credentials every row that wants them lacks, and returns what to
/// store. Each row's `version` becomes the one it has once they are stored (the version trigger
/// bumps it once), which the pass's outcome writes are conditioned on.
pub(super) fn draw(
    extensions: &mut [Extension],
    mut new_credentials: impl FnMut() -> (String, SecretString),
) -> Vec<CredentialFill> {
    extensions
        .iter_mut()
        .filter(|e| lacks_credentials(e))
        .map(|extension| {
            let (name, password) = new_credentials();
            let fill = CredentialFill::for_row(extension, name, password);
            extension.remote_auth_name = Some(fill.name.clone());
            extension.remote_auth_password = Some(fill.password.clone());
            extension.version += 1;
            fill
        })
        .collect()
}

/// How far the fill has come: chunks committed, and whether it stopped short.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    committed: usize,
    halted: bool,
}

/// What the calls ask of the fill: may this extension's call be sent? The default lets every
/// call through (a pass that drew nothing).
#[derive(Debug)]
pub struct Gate {
    chunk_of: HashMap<i64, usize>,
    progress: watch::Receiver<Progress>,
}

impl Default for Gate {
    fn default() -> Gate {
        let (_, progress) = watch::channel(Progress::default());
        Gate {
            chunk_of: HashMap::new(),
            progress,
        }
    }
}

impl Gate {
    /// Waits until the extension's credentials are stored, if the pass drew any for it:
    /// `false` when they never will be (the fill failed or stopped before them).
    pub(crate) async fn stored(&self, extension_id: i64) -> bool {
        let Some(&chunk) = self.chunk_of.get(&extension_id) else {
            return true;
        };
        let mut progress = self.progress.clone();
        let Ok(reached) = progress.wait_for(|p| p.committed > chunk || p.halted).await else {
            // The writer is gone without saying: whatever it committed is all there is.
            return self.progress.borrow().committed > chunk;
        };
        reached.committed > chunk
    }

    /// Whether the fill failed or stopped: nothing more of the pass is sent.
    pub(crate) fn halted(&self) -> bool {
        self.progress.borrow().halted
    }
}

/// Stores the drawn credentials, chunk by chunk (see the module's doc).
pub(super) struct Writer {
    chunks: Vec<Vec<CredentialFill>>,
    progress: watch::Sender<Progress>,
    /// Rows written so far (not those that changed after the pass read them).
    stored: usize,
}

/// The fill could not be stored: how many extensions' credentials were not, and why.
#[derive(Debug)]
pub(super) struct NotStored {
    pub extensions: usize,
    pub error: StoreError,
}

/// The gate and the writer for `fills`, stored in `order` (a smaller key first; the plan's
/// position of the extension's first action), the first chunk `first_chunk` rows.
pub(super) fn prepare(
    mut fills: Vec<CredentialFill>,
    order: impl Fn(i64) -> usize,
    first_chunk: usize,
) -> (Gate, Writer) {
    fills.sort_by_key(|f| (order(f.extension_id), f.extension_id));
    let mut chunks = Vec::new();
    let mut size = first_chunk.clamp(1, LARGEST_CHUNK);
    let mut rest = fills.into_iter().peekable();
    while rest.peek().is_some() {
        chunks.push(rest.by_ref().take(size).collect::<Vec<_>>());
        size = (size * 2).min(LARGEST_CHUNK);
    }
    let chunk_of = chunks
        .iter()
        .enumerate()
        .flat_map(|(i, chunk)| chunk.iter().map(move |f| (f.extension_id, i)))
        .collect();
    let (sender, progress) = watch::channel(Progress::default());
    (
        Gate { chunk_of, progress },
        Writer {
            chunks,
            progress: sender,
            stored: 0,
        },
    )
}

impl Writer {
    /// Stores the first chunk: done before the pass calls the MBG at all.
    pub(super) async fn first(
        &mut self,
        store: &Store,
        superseded: &Superseded,
    ) -> Result<(), NotStored> {
        self.store_chunk(store, superseded, 0).await
    }

    /// Stores the chunks after the first, each opening the gate for its extensions. Stops
    /// before a chunk when a signal came (those rows keep no credentials; their calls are not
    /// sent).
    pub(super) async fn rest(
        &mut self,
        store: &Store,
        superseded: &Superseded,
        shutdown: &Shutdown,
    ) -> Result<(), NotStored> {
        for chunk in 1..self.chunks.len() {
            if shutdown.is_triggered() {
                self.progress.send_modify(|p| p.halted = true);
                return Ok(());
            }
            self.store_chunk(store, superseded, chunk).await?;
        }
        if self.stored > 0 {
            info!(
                extensions = self.stored,
                "remote credentials generated and stored"
            );
        }
        Ok(())
    }

    /// Rows whose credentials were stored, each with its own change record removed.
    pub(super) fn stored(&self) -> usize {
        self.stored
    }

    async fn store_chunk(
        &mut self,
        store: &Store,
        superseded: &Superseded,
        chunk: usize,
    ) -> Result<(), NotStored> {
        let Some(fills) = self.chunks.get(chunk) else {
            return Ok(());
        };
        match store.store_drawn_credentials(fills).await {
            Ok(written) => {
                self.stored += written.len();
                if written.len() < fills.len() {
                    let written: std::collections::HashSet<i64> = written.into_iter().collect();
                    superseded.extend(
                        fills
                            .iter()
                            .map(|f| f.extension_id)
                            .filter(|id| !written.contains(id)),
                    );
                }
                self.progress.send_modify(|p| p.committed = chunk + 1);
                Ok(())
            }
            Err(error) => {
                self.progress.send_modify(|p| p.halted = true);
                Err(NotStored {
                    extensions: self.chunks[chunk..].iter().map(Vec::len).sum(),
                    error,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    fn fills(ids: impl Iterator<Item = i64>) -> Vec<CredentialFill> {
        ids.map(|id| CredentialFill {
            extension_id: id,
            read_version: 1,
            name: format!("name{id}"),
            password: SecretString::from(format!("password-{id}")),
            name_was_stored: false,
            password_was_stored: false,
        })
        .collect()
    }

    /// The first calls wait for a small chunk, the later ones for larger ones stored while the
    /// first are in flight; the rows with no call come last.
    #[test]
    fn chunks_follow_the_call_order_and_double() {
        // Calls in the reverse of the ids; 0 and 1 have none.
        let order = |id: i64| {
            if id < 2 {
                usize::MAX
            } else {
                (100 - id) as usize
            }
        };
        let (gate, writer) = prepare(fills(0..100), order, 4);
        let sizes: Vec<usize> = writer.chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, [4, 8, 16, 32, 40]);
        let first: Vec<i64> = writer.chunks[0].iter().map(|f| f.extension_id).collect();
        assert_eq!(first, [99, 98, 97, 96]);
        assert_eq!(gate.chunk_of[&99], 0);
        assert_eq!(gate.chunk_of[&2], 4);
        assert_eq!(gate.chunk_of[&0], 4, "no call: stored last");
        let (_, writer) = prepare(fills(0..5000), |id| id as usize, 32);
        assert!(writer.chunks.iter().all(|c| c.len() <= LARGEST_CHUNK));
        assert_eq!(writer.chunks.iter().map(Vec::len).sum::<usize>(), 5000);
    }

    /// A call waits for its own chunk, not the others'; once the fill halts, the calls whose
    /// chunk was not stored are told so instead of waiting for ever.
    #[tokio::test]
    async fn a_call_waits_for_its_own_chunk() {
        let (gate, writer) = prepare(fills(0..12), |id| id as usize, 4);
        assert!(gate.stored(1000).await, "drew nothing for it: no wait");
        let early = gate.stored(2);
        tokio::pin!(early);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            early.as_mut().poll(&mut cx).is_pending(),
            "its chunk is not stored yet"
        );
        writer.progress.send_modify(|p| p.committed = 1);
        assert!(early.await);
        writer.progress.send_modify(|p| p.halted = true);
        assert!(!gate.stored(11).await, "its chunk never will be");
        assert!(gate.halted());
    }
}
