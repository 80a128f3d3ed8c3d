//! The binary as a user runs it: exit codes, messages, and that a failed command changes nothing.

use std::path::Path;
use std::process::Output;

use secrecy::ExposeSecret;

use crate::support::TestDb;

/// Runs the binary in `dir` against `database_url` (through the environment, as a service would).
fn run(dir: &Path, database_url: &str, args: &[&str]) -> Output {
    run_with(dir, database_url, &[], args)
}

pub(crate) fn run_with(
    dir: &Path,
    database_url: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> Output {
    crate::support::binary()
        .current_dir(dir)
        .env("MBG_PROVISION_DATABASE__URL", database_url)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .args(args)
        .output()
        .expect("run mbg-provision")
}

pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub(crate) fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}\n{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

fn list(dir: &Path, url: &str) -> serde_json::Value {
    serde_json::from_str(&ok(run(dir, url, &["extension", "list", "--json"]))).unwrap()
}

crate::on_both_backends!(
    nodes_and_extensions_from_the_command_line,
    import_is_all_or_nothing,
    bad_rows_are_listed_as_needing_attention_and_the_rest_still_shows,
);

async fn nodes_and_extensions_from_the_command_line(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let (d, url) = (dir.path(), db.url.as_str());
    ok(run(d, url, &["migrate"]));
    ok(run(
        d,
        url,
        &["node", "add", "pbx1", "--address", "10.0.0.20"],
    ));
    ok(run(
        d,
        url,
        &[
            "node",
            "add",
            "pbx2",
            "--address",
            "10.0.0.21",
            "--nat-address",
            "203.0.113.9",
            "--nat-sip-port",
            "5062",
        ],
    ));
    let nodes: serde_json::Value =
        serde_json::from_str(&ok(run(d, url, &["node", "list", "--json"]))).unwrap();
    assert_eq!(nodes[1]["nat_sip_port"], 5062);

    let dup = run(d, url, &["node", "add", "pbx3", "--address", "10.0.0.20"]);
    assert_eq!(dup.status.code(), Some(1));
    assert!(
        stderr(&dup).contains("node address \"10.0.0.20\" already exists"),
        "{}",
        stderr(&dup)
    );
    let bad = run(
        d,
        url,
        &["node", "add", "pbx3", "--address", "10.0.0.300 x"],
    );
    assert!(stderr(&bad).contains("--address"), "{}", stderr(&bad));

    ok(run(
        d,
        url,
        &[
            "extension",
            "set",
            "1001",
            "--node",
            "pbx1",
            "--remote",
            "on",
        ],
    ));
    std::fs::write(d.join("pw"), "admin-chosen\n").unwrap();
    ok(run(
        d,
        url,
        &[
            "extension",
            "set",
            "1002",
            "--node",
            "pbx2",
            "--kind",
            "sip-hot-desk",
            "--sip-password-file",
            "pw",
        ],
    ));
    let extensions = list(d, url);
    assert_eq!(extensions.as_array().unwrap().len(), 2);
    assert_eq!(extensions[0]["number"], "1001");
    assert_eq!(extensions[0]["use_remote_auth"], true);
    assert_eq!(extensions[1]["kind"], "sip_hot_desk");
    let text = extensions.to_string();
    assert!(
        !text.contains("admin-chosen"),
        "no passwords in list output"
    );
    assert_eq!(
        db.store
            .extension_by_number("1002")
            .await
            .unwrap()
            .sip_password
            .expose_secret(),
        "admin-chosen"
    );
    let generated = db.store.extension_by_number("1001").await.unwrap();
    assert_eq!(
        generated.sip_password.expose_secret().len(),
        20,
        "random PBX SIP password"
    );

    ok(run(
        d,
        url,
        &[
            "extension",
            "set",
            "1001",
            "--node",
            "pbx2",
            "--remote",
            "off",
        ],
    ));
    let moved = list(d, url);
    assert_eq!(moved[0]["node"], "pbx2");
    assert_eq!(moved[0]["use_remote_auth"], false);

    let unknown = run(d, url, &["extension", "set", "1003", "--node", "nowhere"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("no node named \"nowhere\""));
    let text = ok(run(d, url, &["extension", "list"]));
    assert!(
        text.contains("1001") && text.contains("sip_hot_desk"),
        "{text}"
    );
}

async fn import_is_all_or_nothing(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let (d, url) = (dir.path(), db.url.as_str());
    ok(run(
        d,
        url,
        &["node", "add", "pbx1", "--address", "10.0.0.20"],
    ));
    ok(run(d, url, &["extension", "set", "1001", "--node", "pbx1"]));

    std::fs::write(
        d.join("bad.csv"),
        "number,node,kind,remote\n1001,pbx1,sip,on\n2002,pbx9,sip,on\n2003,pbx1,sip,perhaps\n2004,pbx1,sip-hot-desk,on\n",
    )
    .unwrap();
    let bad = run(d, url, &["extension", "import", "bad.csv"]);
    assert_eq!(bad.status.code(), Some(1));
    let message = stderr(&bad);
    assert!(
        message.contains("line 3: node \"pbx9\" does not exist"),
        "{message}"
    );
    assert!(
        message.contains("line 4: remote \"perhaps\" must be on or off"),
        "{message}"
    );
    assert!(message.contains("nothing imported"), "{message}");
    let unchanged = list(d, url);
    assert_eq!(unchanged.as_array().unwrap().len(), 1);
    assert_eq!(unchanged[0]["use_remote_auth"], false);

    std::fs::write(
        d.join("good.csv"),
        "number,node,kind,remote\n1001,pbx1,sip,on\n2002,pbx1,sip,on\n2004,pbx1,sip-hot-desk,off\n",
    )
    .unwrap();
    let out = ok(run(d, url, &["extension", "import", "good.csv", "--json"]));
    let counts: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(counts["created"], 2);
    assert_eq!(counts["updated"], 1);
    let imported = list(d, url);
    assert_eq!(imported.as_array().unwrap().len(), 3);
    assert!(
        imported
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["number"] != "1001" || e["use_remote_auth"] == true)
    );
}

#[test]
fn a_bad_config_names_key_and_file_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[mbg]\nbase_url = \"http://10.1.1.1/mslrest\"\n",
    )
    .unwrap();
    let out = crate::support::binary()
        .current_dir(dir.path())
        .args(["node", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert!(message.contains("`mbg.base_url`"), "{message}");
    assert!(message.contains("config.toml"), "{message}");
    assert!(
        !dir.path().join("mbg-provision.db").exists(),
        "nothing created on a bad config"
    );

    let missing = crate::support::binary()
        .current_dir(dir.path())
        .args(["--config", "elsewhere.toml", "node", "list"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("elsewhere.toml does not exist"));
}

/// `run` is the daemon (tested in its own module); here only that the command line has it and
/// that it refuses to start on a database that does not exist rather than create an empty one.
#[test]
fn run_is_the_daemon_command() {
    let dir = tempfile::tempdir().unwrap();
    let bare = |args: &[&str]| {
        crate::support::binary()
            .current_dir(dir.path())
            .env_remove("MBG_PROVISION_DATABASE__URL")
            .env_remove("RUST_LOG")
            .args(args)
            .output()
            .unwrap()
    };
    let help = ok(bare(&["run", "--help"]));
    for promise in [
        "reconcile.interval",
        "token.renew_schedule",
        "/healthz",
        "http.listen",
    ] {
        assert!(help.contains(promise), "{promise}: {help}");
    }
    assert!(ok(bare(&["--help"])).contains("run "));
    let out = bare(&["run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert!(!dir.path().join("mbg-provision.db").exists());
}

/// The operator's whole path: token exchange, dry run, sync, status, icps, exit codes.
/// Multi-threaded: the binary blocks this thread while the simulator answers on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_sync_status_and_icps_from_the_command_line() {
    let sim = crate::mbg::start_sim(crate::mbg::sim_config()).await;
    let db = TestDb::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let base = sim.base_url();
    let secret = "shared+secret/42=";
    let env = [
        ("MBG_PROVISION_MBG__BASE_URL", base.as_str()),
        ("MBG_PROVISION_CONSUMER_SECRET", secret),
    ];
    let (d, url) = (dir.path(), db.url.as_str());
    let cmd = |args: &[&str]| run_with(d, url, &env, args);
    ok(cmd(&["node", "add", "pbx1", "--address", "10.0.0.20"]));
    ok(cmd(&["node", "add", "pbx3", "--address", "10.0.0.99"]));
    ok(cmd(&[
        "extension",
        "set",
        "1001",
        "--node",
        "pbx1",
        "--remote",
        "on",
    ]));
    ok(cmd(&[
        "extension",
        "set",
        "2001",
        "--node",
        "pbx3",
        "--remote",
        "on",
    ]));

    // Without a token no pass can run: a wanted extension shows as waiting, with the reason.
    let waiting: serde_json::Value = serde_json::from_str(&ok(cmd(&["status", "--json"]))).unwrap();
    let row = waiting["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["extension"] == "2001")
        .unwrap()
        .clone();
    assert_eq!(row["state"], "pending", "{row}");
    assert!(
        row["last_error"]
            .as_str()
            .unwrap()
            .contains("waiting for a usable MBG access token"),
        "{row}"
    );
    let no_token = cmd(&["sync"]);
    assert_eq!(no_token.status.code(), Some(1));
    // The state in words and the commands that fix it, not "the token is none".
    assert!(
        stderr(&no_token).contains(
            "the MBG access token is not requested yet: run `mbg-provision token request`, approve it on the MBG, then `mbg-provision token verify CODE`"
        ),
        "{}",
        stderr(&no_token)
    );

    let requested = ok(cmd(&[
        "token",
        "request",
        "--name",
        "test",
        "--consumer-id",
        "MiVOAppSuite",
    ]));
    let temporary = requested
        .lines()
        .find_map(|l| l.strip_prefix("temporary token: "))
        .expect("the temporary token is printed for the administrator");
    assert!(requested.contains("token verify"));
    assert!(!requested.contains(secret) && !stderr(&cmd(&["token", "status"])).contains(secret));
    let verifier = sim.approve(temporary).unwrap();
    ok(cmd(&["token", "verify", &verifier]));
    assert!(ok(cmd(&["token", "status"])).contains("valid until"));

    sim.clear_requests();
    let dry = cmd(&["sync", "--dry-run"]);
    assert_eq!(dry.status.code(), Some(2), "a problem needs attention");
    let plan = stdout(&dry);
    assert!(plan.contains("+ create   1001"), "{plan}");
    assert!(
        plan.contains("no ICP on the MBG has the address 10.0.0.99"),
        "{plan}"
    );
    assert!(plan.contains("dry run"), "{plan}");
    assert!(
        sim.requests().iter().all(|r| r.method == "GET"),
        "{:?}",
        sim.requests()
    );
    assert!(sim.devices().is_empty());

    let applied = cmd(&["sync"]);
    assert_eq!(applied.status.code(), Some(2), "{}", stdout(&applied));
    assert_eq!(sim.devices().len(), 1);
    let icps = cmd(&["icps"]);
    assert_eq!(icps.status.code(), Some(2));
    assert!(stdout(&icps).contains("pbx3") && stdout(&icps).contains("no ICP with this address"));
    assert!(
        stdout(&icps).contains("ICP MiVO250-2 (10.0.0.21) has no node"),
        "{}",
        stdout(&icps)
    );

    ok(cmd(&["extension", "set", "2001", "--node", "pbx1"]));
    let fixed: serde_json::Value = serde_json::from_str(&ok(cmd(&["sync", "--json"]))).unwrap();
    assert_eq!(fixed["succeeded"], true);
    assert_eq!(fixed["needs_attention"], false);
    assert_eq!(fixed["plan"][0]["action"], "create");
    let status: serde_json::Value = serde_json::from_str(&ok(cmd(&["status", "--json"]))).unwrap();
    let rows = status["extensions"].as_array().unwrap();
    assert!(
        rows.iter()
            .all(|r| r["state"] == "provisioned" && r["mbg_guid"].is_string()),
        "{rows:?}"
    );
    assert_eq!(status["token"]["state"], "valid");
    let again = ok(cmd(&["sync"]));
    assert!(again.contains("No changes"), "{again}");
}

#[test]
fn the_demo_runs_the_whole_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let out = crate::support::binary()
        .current_dir(dir.path())
        .arg("demo")
        .output()
        .unwrap();
    let text = ok(out);
    for expected in [
        "verifier traded for the access token",
        "+ create   1003",
        "Plan: 3 to create, 0 to update, 0 to adopt, 0 to delete, 1 problem(s) to fix.",
        "no ICP on the MBG has the address 10.0.0.99 of node pbx2",
        "Applied: 3 done, 0 failed (retried later), 1 need attention, 0 skipped",
        "- delete   1002",
        "+ create   1004",
        "added by hand, is still there",
        "1003 on pbx1: provisioned",
        "1002 on pbx1: idle",
        "A third pass finds nothing to change.",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "the demo leaves nothing behind"
    );
}

/// How many times `needle` occurs in `haystack`.
fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// A configured token against a fresh simulator, through the CLI as an operator does it.
/// Returns the simulator, the database and the environment to run commands with.
pub(crate) async fn with_cli_token(
    sim_config: mbg_provision::sim::SimConfig,
) -> (
    mbg_provision::sim::SimHandle,
    TestDb,
    tempfile::TempDir,
    Vec<(&'static str, String)>,
) {
    with_cli_token_on(TestDb::sqlite().await, sim_config).await
}

/// [`with_cli_token`] on `db`.
async fn with_cli_token_on(
    db: TestDb,
    sim_config: mbg_provision::sim::SimConfig,
) -> (
    mbg_provision::sim::SimHandle,
    TestDb,
    tempfile::TempDir,
    Vec<(&'static str, String)>,
) {
    let sim = crate::mbg::start_sim(sim_config).await;
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        ("MBG_PROVISION_MBG__BASE_URL", sim.base_url()),
        (
            "MBG_PROVISION_CONSUMER_SECRET",
            "shared+secret/42=".to_string(),
        ),
        ("MBG_PROVISION_MBG__TIMEOUT", "2s".to_string()),
    ];
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let cmd = |args: &[&str]| run_with(dir.path(), &db.url, &env_ref, args);
    ok(cmd(&["node", "add", "pbx1", "--address", "10.0.0.20"]));
    ok(cmd(&[
        "extension",
        "set",
        "1001",
        "--node",
        "pbx1",
        "--remote",
        "on",
    ]));
    let requested = ok(cmd(&[
        "token",
        "request",
        "--name",
        "test",
        "--consumer-id",
        "MiVOAppSuite",
    ]));
    let temporary = requested
        .lines()
        .find_map(|l| l.strip_prefix("temporary token: "))
        .unwrap();
    let verifier = sim.approve(temporary).unwrap();
    ok(cmd(&["token", "verify", &verifier]));
    (sim, db, dir, env)
}

/// Issue 7: each MBG error was printed twice ("X: Y: X: Y").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mbg_error_is_printed_once() {
    let mut config = crate::mbg::sim_config();
    config.licences = Some(0);
    let (sim, db, dir, env) = with_cli_token(config).await;
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("MBG_PROVISION_MBG__RETRY_DEADLINE", "1s"));
    let cmd = |args: &[&str]| run_with(dir.path(), &db.url, &env, args);

    sim.set_faults(mbg_provision::sim::Faults {
        fail_rate: 1.0,
        ..Default::default()
    });
    let unavailable = cmd(&["sync"]);
    assert_ne!(unavailable.status.code(), Some(0));
    // The reads are retried (each retry is logged); the final error says it once. Either list
    // may be the one that gives up first: they are read side by side.
    let stderr_text = stderr(&unavailable);
    let error = stderr_text
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in:\n{stderr_text}"));
    for part in ["GET mbg/v1/", "503 Service Unavailable"] {
        assert_eq!(count(error, part), 1, "{part:?} once in:\n{error}");
    }

    // A 400 on the create: no teleworker licence left.
    sim.set_faults(mbg_provision::sim::Faults::default());
    let refused = cmd(&["sync"]);
    assert_ne!(refused.status.code(), Some(0));
    let text = format!("{}{}", stdout(&refused), stderr(&refused));
    assert_eq!(
        count(&text, "no teleworker licence available"),
        1,
        "once in:\n{text}"
    );

    // A 401 on the opening reads: the token was revoked on the MBG.
    let token = db.store.mbg_settings().await.unwrap().access_token.unwrap();
    assert!(sim.revoke(token.expose_secret()));
    let revoked = cmd(&["sync"]);
    assert_ne!(revoked.status.code(), Some(0));
    let text = format!("{}{}", stdout(&revoked), stderr(&revoked));
    for part in ["401 unauthorized", "token status"] {
        assert_eq!(count(&text, part), 1, "{part:?} once in:\n{text}");
    }
}

/// Issue 7: a TOML syntax error was printed once per configuration section (eight times).
#[test]
fn a_toml_syntax_error_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[mbg\nbase_url = \"https://10.0.0.5/mslrest\"\n",
    )
    .unwrap();
    let out = crate::support::binary()
        .current_dir(dir.path())
        .args(["node", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert!(message.contains("config.toml"), "names the file: {message}");
    assert!(message.contains("line 1"), "names the line: {message}");
    for part in ["TOML parse error", "invalid table header"] {
        assert_eq!(count(&message, part), 1, "{part:?} once in:\n{message}");
    }
}

/// Issue 7: libpq takes a password in the URL's query too; "cannot open the database" printed it.
#[test]
fn a_database_url_is_printed_without_its_credentials() {
    let dir = tempfile::tempdir().unwrap();
    // `sslmode=bogus` makes the driver refuse the URL at once, with no server needed.
    let url = "postgres://prov:userinfo-PW-1@127.0.0.1:1/pbx?password=query-PW-2&application_name=mbgp&sslmode=bogus";
    let out = run(dir.path(), url, &["node", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    for secret in ["userinfo-PW-1", "query-PW-2"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert!(
        text.contains("127.0.0.1:1/pbx") && text.contains("application_name=mbgp"),
        "the rest of the URL still says which database: {text}"
    );

    // A credential the driver does not take would be logged by it, value included: refused.
    let url = "postgres://prov@127.0.0.1:1/pbx?sslpassword=ssl-PW-3";
    let out = run(dir.path(), url, &["node", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!text.contains("ssl-PW-3"), "leaked: {text}");
    assert!(
        text.contains("`database.url`") && text.contains("sslpassword"),
        "names the key and the parameter: {text}"
    );
}
/// Token truth (issue 7, item 5) and file permissions (item 7), as an operator meets them.
/// Multi-threaded: the binary blocks this thread while the simulator answers on another.
mod token_truth {
    use std::path::Path;
    use std::process::Output;

    use mbg_provision::store::Store;
    use secrecy::ExposeSecret;

    use super::{ok, run_with, stderr, stdout};
    use crate::mbg::{Harness, sim_config};
    use crate::support::TestDb;

    const DAY: i64 = 86_400;
    const SECRET: &str = "shared+secret/42=";

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    /// Runs the binary on the harness's database, MBG and key file.
    fn cli(h: &Harness, dir: &Path, args: &[&str]) -> Output {
        let base = h.sim.base_url();
        let key = h.db.key_file.to_str().unwrap();
        let env = [
            ("MBG_PROVISION_MBG__BASE_URL", base.as_str()),
            ("MBG_PROVISION_SECRETS__KEY_FILE", key),
            ("MBG_PROVISION_CONSUMER_SECRET", SECRET),
        ];
        run_with(dir, &h.db.url, &env, args)
    }

    async fn set_expiry(store: &Store, expires_at: i64) {
        let generation = store.mbg_settings().await.unwrap().token_generation;
        assert!(
            store
                .save_token_expiry(generation, expires_at)
                .await
                .unwrap()
        );
    }

    /// `token request`, approval on the "MBG page", `token verify`, all through the binary.
    fn new_exchange(h: &Harness, dir: &Path) {
        let requested = ok(cli(
            h,
            dir,
            &[
                "token",
                "request",
                "--name",
                "t",
                "--consumer-id",
                "MiVOAppSuite",
            ],
        ));
        let temporary = requested
            .lines()
            .find_map(|l| l.strip_prefix("temporary token: "))
            .unwrap();
        let verifier = h.sim.approve(temporary).unwrap();
        ok(cli(h, dir, &["token", "verify", &verifier]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sync_and_icps_go_on_past_the_stored_expiry_and_warn() {
        let h = Harness::new(TestDb::sqlite().await, sim_config())
            .await
            .with_token()
            .await;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        set_expiry(&h.db.store, now() - DAY).await;

        h.sim.clear_requests();
        let sync = cli(&h, d, &["sync"]);
        assert_eq!(sync.status.code(), Some(0), "{}", stderr(&sync));
        assert!(!h.sim.requests().is_empty(), "the MBG was asked");
        assert!(
            stderr(&sync).contains("has passed") && stderr(&sync).contains("token renewed"),
            "{}",
            stderr(&sync)
        );
        let icps = cli(&h, d, &["icps"]);
        assert_eq!(icps.status.code(), Some(0), "{}", stderr(&icps));
        assert!(stderr(&icps).contains("token renewed"), "{}", stderr(&icps));
        let status = cli(&h, d, &["token", "status"]);
        assert_eq!(status.status.code(), Some(2), "a human should confirm");
        let text = stdout(&status);
        assert!(
            text.contains("valid by the MBG's last answer; the stored expiry")
                && text.contains("run `mbg-provision token renewed`"),
            "{text}"
        );

        let renewed = ok(cli(&h, d, &["token", "renewed"]));
        assert!(renewed.contains("valid until"), "{renewed}");
        assert!(ok(cli(&h, d, &["token", "status"])).contains("valid until"));

        // Inside the renewal window: `sync` and `status` warn.
        set_expiry(&h.db.store, now() + 10 * DAY).await;
        for command in ["sync", "status"] {
            let out = cli(&h, d, &[command]);
            assert_eq!(out.status.code(), Some(0), "{command}: {}", stderr(&out));
            assert!(
                stderr(&out).contains("days left") && stderr(&out).contains("token renew"),
                "{command}: {}",
                stderr(&out)
            );
        }
        set_expiry(&h.db.store, now() + 100 * DAY).await;
        assert!(!stderr(&cli(&h, d, &["sync"])).contains("warning"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_401_marks_the_token_rejected_until_a_new_exchange() {
        let h = Harness::new(TestDb::sqlite().await, sim_config())
            .await
            .with_token()
            .await;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let revoke = async |h: &Harness| {
            let settings = h.db.store.mbg_settings().await.unwrap();
            assert!(h.sim.revoke(settings.access_token.unwrap().expose_secret()));
        };

        revoke(&h).await;
        let sync = cli(&h, d, &["sync"]);
        assert_eq!(sync.status.code(), Some(1), "{}", stderr(&sync));
        let status = cli(&h, d, &["token", "status"]);
        assert_eq!(status.status.code(), Some(2));
        let text = stdout(&status);
        assert!(text.contains("rejected by the MBG on"), "{text}");
        assert!(
            text.contains("401") && text.contains("token request"),
            "{text}"
        );
        h.sim.clear_requests();
        let icps = cli(&h, d, &["icps"]);
        assert_eq!(icps.status.code(), Some(1));
        assert!(stderr(&icps).contains("rejected"), "{}", stderr(&icps));
        assert!(h.sim.requests().is_empty(), "no call with a rejected token");

        new_exchange(&h, d);
        assert!(ok(cli(&h, d, &["token", "status"])).contains("valid until"));

        // `icps` records a 401 too.
        revoke(&h).await;
        assert_eq!(cli(&h, d, &["icps"]).status.code(), Some(1));
        assert!(stdout(&cli(&h, d, &["token", "status"])).contains("rejected by the MBG on"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn token_renew_exits_2_when_a_human_must_press_renew() {
        let mut config = sim_config();
        config.token_api = false;
        let h = Harness::new(TestDb::sqlite().await, config)
            .await
            .with_token()
            .await;
        let dir = tempfile::tempdir().unwrap();
        set_expiry(&h.db.store, now() + 10 * DAY).await;
        let due = cli(
            &h,
            dir.path(),
            &["token", "renew", "--if-within-days", "30"],
        );
        assert_eq!(due.status.code(), Some(2), "cron must mail someone");
        assert!(
            stdout(&due).contains("press Renew on the MBG page"),
            "{}",
            stdout(&due)
        );
        let not_due = cli(&h, dir.path(), &["token", "renew", "--if-within-days", "5"]);
        assert_eq!(not_due.status.code(), Some(0));
        assert!(stdout(&not_due).contains("not due"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_that_does_not_match_is_explained_and_token_request_starts_over() {
        let h = Harness::new(TestDb::sqlite().await, sim_config())
            .await
            .with_token()
            .await;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(&h.db.key_file, [42u8; 32]).unwrap();
        for command in [&["token", "status"][..], &["sync"]] {
            let out = cli(&h, d, command);
            assert_eq!(out.status.code(), Some(1));
            let err = stderr(&out);
            assert!(
                err.contains("does not match the database")
                    && err.contains("token request")
                    && err.contains(h.db.key_file.to_str().unwrap()),
                "{err}"
            );
        }
        new_exchange(&h, d);
        assert!(ok(cli(&h, d, &["token", "status"])).contains("valid until"));
        assert_eq!(cli(&h, d, &["sync"]).status.code(), Some(0));
    }

    #[cfg(unix)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_readable_by_others_are_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let h = Harness::new(TestDb::sqlite().await, sim_config())
            .await
            .with_token()
            .await;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let database = h.db.url.trim_start_matches("sqlite://").to_string();
        let key = h.db.key_file.to_str().unwrap().to_string();
        let secret_file = d.join("secret");
        std::fs::write(&secret_file, SECRET).unwrap();
        let secret = secret_file.to_str().unwrap().to_string();
        let chmod = |mode: u32| {
            for file in [&database, &key, &secret] {
                std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        };
        let request = [
            "token",
            "request",
            "--name",
            "t",
            "--consumer-id",
            "MiVOAppSuite",
            "--secret-file",
            &secret,
        ];
        chmod(0o640);
        let err = stderr(&cli(&h, d, &request));
        for file in [&database, &key, &secret] {
            assert!(err.contains(&format!("chmod 600 {file}")), "{file}: {err}");
        }
        chmod(0o600);
        let err = stderr(&cli(&h, d, &request));
        assert!(!err.contains("chmod"), "{err}");
    }
}

async fn bad_rows_are_listed_as_needing_attention_and_the_rest_still_shows(db: TestDb) {
    use mbg_provision::store::Backend;
    use sqlx::{Connection, Executor};

    let dir = tempfile::tempdir().unwrap();
    let (d, url) = (dir.path(), db.url.as_str());
    ok(run(
        d,
        url,
        &["node", "add", "pbx1", "--address", "10.0.0.20"],
    ));
    ok(run(d, url, &["extension", "set", "1001", "--node", "pbx1"]));
    ok(run(d, url, &["extension", "set", "1002", "--node", "pbx1"]));
    let id = db.store.extension_by_number("1002").await.unwrap().id;
    // Another program writes a state that our schema's CHECK would refuse.
    let mut other = sqlx::AnyConnection::connect(url).await.unwrap();
    let bypass = match db.store.backend() {
        Backend::Sqlite => "PRAGMA ignore_check_constraints = ON",
        Backend::Postgres => "ALTER TABLE extensions DROP CONSTRAINT extensions_state_valid",
    };
    other.execute(bypass).await.unwrap();
    other
        .execute("UPDATE extensions SET state = 'bogus' WHERE number = '1002'")
        .await
        .unwrap();
    other.close().await.unwrap();
    let named = format!("extension row id {id} (number \"1002\"): column state");

    let listed = run(d, url, &["extension", "list"]);
    assert_eq!(listed.status.code(), Some(2), "{}", stderr(&listed));
    let text = stdout(&listed);
    assert!(text.contains("1001"), "{text}");
    assert!(
        text.contains("need attention") && text.contains(&named),
        "{text}"
    );

    let json = run(d, url, &["extension", "list", "--json"]);
    assert_eq!(json.status.code(), Some(2));
    let good: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(good.as_array().unwrap().len(), 1);
    assert_eq!(good[0]["number"], "1001");
    assert!(stderr(&json).contains(&named), "{}", stderr(&json));

    let status = run(d, url, &["status"]);
    assert_eq!(status.status.code(), Some(2), "{}", stderr(&status));
    assert!(stdout(&status).contains("1001") && stdout(&status).contains(&named));
    let status = run(d, url, &["status", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(report["extensions"][0]["extension"], "1001");
    assert_eq!(report["bad_rows"][0]["id"], id);
    assert_eq!(report["bad_rows"][0]["column"], "state");
}

#[test]
fn a_huge_csv_field_gives_a_short_error_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = format!("sqlite://{}", d.join("huge.db").display());
    ok(run(
        d,
        &url,
        &["node", "add", "pbx1", "--address", "10.0.0.20"],
    ));
    let huge = "9".repeat(5_000_000);
    std::fs::write(
        d.join("huge.csv"),
        format!(
            "number,node,kind,remote\n{huge}1,pbx1,sip,on\n1002,{huge}2,sip,on\n1003,pbx1,{huge}3,{huge}4\n"
        ),
    )
    .unwrap();
    let out = run(d, &url, &["extension", "import", "huge.csv"]);
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert!(message.len() < 2_000, "{} bytes of error", message.len());
    for line in [
        "line 2: number \"999",
        "line 3: node \"999",
        "line 4: unknown kind \"999",
    ] {
        assert!(message.contains(line), "{line} missing from {message}");
    }
    assert!(
        message.contains("(5000001 bytes)"),
        "says how long: {message}"
    );
    assert!(message.contains("remote \"999"), "{message}");
}

#[test]
fn log_lines_have_no_colour_codes_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = format!("sqlite://{}", d.join("plain.db").display());
    ok(run(d, &url, &["migrate"]));
    // sqlx logs each statement at debug: something to look at.
    let out = crate::support::binary()
        .current_dir(d)
        .env("MBG_PROVISION_DATABASE__URL", &url)
        .env("RUST_LOG", "sqlx=debug")
        .env_remove("NO_COLOR")
        .args(["node", "list"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let logged = stderr(&out);
    assert!(!logged.is_empty(), "expected log lines");
    assert!(
        !logged.contains('\u{1b}'),
        "colour codes in a pipe: {logged:?}"
    );
}

#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "PostgreSQL: set TEST_POSTGRES_URL (CI does)"
)]
async fn postgres_notices_are_not_printed_on_every_command() {
    let Some(db) = TestDb::postgres("postgres_notices_are_not_printed_on_every_command").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (d, url) = (dir.path(), db.url.as_str());
    ok(run(d, url, &["node", "list"]));
    let second = run(d, url, &["node", "list"]);
    assert!(second.status.success(), "{}", stderr(&second));
    let logged = stderr(&second).to_lowercase();
    assert!(!logged.contains("notice"), "{logged}");
    assert!(!logged.contains("already exists"), "{logged}");
}

#[test]
fn an_unreachable_database_is_named_within_the_connect_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let started = std::time::Instant::now();
    let refused = run(d, "postgres://postgres@127.0.0.1:1/test", &["status"]);
    assert_eq!(refused.status.code(), Some(1));
    let message = stderr(&refused);
    assert!(
        message.contains("cannot connect to 127.0.0.1:1: connection refused"),
        "{message}"
    );
    assert!(!message.contains("pool timed out"), "{message}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15));

    // A server that accepts the connection and never answers: the configured timeout applies.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let started = std::time::Instant::now();
    let hung = run_with(
        d,
        &format!("postgres://postgres@127.0.0.1:{port}/test"),
        &[("MBG_PROVISION_DATABASE__CONNECT_TIMEOUT", "1s")],
        &["status"],
    );
    assert_eq!(hung.status.code(), Some(1));
    let message = stderr(&hung);
    assert!(
        message.contains(&format!(
            "cannot connect to 127.0.0.1:{port}: no answer within 1s"
        )),
        "{message}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    drop(silent);
}

/// `extension set` changes an existing extension without its node, as `node set` does; `--node`
/// is needed to create one, and a number on two nodes must say which.
#[tokio::test]
async fn extension_set_changes_an_existing_extension_without_its_node() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = format!("sqlite://{}", d.join("ext.db").display());
    for node in [["pbx1", "10.0.0.20"], ["pbx2", "10.0.0.21"]] {
        ok(run(
            d,
            &url,
            &["node", "add", node[0], "--address", node[1]],
        ));
    }
    ok(run(
        d,
        &url,
        &["extension", "set", "1001", "--node", "pbx2"],
    ));
    let changed = ok(run(
        d,
        &url,
        &["extension", "set", "1001", "--remote", "on"],
    ));
    assert_eq!(
        changed.trim(),
        "updated extension 1001 on node pbx2 (remote credentials on)"
    );
    let missing = run(d, &url, &["extension", "set", "1002", "--remote", "on"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("no extension 1002: give --node NAME to create it"),
        "{}",
        stderr(&missing)
    );
    // The same number on both nodes (another program can write that): which one is meant?
    crate::service::sql(
        &url,
        "INSERT INTO extensions (node_id, number, kind, sip_password, use_remote_auth, updated_at)
         SELECT id, '1001', 'sip', 'pw', 0, 0 FROM nodes WHERE name = 'pbx1'",
    )
    .await;
    let ambiguous = run(d, &url, &["extension", "set", "1001", "--remote", "off"]);
    assert_eq!(ambiguous.status.code(), Some(1));
    assert!(
        stderr(&ambiguous).contains("1001 exists on several nodes"),
        "{}",
        stderr(&ambiguous)
    );
}

/// Remote credentials typed on the command line pass the same check as the console's form
/// (the store's), name the field at fault, and write nothing when refused; accepted, they are
/// stored as typed and the change is audited with the OS user.
#[tokio::test]
async fn extension_set_takes_typed_remote_credentials_checked_as_the_console_checks_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = format!("sqlite://{}", d.join("typed.db").display());
    ok(run(
        d,
        &url,
        &["node", "add", "pbx1", "--address", "10.0.0.20"],
    ));
    ok(run(
        d,
        &url,
        &["extension", "set", "1001", "--node", "pbx1"],
    ));
    let before = list(d, &url);
    let password_file = d.join("remote-password");
    let set = |name: &str, password: &str| {
        std::fs::write(&password_file, format!("{password}\n")).unwrap();
        run(
            d,
            &url,
            &[
                "extension",
                "set",
                "1001",
                "--remote",
                "on",
                "--remote-name",
                name,
                "--remote-password-file",
                password_file.to_str().unwrap(),
            ],
        )
    };
    for (name, password, field) in [
        ("alice1001", "short1", "remote_auth_password"),
        ("alice1001", "Abcdefgh1234\"", "remote_auth_password"),
        ("1alice", "Abcdefgh12345", "remote_auth_name"),
    ] {
        let refused = set(name, password);
        assert_eq!(refused.status.code(), Some(1), "{name} {password}");
        assert!(
            stderr(&refused).contains(field),
            "{field} named: {}",
            stderr(&refused)
        );
        assert!(
            !stderr(&refused).contains(password),
            "the password is not echoed"
        );
        assert_eq!(list(d, &url), before, "nothing written");
    }
    let half = run(
        d,
        &url,
        &["extension", "set", "1001", "--remote-name", "alice1001"],
    );
    assert_eq!(
        half.status.code(),
        Some(64),
        "a name without a password is a usage error"
    );

    ok(set("alice1001", "Abcdefgh12345"));
    let store = mbg_provision::store::Store::open(&url.parse().unwrap())
        .await
        .unwrap();
    let stored = store.extension_by_number("1001").await.unwrap();
    assert!(stored.use_remote_auth);
    assert_eq!(stored.remote_auth_name.as_deref(), Some("alice1001"));
    assert_eq!(
        stored.remote_auth_password.unwrap().expose_secret(),
        "Abcdefgh12345"
    );
    let audit = store.audit_of("1001", 10).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "set"
                && a.actor.as_deref().is_some_and(|who| who.starts_with("os:"))),
        "{audit:?}"
    );
}

/// `migrate` says what it did: created, or already up to date, with the version.
#[test]
fn migrate_says_whether_it_created_the_schema() {
    let versions = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
        .unwrap()
        .count();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("new.db").display());
    let first = ok(run(dir.path(), &url, &["migrate"]));
    assert!(
        first.starts_with(&format!("created the schema (version {versions}) in ")),
        "{first}"
    );
    let again = ok(run(dir.path(), &url, &["migrate"]));
    assert!(
        again.starts_with(&format!("the schema is up to date (version {versions})")),
        "{again}"
    );
}

/// A PostgreSQL server without the named database: said so, with the command that creates it,
/// and none of the server's internals ("at line 948").
#[test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "PostgreSQL: set TEST_POSTGRES_URL (CI does)"
)]
fn a_postgresql_database_that_does_not_exist_is_named_with_its_createdb() {
    let Ok(admin) = std::env::var(crate::support::POSTGRES_ENV) else {
        eprintln!(
            "SKIPPED a_postgresql_database_that_does_not_exist_is_named_with_its_createdb: no {}",
            crate::support::POSTGRES_ENV
        );
        return;
    };
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path("mbgp_no_such_database");
    let dir = tempfile::tempdir().unwrap();
    let output = run(dir.path(), url.as_str(), &["status"]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    let host = url.host_str().unwrap();
    let port = url.port().unwrap_or(5432);
    assert!(
        message.contains("the PostgreSQL database mbgp_no_such_database does not exist"),
        "{message}"
    );
    assert!(
        message.contains(&format!("createdb -h {host} -p {port}"))
            && message.contains(" mbgp_no_such_database`"),
        "{message}"
    );
    assert!(!message.contains("at line"), "{message}");
}

#[test]
fn a_missing_database_is_an_error_except_for_commands_that_create_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bare = |args: &[&str]| {
        crate::support::binary()
            .current_dir(d)
            .env_remove("MBG_PROVISION_DATABASE__URL")
            .env_remove("RUST_LOG")
            .args(args)
            .output()
            .unwrap()
    };
    let file = d.join("mbg-provision.db");
    for args in [
        &["status"][..],
        &["extension", "list"],
        &["node", "list"],
        &["token", "status"],
    ] {
        let out = bare(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let message = stderr(&out);
        assert!(message.contains("does not exist"), "{args:?}: {message}");
        assert!(
            message.contains("mbg-provision migrate") && message.contains("database.url"),
            "says how to create it: {message}"
        );
        assert!(message.contains("mbg-provision.db"), "{message}");
        assert!(!file.exists(), "{args:?} created the database");
    }
    ok(bare(&["migrate"]));
    assert!(file.exists());
    ok(bare(&["status"]));
}

/// Issue 10, item 3: what the engineer setting up a phone needs, the password only on request
/// (audited), and a rotation that the next pass pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_show_reveal_and_rotate() {
    let (sim, db, dir, env) = with_cli_token(crate::mbg::sim_config()).await;
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let cmd = |args: &[&str]| run_with(dir.path(), &db.url, &env_ref, args);
    ok(cmd(&["sync"]));
    let stored = db.store.extension_by_number("1001").await.unwrap();
    let password = stored.remote_auth_password.clone().unwrap();
    let password = password.expose_secret();
    let name = stored.remote_auth_name.clone().unwrap();
    let guid = stored.mbg_device_id.clone().unwrap();

    let shown = ok(cmd(&["extension", "show", "1001"]));
    for expected in [
        "pbx1 (10.0.0.20)",
        "MiVO250-1",
        "provisioned",
        guid.as_str(),
        name.as_str(),
        "registers at   not set",
    ] {
        assert!(shown.contains(expected), "{expected:?} in:\n{shown}");
    }
    assert!(!shown.contains(password), "no password without --reveal");
    ok(cmd(&[
        "node",
        "set",
        "pbx1",
        "--nat-address",
        "203.0.113.7",
        "--nat-sip-port",
        "5062",
    ]));
    let shown = ok(cmd(&["extension", "show", "1001"]));
    assert!(shown.contains("registers at   203.0.113.7:5062"), "{shown}");
    let nothing = cmd(&["node", "set", "pbx1"]);
    assert_eq!(
        nothing.status.code(),
        Some(64),
        "say what to change (a usage error)"
    );

    // Not a terminal here: --reveal alone is refused, and nothing is audited.
    let refused = cmd(&["extension", "show", "1001", "--reveal"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("--reveal --json"),
        "{}",
        stderr(&refused)
    );
    assert!(!stdout(&refused).contains(password));
    let audited = |action: &str| {
        let store = db.store.clone();
        let action = action.to_string();
        async move {
            store
                .audit_log(100)
                .await
                .unwrap()
                .into_iter()
                .filter(|a| a.action == action)
                .collect::<Vec<_>>()
        }
    };
    assert!(audited("reveal").await.is_empty());
    let json: serde_json::Value = serde_json::from_str(&ok(cmd(&[
        "extension",
        "show",
        "1001",
        "--reveal",
        "--json",
    ])))
    .unwrap();
    assert_eq!(json["remote_auth_password"], password);
    assert_eq!(json["icp"], "MiVO250-1");
    assert_eq!(json["registrar_address"], "203.0.113.7");
    assert_eq!(json["registrar_port"], 5062);
    let reveals = audited("reveal").await;
    assert_eq!(reveals.len(), 1);
    assert!(reveals[0].detail.as_deref().unwrap().contains("by OS user"));
    assert!(!reveals[0].detail.as_deref().unwrap().contains(password));

    let rotated = ok(cmd(&["extension", "rotate", "1001"]));
    assert!(!rotated.contains(password), "{rotated}");
    let after = db.store.extension_by_number("1001").await.unwrap();
    let new_name = after.remote_auth_name.clone().unwrap();
    let new_password = after.remote_auth_password.clone().unwrap();
    assert_ne!(new_name, name);
    assert_ne!(new_password.expose_secret(), password);
    assert_eq!(audited("rotate").await.len(), 1);
    ok(cmd(&["sync"]));
    let devices: Vec<_> = sim
        .devices()
        .into_iter()
        .filter(|d| d.icpside_username == "1001")
        .collect();
    assert_eq!(devices.len(), 1, "updated, not created again");
    assert_eq!(devices[0].guid, guid);
    assert_eq!(devices[0].setside_username, new_name);
    assert_eq!(devices[0].setside_password, new_password.expose_secret());

    // Credentials written ahead by a pass that has not finished: a rotation could orphan a
    // SIP user made with them, so it is refused.
    ok(cmd(&[
        "extension",
        "set",
        "1002",
        "--node",
        "pbx1",
        "--remote",
        "on",
    ]));
    let pending = db.store.extension_by_number("1002").await.unwrap();
    db.store
        .fill_remote_credentials(
            pending.id,
            "written0ahead",
            &secrecy::SecretString::from("written-ahead-password"),
        )
        .await
        .unwrap();
    let refused = cmd(&["extension", "rotate", "1002"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains(
            "extension 1002 cannot get new credentials yet: a change to it is not applied on the MBG yet. Retry once `mbg-provision status` shows it provisioned or idle"
        ),
        "{}",
        stderr(&refused)
    );
    let unchanged = db.store.extension_by_number("1002").await.unwrap();
    assert_eq!(unchanged.remote_auth_name.as_deref(), Some("written0ahead"));
    let missing = cmd(&["extension", "show", "9999"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("no extension 9999"),
        "{}",
        stderr(&missing)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_show_says_whose_each_sip_user_is_on_sqlite() {
    extension_show_says_whose_each_sip_user_is(TestDb::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "PostgreSQL: set TEST_POSTGRES_URL (CI does)"
)]
async fn extension_show_says_whose_each_sip_user_is_on_postgres() {
    if let Some(db) = TestDb::postgres("extension_show_says_whose_each_sip_user_is").await {
        extension_show_says_whose_each_sip_user_is(db).await;
    }
}

/// Issue 19, item 1: `extension show` says whose each SIP user bearing on the extension is, by
/// the rule a pass applies: recorded, proven by its credentials (a create whose answer was
/// lost), or added by hand.
async fn extension_show_says_whose_each_sip_user_is(db: TestDb) {
    let (sim, db, dir, env) = with_cli_token_on(db, crate::mbg::sim_config()).await;
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let cmd = |args: &[&str]| run_with(dir.path(), &db.url, &env_ref, args);
    ok(cmd(&["sync"]));
    let recorded = db
        .store
        .extension_by_number("1001")
        .await
        .unwrap()
        .mbg_device_id
        .unwrap();
    let by_hand = sim
        .add_device(crate::mbg::sip_user(
            "MiVO250-2",
            "1001",
            "by-hand-1001",
            "a-long-password-1",
        ))
        .unwrap();
    // 1002's credentials were stored and a create made its SIP user, whose answer was lost.
    ok(cmd(&[
        "extension",
        "set",
        "1002",
        "--node",
        "pbx1",
        "--remote",
        "on",
    ]));
    let lost = crate::mbg::lost_create(&db.store, &sim, "1002").await;

    let shown: serde_json::Value =
        serde_json::from_str(&ok(cmd(&["extension", "show", "1001", "--json"]))).unwrap();
    let users = shown["sip_users"].as_array().unwrap();
    assert_eq!(users.len(), 2, "{shown:#}");
    let user = |guid: &str| {
        users
            .iter()
            .find(|u| u["guid"] == guid)
            .unwrap_or_else(|| panic!("{guid} in {shown:#}"))
    };
    assert_eq!(user(&recorded)["owner"], "recorded");
    assert_eq!(user(&recorded)["belongs_to"], "1001");
    assert_eq!(user(&by_hand)["owner"], "foreign");
    assert_eq!(user(&by_hand)["icp"], "MiVO250-2");
    assert!(user(&by_hand)["belongs_to"].is_null(), "{shown:#}");
    assert_eq!(user(&recorded)["released"], false);
    let text = ok(cmd(&["extension", "show", "1001"]));
    assert!(
        text.contains(&format!(
            "on the MBG     {by_hand} under MiVO250-2 (1001 / by-hand-1001): not ours (added by hand"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{recorded} under MiVO250-1 (1001 / {}): ours, recorded against extension 1001",
            shown["remote_auth_name"].as_str().unwrap()
        )),
        "{text}"
    );

    let shown: serde_json::Value =
        serde_json::from_str(&ok(cmd(&["extension", "show", "1002", "--json"]))).unwrap();
    assert_eq!(shown["sip_users"][0]["guid"], lost.as_str(), "{shown:#}");
    assert_eq!(shown["sip_users"][0]["owner"], "proven", "{shown:#}");
    assert_eq!(shown["sip_users"].as_array().unwrap().len(), 1, "{shown:#}");
    assert!(
        shown["sip_users"][0]["whose"]
            .as_str()
            .unwrap()
            .contains("the next pass records it"),
        "{shown:#}"
    );

    // The pass does as `show` said: records the lost create, leaves the one added by hand.
    ok(cmd(&["sync"]));
    let after = db.store.extension_by_number("1002").await.unwrap();
    assert_eq!(after.mbg_device_id.as_deref(), Some(lost.as_str()));
    assert!(sim.devices().iter().any(|d| d.guid == by_hand));
    let shown: serde_json::Value =
        serde_json::from_str(&ok(cmd(&["extension", "show", "1002", "--json"]))).unwrap();
    assert_eq!(shown["sip_users"][0]["owner"], "recorded", "{shown:#}");

    // Without an MBG to ask, the rest is still shown, and the list is unknown, not empty.
    let away: Vec<(&str, &str)> = env_ref
        .iter()
        .map(|&(k, v)| match k {
            "MBG_PROVISION_MBG__BASE_URL" => (k, "https://127.0.0.1:9"),
            _ => (k, v),
        })
        .collect();
    let shown: serde_json::Value = serde_json::from_str(&ok(run_with(
        dir.path(),
        &db.url,
        &away,
        &["extension", "show", "1001", "--json"],
    )))
    .unwrap();
    assert!(shown["sip_users"].is_null(), "{shown:#}");
    assert!(
        shown["sip_users_unknown"]
            .as_str()
            .unwrap()
            .starts_with("cannot ask the MBG"),
        "{shown:#}"
    );
    assert!(shown["icp_unknown"].as_str().is_some(), "{shown:#}");
    assert_eq!(shown["number"], "1001", "the rest is shown");
}

/// Issue 10, item 5: completions and the man page come from the clap definitions.
#[test]
fn completions_and_the_man_page_generate() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = "sqlite://never-opened.db";
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = ok(run(dir.path(), nowhere, &["completions", shell]));
        assert!(script.contains("mbg-provision"), "{shell}");
        assert!(script.contains("rotate"), "{shell}: every subcommand");
    }
    let unknown = run(dir.path(), nowhere, &["completions", "tcsh"]);
    assert_eq!(unknown.status.code(), Some(64));
    let page = ok(run(dir.path(), nowhere, &["manpage"]));
    assert!(
        page.starts_with(".ie") || page.contains(".TH mbg-provision 1"),
        "{page}"
    );
    assert!(page.contains(".TH mbg-provision 1"));
    for command in ["extension", "sync", "token", "run"] {
        assert!(page.contains(command), "{command}");
    }
    assert!(
        !dir.path().join("never-opened.db").exists(),
        "no database touched"
    );
}

/// The README's troubleshooting section quotes the program's messages: each quoted message's
/// fixed text (between its placeholders: a single capital letter, or `…`) must still be in the
/// source, so the section cannot drift from what users see.
#[test]
fn the_readme_troubleshooting_quotes_real_messages() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let section = readme
        .split("## Troubleshooting")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Troubleshooting section");
    let mut source = String::new();
    let mut folders = vec![std::path::PathBuf::from(format!("{root}/src"))];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                source.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    let quoted: Vec<&str> = section
        .split("**`")
        .skip(1)
        .filter_map(|rest| rest.split("`**").next())
        .collect();
    assert!(quoted.len() >= 8, "{quoted:?}");
    for message in quoted {
        let mut fragments = vec![String::new()];
        let chars: Vec<char> = message.chars().collect();
        for (i, c) in chars.iter().enumerate() {
            let alone = |j: Option<usize>| {
                j.and_then(|j| chars.get(j))
                    .is_none_or(|c| !c.is_alphanumeric())
            };
            let placeholder = *c == '…'
                || (c.is_ascii_uppercase() && alone(i.checked_sub(1)) && alone(Some(i + 1)));
            if placeholder {
                fragments.push(String::new());
            } else {
                fragments.last_mut().unwrap().push(*c);
            }
        }
        for fragment in fragments.iter().filter(|f| f.trim().len() >= 12) {
            // Backticks in messages are written as in the source; the README's own quoting is
            // stripped above.
            assert!(
                source.contains(fragment.as_str()),
                "README quotes {fragment:?} (from {message:?}), which no source file says"
            );
        }
    }
}

/// Found by a hostile run: `preflight --json | true` panicked ("failed printing to stdout:
/// Broken pipe", exit 101). A command now ends quietly when its reader goes away, with the
/// shell's code for SIGPIPE (141), or 0 when its output fitted before the reader left.
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..5 {
        let mut child = crate::support::binary()
            .args(["preflight", "--json", "--clients", "desktop,mobile,69xx"])
            .current_dir(dir.path())
            .env("MBG_PROVISION_DATABASE__URL", "sqlite://none.db")
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = stderr(&output);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            matches!(output.status.code(), Some(0 | 1 | 141)),
            "{:?} {stderr}",
            output.status
        );
    }
}

/// Found by a hostile run: a file that is not a SQLite database kept every command waiting for
/// the pool's 30 s before it said "pool timed out". Now SQLite's own words, at once.
#[test]
fn a_file_that_is_not_a_database_is_named_at_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("notes.db"),
        "these are my notes, not a database\n".repeat(200),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let output = run(dir.path(), "sqlite://notes.db", &["status"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("not a database"),
        "{}",
        stderr(&output)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// Run as root against the service's SQLite file (owned by the service's user), a command would
/// leave root's journal and lock beside it, which the service could not open: it refuses, names
/// the user to run as, and creates nothing. Run as that user, the same commands work. Needs
/// root, to give the files away and to run as another uid; CI runs as root.
#[test]
fn a_command_run_as_another_user_than_the_databases_refuses_and_creates_nothing() {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid cannot fail and touches no memory of ours.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIPPED a_command_run_as_another_user_than_the_databases: not root (cannot give files to another uid)"
        );
        return;
    }
    const SERVICE: u32 = 4242;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/svc.db", dir.path().display());
    ok(run(dir.path(), &url, &["migrate"]));
    ok(run(
        dir.path(),
        &url,
        &["node", "add", "pbx1", "--address", "10.0.0.20"],
    ));
    let files = || -> Vec<(String, u32)> {
        use std::os::unix::fs::MetadataExt;
        let mut files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().uid(),
                )
            })
            .collect();
        files.sort();
        files
    };
    for (name, _) in files() {
        std::os::unix::fs::chown(dir.path().join(name), Some(SERVICE), Some(SERVICE)).unwrap();
    }
    std::os::unix::fs::chown(dir.path(), Some(SERVICE), Some(SERVICE)).unwrap();
    let before = files();
    assert!(before.iter().all(|(_, uid)| *uid == SERVICE), "{before:?}");

    let as_root: [&[&str]; 3] = [
        &["status"],
        &["node", "list"],
        &[
            "extension",
            "set",
            "1001",
            "--node",
            "pbx1",
            "--remote",
            "on",
        ],
    ];
    for args in as_root {
        let output = run(dir.path(), &url, args);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{args:?}: {}",
            stdout(&output)
        );
        let message = stderr(&output);
        assert!(
            message.contains(&format!(
                "svc.db belongs to uid {SERVICE}, but this command runs as root"
            )),
            "{message}"
        );
        assert!(
            message.contains(&format!("sudo -u '#{SERVICE}' mbg-provision")),
            "{message}"
        );
        assert_eq!(files(), before, "{args:?} created or changed nothing");
    }

    let as_service = |args: &[&str]| {
        crate::support::binary()
            .current_dir(dir.path())
            .env("MBG_PROVISION_DATABASE__URL", &url)
            .uid(SERVICE)
            .gid(SERVICE)
            .args(args)
            .output()
            .unwrap()
    };
    ok(as_service(&[
        "extension",
        "set",
        "1001",
        "--node",
        "pbx1",
        "--remote",
        "on",
    ]));
    assert!(ok(as_service(&["node", "list"])).contains("pbx1"));
    let after = files();
    assert!(after.iter().all(|(_, uid)| *uid == SERVICE), "{after:?}");
}

/// `console user …`: a password from a file (never the command line; without a terminal and
/// without a file it says so), a duplicate name, the last admin kept, and a list that shows
/// no hash.
#[test]
fn console_accounts_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/c.db", dir.path().display());
    ok(run(dir.path(), &url, &["migrate"]));
    let password = dir.path().join("pw");
    std::fs::write(&password, "a long enough password\n").unwrap();
    let file = password.to_str().unwrap();

    let asked = run(
        dir.path(),
        &url,
        &["console", "user", "add", "ada", "--role", "admin"],
    );
    assert_eq!(asked.status.code(), Some(1));
    assert!(
        stderr(&asked).contains("--password-file"),
        "{}",
        stderr(&asked)
    );
    let short = dir.path().join("short");
    std::fs::write(&short, "short\n").unwrap();
    let refused = run(
        dir.path(),
        &url,
        &[
            "console",
            "user",
            "add",
            "ada",
            "--role",
            "admin",
            "--password-file",
            short.to_str().unwrap(),
        ],
    );
    assert!(
        stderr(&refused).contains("at least 12 characters"),
        "{}",
        stderr(&refused)
    );

    ok(run(
        dir.path(),
        &url,
        &[
            "console",
            "user",
            "add",
            "ada",
            "--role",
            "admin",
            "--password-file",
            file,
        ],
    ));
    let again = run(
        dir.path(),
        &url,
        &[
            "console",
            "user",
            "add",
            "ada",
            "--role",
            "viewer",
            "--password-file",
            file,
        ],
    );
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    let bad_role = run(
        dir.path(),
        &url,
        &[
            "console",
            "user",
            "add",
            "bob",
            "--role",
            "root",
            "--password-file",
            file,
        ],
    );
    assert_eq!(bad_role.status.code(), Some(64), "a usage error");
    let last = run(dir.path(), &url, &["console", "user", "remove", "ada"]);
    assert!(stderr(&last).contains("last admin"), "{}", stderr(&last));

    let list = ok(run(
        dir.path(),
        &url,
        &["console", "user", "list", "--json"],
    ));
    let accounts: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(accounts[0]["name"], "ada");
    assert_eq!(accounts[0]["role"], "admin");
    assert!(!list.contains("argon2"), "no hash: {list}");
}

/// `demo --console`: after the tour, the console stays open on the demo's database with a
/// one-time admin sign-in printed; SIGTERM ends it with exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_keeps_the_console_open_with_a_printed_sign_in() {
    use std::io::BufRead;
    let port = crate::service::free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut child = crate::support::binary()
        .current_dir(dir.path())
        .args(["demo", "--console", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines.send(line);
        }
    });
    let password = loop {
        let line = seen
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the demo prints the sign-in");
        if let Some(rest) = line.split(": sign in as demo with ").nth(1) {
            assert!(
                line.starts_with(&format!("http://127.0.0.1:{port}/")),
                "{line}"
            );
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("username", "demo"), ("password", password.as_str())])
        .finish();
    let mut signed_in = None;
    for _ in 0..100 {
        if let Ok(answer) = client
            .post(format!("{url}/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone())
            .send()
            .await
        {
            signed_in = Some(answer);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let signed_in = signed_in.expect("the console answers");
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = client
        .get(format!("{url}/extensions"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("1003"), "the demo's extensions: {page}");
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// A sync whose credential fill failed while its creates were under way, one of them with its
/// answer lost, must not say "no create of mine may still land" by releasing the lock: the next
/// holder waits out the MBG's timeout and reads the MBG again, and every extension ends with one
/// SIP user carrying what is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_whose_fill_failed_midway_leaves_the_lock_for_the_next_one_to_wait_out() {
    let (sim, db, dir, env) = with_cli_token(crate::mbg::sim_config()).await;
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Chunks of 4, 8, 16, then the rest: 2030, the 32nd in call order, is in the fourth.
    env.push(("MBG_PROVISION_MBG__MAX_IN_FLIGHT", "4"));
    let cmd = |args: &[&str]| run_with(dir.path(), &db.url, &env, args);
    for number in 2000..2040 {
        let spec = mbg_provision::store::ExtensionSpec {
            number: number.to_string(),
            node: "pbx1".into(),
            kind: None,
            use_remote_auth: Some(true),
            sip_password: None,
        };
        db.store
            .set_extension(&spec, &secrecy::SecretString::from("pbx-sip-password"))
            .await
            .unwrap();
    }
    let (plant, unplant) = crate::reconcile::planted_fill_failure(db.store.backend(), "2030");
    crate::service::sql(&db.url, &plant).await;
    let unclean = "did not release it cleanly";
    sim.set_faults(mbg_provision::sim::Faults {
        lose_answer_next: 1,
        ..Default::default()
    });

    let failed = cmd(&["sync"]);
    assert_ne!(failed.status.code(), Some(0));
    let text = stderr(&failed);
    assert!(
        text.contains("(the pass stopped there)") && text.contains("planted: no room left"),
        "{text}"
    );
    let created = sim.devices().len();
    assert!(
        (1..=28).contains(&created),
        "the stored chunks' creates went out, no other: {created}"
    );

    crate::service::sql(&db.url, &unplant).await;
    let next = cmd(&["sync"]);
    let text = format!("{}{}", stdout(&next), stderr(&next));
    assert!(next.status.success(), "{text}");
    assert!(
        text.contains(unclean),
        "the failed sync released the lock:\n{text}"
    );
    let clean = cmd(&["sync"]);
    let text = format!("{}{}", stdout(&clean), stderr(&clean));
    assert!(clean.status.success(), "{text}");
    assert!(
        !text.contains(unclean),
        "a sync that ended cleanly released the lock:\n{text}"
    );

    let rows: std::collections::HashMap<String, mbg_provision::store::Extension> = db
        .store
        .extensions()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.number.clone(), e))
        .collect();
    let devices = sim.devices();
    assert_eq!(devices.len(), 41, "1001 and 2000..2039, once each");
    for device in devices {
        let row = &rows[&device.icpside_username];
        assert_eq!(
            row.remote_auth_name.as_deref(),
            Some(device.setside_username.as_str()),
            "{}",
            row.number
        );
    }
}
