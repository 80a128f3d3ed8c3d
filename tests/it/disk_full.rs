//! A full disk under SQLite, as an operator meets it: the database file cannot grow while a
//! burst of extensions is switched on, then space comes back.
//!
//! The disk is "filled" with the process's file-size limit (`RLIMIT_FSIZE`, `SIGXFSZ` ignored):
//! every write of the program to a regular file beyond the limit fails as a write to a full
//! disk does, while the test's own connections (another process's view) go on. It needs no root
//! and no mount, so it runs the same on a developer's machine and in CI.
//!
//! Where the tests run as root (CI does), a third test puts the database on a real 3 MB tmpfs
//! and fills it with a file: the disk's own "database or disk is full".
//!
//! What must hold: no MBG call carries credentials the database did not commit; no transaction
//! outlives its failed COMMIT (other writers go on); the daemon says it is unhealthy while its
//! writes fail and recovers by itself once space is back; `sync` fails cleanly, naming the cause.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use sqlx::{Connection, Row};

use crate::mbg::{Harness, sim_config};
use crate::service::{Daemon, eventually, sql};
use crate::support::TestDb;

const FIRST: usize = 8000;
const COUNT: usize = 300;
/// Numbers below this are switched on: half of them.
const SWITCHED_ON_BELOW: &str = "8150";
const SWITCHED_ON: usize = 150;

