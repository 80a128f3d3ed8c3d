//! The OAuth token's life: the one-off exchange (request, administrator approval, verify), its
//! status, and renewal before the 12 months run out.
//!
//! Every step stores its result in `mbg_settings` in one targeted write, conditional on the token
//! it started from, and a new temporary token never replaces a working access token: the old token
//! keeps the service running until the new one is verified.
//!
//! The stored expiry is a hint (an administrator may press *Renew* on the MBG page without telling
//! us); the MBG's 401 is the truth, and any 401 marks the token rejected.

use std::fmt;

use secrecy::SecretString;
use serde::Serialize;
use tracing::{info, warn};

use crate::config::Config;
use crate::mbg::{MbgClient, MbgError, MbgErrorKind};
use crate::oauth::{ClientCredentials, TokenCredentials};
use crate::store::{MbgSettings, Store, StoreError, TemporaryToken, TokenState};

/// What an MBG access token lives when the MBG does not say: 12 months.
pub(crate) const ACCESS_TOKEN_LIFETIME_SECS: i64 = 365 * 86_400;
/// Temporary tokens must be approved and exchanged within 10 minutes.
pub(crate) const TEMPORARY_TOKEN_LIFETIME_SECS: i64 = 600;
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
    #[error(
        "another mbg-provision command stored a new token meanwhile; nothing was written: see `mbg-provision token status`"
    )]
    Changed,
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
///
/// Also the way out when the key file does not match the database: the secrets it cannot open
/// are replaced, and the access token, useless without its secret, is dropped.
pub async fn request(
    store: &Store,
    config: &Config,
    name: &str,
    consumer_id: &str,
    consumer_secret: SecretString,
    now: i64,
) -> Result<SecretString, TokenError> {
    let (settings, discard_access_token) = match store.mbg_settings().await {
        Ok(settings) => (settings, false),
        Err(StoreError::Secrets(e)) if e.needs_new_exchange() => {
            warn!(
                key_file = %store.secret_key_path().display(),
                "the stored token secrets cannot be decrypted with this key file; this exchange replaces them"
            );
            (MbgSettings::default(), true)
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(current) = &settings.consumer_id
        && current != consumer_id
        && matches!(TokenStatus::of(&settings, now), TokenStatus::Valid { .. })
    {
        // The stored access token belongs to the current consumer; signing it with another
        // consumer's secret would stop the service until the new token is verified.
        return Err(TokenError::OtherConsumer(current.clone()));
    }
    let base = config.mbg.base_url.clone().ok_or(TokenError::NoBaseUrl)?;
    let consumer = ClientCredentials {
        key: consumer_id.to_string(),
        secret: consumer_secret.clone(),
    };
    let client = MbgClient::new(
        base.clone(),
        config.mbg.ca_file.as_deref(),
        config.mbg.timeout,
        consumer,
    )?;
    let temporary = client.initiate().await?;
    store
        .save_temporary_token(
            &TemporaryToken {
                base_url: base.to_string(),
                consumer_name: name.to_string(),
                consumer_id: consumer_id.to_string(),
                consumer_secret,
                token: temporary.token.clone(),
                secret: temporary.secret,
                created_at: now,
            },
            discard_access_token,
        )
        .await?;
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
    let settings = store.mbg_settings().await?;
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
    let stored = store
        .save_access_token(
            settings.token_generation,
            created_at,
            &access.token,
            &access.secret,
            now,
            expires_at,
        )
        .await?;
    if !stored {
        return Err(TokenError::Changed);
    }
    info!(expires_at, "access token stored");
    Ok(expires_at)
}

/// The audit action of the daemon's renewal job, when a run did something.
pub const RENEWAL_JOB: &str = "token renewal job";

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

impl Renewal {
    /// Only a person can go on from here: the renewal job must make cron mail someone.
    pub fn needs_human(&self) -> bool {
        matches!(self, Renewal::NotOffered { .. })
    }
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
                "this MBG does not offer token renewal through its API: an administrator must press Renew on the MBG page (Administration > Web services) before {}, then run `mbg-provision token renewed`",
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
    let settings = store.mbg_settings().await?;
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
            if !store
                .save_token_expiry(settings.token_generation, renewed)
                .await?
            {
                warn!(
                    "a new access token was stored during the renewal; the renewed one is not recorded"
                );
            }
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
            record_refusal(store, settings.token_generation, &e, now).await?;
            Err(e.into())
        }
    }
}

