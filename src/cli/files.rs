//! Files that hold secrets: reading one given on the command line, and warning when one is
//! readable beyond its owner.

use std::path::Path;

use anyhow::{Context, Result, bail};
use mbg_provision::secrets;
use secrecy::SecretString;

/// A secret from a file (`--sip-password-file`, `--secret-file`): its text without the final
/// line break; an empty file is an error.
pub fn read_secret_file(path: &Path) -> Result<SecretString> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", absolute(path).display()))?;
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(SecretString::from(secret))
}

/// Says on stderr that a file holding secrets is readable beyond its owner.
pub fn warn_if_exposed(path: &Path) {
    if let Some(warning) = secrets::exposure_warning(path) {
        eprintln!("warning: {warning}");
    }
}

/// `path` from the working folder: a message names the file it tried, not only what was typed.
pub fn absolute(path: &Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
