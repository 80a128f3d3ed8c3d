//! The command-line interface, as clap types. Behaviour lives in one module per command group.

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

    /// Log what a one-off command does on stderr (info level); the daemon always does.
    /// RUST_LOG, when set, wins
    #[arg(short, long, global = true)]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or upgrade the database schema (every command also does this on start)
    #[command(after_long_help = "Example:\n  mbg-provision migrate")]
    Migrate,
    /// The PBX nodes
    #[command(subcommand)]
    Node(NodeCommand),
    /// The extensions (writes only the database, as the phone system's own page would)
    #[command(subcommand)]
    Extension(ExtensionCommand),
    /// The console's accounts (the pages the daemon serves on http.listen)
    #[command(subcommand)]
    Console(ConsoleCommand),
    /// The OAuth access token: the one-off exchange, its status and renewal
    #[command(subcommand)]
    Token(TokenCommand),
    /// One reconcile pass: make the MBG match the database, then exit
    #[command(
        after_long_help = "Example:\n  mbg-provision sync --dry-run    # the plan, nothing changed\n  mbg-provision sync --quiet     # from cron: output only when something needs a look"
    )]
    Sync {
        /// Print the plan and change nothing (takes no lock)
        #[arg(long)]
        dry_run: bool,
        /// How long to wait for another pass (a `sync` or the daemon) on this database to end
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
        wait: std::time::Duration,
        /// Print nothing unless something failed or needs attention (for cron)
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        output: Output,
    },
    /// Per extension: wanted, provisioned, MBG guid, last error, next retry
    #[command(after_long_help = "Example:\n  mbg-provision status --json")]
    Status {
        #[command(flatten)]
        output: Output,
    },
    /// Node address to ICP mapping: nodes with no ICP, ICPs with no node
    #[command(after_long_help = "Example:\n  mbg-provision icps")]
    Icps {
        #[command(flatten)]
        output: Output,
    },
    /// Go-live checks, each pass, warn or fail with its fix: configuration, database, the MBG's
    /// certificate, the token, the consumer's permissions, node to ICP mapping, licences,
    /// ICP-side names, whose each SIP user is, the daemon's health
    ///
    /// Changes nothing. Exit code 0: all passed; 2: a warning; 1: a failure.
    #[command(
        after_long_help = "Example:\n  mbg-provision preflight --clients desktop,mobile,69xx --stun stun.example.net"
    )]
    Preflight {
        /// Also print the firewall rules these remote clients need, e.g. desktop,mobile,69xx
        #[arg(long, value_enum, value_delimiter = ',', value_name = "CLIENTS")]
        clients: Vec<mbg_provision::preflight::network::Client>,
        /// Send a STUN Binding request to this server (UDP, port 3478 unless given) and report
        /// the address it sees
        #[arg(long, value_name = "HOST[:PORT]")]
        stun: Option<String>,
        #[command(flatten)]
        output: Output,
    },
    /// The daemon: watch the database and apply each change, full reconcile every
    /// reconcile.interval, token renewal on token.renew_schedule, /healthz and /metrics on
    /// http.listen
    ///
    /// SIGTERM or SIGINT: no new work; the MBG calls in flight finish and are recorded, then it
    /// exits 0.
    #[command(
        after_long_help = "Example:\n  mbg-provision --config /etc/mbg-provision/config.toml run"
    )]
    Run,
    /// A narrated tour on a temporary database and the built-in MBG simulator
    #[command(
        after_long_help = "Example:\n  mbg-provision demo\n  mbg-provision demo --console    # then browse to http://127.0.0.1:9187/ (Ctrl-C ends it)"
    )]
    Demo {
        /// Then keep running with the console open on ADDR (default 127.0.0.1:9187), with a
        /// one-time sign-in printed
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9187")]
        console: Option<std::net::SocketAddr>,
    },
    /// Serve the MBG simulator, for tests and demos
    #[command(
        after_long_help = "Example:\n  mbg-provision simulate --listen 127.0.0.1:8943 --consumer MiVOAppSuite:secret --icp MiVO250-1=10.0.0.20 --verifier 658773"
    )]
    Simulate(SimulateArgs),
    /// Measure import and sync on a temporary database against the in-process simulator
    ///
    /// Prints each figure beside its bound ((N + 3) requests × latency / in-flight for a sync)
    /// and its target, and the same sync at max_in_flight = 1 for comparison. Needs no
    /// configuration file; touches nothing outside a temporary folder (or, with a PostgreSQL
    /// URL, a database it creates on that server and drops at the end).
    #[command(
        after_long_help = "Example:\n  mbg-provision bench --extensions 10000 --latency-ms 20 --in-flight 32"
    )]
    Bench(BenchArgs),
    /// Print a shell completion script, e.g. `mbg-provision completions bash >
    /// /etc/bash_completion.d/mbg-provision`
    #[command(
        after_long_help = "Example:\n  mbg-provision completions bash > /etc/bash_completion.d/mbg-provision"
    )]
    Completions {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `mbg-provision manpage > /usr/local/share/man/man1/mbg-provision.1`
    #[command(
        after_long_help = "Example:\n  mbg-provision manpage > /usr/local/share/man/man1/mbg-provision.1"
    )]
    Manpage,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// How many extensions to import and provision
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub extensions: usize,
    /// Latency the simulator adds to every API answer
    #[arg(long, value_name = "L", default_value_t = 20)]
    pub latency_ms: u64,
    /// mbg.max_in_flight for the sync
    #[arg(long, value_name = "C", default_value_t = 32)]
    pub in_flight: usize,
    /// `sqlite` (a temporary file) or a postgres://… URL of a server on which to create, and
    /// then drop, a fresh database
    #[arg(long, value_name = "DB", default_value = "sqlite")]
    pub database: mbg_provision::bench::BenchDatabase,
    /// Extensions for the max_in_flight = 1 comparison (0 skips it) [default: N, cut so that
    /// N × L ≤ 10 s, and to 1,000 with no latency]
    #[arg(long, value_name = "N")]
    pub serial_extensions: Option<usize>,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Step 1: get a temporary token for an administrator to approve on the MBG
    #[command(
        after_long_help = "Example:\n  mbg-provision token request --name app-suite --consumer-id MiVOAppSuite --secret-file secret.txt"
    )]
    Request {
        /// A name for this consumer, shown in status output
        #[arg(long)]
        name: String,
        /// The "ConsumerID" created on the MBG
        #[arg(long)]
        consumer_id: String,
        /// File holding the shared secret [default: $MBG_PROVISION_CONSUMER_SECRET, else a prompt]
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
    },
    /// Step 3: trade the verifier shown on the MBG for the access token
    #[command(after_long_help = "Example:\n  mbg-provision token verify 658773")]
    Verify {
        /// The six-digit verifier
        code: String,
    },
    /// Extend the access token by 12 months (what the renewal job runs)
    #[command(after_long_help = "Example:\n  mbg-provision token renew --if-within-days 30")]
    Renew {
        /// Only renew when the token expires within this many days
        #[arg(long, value_name = "N")]
        if_within_days: Option<u32>,
        #[command(flatten)]
        output: Output,
    },
    /// Record that an administrator pressed Renew on the MBG page (for MBGs without the token API)
    ///
    /// Checks with a signed call that the MBG still accepts the token, then records its expiry:
    /// the MBG's own when it tells it, else the --until date, else 12 months from now. Also clears
    /// the warning that the stored expiry has passed.
    #[command(after_long_help = "Example:\n  mbg-provision token renewed --until 2027-11-30")]
    Renewed {
        /// The expiry the MBG page shows, as YYYY-MM-DD (UTC) [default: 12 months from now]
        #[arg(long, value_name = "DATE", value_parser = parse_date)]
        until: Option<i64>,
    },
    /// none / pending approval / valid until DATE / valid past the stored date / rejected
    #[command(after_long_help = "Example:\n  mbg-provision token status")]
    Status {
        #[command(flatten)]
        output: Output,
    },
}

