//! The console's two secrets: account passwords (argon2id, in the PHC string format) and
//! session ids (random, handed to the browser; only their hash is stored).

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use blake2::{Blake2s256, Digest};
use rand::Rng as _;
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use secrecy::{ExposeSecret, SecretString};

/// The shortest console password: an account can change SIP credentials and the token.
pub(crate) const MIN_PASSWORD: usize = 12;
/// The longest: argon2 takes any length, but a megabyte pasted into a form is a mistake.
pub(crate) const MAX_PASSWORD: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password: at least {MIN_PASSWORD} characters")]
    TooShort,
    #[error("password: at most {MAX_PASSWORD} characters")]
    TooLong,
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// The argon2id hash of a new password, after checking its length.
pub fn hash_password(password: &SecretString) -> Result<String, PasswordError> {
    let length = password.expose_secret().chars().count();
    if length < MIN_PASSWORD {
        return Err(PasswordError::TooShort);
    }
    if length > MAX_PASSWORD {
        return Err(PasswordError::TooLong);
    }
    let mut salt = [0u8; 16];
    UnwrapErr(SysRng).fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.expose_secret().as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `password` matches `hash`. `hash: None` (no such user) still costs one verification,
/// so that the answer's timing does not tell which names exist.
pub(crate) fn verify_password(password: &SecretString, hash: Option<&str>) -> bool {
    // A real hash of a random password, made once: verifying against it costs what a real
    // account's verification costs.
    static UNUSABLE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let unusable = UNUSABLE
        .get_or_init(|| hash_password(&SecretString::from(new_session_id())).unwrap_or_default());
    let Ok(parsed) = PasswordHash::new(hash.unwrap_or(unusable)) else {
        return false;
    };
    let matches = Argon2::default()
        .verify_password(password.expose_secret().as_bytes(), &parsed)
        .is_ok();
    matches && hash.is_some()
}

/// A new session id for the cookie: 256 random bits.
pub(crate) fn new_session_id() -> String {
    let mut id = [0u8; 32];
    UnwrapErr(SysRng).fill_bytes(&mut id);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
}

/// What the database keeps of a session id.
pub(crate) fn session_hash(id: &str) -> String {
    Blake2s256::digest(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_against_its_hash_only() {
        let password = SecretString::from("correct horse battery");
        let hash = hash_password(&password).unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains("correct horse"));
        assert!(verify_password(&password, Some(&hash)));
        assert!(!verify_password(
            &SecretString::from("correct horse batterY"),
            Some(&hash)
        ));
        assert!(!verify_password(&password, None), "no user, no match");
        assert!(matches!(
            hash_password(&SecretString::from("short")),
            Err(PasswordError::TooShort)
        ));
    }

    #[test]
    fn session_ids_are_random_and_stored_hashed() {
        let (a, b) = (new_session_id(), new_session_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(session_hash(&a), session_hash(&a));
        assert_ne!(session_hash(&a), session_hash(&b));
        assert!(!session_hash(&a).contains(&a));
    }
}
