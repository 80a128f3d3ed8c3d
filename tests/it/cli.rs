//! The binary as a user runs it: exit codes, messages, and that a failed command changes nothing.

use std::path::Path;
use std::process::{Command, Output};

use secrecy::ExposeSecret;

use crate::support::TestDb;

const BIN: &str = env!("CARGO_BIN_EXE_mbg-provision");

/// Runs the binary in `dir` against `database_url` (through the environment, as a service would).
fn run(dir: &Path, database_url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .env("MBG_PROVISION_DATABASE__URL", database_url)
        .env_remove("RUST_LOG")
        .args(args)
        .output()
        .expect("run mbg-provision")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn ok(output: Output) -> String {
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
    import_is_all_or_nothing
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
    let out = Command::new(BIN)
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

    let missing = Command::new(BIN)
        .current_dir(dir.path())
        .args(["--config", "elsewhere.toml", "node", "list"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("elsewhere.toml does not exist"));
}
