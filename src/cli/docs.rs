//! `completions` and `manpage`: generated from the clap definitions, so they cannot drift from
//! the commands.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::CommandFactory;

use super::args::Cli;

pub fn completions(shell: clap_complete::Shell) -> Result<ExitCode> {
    let mut command = Cli::command();
    let name = command.get_name().to_string();
    clap_complete::generate(shell, &mut command, name, &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

pub fn manpage() -> Result<ExitCode> {
    clap_mangen::Man::new(Cli::command())
        .render(&mut std::io::stdout())
        .context("cannot write the man page")?;
    Ok(ExitCode::SUCCESS)
}
