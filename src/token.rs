//! The OAuth token's life: the one-off exchange (request, administrator approval, verify), its
//! status, and renewal before the 12 months run out.
//!
//! Every step stores its result in `mbg_settings` in one write, and a new temporary token never
//! replaces a working access token: the old token keeps the service running until the new one is
//! verified.

use std::fmt;

use secrecy::SecretString;
use serde::Serialize;
use tracing::{info, warn};

use crate::config::Config;
use crate::mbg::{MbgClient, MbgError, MbgErrorKind};
use crate::oauth::{ClientCredentials, TokenCredentials};
use crate::store::{MbgSettings, Store, StoreError, TokenState};

/// What an MBG access token lives when the MBG does not say: 12 months.
pub const ACCESS_TOKEN_LIFETIME_SECS: i64 = 365 * 86_400;
/// Temporary tokens must be approved and exchanged within 10 minutes.
pub const TEMPORARY_TOKEN_LIFETIME_SECS: i64 = 600;
const DAY: i64 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "mbg.base_url is not set: add it to the config file or set MBG_PROVISION_MBG__BASE_URL"
    )]
    NoBaseUrl,
    #[error(
        "a valid access token of consumer {0} is stored; request the new token with that consumer, or let the old token lapse first"
    )]
    OtherConsumer(String),
    #[error("no consumer is stored: run `mbg-provision token request` first")]
    NoConsumer,
    #[error("no temporary token is waiting for approval: run `mbg-provision token request` first")]
    NoTemporaryToken,
    #[error(
        "the temporary token is older than 10 minutes and the MBG no longer accepts it: run `mbg-provision token request` again"
    )]
    TemporaryTokenExpired,
    #[error("the verifier must be the six digits shown on the MBG page, got {0:?}")]
    BadVerifier(String),
    #[error("no access token is stored: run `mbg-provision token request` and `token verify`")]
    NoAccessToken,
    #[error(
        "the MBG refused the verifier or the temporary token ({0}); check the six digits, or run `mbg-provision token request` again"
    )]
    Refused(MbgError),
    #[error(transparent)]
    Mbg(#[from] MbgError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The client for the stored consumer, with the stored access token when there is one.
pub fn client(config: &Config, settings: &MbgSettings) -> Result<MbgClient, TokenError> {
    let base = config.mbg.base_url.clone().ok_or(TokenError::NoBaseUrl)?;
    let (Some(key), Some(secret)) = (&settings.consumer_id, &settings.consumer_secret) else {
        return Err(TokenError::NoConsumer);
    };
    let consumer = ClientCredentials {
        key: key.clone(),
        secret: secret.clone(),
    };
    let client = MbgClient::new(
        base,
        config.mbg.ca_file.as_deref(),
        config.mbg.timeout,
        consumer,
    )?;
    Ok(
        match (&settings.access_token, &settings.access_token_secret) {
            (Some(token), Some(secret)) => client.with_access_token(TokenCredentials {
                token: token.clone(),
                secret: secret.clone(),
            }),
            _ => client,
        },
    )
}

/// Step 1: asks the MBG for a temporary token and stores it. Returns the token, which the
/// administrator looks for on the MBG page to approve it.
pub async fn request(
    store: &Store,
    config: &Config,
    name: &str,
    consumer_id: &str,
    consumer_secret: SecretString,
    now: i64,
) -> Result<SecretString, TokenError> {
    let mut settings = store.mbg_settings().await?;
    if let Some(current) = &settings.consumer_id
        && current != consumer_id
        && TokenStatus::of(&settings, now).is_usable()
    {
        // The stored access token belongs to the current consumer; signing it with another
        // consumer's secret would stop the service until the new token is verified.
        return Err(TokenError::OtherConsumer(current.clone()));
    }
    settings.consumer_name = Some(name.to_string());
    settings.consumer_id = Some(consumer_id.to_string());
    settings.consumer_secret = Some(consumer_secret);
    let base = config.mbg.base_url.as_ref().ok_or(TokenError::NoBaseUrl)?;
    settings.base_url = Some(base.to_string());
    let temporary = client(config, &settings)?.initiate().await?;
    settings.temp_token = Some(temporary.token.clone());
    settings.temp_token_secret = Some(temporary.secret);
    settings.temp_token_created_at = Some(now);
    if settings.token_state != TokenState::Valid {
        settings.token_state = TokenState::Pending;
    }
    store.save_mbg_settings(&settings).await?;
    info!(
        consumer = consumer_id,
        "temporary token issued; waiting for approval on the MBG"
    );
    Ok(temporary.token)
}

/// Step 3: trades the stored temporary token and the verifier for an access token, stores it and
/// its expiry. Returns the expiry (epoch seconds).
pub async fn verify(
    store: &Store,
    config: &Config,
    verifier: &str,
    now: i64,
) -> Result<i64, TokenError> {
    let verifier = verifier.trim();
    if verifier.len() != 6 || !verifier.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TokenError::BadVerifier(verifier.to_string()));
    }
    let mut settings = store.mbg_settings().await?;
    let (Some(token), Some(secret), Some(created_at)) = (
        settings.temp_token.clone(),
        settings.temp_token_secret.clone(),
        settings.temp_token_created_at,
    ) else {
        return Err(TokenError::NoTemporaryToken);
    };
    if now - created_at > TEMPORARY_TOKEN_LIFETIME_SECS {
        return Err(TokenError::TemporaryTokenExpired);
    }
    let temporary = TokenCredentials { token, secret };
    let client = client(config, &settings)?;
    let access = match client.exchange(&temporary, verifier).await {
        Ok(access) => access,
        Err(e) if matches!(e.kind, MbgErrorKind::Unauthorized(_)) => {
            return Err(TokenError::Refused(e));
        }
        Err(e) => return Err(e.into()),
    };
    let client = client.with_access_token(access.clone());
    let expires_at = match client.token_expiry().await {
        Ok(expires) => expires,
        Err(e) => {
            if e.kind != MbgErrorKind::NotFound {
                warn!(error = %e, "cannot read the token's expiry; assuming 12 months");
            }
            now + ACCESS_TOKEN_LIFETIME_SECS
        }
    };
    settings.access_token = Some(access.token);
    settings.access_token_secret = Some(access.secret);
    settings.token_issued_at = Some(now);
    settings.token_expires_at = Some(expires_at);
    settings.token_state = TokenState::Valid;
    settings.temp_token = None;
    settings.temp_token_secret = None;
    settings.temp_token_created_at = None;
    store.save_mbg_settings(&settings).await?;
    info!(expires_at, "access token stored");
    Ok(expires_at)
}

