//! The command line: clap types in [`args`], one module per command group, and shared helpers
//! ([`output`], [`report`], [`context`], [`files`]). Command modules never import each other;
//! this dispatcher loads the configuration, starts logging, opens the store and hands over.

mod args;
mod bench;
mod console;
mod context;
mod demo;
mod docs;
mod extension;
mod files;
mod icps;
mod node;
mod output;
mod preflight;
mod report;
mod run;
mod simulate;
mod status;
mod sync;
mod token;

use std::process::ExitCode;

use anyhow::Result;
use mbg_provision::config::{Config, LogFormat};
use mbg_provision::store::SchemaChange;

pub use args::Cli;
use args::{Command, ExtensionCommand, NodeCommand};

/// Exit code of a command line that does not parse (sysexits' EX_USAGE), kept apart from 2,
/// which every command uses for "something needs a human".
pub const USAGE_ERROR: u8 = 64;

/// Exit code when stdout's reader went away, as the shell reports a death by SIGPIPE.
const CLOSED_STDOUT: i32 = 128 + 13;

/// A command whose output is piped into `head` or `grep -q` ends quietly when the reader goes
/// away, instead of panicking on "failed printing to stdout: Broken pipe". Unix tools die of
/// SIGPIPE there, but SIGPIPE's default cannot be restored here: a write to a socket whose peer
/// has gone (a TLS alert after a refused certificate, a vectored write) would kill the process
/// too. So only that panic of `println!` is turned into a quiet exit.
pub fn end_quietly_on_a_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(CLOSED_STDOUT);
        }
        default(info);
    }));
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Simulate(args) => {
            init_tracing(LogFormat::Text);
            return simulate::run(args).await;
        }
        Command::Demo { console } => return demo::run(console).await,
        Command::Bench(args) => {
            init_tracing_at(LogFormat::Text, "warn");
            return bench::run(args).await;
        }
        Command::Completions { shell } => return docs::completions(shell),
        Command::Manpage => return docs::manpage(),
        // Reports a bad configuration as its first failed check rather than stopping on it.
        Command::Preflight {
            clients,
            stun,
            output,
        } => {
            let config = Config::load(cli.config.as_deref());
            let format = config.as_ref().map_or(LogFormat::Text, |c| c.log.format);
            init_tracing_at(format, "warn");
            let source = context::config_file(cli.config.as_deref());
            return preflight::run(config, source, clients, stun, output.json).await;
        }
        _ => {}
    }
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Run => init_tracing(config.log.format),
        // A one-off command prints its results on stdout: info lines would repeat them.
        Command::Sync { quiet: true, .. } => init_tracing_at(config.log.format, "warn"),
        _ if cli.verbose => init_tracing(config.log.format),
        _ => init_tracing_at(config.log.format, "warn"),
    }
    let config_path = context::config_file(cli.config.as_deref());
    let daemon_shutdown = match cli.command {
        Command::Run => Some(run::listen_for_signals()?),
        _ => None,
    };
    let create = may_create_database(&cli.command);
    let app = context::open(config, config_path, create).await?;
    let code = match cli.command {
        Command::Migrate => {
            let url = &app.config.database.url;
            match app.store.schema_change() {
                Some(SchemaChange { from: None, to }) => {
                    println!("created the schema (version {to}) in {url}")
                }
                Some(SchemaChange {
                    from: Some(from),
                    to,
                }) if from < to => {
                    println!("upgraded the schema from version {from} to version {to} ({url})")
                }
                Some(SchemaChange { to, .. }) => {
                    println!("the schema is up to date (version {to}) ({url})")
                }
                None => unreachable!("migrate opens the database with migrations"),
            }
            ExitCode::SUCCESS
        }
        Command::Node(command) => node::run(&app, command).await?,
        Command::Extension(command) => extension::run(&app, command).await?,
        Command::Console(command) => console::run(&app, command).await?,
        Command::Token(command) => token::run(&app, command).await?,
        Command::Sync {
            dry_run,
            wait,
            quiet,
            output,
        } => sync::run(&app, dry_run, wait, quiet, output.json).await?,
        Command::Status { output } => status::run(&app, output.json).await?,
        Command::Icps { output } => icps::run(&app, output.json).await?,
        // The daemon owns the store from here and closes it when it stops.
        Command::Run => {
            let shutdown = daemon_shutdown.expect("made for Run above");
            return run::run(app, shutdown).await;
        }
        Command::Simulate(_)
        | Command::Preflight { .. }
        | Command::Demo { .. }
        | Command::Bench(_)
        | Command::Completions { .. }
        | Command::Manpage => {
            unreachable!("handled before the store is opened")
        }
    };
    app.store.close().await;
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
    init_tracing_at(format, "info");
}

/// Logging at `level` unless RUST_LOG says otherwise.
fn init_tracing_at(format: LogFormat, level: &str) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // sqlx logs every PostgreSQL NOTICE at INFO, and the migrator's `CREATE ... IF NOT EXISTS`
    // sends one on every start. Keep sqlx to warnings unless RUST_LOG asks for it by name.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("sqlx")) {
        filter = filter.add_directive("sqlx=warn".parse().expect("a valid directive"));
    }
    // rustls and the platform verifier log a refused certificate, beside our own error that says
    // what is wrong and what to do: keep them quiet unless RUST_LOG names them.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("rustls")) {
        for quiet in ["rustls=error", "rustls_platform_verifier=off"] {
            filter = filter.add_directive(quiet.parse().expect("a valid directive"));
        }
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
            &["run"],
            &["node", "list"],
            &["extension", "list"],
            &["token", "status"],
            &["token", "renew"],
        ] {
            assert!(!creates(read_only), "{read_only:?}");
        }
    }
}
