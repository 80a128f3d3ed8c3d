//! Files this program creates take the owner of the process that creates them: the SQLite
//! journal (`-wal`, `-shm`), the pass lock (`FILE.lock`), the key file. An admin who runs a
//! command as root against the service's SQLite database would leave root's files beside it,
//! and the service, running as its own user, could then no longer open its own database. So a
//! command refuses to work in files that another user owns, and names the user to run it as.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error(
    "{} belongs to {owner}, but this command runs as {me}: files it would create there (the \
     database journal, the lock, the key) would belong to {me}, and {owner} could not open them. \
     Run it as {owner}: `sudo -u {run_as} mbg-provision --config FILE …`",
    .path.display()
)]
pub struct ForeignOwner {
    pub path: PathBuf,
    pub owner: String,
    /// What `sudo -u` takes: the name, else `'#UID'`.
    pub run_as: String,
    pub me: String,
}

/// Checks that `path`, or the folder it would be created in when it does not exist yet, belongs
/// to the user this process runs as. What cannot be looked at (no such folder, no permission)
/// passes: opening the file then fails with its own, clearer, error.
pub(crate) fn check(path: &Path) -> Result<(), ForeignOwner> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let (looked_at, metadata) = match std::fs::metadata(&path) {
            Ok(metadata) => (path, metadata),
            Err(_) => {
                let Some(folder) = path.parent() else {
                    return Ok(());
                };
                match std::fs::metadata(folder) {
                    Ok(metadata) => (folder.to_path_buf(), metadata),
                    Err(_) => return Ok(()),
                }
            }
        };
        // SAFETY: geteuid cannot fail and touches no memory of ours.
        let me = unsafe { libc::geteuid() };
        if metadata.uid() != me {
            let owner = metadata.uid();
            return Err(ForeignOwner {
                path: looked_at,
                owner: user_name(owner),
                run_as: login_name(owner).unwrap_or_else(|| format!("'#{owner}'")),
                me: user_name(me),
            });
        }
    }
    Ok(())
}

/// The login name of `uid`, else `uid N`.
pub fn user_name(uid: u32) -> String {
    login_name(uid).unwrap_or_else(|| format!("uid {uid}"))
}

fn login_name(uid: u32) -> Option<String> {
    #[cfg(unix)]
    {
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let mut buffer = vec![0 as libc::c_char; 4096];
        // SAFETY: every pointer is to memory that lives across the call, with its true length;
        // the name is read only when the call says it found the entry, and is then a C string
        // inside `buffer`.
        let status = unsafe {
            libc::getpwuid_r(
                uid,
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut found,
            )
        };
        if status == 0 && !found.is_null() && !entry.pw_name.is_null() {
            let name = unsafe { std::ffi::CStr::from_ptr(entry.pw_name) };
            if let Ok(name) = name.to_str()
                && !name.is_empty()
            {
                return Some(name.to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_known_user_and_numbers_an_unknown_one() {
        assert_eq!(user_name(0), "root");
        assert_eq!(user_name(4_242_424), "uid 4242424");
    }

    #[test]
    fn a_file_of_ours_or_a_new_one_in_our_folder_passes() {
        let dir = tempfile::tempdir().unwrap();
        check(&dir.path().join("new.db")).unwrap();
        std::fs::write(dir.path().join("mine.db"), b"").unwrap();
        check(&dir.path().join("mine.db")).unwrap();
    }
}