/// What a renewal attempt did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Renewal {
    /// More than the window is left: nothing was sent to the MBG.
    NotDue {
        expires_at: i64,
    },
    Renewed {
        previous: i64,
        expires_at: i64,
    },
    /// The MBG has no renewal endpoint: an administrator must press *Renew* on its page.
    NotOffered {
        expires_at: i64,
    },
}

impl fmt::Display for Renewal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Renewal::NotDue { expires_at } => {
                write!(f, "not due: the token is valid until {}", date(*expires_at))
            }
            Renewal::Renewed { expires_at, .. } => {
                write!(f, "renewed: the token is valid until {}", date(*expires_at))
            }
            Renewal::NotOffered { expires_at } => write!(
                f,
                "this MBG does not offer token renewal through its API: an administrator must press Renew on the MBG page (Administration > Web services) before {}",
                date(*expires_at)
            ),
        }
    }
}

/// The renewal job: renews when the stored expiry is within `within_days` of `now` (or always,
/// with `None`). Idempotent: it decides by the stored expiry, so calling it twice renews once.
pub async fn renew_if_due(
    store: &Store,
    config: &Config,
    now: i64,
    within_days: Option<u32>,
) -> Result<Renewal, TokenError> {
    let mut settings = store.mbg_settings().await?;
    let Some(expires_at) = settings
        .access_token
        .as_ref()
        .and(settings.token_expires_at)
    else {
        return Err(TokenError::NoAccessToken);
    };
    if let Some(days) = within_days
        && expires_at - now > i64::from(days) * DAY
    {
        return Ok(Renewal::NotDue { expires_at });
    }
    match client(config, &settings)?.renew_token().await {
        Ok(renewed) => {
            settings.token_expires_at = Some(renewed);
            settings.token_state = TokenState::Valid;
            store.save_mbg_settings(&settings).await?;
            info!(
                previous = expires_at,
                expires_at = renewed,
                "access token renewed"
            );
            Ok(Renewal::Renewed {
                previous: expires_at,
                expires_at: renewed,
            })
        }
        Err(e) if e.kind == MbgErrorKind::NotFound => {
            warn!(
                days_left = (expires_at - now) / DAY,
                "this MBG does not renew tokens through its API: an administrator must press Renew on the MBG page before the token expires"
            );
            Ok(Renewal::NotOffered { expires_at })
        }
        Err(e) => {
            if matches!(e.kind, MbgErrorKind::Unauthorized(_)) {
                settings.token_state = if expires_at <= now {
                    TokenState::Expired
                } else {
                    TokenState::Rejected
                };
                store.save_mbg_settings(&settings).await?;
            }
            Err(e.into())
        }
    }
}

