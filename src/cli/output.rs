//! What every command prints the same way, shared by the command modules (which do not import
//! each other).

use anyhow::Result;
use mbg_provision::store::BadRow;
use serde::Serialize;

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

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
