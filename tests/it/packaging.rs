//! `packaging/`: the systemd units pass `systemd-analyze verify`, and the alert rules name only
//! metrics that the daemon exports.

use std::path::Path;
use std::process::Command;

use mbg_provision::telemetry::names;

const BIN: &str = env!("CARGO_BIN_EXE_mbg-provision");
const PACKAGING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging");

#[test]
fn systemd_units_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze is not installed (.ci/run installs it)");
        return;
    }
    // `verify` checks that ExecStart exists: point the units at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for entry in std::fs::read_dir(PACKAGING).unwrap() {
        let path = entry.unwrap().path();
        let is_unit = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("service" | "timer")
        );
        if !is_unit {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("/usr/local/bin/mbg-provision") || text.contains("[Timer]"));
        let copy = dir.path().join(path.file_name().unwrap());
        std::fs::write(&copy, text.replace("/usr/local/bin/mbg-provision", BIN)).unwrap();
        units.push(copy);
    }
    assert_eq!(
        units.len(),
        3,
        "the service, the renewal service and its timer"
    );
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "warnings: {stderr}");
}

#[test]
fn alert_rules_name_exported_metrics() {
    let rules =
        std::fs::read_to_string(Path::new(PACKAGING).join("prometheus-alerts.yml")).unwrap();
    let exported = names::ALL;
    let mut named = 0;
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("mbg_provision_") {
            assert!(
                exported.contains(&word),
                "{word} is not a metric of the daemon"
            );
            named += 1;
        }
    }
    assert!(
        named >= 6,
        "the token, needs-attention, reconcile and leader alerts"
    );
    for alert in [
        "MbgProvisionTokenExpiresSoon",
        "MbgProvisionExtensionsNeedAttention",
        "MbgProvisionNoFullReconcile",
        "MbgProvisionNoLeader",
    ] {
        assert!(rules.contains(alert), "{alert}");
    }
}

/// The packaged configuration loads, and every path in it is absolute: a command run by an
/// admin (`sudo -u mbg-provision mbg-provision --config /etc/mbg-provision/config.toml …`)
/// opens the service's files, not files in the admin's working folder. The units run as the
/// user that `mbg-provision.sysusers` creates, and keep their files where the config points.
#[test]
fn the_packaged_config_and_user_match_the_units() {
    let config = Path::new(PACKAGING).join("config.toml");
    let loaded = mbg_provision::config::Config::load(Some(&config)).expect("loads");
    let database = loaded
        .database
        .url
        .sqlite_file()
        .expect("the embedded default");
    let key = loaded.secrets.key_file.expect("a key file");
    for path in [&database, &key] {
        assert!(path.is_absolute(), "{}", path.display());
        assert!(
            path.starts_with("/var/lib/mbg-provision"),
            "{}",
            path.display()
        );
    }
    let sysusers =
        std::fs::read_to_string(Path::new(PACKAGING).join("mbg-provision.sysusers")).unwrap();
    let user = sysusers
        .lines()
        .find(|l| l.starts_with("u "))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("a user line");
    for unit in ["mbg-provision.service", "mbg-provision-renew.service"] {
        let text = std::fs::read_to_string(Path::new(PACKAGING).join(unit)).unwrap();
        assert!(text.contains(&format!("\nUser={user}\n")), "{unit}");
        assert!(
            !text.lines().any(|l| l.starts_with("DynamicUser=")),
            "{unit}: a static user"
        );
        assert!(text.contains("StateDirectory=mbg-provision\n"), "{unit}");
        assert!(
            text.contains("--config /etc/mbg-provision/config.toml"),
            "{unit}"
        );
    }
}
