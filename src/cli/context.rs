//! The application context every command is handed ([`App`]: configuration, the file it came
//! from, the store, the clock), and the MBG client signed with the stored token.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use mbg_provision::app::App;
use mbg_provision::clock::Clock;
use mbg_provision::config::{self, Config};
use mbg_provision::mbg::{MbgClient, MbgError};
use mbg_provision::secrets::{self, SecretKey};
use mbg_provision::store::{OpenOptions, Store};
use mbg_provision::token::{self, TokenStatus};

use super::files::warn_if_exposed;

/// The configuration file that `Config::load(explicit)` reads: the one given with `--config`,
/// else `config.toml` in the working folder when it exists, else none. Absolute, so that a
/// reload reads the same file whatever the working folder is by then.
pub fn config_file(explicit: Option<&Path>) -> Option<PathBuf> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None if Path::new(config::DEFAULT_FILE).is_file() => PathBuf::from(config::DEFAULT_FILE),
        None => return None,
    };
    Some(std::path::absolute(&path).unwrap_or(path))
}

/// Opens the database (running the migrations) with the secret key beside it, and warns about
/// secret files that others can read. `create`: whether a missing SQLite file may be created.
pub async fn open(config: Config, config_path: Option<PathBuf>, create: bool) -> Result<App> {
    let options = OpenOptions {
        connect_timeout: config.database.connect_timeout,
        create,
        migrate: true,
    };
    let store = Store::open_with(&config.database.url, &options)
        .await
        .with_context(|| format!("cannot open the database {}", config.database.url))?
        .with_secret_key(SecretKey::new(secrets::key_file(&config)));
    for file in config
        .database
        .url
        .sqlite_file()
        .into_iter()
        .chain([secrets::key_file(&config)])
    {
        warn_if_exposed(&file);
    }
    Ok(App {
        config,
        config_path,
        store,
        clock: Clock::system(),
    })
}

/// The client with the stored token, or an error that says how to get one.
pub async fn client(app: &App) -> Result<MbgClient> {
    Ok(signed_client(app).await?.0)
}

/// The client and the generation of its token, which a 401 marks rejected. Refuses a token that
/// is rejected or missing, but not one whose stored expiry has passed: the MBG may have renewed
/// it (its *Renew* button), and only its 401 says otherwise.
pub async fn signed_client(app: &App) -> Result<(MbgClient, i64)> {
    let settings = app.store.mbg_settings().await?;
    let status = TokenStatus::of(&settings, app.clock.now());
    if !status.is_usable() {
        bail!("the MBG access token is {status}");
    }
    warn_about_token(&status, &app.config);
    Ok((
        token::client(&app.config, &settings)?,
        settings.token_generation,
    ))
}

/// On stderr: the token expires soon, or its stored expiry has passed.
pub fn warn_about_token(status: &TokenStatus, config: &Config) {
    if let Some(warning) = status.warning(config.token.renew_within_days) {
        eprintln!("warning: {warning}");
    }
}

/// Marks the token rejected when `error` is the MBG's 401.
pub async fn record_refusal(app: &App, generation: i64, error: &MbgError) -> Result<()> {
    token::record_refusal(&app.store, generation, error, app.clock.now()).await?;
    Ok(())
}

/// Who ran this command, for the audit log: the login name of the process's uid (not `$USER`,
/// which anyone can set), else the uid.
pub fn os_user() -> String {
    // SAFETY: getuid cannot fail and touches no memory of ours.
    mbg_provision::file_owner::user_name(unsafe { libc::getuid() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_config_file_is_the_one_used_made_absolute() {
        let path = config_file(Some(Path::new("conf/mbg.toml"))).unwrap();
        assert!(path.is_absolute(), "{}", path.display());
        assert!(path.ends_with("conf/mbg.toml"), "{}", path.display());
    }
}
