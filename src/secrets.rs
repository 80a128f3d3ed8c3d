//! Encryption at rest of the consumer secret and the token secrets in `mbg_settings`.
//!
//! Whoever can read the database (the phone system's database user on a shared PostgreSQL, a
//! backup) must not be able to sign MBG calls, so these values are sealed with a key that lives
//! outside the database: `secrets.key_file`. Remote SIP passwords are not sealed: the phone system
//! shows them to the engineer who configures a phone.
//!
//! A sealed value is `v1:` followed by the base64 of a 12-byte nonce and the ChaCha20-Poly1305
//! ciphertext. The column name is bound as associated data, so a sealed value moved to another
//! column does not open. Anything without the `v1:` prefix is a value written before encryption
//! existed: it is read as it is, and sealed by the next write of its column.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use rand::Rng;
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use secrecy::{ExposeSecret, SecretString};

use crate::config::{Config, DatabaseUrl};

/// The key file's name when nothing else names it.
pub(crate) const KEY_FILE_NAME: &str = "mbg-provision.key";
const PREFIX: &str = "v1:";
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

const NEW_EXCHANGE: &str = "a new token exchange is needed: run `mbg-provision token request` and `mbg-provision token verify` (this replaces the stored secrets)";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "cannot decrypt mbg_settings.{column} with the key file {}: the key file does not match the database (lost, replaced or another installation's key). Restore the right key file, or {NEW_EXCHANGE}",
        .path.display()
    )]
    KeyMismatch { path: PathBuf, column: &'static str },
    #[error(
        "the key file {} does not exist, but the database holds secrets encrypted with a key: point secrets.key_file at the right file or, if the key is lost, {NEW_EXCHANGE}",
        .path.display()
    )]
    KeyMissing { path: PathBuf },
    #[error("key file {}: {reason}", .path.display())]
    BadKeyFile { path: PathBuf, reason: String },
}

impl SecretsError {
    /// The database holds secrets this key cannot open: only a new token exchange, which
    /// overwrites them, gets out of it (short of finding the right key).
    pub(crate) fn needs_new_exchange(&self) -> bool {
        matches!(
            self,
            SecretsError::KeyMismatch { .. } | SecretsError::KeyMissing { .. }
        )
    }
}

/// The key, read from its file on first use and created there (0600, 32 bytes from the OS
/// CSPRNG) on the first write: commands that never touch a secret leave no key file behind.
pub struct SecretKey {
    path: PathBuf,
    cipher: OnceLock<ChaCha20Poly1305>,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SecretKey {
    pub fn new(path: impl Into<PathBuf>) -> SecretKey {
        let path = path.into();
        SecretKey {
            // Absolute, so that every message names the file it tried, whatever the working folder.
            path: std::path::absolute(&path).unwrap_or(path),
            cipher: OnceLock::new(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Seals `value` for `column`.
    pub(crate) fn seal(
        &self,
        column: &'static str,
        value: &SecretString,
    ) -> Result<String, SecretsError> {
        let cipher = self.cipher(true)?;
        let mut nonce = [0u8; NONCE_LEN];
        UnwrapErr(SysRng).fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: value.expose_secret().as_bytes(),
                    aad: column.as_bytes(),
                },
            )
            .expect("ChaCha20-Poly1305 encrypts any short message");
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{}", STANDARD.encode(bytes)))
    }

    /// Opens what [`seal`](Self::seal) stored in `column`; a value without the version prefix
    /// is legacy cleartext and is returned as it is.
    pub(crate) fn open(
        &self,
        column: &'static str,
        stored: &str,
    ) -> Result<SecretString, SecretsError> {
        let Some(encoded) = stored.strip_prefix(PREFIX) else {
            return Ok(SecretString::from(stored));
        };
        let cipher = self.cipher(false)?;
        let mismatch = || SecretsError::KeyMismatch {
            path: self.path.clone(),
            column,
        };
        let bytes = STANDARD.decode(encoded).map_err(|_| mismatch())?;
        if bytes.len() < NONCE_LEN {
            return Err(mismatch());
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| mismatch())?;
        let plain = cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: column.as_bytes(),
                },
            )
            .map_err(|_| mismatch())?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| mismatch())
    }

    fn cipher(&self, create: bool) -> Result<&ChaCha20Poly1305, SecretsError> {
        if let Some(cipher) = self.cipher.get() {
            return Ok(cipher);
        }
        let bad = |reason: String| SecretsError::BadKeyFile {
            path: self.path.clone(),
            reason,
        };
        let key = match std::fs::read(&self.path) {
            Ok(key) => key,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                crate::file_owner::check(&self.path).map_err(|e| bad(e.to_string()))?;
                create_key_file(&self.path).map_err(|e| bad(format!("cannot create it: {e}")))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SecretsError::KeyMissing {
                    path: self.path.clone(),
                });
            }
            Err(e) => return Err(bad(format!("cannot read it: {e}"))),
        };
        let cipher = ChaCha20Poly1305::new_from_slice(&key).map_err(|_| {
            bad(format!(
                "holds {} bytes, but a key is exactly {KEY_LEN} bytes",
                key.len()
            ))
        })?;
        Ok(self.cipher.get_or_init(|| cipher))
    }
}