/// Where the expiry recorded by [`record_renewal`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpirySource {
    /// The MBG's token-info endpoint.
    Mbg,
    /// The date the administrator gave (`--until`).
    Given,
    /// Twelve months from now: what *Renew* gives, when the MBG cannot tell.
    Assumed,
}

/// `token renewed`: an administrator pressed *Renew* on the MBG page. Checks with a signed call
/// that the MBG still accepts the token, then records the expiry: the MBG's own when it tells
/// it, else `until`, else 12 months from `now`.
pub async fn record_renewal(
    store: &Store,
    config: &Config,
    until: Option<i64>,
    now: i64,
) -> Result<(i64, ExpirySource), TokenError> {
    let settings = store.mbg_settings().await?;
    if settings.access_token.is_none() {
        return Err(TokenError::NoAccessToken);
    }
    let client = client(config, &settings)?;
    let answer = match client.token_expiry().await {
        Ok(expires_at) => Ok((expires_at, ExpirySource::Mbg)),
        Err(e) if e.kind == MbgErrorKind::NotFound => client.ping().await.map(|()| match until {
            Some(until) => (until, ExpirySource::Given),
            None => (now + ACCESS_TOKEN_LIFETIME_SECS, ExpirySource::Assumed),
        }),
        Err(e) => Err(e),
    };
    let (expires_at, source) = match answer {
        Ok(answer) => answer,
        Err(e) => {
            record_refusal(store, settings.token_generation, &e, now).await?;
            return Err(e.into());
        }
    };
    if !store
        .save_token_expiry(settings.token_generation, expires_at)
        .await?
    {
        return Err(TokenError::Changed);
    }
    info!(expires_at, ?source, "token renewal recorded");
    Ok((expires_at, source))
}

/// Records that the MBG answered 401 to the access token of `generation` (as read with the
/// settings that built the client); any other error is not about the token and is ignored.
/// Returns whether the token is now marked rejected.
pub async fn record_refusal(
    store: &Store,
    generation: i64,
    error: &MbgError,
    now: i64,
) -> Result<bool, StoreError> {
    let MbgErrorKind::Unauthorized(why) = &error.kind else {
        return Ok(false);
    };
    let mut reason = format!("{} answered 401: {why}", error.endpoint);
    if let Some((cut, _)) = reason.char_indices().nth(200) {
        reason.truncate(cut);
        reason.push('…');
    }
    let marked = store.mark_token_rejected(generation, now, &reason).await?;
    if marked {
        warn!(%reason, "the MBG refused the access token; marked rejected");
    }
    Ok(marked)
}

/// What `token status` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TokenStatus {
    None,
    PendingApproval {
        requested_at: i64,
    },
    Valid {
        expires_at: i64,
        days_left: i64,
    },
    /// The stored expiry has passed but the MBG has not refused the token: an administrator may
    /// have pressed *Renew* on the MBG page. Still used; only a 401 stops the calls.
    ValidPastStoredExpiry {
        expires_at: i64,
    },
    /// Written by earlier versions; see [`TokenState::Expired`].
    Expired {
        expired_at: Option<i64>,
    },
    Rejected {
        rejected_at: Option<i64>,
        reason: Option<String>,
    },
}

impl TokenStatus {
    /// Why `extension` is waiting, when this token keeps every MBG call back and the extension's
    /// SIP user is not yet as the database wants it: shown as pending with this reason, not as
    /// the idle state no pass could move it from.
    pub fn holds_back(&self, extension: &crate::store::Extension) -> Option<String> {
        use crate::store::ExtensionState;
        let settled = match extension.state {
            ExtensionState::Provisioned => extension.use_remote_auth,
            ExtensionState::Idle => !extension.use_remote_auth,
            _ => false,
        };
        (!self.is_usable() && !settled)
            .then(|| format!("waiting for a usable MBG access token: the token is {self}"))
    }