/// In the child, before `exec`: a write past the limit then fails with `EFBIG` instead of
/// killing the process (the default action of `SIGXFSZ`).
fn ignore_sigxfsz(command: &mut Command, limit: Option<u64>) {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            if let Some(bytes) = limit {
                let limit = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: libc::RLIM_INFINITY,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Sets the file-size limit of a running process: `Some(0)` is a full disk, `None` space back.
fn limit_file_size(pid: i32, bytes: Option<u64>) {
    let limit = libc::rlimit {
        rlim_cur: bytes.unwrap_or(libc::RLIM_INFINITY),
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a plain system call on a process of ours.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// What the database has committed, read by a connection of another process's kind: number ->
/// (remote name, remote password, guid, state).
async fn committed(
    url: &str,
) -> HashMap<String, (Option<String>, Option<String>, Option<String>, String)> {
    let mut connection = sqlx::AnyConnection::connect(url).await.unwrap();
    let rows = sqlx::query(
        "SELECT number, remote_auth_name, remote_auth_password, mbg_device_id, state
           FROM extensions",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap();
    connection.close().await.ok();
    rows.iter()
        .map(|r| {
            (
                r.get::<String, _>("number"),
                (
                    r.get("remote_auth_name"),
                    r.get("remote_auth_password"),
                    r.get("mbg_device_id"),
                    r.get("state"),
                ),
            )
        })
        .collect()
}

/// Every SIP user on the MBG carries the credentials and guid the database committed for its
/// extension: nothing the MBG holds was sent from writes the database did not keep.
async fn mbg_matches_what_was_committed(h: &Harness) {
    let rows = committed(&h.db.url).await;
    for device in h.sim.devices() {
        let (name, password, guid, _) = rows
            .get(&device.icpside_username)
            .unwrap_or_else(|| panic!("a SIP user for unknown {}", device.icpside_username));
        assert_eq!(
            name.as_deref(),
            Some(device.setside_username.as_str()),
            "{}: the MBG holds a set-side name the database never committed",
            device.icpside_username
        );
        assert!(
            password.as_deref() == Some(device.setside_password.as_str()),
            "{}: the MBG holds a set-side password the database never committed",
            device.icpside_username
        );
        assert_eq!(guid.as_deref(), Some(device.guid.as_str()));
    }
}

/// Another program writes to the database (what the phone system does all day): it must not
/// find the database locked by a transaction we left behind.
async fn another_writer_gets_through(url: &str) -> Result<(), String> {
    let mut other = sqlx::AnyConnection::connect(url)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::raw_sql("PRAGMA busy_timeout = 3000")
        .execute(&mut other)
        .await
        .map_err(|e| e.to_string())?;
    let result = sqlx::query(
        "INSERT INTO audit_log (at, extension, action, outcome, detail)
         VALUES (0, NULL, 'test', 'done', 'another writer')",
    )
    .execute(&mut other)
    .await;
    other.close().await.ok();
    result.map(|_| ()).map_err(|e| e.to_string())
}

/// Once space is back: every switched-on extension provisioned by the daemon on its own, each
/// SIP user carrying what the database committed, and the database writable by others. How
/// long it took.
async fn recovers(h: &Harness) -> Duration {
    let took = eventually(
        "every switched-on extension provisioned once space is back",
        Duration::from_secs(30),
        async || {
            let rows = committed(&h.db.url).await;
            rows.values()
                .filter(|(_, _, guid, state)| guid.is_some() && state == "provisioned")
                .count()
                == SWITCHED_ON
                && h.sim.devices().len() == SWITCHED_ON
        },
    )
    .await;
    mbg_matches_what_was_committed(h).await;
    another_writer_gets_through(&h.db.url)
        .await
        .expect("the database is writable by others after recovery");
    took
}

#[tokio::test]
async fn run_on_a_full_disk_sends_nothing_uncommitted_says_so_and_recovers() {
    let h = crate::guarantees::with_extensions(
        TestDb::sqlite().await,
        sim_config(),
        FIRST,
        COUNT,
        false,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (mut command, port) = Daemon::command(
        &h,
        dir.path(),
        &[],
        &[("MBG_PROVISION_HEALTH__GRACE", "1s")],
    );
    ignore_sigxfsz(&mut command, None);
    command.stderr(std::process::Stdio::piped());
    let daemon = Daemon::spawn(&mut command, port, dir.path());
    daemon.leading_after_a_full_pass().await;

    limit_file_size(daemon.pid(), Some(0));
    sql(
        &h.db.url,
        &format!("UPDATE extensions SET use_remote_auth = 1 WHERE number < '{SWITCHED_ON_BELOW}'"),
    )
    .await;
    let health = eventually(
        "/healthz says the database cannot be written",
        Duration::from_secs(15),
        async || {
            matches!(daemon.health().await, Some((503, body))
                if body["database"]["ok"] == false && body["unhealthy"].to_string().contains("database"))
        },
    )
    .await;
    eprintln!("unhealthy {health:?} after the disk filled");
    // A few more polls on a full disk.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        h.sim.devices().len(),
        0,
        "no SIP user may be created while the credentials cannot be committed"
    );
    another_writer_gets_through(&h.db.url)
        .await
        .expect("no transaction of the daemon outlives its failed COMMIT");

    limit_file_size(daemon.pid(), None);
    let recovered = recovers(&h).await;
    eprintln!("recovered {recovered:?} after space came back");
    eventually("healthy again", Duration::from_secs(10), async || {
        matches!(daemon.health().await, Some((200, body)) if body["database"]["ok"] == true)
    })
    .await;

    // Switched off again: every SIP user goes, none is left with working credentials.
    sql(&h.db.url, "UPDATE extensions SET use_remote_auth = 0").await;
    eventually("all removed", Duration::from_secs(30), async || {
        h.sim.devices().is_empty()
    })
    .await;
    daemon.signal("-TERM");
    let stopped = std::time::Instant::now();
    assert_eq!(daemon.wait().await, Some(0));
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?}",
        stopped.elapsed()
    );
}

#[tokio::test]
async fn sync_on_a_full_disk_fails_naming_the_cause_and_sends_nothing() {
    let h = crate::guarantees::with_extensions(
        TestDb::sqlite().await,
        sim_config(),
        FIRST,
        COUNT,
        false,
    )
    .await;
    sql(
        &h.db.url,
        &format!("UPDATE extensions SET use_remote_auth = 1 WHERE number < '{SWITCHED_ON_BELOW}'"),
    )
    .await;
    // An empty write-ahead log, so that the limit below counts from its start: room for the
    // header and three pages, enough for `sync` to record itself as the pass holder, not for
    // 150 extensions' credentials.
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut sqlx::AnyConnection::connect(&h.db.url).await.unwrap())
        .await
        .unwrap();
    sql(&h.db.url, "PRAGMA wal_checkpoint(TRUNCATE)").await;
    let limit = 32 + 3 * (24 + page_size as u64);
    let dir = tempfile::tempdir().unwrap();
    let mut command = crate::guarantees::command(&h, dir.path(), &["sync"]);
    ignore_sigxfsz(&mut command, Some(limit));
    let output = crate::guarantees::start(command).output.await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("cannot store the remote credentials generated for 150 extension(s)")
            && stderr.contains("the MBG was not called")
            && stderr.contains("is its disk full or failing?"),
        "the error names what could not be stored and why: {stderr}"
    );
    assert_eq!(h.sim.devices().len(), 0, "nothing was sent: {stderr}");
    let rows = committed(&h.db.url).await;
    assert!(
        rows.values()
            .all(|(name, password, _, _)| name.is_none() && password.is_none()),
        "no credentials half-written"
    );
    another_writer_gets_through(&h.db.url).await.unwrap();

    // Space back: the next sync does the whole job.
    let output = crate::guarantees::start(crate::guarantees::command(&h, dir.path(), &["sync"]))
        .output
        .await
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(h.sim.devices().len(), SWITCHED_ON);
    mbg_matches_what_was_committed(&h).await;
}

/// A small tmpfs, unmounted when dropped.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    /// `None` (said) where mounting is not possible: not root, or no mount allowed.
    fn mount(test: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if mounted {
            return Some(SmallDisk(dir));
        }
        let why = "cannot mount a tmpfs here (not root, or mounts not allowed); the file-size-limit tests beside it cover the same failure";
        assert!(
            std::env::var("TEST_REQUIRE_TMPFS").is_err(),
            "{test}: TEST_REQUIRE_TMPFS is set but {why}"
        );
        eprintln!("SKIPPED {test}: {why}");
        None
    }

    fn path(&self) -> &std::path::Path {
        self.0.path()
    }

    /// Writes `filler` until the disk is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[tokio::test]
async fn run_on_a_full_tmpfs_sends_nothing_uncommitted_and_recovers_when_space_is_back() {
    let test = "run_on_a_full_tmpfs_sends_nothing_uncommitted_and_recovers_when_space_is_back";
    let Some(disk) = SmallDisk::mount(test) else {
        return;
    };
    let db = TestDb::sqlite_in(disk.path()).await;
    let h = crate::guarantees::with_extensions(db, sim_config(), FIRST, COUNT, false).await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_env(
        &h,
        dir.path(),
        &[],
        &[("MBG_PROVISION_HEALTH__GRACE", "1s")],
    );
    daemon.leading_after_a_full_pass().await;
    // Held still while the switch is made and the disk filled behind it.
    daemon.signal("-STOP");
    sql(
        &h.db.url,
        &format!("UPDATE extensions SET use_remote_auth = 1 WHERE number < '{SWITCHED_ON_BELOW}'"),
    )
    .await;
    let filler = disk.fill();
    daemon.signal("-CONT");
    eventually(
        "/healthz says the database cannot be written",
        Duration::from_secs(15),
        async || {
            matches!(daemon.health().await, Some((503, body))
                if body["database"]["ok"] == false && body["unhealthy"].to_string().contains("full"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        h.sim.devices().len(),
        0,
        "nothing sent while nothing could be committed"
    );

    std::fs::remove_file(filler).unwrap();
    let recovered = recovers(&h).await;
    eprintln!("tmpfs: recovered {recovered:?} after the filler was deleted");
    daemon.signal("-TERM");
    assert_eq!(daemon.wait().await, Some(0));
}