/// Writes a new random key where `path` says, readable by its owner only. The file appears
/// complete or not at all (written aside, then linked), so a process racing us reads either
/// nothing or the whole key, and the loser of a race uses the winner's key.
fn create_key_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut key = vec![0u8; KEY_LEN];
    UnwrapErr(SysRng).fill_bytes(&mut key);
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(&key)?;
    file.as_file().sync_all()?;
    match file.persist_noclobber(path) {
        Ok(_) => Ok(key),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(path),
        Err(e) => Err(e.error),
    }
}

/// The key file in use: `secrets.key_file`, else the default for the database.
pub fn key_file(config: &Config) -> PathBuf {
    config
        .secrets
        .key_file
        .clone()
        .unwrap_or_else(|| default_key_file(&config.database.url))
}

/// Where the key lives when `secrets.key_file` is not set:
/// 1. `$CREDENTIALS_DIRECTORY/mbg-provision.key` when systemd passed that credential
///    (`LoadCredential=mbg-provision.key:/etc/mbg-provision/key`);
/// 2. for SQLite, beside the database file, with the extension `.key`
///    (`mbg-provision.db` → `mbg-provision.key`), so that two databases never share a key;
/// 3. for PostgreSQL, `$STATE_DIRECTORY/mbg-provision.key` when systemd sets it
///    (`StateDirectory=`), else `mbg-provision.key` in the working folder.
pub(crate) fn default_key_file(url: &DatabaseUrl) -> PathBuf {
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let credential = Path::new(&dir).join(KEY_FILE_NAME);
        if credential.is_file() {
            return credential;
        }
    }
    if let Some(db) = url.sqlite_file() {
        return db.with_extension("key");
    }
    match std::env::var_os("STATE_DIRECTORY") {
        // systemd may list several folders, separated by ':'; the first is ours.
        Some(dirs) => {
            let dirs = dirs.to_string_lossy().into_owned();
            Path::new(dirs.split(':').next().unwrap_or(&dirs)).join(KEY_FILE_NAME)
        }
        None => PathBuf::from(KEY_FILE_NAME),
    }
}

/// A warning when `path` can be read (or written) by its group or by others: it holds a secret,
/// or the database that holds the others. `None` when it is private or does not exist.
pub fn exposure_warning(path: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then(|| {
            format!(
                "{} is accessible by its group or other users (mode {mode:03o}) and holds secrets: run `chmod 600 {}`",
                path.display(),
                path.display()
            )
        })
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(dir: &tempfile::TempDir, name: &str) -> SecretKey {
        SecretKey::new(dir.path().join(name))
    }

    #[test]
    fn sealed_values_open_only_with_their_key_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (key(&dir, "a.key"), key(&dir, "b.key"));
        let secret = SecretString::from("or7z4alsrn2+pyuwm33djq==");
        let sealed = a.seal("access_token", &secret).unwrap();
        assert!(
            sealed.starts_with("v1:") && !sealed.contains("or7z4"),
            "{sealed}"
        );
        assert_ne!(
            sealed,
            a.seal("access_token", &secret).unwrap(),
            "fresh nonce"
        );
        assert_eq!(
            a.open("access_token", &sealed).unwrap().expose_secret(),
            secret.expose_secret()
        );
        assert!(matches!(
            a.open("access_token_secret", &sealed),
            Err(SecretsError::KeyMismatch { .. })
        ));
        b.seal("x", &secret).unwrap();
        let err = b.open("access_token", &sealed).unwrap_err();
        assert!(
            err.to_string().contains("does not match the database"),
            "{err}"
        );
        assert!(err.to_string().contains("token request"), "{err}");
        assert_eq!(
            a.open("consumer_secret", "legacy-clear")
                .unwrap()
                .expose_secret(),
            "legacy-clear"
        );
        let missing = key(&dir, "gone.key").open("c", &sealed).unwrap_err();
        assert!(
            matches!(missing, SecretsError::KeyMissing { .. }),
            "{missing}"
        );
        assert!(
            !dir.path().join("gone.key").exists(),
            "reading creates no key"
        );
    }

    #[test]
    fn a_short_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("short.key"), b"abc").unwrap();
        let err = key(&dir, "short.key")
            .seal("c", &SecretString::from("x"))
            .unwrap_err();
        assert!(err.to_string().contains("exactly 32 bytes"), "{err}");
    }

    #[test]
    fn the_default_key_file_sits_beside_a_sqlite_database() {
        let url: DatabaseUrl = "sqlite:///var/lib/mbgp/state.db?mode=rwc".parse().unwrap();
        if std::env::var_os("CREDENTIALS_DIRECTORY").is_none() {
            assert_eq!(
                default_key_file(&url),
                PathBuf::from("/var/lib/mbgp/state.key")
            );
        }
        let pg: DatabaseUrl = "postgres://u@h/db".parse().unwrap();
        assert!(pg.sqlite_file().is_none());
    }
}
