//! The README cannot rot: every `sh` block of its walkthrough runs, in order, as one script, the
//! way a reader runs it: starting in the clone, `HOME` a temporary folder, the program installed
//! by the README's own `cargo install` into `~/.cargo/bin` and found on the `PATH` there. The one
//! change: `--debug` is added to that `cargo install`, which then reuses the build the tests
//! made (same target folder) instead of spending minutes on an optimised one. The `console`
//! blocks that install the service are not run (`packaging::*` checks the units and the
//! packaged configuration).

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

/// The README's section under `heading`, up to the next `## ` heading.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?}"));
    let rest = &text[start + heading.len()..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

const INSTALL: &str = "cargo install --path . --locked\n";
const WALKTHROUGH: &str = "## Ten minutes to a live site";

#[test]
fn every_command_block_runs() {
    let walkthrough = section(README, WALKTHROUGH);
    let offset = README[..README.find(WALKTHROUGH).unwrap()].lines().count();
    let blocks = sh_blocks(walkthrough);
    assert!(blocks.len() >= 11, "{} blocks", blocks.len());
    assert!(
        blocks[0].1.starts_with(INSTALL),
        "the walkthrough starts by installing: {:?}",
        blocks[0].1
    );
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    // The tests' binary is TARGET/debug/mbg-provision: `cargo install --debug` with the same
    // target folder finds it built.
    let target = std::path::Path::new(env!("CARGO_BIN_EXE_mbg-provision"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(&std::env::var_os("HOME").unwrap()).join(".cargo"));
    let mut script = String::from("set -euo pipefail\n");
    for (line, block) in &blocks {
        let block = block.replace(INSTALL, "cargo install --path . --locked --debug\n");
        script.push_str(&format!(
            "echo '>>> README line {}' >&2\n{block}\n",
            offset + line
        ));
    }
    script.push_str("echo '>>> README done' >&2\n");
    // The reader's PATH: the system's, and ~/.cargo/bin, where rustup's installer puts cargo and
    // where `cargo install` puts the program. Cargo itself is found there or on the system PATH.
    let path = format!(
        "{}:{}:{}",
        home.join(".cargo/bin").display(),
        cargo_home.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(&script)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("HOME", &home)
        .env("PATH", path)
        // Where this machine keeps cargo's registry (offline here); the install goes to the
        // reader's ~/.cargo, as it does for a rustup user.
        .env("CARGO_HOME", &cargo_home)
        .env("CARGO_INSTALL_ROOT", home.join(".cargo"))
        .env("CARGO_TARGET_DIR", &target)
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
        if started.elapsed() > Duration::from_secs(600) {
            // The whole group: the script and anything it left in the background.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The walkthrough stops what it starts: nothing answers on the simulator's port any more.
    let left_running = std::net::TcpStream::connect("127.0.0.1:8943").is_ok();
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
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
    assert!(!left_running, "the walkthrough left the simulator running");
    let installed = home.join(".cargo/bin/mbg-provision");
    assert!(installed.is_file(), "installed where the README says");
    assert!(
        stdout.contains(concat!("mbg-provision ", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
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
        .current_dir(home.join("mbg-trial"))
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
    let blocks = sh_blocks(section(README, "## Two commands on a fresh machine"));
    let commands: Vec<&str> = blocks
        .iter()
        .flat_map(|(_, b)| b.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(commands.len(), 2, "two commands: {commands:?}");
    let test_command = commands
        .iter()
        .find(|b| b.starts_with("cargo test"))
        .expect("the README gives a test command");
    assert!(
        ci.lines().any(|l| l.trim().starts_with(test_command)),
        "`{test_command}` is not what .ci/run runs"
    );
}