/// What `token status` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TokenStatus {
    None,
    PendingApproval { requested_at: i64 },
    Valid { expires_at: i64, days_left: i64 },
    Expired { expired_at: Option<i64> },
    Rejected,
}

impl TokenStatus {
    pub fn of(settings: &MbgSettings, now: i64) -> TokenStatus {
        match (settings.token_state, settings.token_expires_at) {
            (TokenState::Rejected, _) => TokenStatus::Rejected,
            (TokenState::Expired, expired_at) => TokenStatus::Expired { expired_at },
            (TokenState::Valid, Some(expires_at)) if expires_at <= now => TokenStatus::Expired {
                expired_at: Some(expires_at),
            },
            (TokenState::Valid, Some(expires_at)) => TokenStatus::Valid {
                expires_at,
                days_left: (expires_at - now) / DAY,
            },
            _ => match settings.temp_token_created_at {
                Some(requested_at) if settings.temp_token.is_some() => {
                    TokenStatus::PendingApproval { requested_at }
                }
                _ => TokenStatus::None,
            },
        }
    }

    pub fn is_usable(&self) -> bool {
        matches!(self, TokenStatus::Valid { .. })
    }
}

impl fmt::Display for TokenStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenStatus::None => write!(f, "none: run `mbg-provision token request`"),
            TokenStatus::PendingApproval { requested_at } => write!(
                f,
                "pending approval since {}: approve it on the MBG page, then run `mbg-provision token verify CODE`",
                date(*requested_at)
            ),
            TokenStatus::Valid {
                expires_at,
                days_left,
            } => write!(
                f,
                "valid until {} ({days_left} days left)",
                date(*expires_at)
            ),
            TokenStatus::Expired { expired_at } => write!(
                f,
                "expired{}: run `mbg-provision token request` and `token verify` for a new one",
                expired_at.map_or(String::new(), |at| format!(" on {}", date(at)))
            ),
            TokenStatus::Rejected => write!(
                f,
                "rejected by the MBG (revoked?): run `mbg-provision token request` and `token verify` for a new one"
            ),
        }
    }
}

/// An epoch time as a UTC date and time, for messages.
pub fn date(epoch: i64) -> String {
    chrono::DateTime::from_timestamp(epoch, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| epoch.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_state_and_clock() {
        let now = 1_800_000_000;
        let mut s = MbgSettings::default();
        assert_eq!(TokenStatus::of(&s, now), TokenStatus::None);
        s.temp_token = Some("t".into());
        s.temp_token_created_at = Some(now - 5);
        assert!(matches!(
            TokenStatus::of(&s, now),
            TokenStatus::PendingApproval { .. }
        ));
        s.token_state = TokenState::Valid;
        s.token_expires_at = Some(now + 40 * DAY + 5);
        assert_eq!(
            TokenStatus::of(&s, now),
            TokenStatus::Valid {
                expires_at: now + 40 * DAY + 5,
                days_left: 40
            }
        );
        assert!(matches!(
            TokenStatus::of(&s, now + 41 * DAY),
            TokenStatus::Expired { .. }
        ));
        s.token_state = TokenState::Rejected;
        assert_eq!(TokenStatus::of(&s, now), TokenStatus::Rejected);
    }
}
