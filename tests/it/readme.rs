//! The README cannot rot: every `sh` block in it runs, in order, as one script, from an empty
//! temporary folder, against the simulator that its walkthrough starts. `mbg-provision` is the
//! binary under test; `cargo run --release --` is mapped to it, and `cargo test` (the command
//! running this test) is only echoed. The `console` block that installs the systemd service is
//! the one not run (`packaging::systemd_units_verify` checks the units).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const README: &str = include_str!("../../README.md");

/// The `sh` blocks, with the line each starts on, their indentation removed.
fn sh_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, usize, String)> = None;
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut open {
            None if trimmed == "```sh" => open = Some((number + 1, indent, String::new())),
            None => {}
            Some(_) if trimmed == "```" => {
                let (start, _, body) = open.take().expect("open");
                blocks.push((start, body));
            }
            Some((_, indent, body)) => {
                body.push_str(line.get(*indent..).unwrap_or(line.trim_start()));
                body.push('\n');
            }
        }
    }
    assert!(open.is_none(), "an sh block is not closed");
    blocks
}

#[test]
fn the_blocks_are_found_as_written() {
    let blocks =
        sh_blocks("a\n```sh\nx 1\n```\n   ```sh\n   y 2\n     z\n   ```\n```console\nno\n```\n");
    assert_eq!(blocks, [(2, "x 1\n".into()), (5, "y 2\n  z\n".into())]);
}

#[test]
fn every_command_block_runs() {
    let blocks = sh_blocks(README);
    assert!(blocks.len() >= 12, "{} blocks", blocks.len());
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_mbg-provision"),
        bin.join("mbg-provision"),
    )
    .unwrap();
    let work = dir.path().join("site");
    std::fs::create_dir(&work).unwrap();
    let mut script = String::from(
        r#"set -euo pipefail
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
cargo() {
  if [ "$*" = test ]; then echo "(cargo test: the command running this test)"; return 0; fi
  if [ "$1 $2 $3" = "run --release --" ]; then shift 3; mbg-provision "$@"; return; fi
  echo "the README runs an unexpected cargo command: cargo $*" >&2; return 1
}
"#,
    );
    for (line, block) in &blocks {
        script.push_str(&format!("echo '>>> README line {line}' >&2\n{block}\n"));
    }
    script.push_str("echo '>>> README done' >&2\n");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(&script)
        .current_dir(&work)
        .env("PATH", path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars() {
        if key.starts_with("MBG_PROVISION_") {
            command.env_remove(key);
        }
    }
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().unwrap();
    // Drain both pipes while waiting, so a chatty block cannot fill one and stall.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(180) {
            // The whole group: the script and anything it left in the background.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (reader.join().unwrap(), err_reader.join().unwrap());
    let failed_at = stderr
        .lines()
        .rfind(|l| l.starts_with(">>> README"))
        .unwrap_or("before the first block")
        .to_string();
    assert!(
        status.is_some_and(|s| s.success()),
        "the README's commands stopped ({status:?}) at {failed_at}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(stderr.contains(">>> README done"));
    for expected in [
        "access token stored",
        "pbx1",
        "MiVO250-1",
        "On the MBG's Port Forwarding page",
        "internally 127.0.0.1",
        "ready",
        // Where `extension show` says the phone registers, the site firewall lets SIP in.
        "203.0.113.7:5060",
        "UDP and TCP 5060:",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in\n{stdout}");
    }
    // The walkthrough provisioned what it set: two extensions wanted remote credentials.
    let status = crate::support::binary()
        .args(["extension", "list", "--json"])
        .current_dir(&work)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let provisioned: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["state"] == "provisioned")
        .map(|e| e["number"].as_str().unwrap())
        .collect();
    assert_eq!(provisioned, ["1001", "1002"], "{list:#}");
}

/// CI runs the test command that the README gives.
#[test]
fn ci_runs_the_readmes_test_command() {
    let ci = include_str!("../../.ci/run");
    let blocks = sh_blocks(README);
    let test_command = blocks
        .iter()
        .map(|(_, b)| b.trim())
        .find(|b| b.starts_with("cargo test"))
        .expect("the README gives a test command");
    assert!(
        ci.lines().any(|l| l.trim().starts_with(test_command)),
        "`{test_command}` is not what .ci/run runs"
    );
}