/// A `YYYY-MM-DD` date as epoch seconds at 00:00 UTC: the earliest moment of the day the MBG
/// page shows, so warnings come early rather than late.
fn parse_date(text: &str) -> Result<i64, String> {
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map(|d| {
            d.and_hms_opt(0, 0, 0)
                .expect("midnight exists")
                .and_utc()
                .timestamp()
        })
        .map_err(|e| format!("\"{text}\" is not a date as YYYY-MM-DD ({e})"))
}

fn parse_verifier(text: &str) -> Result<String, String> {
    if text.len() == 6 && text.bytes().all(|b| b.is_ascii_digit()) {
        Ok(text.to_string())
    } else {
        Err(format!("\"{text}\" is not six digits"))
    }
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// A web-services consumer with every permission, as ID:SECRET (repeatable)
    #[arg(long = "consumer", value_name = "ID:SECRET")]
    pub consumers: Vec<String>,
    /// Approve temporary tokens as soon as they are issued
    #[arg(long)]
    pub auto_approve: bool,
    /// Approve temporary tokens as soon as they are issued, with this six-digit verifier (what
    /// an administrator reads off the MBG page), so that a script can run `token verify CODE`
    #[arg(long, value_name = "CODE", value_parser = parse_verifier)]
    pub verifier: Option<String>,
    /// An ICP, as NAME=ADDRESS (repeatable)
    #[arg(long = "icp", value_name = "NAME=ADDRESS")]
    pub icps: Vec<String>,
    /// Teleworker licences available [default: unlimited]
    #[arg(long, value_name = "N")]
    pub licences: Option<usize>,
    /// Accept a second SIP user with a set-side name already in use, as a real MBG may
    #[arg(long)]
    pub allow_duplicate_setside_names: bool,
    /// Delay every API answer by this much
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub latency_ms: u64,
    /// Answer this share of API requests (0 to 1) with 503
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub fail_rate: f64,
}

