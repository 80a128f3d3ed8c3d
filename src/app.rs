//! What every long-running part of the tool is handed: the configuration, the database and the
//! clock. The MBG client is not here: it is built from the stored token, which can change under
//! a running daemon (`token verify` from another shell).

use std::path::PathBuf;

use crate::clock::Clock;
use crate::config::Config;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct App {
    pub config: Config,
    /// The file the configuration came from, for a reload on SIGHUP (`None`: defaults and
    /// environment only).
    pub config_path: Option<PathBuf>,
    pub store: Store,
    pub clock: Clock,
}
