//! Random credentials, always from the operating system's CSPRNG.
//!
//! Remote auth names and passwords are typed into phones and softphone config files, and travel
//! in SIP digest headers and provisioning URLs, so their alphabets avoid anything that needs
//! quoting or escaping there (no `"`, `'`, `\`, `&`, `%`, `#`, `?`, `/`, `:`, `@`, space).
//! Strength comes from length, checked against [`MIN_PASSWORD_BITS`] when the config loads.

use rand::rand_core::Rng;
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use secrecy::SecretString;

const LOWERCASE: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
const NAME_TAIL: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
/// Letters, digits and the symbols SIP phones accept in config files and URLs unescaped.
pub(crate) const PASSWORD_ALPHABET: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!*+=";

/// The least entropy we accept for a generated password; below this an online guessing attack
/// against a public-facing MBG becomes thinkable.
pub(crate) const MIN_PASSWORD_BITS: f64 = 64.0;

#[cfg(test)]
/// Bits of entropy of a password of `length` characters drawn uniformly from [`PASSWORD_ALPHABET`].
pub(crate) fn password_bits(length: usize) -> f64 {
    length as f64 * (PASSWORD_ALPHABET.len() as f64).log2()
}

/// The shortest password length that reaches [`MIN_PASSWORD_BITS`].
pub(crate) fn min_password_length() -> usize {
    (MIN_PASSWORD_BITS / (PASSWORD_ALPHABET.len() as f64).log2()).ceil() as usize
}

/// Random bytes from the operating system's CSPRNG, fetched a block at a time: a pass that
/// draws 10,000 credentials asked the OS three times per credential (30,000 system calls,
/// 23 to 33 ms before its first MBG call); a block serves about a hundred. Each byte is wiped
/// as it is used, and what is left when the draw is dropped.
pub(crate) struct Draw {
    block: Box<[u8; DRAW_BLOCK]>,
    used: usize,
}

const DRAW_BLOCK: usize = 4096;

impl Default for Draw {
    fn default() -> Draw {
        Draw {
            block: Box::new([0; DRAW_BLOCK]),
            used: DRAW_BLOCK,
        }
    }
}

impl Drop for Draw {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.block[..]);
    }
}

impl Draw {
    fn byte(&mut self) -> u8 {
        if self.used == DRAW_BLOCK {
            UnwrapErr(SysRng).fill_bytes(&mut self.block[..]);
            self.used = 0;
        }
        let byte = std::mem::take(&mut self.block[self.used]);
        self.used += 1;
        byte
    }

    /// `length` characters drawn uniformly from `alphabet` (at most 256 symbols). A byte at or
    /// above the largest multiple of the alphabet's size is dropped, so that every symbol stays
    /// equally likely.
    fn pick(&mut self, alphabet: &[u8], length: usize) -> String {
        let size = alphabet.len();
        assert!((1..=256).contains(&size), "an alphabet of 1 to 256 symbols");
        let unbiased_below = 256 - 256 % size;
        let mut picked = String::with_capacity(length);
        while picked.len() < length {
            let byte = usize::from(self.byte());
            if byte < unbiased_below {
                picked.push(char::from(alphabet[byte % size]));
            }
        }
        picked
    }

    /// A password of `length` characters from [`PASSWORD_ALPHABET`].
    pub(crate) fn password(&mut self, length: usize) -> SecretString {
        SecretString::from(self.pick(PASSWORD_ALPHABET, length))
    }

    /// A set-side user name: lowercase letters and digits, starting with a letter because
    /// some phones' config parsers treat a leading digit as an extension number.
    pub(crate) fn auth_name(&mut self, length: usize) -> String {
        let length = length.max(1);
        let mut name = self.pick(LOWERCASE, 1);
        name.push_str(&self.pick(NAME_TAIL, length - 1));
        name
    }
}

/// A password of `length` characters from [`PASSWORD_ALPHABET`].
pub fn random_password(length: usize) -> SecretString {
    Draw::default().password(length)
}

/// A set-side user name (see [`Draw::auth_name`]).
pub fn random_auth_name(length: usize) -> String {
    Draw::default().auth_name(length)
}

/// The shortest password the MBG takes for a SIP user.
pub(crate) const MBG_MIN_PASSWORD: usize = 8;
/// The longest name or password a person may type: more is a paste gone wrong.
pub(crate) const MAX_TYPED: usize = 64;

/// A remote credential typed by a person, and what is wrong with it: `field` is the form field
/// (the database column) at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub(crate) struct CredentialError {
    pub field: &'static str,
    pub reason: String,
}

