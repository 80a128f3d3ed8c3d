//! `token request`, `verify`, `renew`, `renewed` and `status`: the OAuth access token.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use mbg_provision::app::App;
use mbg_provision::token::{self, TokenStatus};
use secrecy::{ExposeSecret, SecretString};

use super::args::TokenCommand;
use super::files::{read_secret_file, warn_if_exposed};
use super::output::{attention_if, print_json};

/// `token renew --json` prints the library's `Renewal` (`outcome`: `not_due`, `renewed` or
/// `not_offered`, with `expires_at`); `token status --json` its `TokenStatus` (`state`: `none`,
/// `pending_approval`, `valid`, `valid_past_stored_expiry`, `expired` or `rejected`, with dates).
pub async fn run(app: &App, command: TokenCommand) -> Result<ExitCode> {
    let (store, config, clock) = (&app.store, &app.config, &app.clock);
    match command {
        TokenCommand::Request {
            name,
            consumer_id,
            secret_file,
        } => {
            let secret = consumer_secret(secret_file.as_deref())?;
            let temporary =
                token::request(store, config, &name, &consumer_id, secret, clock.now()).await?;
            // The administrator needs the token to find it on the MBG page: the one place it is
            // shown. It is useless without its secret, which stays in the database.
            println!("temporary token: {}", temporary.expose_secret());
            println!(
                "Now, within 10 minutes: on the MBG, open Administration > Web services > Temporary tokens,"
            );
            println!(
                "approve this token for consumer {consumer_id}, copy the six-digit verifier, and run:"
            );
            println!("  mbg-provision token verify CODE");
        }
        TokenCommand::Verify { code } => {
            let expires_at = token::verify(store, config, &code, clock.now()).await?;
            println!(
                "access token stored; valid until {}",
                token::date(expires_at)
            );
        }
        TokenCommand::Renew {
            if_within_days,
            output,
        } => {
            let renewal = token::renew_if_due(store, config, clock.now(), if_within_days).await?;
            if output.json {
                print_json(&renewal)?;
            } else {
                println!("{renewal}");
            }
            return Ok(attention_if(renewal.needs_human()));
        }
        TokenCommand::Renewed { until } => {
            if let Some(until) = until
                && until <= clock.now()
            {
                bail!("--until {} has passed", token::date(until));
            }
            let (expires_at, source) =
                token::record_renewal(store, config, until, clock.now()).await?;
            let how = match source {
                token::ExpirySource::Mbg => "as the MBG says",
                token::ExpirySource::Given => "as given",
                token::ExpirySource::Assumed => {
                    "12 months from now, what Renew gives (give --until DATE if the MBG page shows another date)"
                }
            };
            println!(
                "recorded: the MBG accepts the token; valid until {} ({how})",
                token::date(expires_at)
            );
        }
        TokenCommand::Status { output } => {
            let status = TokenStatus::of(&store.mbg_settings().await?, clock.now());
            if output.json {
                print_json(&status)?;
            } else {
                println!("token: {status}");
            }
            return Ok(attention_if(!matches!(status, TokenStatus::Valid { .. })));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The shared secret: from a file, the environment, or a prompt that does not echo. Never argv,
/// where every user of the machine can read it in the process list.
fn consumer_secret(file: Option<&Path>) -> Result<SecretString> {
    if let Some(file) = file {
        warn_if_exposed(file);
        return read_secret_file(file);
    }
    if let Ok(secret) = std::env::var("MBG_PROVISION_CONSUMER_SECRET")
        && !secret.is_empty()
    {
        return Ok(SecretString::from(secret));
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!(
            "no shared secret: give --secret-file FILE or set MBG_PROVISION_CONSUMER_SECRET (no terminal to prompt on)"
        );
    }
    let secret = rpassword::prompt_password("shared secret of the consumer (not echoed): ")
        .context("cannot read the shared secret")?;
    if secret.is_empty() {
        bail!("the shared secret is empty");
    }
    Ok(SecretString::from(secret))
}
