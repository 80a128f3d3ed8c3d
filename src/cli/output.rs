//! What every command prints the same way: JSON for scripts, the rows that need attention, and
//! the exit codes. Shared by the command modules, which do not import each other.

use std::process::ExitCode;

use anyhow::Result;
use mbg_provision::store::BadRow;
use serde::Serialize;

/// Exit code when something needs a human (a bad row, an unmapped node, a token to renew by
/// hand, a problem in a pass); 1 is for errors.
pub const NEEDS_ATTENTION: u8 = 2;

/// [`NEEDS_ATTENTION`] when `needed`, else success.
pub fn attention_if(needed: bool) -> ExitCode {
    if needed {
        ExitCode::from(NEEDS_ATTENTION)
    } else {
        ExitCode::SUCCESS
    }
}

/// A `--json` output: one document on stdout, pretty-printed.
pub fn print_json(value: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn print_bad_rows(rows: &[BadRow]) {
    if rows.is_empty() {
        return;
    }
    println!(
        "{} extension row(s) need attention (fix them in the database; the others carry on):",
        rows.len()
    );
    for bad in rows {
        println!("  {bad}");
    }
}
