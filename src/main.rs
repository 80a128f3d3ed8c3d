//! The `mbg-provision` command: parses the command line and hands over to [`cli::run`].

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    mbg_provision::memory::limit_arenas();
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            // Not clap's 2: scripts read 2 as "done, but something needs a human".
            return if error.use_stderr() {
                ExitCode::from(cli::USAGE_ERROR)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    cli::end_quietly_on_a_closed_stdout();
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(cli::run(cli)));
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", message(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once. anyhow's `{:#}` prints every cause after its
/// wrapper, but a wrapper may already quote its cause (thiserror's `"…: {0}"` on a `#[from]`
/// field is a `#[source]` too), and the user would read "X: Y: X: Y".
fn message(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("MBG GET ping/: unavailable")]
    struct Cause;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read the MBG's state: {0}")]
    struct Quoting(#[from] Cause);

    #[test]
    fn every_cause_is_said_once() {
        let error = anyhow::Error::from(Quoting(Cause)).context("sync failed");
        assert_eq!(
            message(&error),
            "sync failed: cannot read the MBG's state: MBG GET ping/: unavailable"
        );
        let error = anyhow::Error::from(Cause).context("cannot open the database x");
        assert_eq!(
            message(&error),
            "cannot open the database x: MBG GET ping/: unavailable"
        );
    }
}
