//! What each command does: load the configuration, open the store, call the library, print.

use std::collections::HashSet;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use mbg_provision::config::{Config, LogFormat};
use mbg_provision::credentials;
use mbg_provision::import;
use mbg_provision::secrets::{self, SecretKey};
use mbg_provision::sim::{self, SimConfig, SimConsumer};
use mbg_provision::store::{
    Extension, ExtensionKind, ExtensionSpec, NewNode, Node, OpenOptions, Store, quote,
};
use mbg_provision::token::{self, TokenStatus};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

mod args;
mod demo;
mod output;
mod sync;

pub use args::Cli;
use args::{Command, ExtensionCommand, Kind, NodeCommand, SimulateArgs, Switch, TokenCommand};
use output::{now, print_bad_rows, print_json};
use sync as reconcile_cli;

pub async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Simulate(args) => {
            init_tracing(LogFormat::Text);
            return simulate(args).await;
        }
        Command::Demo => return demo::run().await,
        _ => {}
    }
    let config = Config::load(cli.config.as_deref())?;
    init_tracing(config.log.format);
    let options = OpenOptions {
        connect_timeout: config.database.connect_timeout,
        create: may_create_database(&cli.command),
    };
    let store = Store::open_with(&config.database.url, &options)
        .await
        .with_context(|| format!("cannot open the database {}", config.database.url))?
        .with_secret_key(SecretKey::new(secrets::key_file(&config)));
    for file in secrets::sqlite_file(&config.database.url)
        .into_iter()
        .chain([secrets::key_file(&config)])
    {
        warn_if_exposed(&file);
    }
    let code = match cli.command {
        Command::Migrate => {
            println!("database schema is up to date ({})", config.database.url);
            ExitCode::SUCCESS
        }
        Command::Node(command) => node(&store, command).await?,
        Command::Extension(command) => extension(&store, &config, command).await?,
        Command::Token(command) => token_command(&store, &config, command).await?,
        Command::Sync {
            dry_run,
            wait,
            output,
        } => reconcile_cli::sync(&store, &config, dry_run, wait, output.json).await?,
        Command::Status { output } => reconcile_cli::status(&store, &config, output.json).await?,
        Command::Icps { output } => reconcile_cli::icps(&store, &config, output.json).await?,
        Command::Simulate(_) | Command::Demo => unreachable!("handled before the store is opened"),
    };
    store.close().await;
    Ok(code)
}

/// Only the commands that put data in may start a new SQLite file. Any other command run in a
/// folder without configuration would otherwise create an empty `./mbg-provision.db` and report
/// "no extensions" or "no token" as if that were the truth.
fn may_create_database(command: &Command) -> bool {
    matches!(
        command,
        Command::Migrate
            | Command::Node(NodeCommand::Add { .. })
            | Command::Extension(ExtensionCommand::Set { .. } | ExtensionCommand::Import { .. })
    )
}

