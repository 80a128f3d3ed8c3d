//! `console user …`: the console's accounts. Passwords come from a no-echo prompt or a file,
//! never the command line, and only their argon2id hash is stored.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};
use mbg_provision::app::App;
use mbg_provision::console::secrets::hash_password;
use mbg_provision::store::AuditEntry;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::args::{ConsoleCommand, UserCommand};
use super::context::os_user;
use super::files::read_secret_file;
use super::output::print_json;

/// `console user list --json`: one per account.
#[derive(Serialize)]
struct Account {
    name: String,
    role: &'static str,
    created_at: i64,
}

pub async fn run(app: &App, command: ConsoleCommand) -> Result<ExitCode> {
    let ConsoleCommand::User(command) = command;
    let store = &app.store;
    match command {
        UserCommand::Add {
            name,
            role,
            password_file,
        } => {
            mbg_provision::store::validate_user_name(&name)?;
            let password = new_password(&name, password_file.as_deref())?;
            let user = store
                .add_console_user(&name, role, &hash_password(&password)?)
                .await?;
            audit(
                app,
                "console user add",
                &format!("{} as {}", user.name, role.as_str()),
            )
            .await?;
            println!("added console user {} ({})", user.name, role.as_str());
        }
        UserCommand::Passwd {
            name,
            password_file,
        } => {
            if store.console_user(&name).await?.is_none() {
                bail!("no console user named {name} (see `console user list`)");
            }
            let password = new_password(&name, password_file.as_deref())?;
            store
                .set_console_password(&name, &hash_password(&password)?, None)
                .await?;
            audit(app, "console user passwd", &name).await?;
            println!("set the password of {name}; its sessions ended");
        }
        UserCommand::Role { name, role } => {
            store.set_console_role(&name, role).await?;
            audit(
                app,
                "console user role",
                &format!("{name} as {}", role.as_str()),
            )
            .await?;
            println!("{name} is now {}", role.as_str());
        }
        UserCommand::Remove { name } => {
            store.remove_console_user(&name).await?;
            audit(app, "console user remove", &name).await?;
            println!("removed console user {name}");
        }
        UserCommand::List { output } => {
            let users = store.console_users().await?;
            if output.json {
                let accounts: Vec<Account> = users
                    .into_iter()
                    .map(|u| Account {
                        name: u.name,
                        role: u.role.as_str(),
                        created_at: u.created_at,
                    })
                    .collect();
                print_json(&accounts)?;
            } else if users.is_empty() {
                println!(
                    "no console users: add an admin with `console user add NAME --role admin`"
                );
            } else {
                for user in users {
                    println!("{:<24} {}", user.name, user.role.as_str());
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The new password: from the file, else asked twice on the terminal.
fn new_password(name: &str, file: Option<&Path>) -> Result<SecretString> {
    if let Some(file) = file {
        return read_secret_file(file);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no password: give --password-file FILE (there is no terminal to ask on)");
    }
    let first = rpassword::prompt_password(format!("password for {name} (not echoed): "))?;
    let again = rpassword::prompt_password("the same again: ")?;
    if first != again {
        bail!("the two passwords differ; nothing was changed");
    }
    let password = SecretString::from(first);
    if password.expose_secret().is_empty() {
        bail!("the password is empty");
    }
    Ok(password)
}

async fn audit(app: &App, action: &str, detail: &str) -> Result<()> {
    let user = os_user();
    app.store
        .audit(&AuditEntry {
            at: app.clock.now(),
            actor: Some(format!("os:{user}")),
            extension: None,
            action: action.to_string(),
            outcome: "ok".to_string(),
            detail: Some(detail.to_string()),
            repeats: 1,
            last_at: None,
        })
        .await?;
    Ok(())
}