    pub fn of(settings: &MbgSettings, now: i64) -> TokenStatus {
        match (settings.token_state, settings.token_expires_at) {
            (TokenState::Rejected, _) => TokenStatus::Rejected {
                rejected_at: settings.token_rejected_at,
                reason: settings.token_rejected_reason.clone(),
            },
            (TokenState::Expired, expired_at) => TokenStatus::Expired { expired_at },
            (TokenState::Valid, Some(expires_at)) if expires_at <= now => {
                TokenStatus::ValidPastStoredExpiry { expires_at }
            }
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

    /// The MBG may be called with this token: nothing but a 401 says it no longer works.
    pub fn is_usable(&self) -> bool {
        matches!(
            self,
            TokenStatus::Valid { .. } | TokenStatus::ValidPastStoredExpiry { .. }
        )
    }

    /// What a command that uses the token should tell the operator on stderr: the stored
    /// expiry has passed, or fewer than `renew_within_days` days are left.
    pub fn warning(&self, renew_within_days: u32) -> Option<String> {
        match self {
            TokenStatus::ValidPastStoredExpiry { expires_at } => Some(format!(
                "the stored expiry of the MBG access token, {}, has passed, but the MBG has not refused it: if you pressed Renew on the MBG, run `mbg-provision token renewed`",
                date(*expires_at)
            )),
            TokenStatus::Valid {
                expires_at,
                days_left,
            } if *days_left < i64::from(renew_within_days) => Some(format!(
                "the MBG access token expires on {} ({days_left} days left): run `mbg-provision token renew`, or press Renew on the MBG page and run `mbg-provision token renewed`",
                date(*expires_at)
            )),
            _ => None,
        }
    }
}

impl fmt::Display for TokenStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NEW_TOKEN: &str =
            "run `mbg-provision token request` and `token verify` for a new one";
        match self {
            TokenStatus::None => write!(
                f,
                "not requested yet: run `mbg-provision token request`, approve it on the MBG, then `mbg-provision token verify CODE`"
            ),
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
            TokenStatus::ValidPastStoredExpiry { expires_at } => write!(
                f,
                "valid by the MBG's last answer; the stored expiry {} has passed: if you pressed Renew on the MBG, run `mbg-provision token renewed`",
                date(*expires_at)
            ),
            TokenStatus::Expired { expired_at } => write!(
                f,
                "expired{}: {NEW_TOKEN}",
                expired_at.map_or(String::new(), |at| format!(" on {}", date(at)))
            ),
            TokenStatus::Rejected {
                rejected_at,
                reason,
            } => write!(
                f,
                "rejected by the MBG{}{} (revoked, expired or not renewed in time): {NEW_TOKEN}",
                rejected_at.map_or(String::new(), |at| format!(" on {}", date(at))),
                reason
                    .as_deref()
                    .map_or(String::new(), |why| format!(": {why}"))
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
        let past = TokenStatus::of(&s, now + 41 * DAY);
        assert!(
            matches!(past, TokenStatus::ValidPastStoredExpiry { .. }),
            "{past:?}"
        );
        assert!(past.is_usable(), "only a 401 stops the calls");
        assert!(past.to_string().contains("token renewed"), "{past}");
        s.token_state = TokenState::Rejected;
        s.token_rejected_at = Some(now - 60);
        let rejected = TokenStatus::of(&s, now);
        assert!(!rejected.is_usable());
        assert!(rejected.to_string().contains("token request"), "{rejected}");
    }

    #[test]
    fn warnings_come_inside_the_renewal_window_and_past_the_stored_date() {
        let now = 1_800_000_000;
        let valid = |days: i64| TokenStatus::Valid {
            expires_at: now + days * DAY + 5,
            days_left: days,
        };
        assert_eq!(valid(30).warning(30), None);
        let soon = valid(29).warning(30).expect("29 < 30 days left");
        assert!(soon.contains("29 days left"), "{soon}");
        let past = TokenStatus::ValidPastStoredExpiry { expires_at: now }
            .warning(30)
            .unwrap();
        assert!(past.contains("token renewed"), "{past}");
        assert_eq!(TokenStatus::None.warning(30), None);
    }
}