/// Checks remote credentials a person typed (generated ones meet these by construction): the
/// name starts with a letter and holds letters, digits, `-`, `_` or `.`; the password holds
/// only [`PASSWORD_ALPHABET`] and is at least as strong as [`MIN_PASSWORD_BITS`] asks (and
/// never shorter than the MBG's [`MBG_MIN_PASSWORD`]). Both at most [`MAX_TYPED`] characters.
pub(crate) fn check_typed(name: &str, password: &str) -> Result<(), CredentialError> {
    let name_ok = name.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
        && name.len() <= MAX_TYPED
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !name_ok {
        return Err(CredentialError {
            field: "remote_auth_name",
            reason: format!(
                "1 to {MAX_TYPED} letters, digits, '-', '_' or '.', starting with a letter"
            ),
        });
    }
    let shortest = min_password_length().max(MBG_MIN_PASSWORD);
    if password.len() < shortest || password.len() > MAX_TYPED {
        return Err(CredentialError {
            field: "remote_auth_password",
            reason: format!("{shortest} to {MAX_TYPED} characters"),
        });
    }
    if let Some(bad) = password
        .chars()
        .find(|c| !c.is_ascii() || !PASSWORD_ALPHABET.contains(&(*c as u8)))
    {
        return Err(CredentialError {
            field: "remote_auth_password",
            reason: format!(
                "{bad:?} is not taken by every phone: use letters, digits and - _ . ! * + ="
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashSet;

    #[test]
    fn typed_credentials_name_the_field_at_fault() {
        assert_eq!(check_typed("alice1", "Abcdefgh1234"), Ok(()));
        assert_eq!(
            check_typed("1alice", "Abcdefgh1234").unwrap_err().field,
            "remote_auth_name"
        );
        assert_eq!(
            check_typed("", "Abcdefgh1234").unwrap_err().field,
            "remote_auth_name"
        );
        assert_eq!(
            check_typed("al ice", "Abcdefgh1234").unwrap_err().field,
            "remote_auth_name"
        );
        let short = check_typed("alice", "Abc123").unwrap_err();
        assert_eq!(short.field, "remote_auth_password");
        assert!(short.reason.starts_with("11 to 64"), "{short}");
        let quote = check_typed("alice", "Abcdefgh1234\"").unwrap_err();
        assert_eq!(quote.field, "remote_auth_password");
        let generated = random_password(20);
        assert_eq!(
            check_typed(&random_auth_name(12), generated.expose_secret()),
            Ok(())
        );
    }

    #[test]
    fn passwords_have_the_length_and_alphabet_asked_for() {
        for length in [12, 20, 40] {
            let password = random_password(length);
            let password = password.expose_secret();
            assert_eq!(password.len(), length);
            assert!(password.bytes().all(|b| PASSWORD_ALPHABET.contains(&b)));
        }
    }

    #[test]
    fn auth_names_start_with_a_letter_and_are_lowercase_alphanumeric() {
        for _ in 0..200 {
            let name = random_auth_name(12);
            assert_eq!(name.len(), 12);
            assert!(name.as_bytes()[0].is_ascii_lowercase());
            assert!(name.bytes().all(|b| NAME_TAIL.contains(&b)));
        }
    }

    /// Every symbol equally likely: a draw by `byte % size` without dropping the top bytes
    /// would make 43 of the 71 password symbols a third more likely than the others (4/256
    /// against 3/256), some 11 % above the mean; here each count stays within 5 % of it.
    #[test]
    fn every_symbol_is_equally_likely() {
        let mut counts = [0usize; 256];
        for _ in 0..20_000 {
            for byte in random_password(20).expose_secret().bytes() {
                counts[usize::from(byte)] += 1;
            }
        }
        let mean = 400_000.0 / PASSWORD_ALPHABET.len() as f64;
        for &symbol in PASSWORD_ALPHABET {
            let count = counts[usize::from(symbol)] as f64;
            assert!(
                (count - mean).abs() < 0.05 * mean,
                "{} drawn {count} times, mean {mean}",
                symbol as char
            );
        }
    }

    #[test]
    fn draws_do_not_repeat() {
        let names: HashSet<String> = (0..1000).map(|_| random_auth_name(12)).collect();
        assert_eq!(names.len(), 1000);
    }

    #[test]
    fn default_password_length_clears_the_entropy_floor() {
        assert!(password_bits(20) >= MIN_PASSWORD_BITS);
        assert!(password_bits(min_password_length()) >= MIN_PASSWORD_BITS);
        assert!(password_bits(min_password_length() - 1) < MIN_PASSWORD_BITS);
    }
}