fn init_tracing(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // sqlx logs every PostgreSQL NOTICE at INFO, and the migrator's `CREATE ... IF NOT EXISTS`
    // sends one on every start. Keep sqlx to warnings unless RUST_LOG asks for it by name.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("sqlx")) {
        filter = filter.add_directive("sqlx=warn".parse().expect("a valid directive"));
    }
    let stderr_is_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(use_colour(
            stderr_is_terminal,
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Colour codes are noise in a file or a pipe, and NO_COLOR (https://no-color.org) turns them
/// off when set to anything but the empty string.
fn use_colour(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

async fn node(store: &Store, command: NodeCommand) -> Result<ExitCode> {
    match command {
        NodeCommand::Add {
            name,
            address,
            nat_address,
            nat_sip_port,
            output,
        } => {
            check_address("--address", &address)?;
            if let Some(nat) = &nat_address {
                check_address("--nat-address", nat)?;
            }
            let node = store
                .add_node(&NewNode {
                    name,
                    address,
                    nat_address,
                    nat_sip_port,
                })
                .await?;
            if output.json {
                print_json(&node)?;
            } else {
                println!("added node {} ({})", node.name, node.address);
            }
        }
        NodeCommand::List { output } => {
            let nodes = store.nodes().await?;
            if output.json {
                print_json(&nodes)?;
            } else {
                print_nodes(&nodes);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An IP address or a DNS host name, as the MBG's ICP page accepts.
fn check_address(option: &str, address: &str) -> Result<()> {
    let is_host_name = !address.is_empty()
        && address.len() <= 253
        && address.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !address.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if address.parse::<std::net::IpAddr>().is_ok() || is_host_name {
        Ok(())
    } else {
        bail!(
            "{option} {} is not an IP address or host name",
            quote(address)
        )
    }
}

fn print_nodes(nodes: &[Node]) {
    if nodes.is_empty() {
        println!("no nodes yet: add one with `mbg-provision node add NAME --address IP`");
        return;
    }
    println!(
        "{:<20} {:<40} {:<40} NAT SIP PORT",
        "NAME", "ADDRESS", "NAT ADDRESS"
    );
    for node in nodes {
        println!(
            "{:<20} {:<40} {:<40} {}",
            node.name,
            node.address,
            node.nat_address.as_deref().unwrap_or("-"),
            node.nat_sip_port.map_or("-".to_string(), |p| p.to_string())
        );
    }
}

/// What `extension list --json` prints: everything but the secrets.
#[derive(Serialize)]
struct ExtensionView<'a> {
    number: &'a str,
    node: &'a str,
    node_address: &'a str,
    kind: ExtensionKind,
    use_remote_auth: bool,
    remote_auth_name: Option<&'a str>,
    has_remote_auth_password: bool,
    mbg_device_id: Option<&'a str>,
    provisioned_by_us: bool,
    state: &'a str,
    last_error: Option<&'a str>,
    attempts: u32,
    next_attempt_at: Option<i64>,
}

impl<'a> From<&'a Extension> for ExtensionView<'a> {
    fn from(e: &'a Extension) -> Self {
        ExtensionView {
            number: &e.number,
            node: &e.node_name,
            node_address: &e.node_address,
            kind: e.kind,
            use_remote_auth: e.use_remote_auth,
            remote_auth_name: e.remote_auth_name.as_deref(),
            has_remote_auth_password: e.remote_auth_password.is_some(),
            mbg_device_id: e.mbg_device_id.as_deref(),
            provisioned_by_us: e.provisioned_by_us,
            state: e.state.as_str(),
            last_error: e.last_error.as_deref(),
            attempts: e.attempts,
            next_attempt_at: e.next_attempt_at,
        }
    }
}

async fn extension(store: &Store, config: &Config, command: ExtensionCommand) -> Result<ExitCode> {
    let new_password = || credentials::random_password(config.credentials.password_length);
    match command {
        ExtensionCommand::Set {
            number,
            node,
            kind,
            remote,
            sip_password_file,
            output,
        } => {
            let spec = ExtensionSpec {
                number,
                node,
                kind: kind.map(|k| match k {
                    Kind::Sip => ExtensionKind::Sip,
                    Kind::SipHotDesk => ExtensionKind::SipHotDesk,
                }),
                use_remote_auth: remote.map(|s| matches!(s, Switch::On)),
                sip_password: sip_password_file
                    .as_deref()
                    .map(read_secret_file)
                    .transpose()?,
            };
            let (extension, created) = store.set_extension(&spec, &new_password()).await?;
            if output.json {
                print_json(&ExtensionView::from(&extension))?;
            } else {
                println!(
                    "{} extension {} on node {} (remote credentials {})",
                    if created { "created" } else { "updated" },
                    extension.number,
                    extension.node_name,
                    if extension.use_remote_auth {
                        "on"
                    } else {
                        "off"
                    }
                );
            }
        }
        ExtensionCommand::List { output } => {
            let rows = store.extension_rows().await?;
            if output.json {
                // The JSON stays a list of usable extensions; bad rows go to stderr and the
                // exit code, where a script notices them.
                let views: Vec<ExtensionView> = rows.good.iter().map(Into::into).collect();
                print_json(&views)?;
                for bad in &rows.bad {
                    eprintln!("needs attention: {bad}");
                }
            } else {
                print_extensions(&rows.good);
                print_bad_rows(&rows.bad);
            }
            if !rows.bad.is_empty() {
                return Ok(ExitCode::from(reconcile_cli::NEEDS_ATTENTION));
            }
        }
        ExtensionCommand::Import { file, output } => {
            let reader = std::fs::File::open(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let nodes: HashSet<String> = store.nodes().await?.into_iter().map(|n| n.name).collect();
            let rows = import::parse(reader, &nodes)
                .with_context(|| format!("cannot import {}", file.display()))?;
            let specs: Vec<ExtensionSpec> = rows.iter().map(|r| r.spec.clone()).collect();
            let created = store
                .set_extensions(&specs, new_password)
                .await
                .map_err(|(index, error)| import::ImportError::Store {
                    line: rows.get(index).map_or(0, |r| r.line),
                    error,
                })
                .with_context(|| format!("cannot import {}", file.display()))?;
            let updated = specs.len() - created;
            if output.json {
                print_json(&serde_json::json!({ "created": created, "updated": updated }))?;
            } else {
                println!(
                    "imported {}: {created} created, {updated} updated",
                    file.display()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_secret_file(path: &Path) -> Result<SecretString> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(SecretString::from(secret))
}

fn print_extensions(extensions: &[Extension]) {
    if extensions.is_empty() {
        println!(
            "no extensions yet: add one with `mbg-provision extension set NUMBER --node NAME`"
        );
        return;
    }
    println!(
        "{:<11} {:<16} {:<13} {:<7} {:<16} {:<38} STATE",
        "NUMBER", "NODE", "KIND", "REMOTE", "REMOTE NAME", "MBG DEVICE"
    );
    for e in extensions {
        println!(
            "{:<11} {:<16} {:<13} {:<7} {:<16} {:<38} {}",
            e.number,
            e.node_name,
            e.kind.as_str(),
            if e.use_remote_auth { "on" } else { "off" },
            e.remote_auth_name.as_deref().unwrap_or("-"),
            e.mbg_device_id.as_deref().unwrap_or("-"),
            e.state
        );
    }
}

/// Rows another program wrote that cannot be used: each one with its id and the column to fix.
/// Says on stderr that a file holding secrets is readable beyond its owner.
fn warn_if_exposed(path: &Path) {
    if let Some(warning) = secrets::exposure_warning(path) {
        eprintln!("warning: {warning}");
    }
}

async fn token_command(store: &Store, config: &Config, command: TokenCommand) -> Result<ExitCode> {
    match command {
        TokenCommand::Request {
            name,
            consumer_id,
            secret_file,
        } => {
            let secret = consumer_secret(secret_file.as_deref())?;
            let temporary =
                token::request(store, config, &name, &consumer_id, secret, now()).await?;
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
            let expires_at = token::verify(store, config, &code, now()).await?;
            println!(
                "access token stored; valid until {}",
                token::date(expires_at)
            );
        }
        TokenCommand::Renew {
            if_within_days,
            output,
        } => {
            let renewal = token::renew_if_due(store, config, now(), if_within_days).await?;
            if output.json {
                print_json(&renewal)?;
            } else {
                println!("{renewal}");
            }
            if renewal.needs_human() {
                return Ok(ExitCode::from(reconcile_cli::NEEDS_ATTENTION));
            }
        }
        TokenCommand::Renewed { until } => {
            if let Some(until) = until
                && until <= now()
            {
                bail!("--until {} has passed", token::date(until));
            }
            let (expires_at, source) = token::record_renewal(store, config, until, now()).await?;
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
            let status = TokenStatus::of(&store.mbg_settings().await?, now());
            if output.json {
                print_json(&status)?;
            } else {
                println!("token: {status}");
            }
            if !matches!(status, TokenStatus::Valid { .. }) {
                return Ok(ExitCode::from(reconcile_cli::NEEDS_ATTENTION));
            }
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

async fn simulate(args: SimulateArgs) -> Result<ExitCode> {
    let mut config = SimConfig {
        auto_approve: args.auto_approve,
        licences: args.licences,
        duplicate_setside_names: args.allow_duplicate_setside_names,
        ..SimConfig::default()
    };
    config.faults.latency_ms = args.latency_ms;
    config.faults.fail_rate = args.fail_rate;
    for consumer in &args.consumers {
        let (id, secret) = consumer
            .split_once(':')
            .with_context(|| format!("--consumer {consumer:?} must be ID:SECRET"))?;
        config.consumers.push(SimConsumer::new(id, secret));
    }
    for icp in &args.icps {
        let (name, address) = icp
            .split_once('=')
            .with_context(|| format!("--icp {icp:?} must be NAME=ADDRESS"))?;
        config.icps.push((name.to_string(), address.to_string()));
    }
    let handle = sim::start(config, args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!("MBG simulator serving {}", handle.base_url());
    println!("admin API: http://{}/sim/ (loopback only)", handle.addr());
    tokio::signal::ctrl_c().await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        use std::ffi::OsStr;
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))), "empty means unset");
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, Some(OsStr::new("1"))));
    }

    #[test]
    fn only_commands_that_put_data_in_may_create_the_database() {
        use clap::Parser;
        let creates = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["mbg-provision"], args].concat()).unwrap();
            may_create_database(&cli.command)
        };
        assert!(creates(&["migrate"]));
        assert!(creates(&["node", "add", "p", "--address", "10.0.0.1"]));
        assert!(creates(&["extension", "set", "1001", "--node", "p"]));
        assert!(creates(&["extension", "import", "x.csv"]));
        for read_only in [
            &["status"][..],
            &["sync"],
            &["icps"],
            &["node", "list"],
            &["extension", "list"],
            &["token", "status"],
            &["token", "renew"],
        ] {
            assert!(!creates(read_only), "{read_only:?}");
        }
    }
}
