//! `demo`: the whole product in a minute, on a temporary SQLite database and the built-in MBG
//! simulator, narrated. Nothing outside a temporary folder is touched.

use std::process::ExitCode;

use anyhow::{Context, Result, ensure};
use mbg_provision::app::App;
use mbg_provision::clock::Clock;
use mbg_provision::config::Config;
use mbg_provision::reconcile::{self, Mode};
use mbg_provision::shutdown::Shutdown;
use mbg_provision::sim::{self, DeviceFields, SimConfig, SimConsumer};
use mbg_provision::store::{ExtensionKind, ExtensionSpec, NewNode, Store};
use mbg_provision::{credentials, token};
use secrecy::ExposeSecret;

use super::context;
use super::report::{print_plan, print_results};

const CONSUMER: &str = "MiVOAppSuite";

fn step(text: &str) {
    println!("\n== {text}");
}

pub async fn run(console: Option<std::net::SocketAddr>) -> Result<ExitCode> {
    let dir = tempfile::tempdir().context("cannot make a temporary folder")?;
    step("A temporary extension database (SQLite) and the built-in MBG simulator");
    let secret = credentials::random_password(24);
    let mbg = sim::start(
        SimConfig {
            consumers: vec![SimConsumer::new(CONSUMER, secret.expose_secret())],
            auto_approve: true,
            icps: vec![("MiVO250-1".into(), "10.0.0.20".into())],
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let mut config = Config::default();
    config.database.url = format!("sqlite://{}", dir.path().join("demo.db").display())
        .parse()
        .map_err(anyhow::Error::msg)?;
    config.mbg.base_url = Some(mbg.base_url().parse().map_err(anyhow::Error::msg)?);
    let app = App {
        store: Store::open(&config.database.url).await?,
        config,
        config_path: None,
        clock: Clock::system(),
    };
    let (store, config, clock) = (&app.store, &app.config, &app.clock);
    println!("database: {}", config.database.url);
    println!(
        "MBG simulator: {} with one ICP, MiVO250-1 at 10.0.0.20",
        mbg.base_url()
    );

    step("Two PBX nodes; pbx2's address matches no ICP on the MBG");
    for (name, address) in [("pbx1", "10.0.0.20"), ("pbx2", "10.0.0.99")] {
        store
            .add_node(&NewNode {
                name: name.into(),
                address: address.into(),
                nat_address: None,
                nat_sip_port: None,
            })
            .await?;
        println!("node {name} at {address}");
    }

    step("Extensions, as the phone system's page writes them");
    let extensions = [
        ("1001", "pbx1", ExtensionKind::Sip, true),
        ("1002", "pbx1", ExtensionKind::Sip, true),
        ("1003", "pbx1", ExtensionKind::SipHotDesk, true),
        ("1004", "pbx1", ExtensionKind::Sip, false),
        ("2001", "pbx2", ExtensionKind::Sip, true),
    ];
    for (number, node, kind, remote) in extensions {
        set(store, config, number, node, Some(kind), remote).await?;
        println!(
            "extension {number} on {node} ({kind}), remote credentials {}",
            if remote { "on" } else { "off" }
        );
    }

    step("The OAuth token exchange");
    let temporary = token::request(store, config, "demo", CONSUMER, secret, clock.now()).await?;
    println!("1. temporary token requested from the MBG");
    let verifier = mbg
        .approve(temporary.expose_secret())
        .context("the simulator lost the token")?;
    println!(
        "2. an administrator approves it on the MBG page and reads the verifier (the simulator plays this part)"
    );
    let expires = token::verify(store, config, &verifier, clock.now()).await?;
    println!(
        "3. verifier traded for the access token, valid until {}",
        token::date(expires)
    );
    let client = context::client(&app).await?;
    // The demo's database is its own: no other pass can run on it, so no pass lock.
    let shutdown = Shutdown::new();
    let pass = async |mode| {
        reconcile::run_pass(store, &client, config, mode, &shutdown, clock.now()).await
    };

    step("sync --dry-run: the plan, nothing changed yet");
    let dry = pass(Mode::DryRun).await?;
    print_plan(&dry);
    print_results(&dry);

    step("sync: provision");
    let first = pass(Mode::Apply).await?;
    print_plan(&first);
    print_results(&first);
    println!("SIP users on the MBG now: {}", mbg.devices().len());

    step("Someone adds a SIP user by hand on the MBG; 1002 is switched off and 1004 on");
    let manual = mbg
        .add_device(DeviceFields {
            icp: Some("MiVO250-1".into()),
            setside_username: Some("frontdesk".into()),
            setside_password: Some(credentials::random_password(16).expose_secret().to_string()),
            icpside_username: Some("1999".into()),
            icpside_password: Some(credentials::random_password(16).expose_secret().to_string()),
            description: Some("added by hand".into()),
            enabled: Some(true),
        })
        .map_err(anyhow::Error::msg)?;
    println!("SIP user {manual} (1999) added by hand");
    set(store, config, "1002", "pbx1", None, false).await?;
    set(store, config, "1004", "pbx1", None, true).await?;

    step("sync again: 1002 removed, 1004 provisioned, the hand-made user left alone");
    let second = pass(Mode::Apply).await?;
    print_plan(&second);
    print_results(&second);
    let devices = mbg.devices();
    ensure!(
        devices.iter().any(|d| d.guid == manual),
        "the hand-made SIP user must survive"
    );
    println!("SIP user {manual}, added by hand, is still there.");

    step("Where every extension stands");
    for e in store.extensions().await? {
        println!(
            "{} on {}: {}{}",
            e.number,
            e.node_name,
            e.state,
            e.last_error
                .map(|err| format!(" ({err})"))
                .unwrap_or_default()
        );
    }
    let third = pass(Mode::DryRun).await?;
    ensure!(
        third.plan.changes().next().is_none(),
        "a third pass must have nothing to change"
    );
    println!("\nA third pass finds nothing to change. Demo finished.");
    if let Some(listen) = console {
        return keep_the_console_open(&app, listen).await;
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// `demo --console`: the daemon on the demo's database and simulator, with the console on
/// `listen` and an admin whose one-time password exists only in the temporary database.
async fn keep_the_console_open(app: &App, listen: std::net::SocketAddr) -> Result<ExitCode> {
    step("The console, on the demo's database and simulator");
    let password = credentials::random_password(16);
    let hash = mbg_provision::console::secrets::hash_password(&password)?;
    app.store
        .add_console_user("demo", mbg_provision::store::Role::Admin, &hash)
        .await?;
    let mut config = app.config.clone();
    config.http.listen = listen;
    let daemon = App {
        store: app.store.clone(),
        config,
        config_path: None,
        clock: app.clock.clone(),
    };
    println!(
        "http://{listen}/ : sign in as demo with {} (a password of this temporary database only).",
        password.expose_secret()
    );
    println!("Ctrl-C ends the demo and deletes its database.");
    let shutdown = Shutdown::new();
    shutdown
        .on_signals()
        .context("cannot listen for SIGINT/SIGTERM")?;
    mbg_provision::daemon::run(daemon, shutdown)
        .await
        .context("the demo's daemon stopped")?;
    app.store.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn set(
    store: &Store,
    config: &Config,
    number: &str,
    node: &str,
    kind: Option<ExtensionKind>,
    remote: bool,
) -> Result<()> {
    let spec = ExtensionSpec {
        number: number.into(),
        node: node.into(),
        kind,
        use_remote_auth: Some(remote),
        sip_password: None,
    };
    store
        .set_extension(
            &spec,
            &credentials::random_password(config.credentials.password_length),
        )
        .await?;
    Ok(())
}
