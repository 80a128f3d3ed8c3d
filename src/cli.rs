//! The command-line interface, as clap types. Behaviour lives in `commands`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "mbg-provision",
    version,
    about = "Provisions MiVoice Border Gateway SIP users for teleworker extensions"
)]
pub struct Cli {
    /// Configuration file [default: config.toml in the working folder, if present]
    #[arg(short, long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or upgrade the database schema (every command also does this on start)
    Migrate,
    /// The PBX nodes
    #[command(subcommand)]
    Node(NodeCommand),
    /// The extensions (writes only the database, as the phone system's own page would)
    #[command(subcommand)]
    Extension(ExtensionCommand),
}

#[derive(Debug, Args)]
pub struct Output {
    /// Print JSON for scripts
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Add a PBX node; ADDRESS must equal the MBG ICP's "hostname or IP address"
    Add {
        name: String,
        #[arg(long)]
        address: String,
        #[arg(long, value_name = "IP")]
        nat_address: Option<String>,
        #[arg(long, value_name = "N")]
        nat_sip_port: Option<u16>,
        #[command(flatten)]
        output: Output,
    },
    /// List the nodes
    List {
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    Sip,
    SipHotDesk,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
pub enum ExtensionCommand {
    /// Create an extension or change one
    Set {
        number: String,
        #[arg(long)]
        node: String,
        #[arg(long, value_enum)]
        kind: Option<Kind>,
        /// "Use remote authorization credentials"
        #[arg(long, value_enum)]
        remote: Option<Switch>,
        /// File holding the PBX SIP password [default for a new extension: random]
        #[arg(long, value_name = "FILE")]
        sip_password_file: Option<PathBuf>,
        #[command(flatten)]
        output: Output,
    },
    /// List the extensions
    List {
        #[command(flatten)]
        output: Output,
    },
    /// Import extensions from CSV (header `number,node,kind,remote`): all rows or none
    Import {
        file: PathBuf,
        #[command(flatten)]
        output: Output,
    },
}