#[derive(Debug, Args)]
pub struct Output {
    /// Print JSON for scripts
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConsoleCommand {
    /// Add, change, remove and list the console's accounts
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add an account; its password is asked for (not echoed) or read from --password-file
    #[command(
        after_long_help = "Example:\n  mbg-provision console user add alice --role admin\n\nRoles: viewer reads; operator also changes extensions, reveals and rotates;\nadmin also nodes, the token and the accounts. The console opens once an admin exists."
    )]
    Add {
        /// The name to sign in with
        name: String,
        /// viewer, operator or admin
        #[arg(long, value_parser = parse_role)]
        role: mbg_provision::store::Role,
        /// Read the password from this file (its first line) instead of asking
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Set an account's password; its sessions end
    #[command(after_long_help = "Example:\n  mbg-provision console user passwd alice")]
    Passwd {
        /// The account
        name: String,
        /// Read the password from this file (its first line) instead of asking
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Change an account's role (the last admin stays admin)
    #[command(after_long_help = "Example:\n  mbg-provision console user role bob operator")]
    Role {
        /// The account
        name: String,
        /// viewer, operator or admin
        #[arg(value_parser = parse_role)]
        role: mbg_provision::store::Role,
    },
    /// Remove an account and end its sessions (not the last admin)
    #[command(after_long_help = "Example:\n  mbg-provision console user remove bob")]
    Remove {
        /// The account
        name: String,
    },
    /// The accounts, with their roles
    #[command(after_long_help = "Example:\n  mbg-provision console user list --json")]
    List {
        #[command(flatten)]
        output: Output,
    },
}

fn parse_role(text: &str) -> Result<mbg_provision::store::Role, String> {
    text.parse()
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Add a PBX node; ADDRESS must equal the MBG ICP's "hostname or IP address"
    #[command(
        after_long_help = "Example:\n  mbg-provision node add pbx1 --address 10.0.0.20 --nat-address 203.0.113.7"
    )]
    Add {
        /// The node's name, as the phone system shows it
        name: String,
        /// The node's address: what the MBG's ICP entry for it holds
        #[arg(long)]
        address: String,
        /// The MBG's external address, which the phone system hands to the phones
        #[arg(long, value_name = "IP")]
        nat_address: Option<String>,
        /// The MBG's external SIP port the phones register on [default: 5060]
        #[arg(long, value_name = "N")]
        nat_sip_port: Option<u16>,
        #[command(flatten)]
        output: Output,
    },
    /// Change a node's address or NAT settings (a new address moves its extensions' SIP users
    /// to the ICP it matches)
    #[command(after_long_help = "Example:\n  mbg-provision node set pbx1 --nat-sip-port 5062")]
    Set {
        /// The node to change
        name: String,
        /// Its new address (must equal the MBG ICP's "hostname or IP address")
        #[arg(long, required_unless_present_any = ["nat_address", "nat_sip_port"])]
        address: Option<String>,
        /// The MBG's external address, which the phone system hands to the phones
        #[arg(long, value_name = "IP")]
        nat_address: Option<String>,
        /// The MBG's external SIP port the phones register on
        #[arg(long, value_name = "N")]
        nat_sip_port: Option<u16>,
        #[command(flatten)]
        output: Output,
    },
    /// List the nodes
    #[command(after_long_help = "Example:\n  mbg-provision node list --json")]
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
    /// Create an extension or change one (only the options given change)
    #[command(
        after_long_help = "Example:\n  mbg-provision extension set 1001 --node pbx1 --remote on   # create, or move to pbx1\n  mbg-provision extension set 1001 --remote off              # change an existing one\n  mbg-provision extension set 1001 --remote on --remote-name alice1001 --remote-password-file pw.txt"
    )]
    Set {
        /// The extension number (1 to 10 digits)
        number: String,
        /// The node the extension is on [needed to create it, to move it, or when the number
        /// exists on several nodes; otherwise the node it is on]
        #[arg(long)]
        node: Option<String>,
        /// SIP, or SIP hot desk (an extension that logs into a teleworker phone) [default for
        /// a new extension: sip]
        #[arg(long, value_enum)]
        kind: Option<Kind>,
        /// "Use remote authorization credentials"
        #[arg(long, value_enum)]
        remote: Option<Switch>,
        /// File holding the PBX SIP password [default for a new extension: random]
        #[arg(long, value_name = "FILE")]
        sip_password_file: Option<PathBuf>,
        /// Remote authorization name (set-side) to use instead of a random one; with
        /// --remote-password-file. Refused while a change to the SIP user is still pending
        #[arg(long, value_name = "NAME", requires = "remote_password_file")]
        remote_name: Option<String>,
        /// File holding the remote authorization password (at least 8 characters the phones
        /// accept); with --remote-name
        #[arg(long, value_name = "FILE", requires = "remote_name")]
        remote_password_file: Option<PathBuf>,
        #[command(flatten)]
        output: Output,
    },
    /// List the extensions
    #[command(after_long_help = "Example:\n  mbg-provision extension list --json")]
    List {
        #[command(flatten)]
        output: Output,
    },
    /// Import extensions from CSV (header `number,node,kind,remote`): all rows or none
    #[command(after_long_help = "Example:\n  mbg-provision extension import extensions.csv")]
    Import {
        /// The CSV file
        file: PathBuf,
        #[command(flatten)]
        output: Output,
    },
    /// One extension as the engineer setting up its phone needs it: node, ICP, state, SIP user,
    /// set-side name, where the phone registers
    #[command(after_long_help = "Example:\n  mbg-provision extension show 1001 --reveal")]
    Show {
        /// The extension number
        number: String,
        /// The extension's node, when the number exists on several
        #[arg(long)]
        node: Option<String>,
        /// Also print the set-side password (on a terminal, or with --json); audited
        #[arg(long)]
        reveal: bool,
        #[command(flatten)]
        output: Output,
    },
    /// Draw new remote credentials; the daemon (or `sync`) pushes them to the MBG
    #[command(after_long_help = "Example:\n  mbg-provision extension rotate 1001")]
    Rotate {
        /// The extension number
        number: String,
        /// The extension's node, when the number exists on several
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        output: Output,
    },
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    mbg_provision::config::human_duration::parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every option and argument says what it is for, and every command's long help shows an
    /// example: `--help` is where an engineer on a site looks first.
    #[test]
    fn every_argument_has_help_and_every_command_an_example() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name());
            for arg in command.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path}: {} has no help", arg.get_id()));
                }
            }
            let leaf = command.get_subcommands().next().is_none();
            let example = command
                .get_after_long_help()
                .or(command.get_long_about())
                .is_some_and(|text| text.to_string().contains("mbg-provision "));
            if leaf && command.get_name() != "help" && !example {
                missing.push(format!("{path}: no example in its long help"));
            }
            for sub in command.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
