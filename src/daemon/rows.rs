//! The extension rows as the leader last read them, to catch changes the change log never heard
//! of. Every write to a column the MBG depends on bumps the row's version and records a change
//! in the same statement (the triggers of migrations 0001, 0003 and 0005); only a write with
//! the triggers off (PostgreSQL's `session_replication_role = replica`, a restore of the table's
//! data, a trigger dropped by hand) changes such a column and leaves the version alone. Such a
//! change reaches the MBG only at the next full reconcile, not within a poll, so it is counted
//! (`mbg_provision_unexpected_row_changes_total`, which should stay 0) and named in the health.
//!
//! Kept small: per row its id, the low half of its version and 32 bits of a keyed hash of the
//! watched columns (16 bytes; 1.6 MB at 100,000 rows). Not told apart from a logged change: a
//! row inserted or deleted with the triggers off, and one the pass itself writes before reading
//! (credentials filled for a row switched on behind the log's back bump its version).

use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::LazyLock;

use secrecy::ExposeSecret;

use crate::store::Extension;

#[derive(Default)]
pub(crate) struct RowIndex(Vec<Mark>);

#[derive(Clone, Copy)]
struct Mark {
    id: i64,
    version: u32,
    digest: u32,
}

impl Mark {
    fn of(row: &Extension) -> Mark {
        Mark {
            id: row.id,
            version: row.version as u32,
            digest: watched_digest(row),
        }
    }
}

/// The columns whose change the triggers record (the node's address through its extensions).
fn watched_digest(row: &Extension) -> u32 {
    static KEY: LazyLock<RandomState> = LazyLock::new(RandomState::new);
    let mut hasher = KEY.build_hasher();
    row.node_id.hash(&mut hasher);
    row.node_address.hash(&mut hasher);
    row.number.hash(&mut hasher);
    row.kind.hash(&mut hasher);
    row.sip_password.expose_secret().hash(&mut hasher);
    row.use_remote_auth.hash(&mut hasher);
    row.remote_auth_name.hash(&mut hasher);
    row.remote_auth_password
        .as_ref()
        .map(ExposeSecret::expose_secret)
        .hash(&mut hasher);
    hasher.finish() as u32
}

impl RowIndex {
    /// Takes in the rows a pass read, in id order, and returns the numbers of those changed at
    /// an unchanged version since this index last saw them. `whole`: the rows are all there
    /// are (a full pass), so rows missing from them are forgotten.
    pub(crate) fn fold<'a>(
        &mut self,
        rows: impl Iterator<Item = &'a Extension>,
        whole: bool,
    ) -> Vec<&'a str> {
        let mut unlogged = Vec::new();
        let mut read = Vec::new();
        for row in rows {
            let mark = Mark::of(row);
            if let Ok(at) = self.0.binary_search_by_key(&row.id, |m| m.id) {
                let seen = self.0[at];
                if seen.version == mark.version && seen.digest != mark.digest {
                    unlogged.push(row.number.as_str());
                }
            }
            read.push(mark);
        }
        debug_assert!(read.is_sorted_by_key(|m| m.id), "rows come in id order");
        if whole {
            read.shrink_to_fit();
            self.0 = read;
        } else {
            for mark in read {
                match self.0.binary_search_by_key(&mark.id, |m| m.id) {
                    Ok(at) => self.0[at] = mark,
                    Err(at) => self.0.insert(at, mark),
                }
            }
        }
        unlogged
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ExtensionKind, ExtensionState};
    use secrecy::SecretString;

    fn row(id: i64, number: &str, version: i64) -> Extension {
        Extension {
            id,
            node_id: 1,
            node_name: "pbx1".into(),
            node_address: "10.0.0.20".into(),
            number: number.into(),
            kind: ExtensionKind::Sip,
            sip_password: SecretString::from("pbx-pass"),
            use_remote_auth: false,
            remote_auth_name: None,
            remote_auth_password: None,
            mbg_device_id: None,
            provisioned_by_us: false,
            state: ExtensionState::Pending,
            last_error: None,
            attempts: 0,
            next_attempt_at: None,
            version,
            updated_at: 0,
        }
    }

    #[test]
    fn a_watched_column_changed_at_the_same_version_is_named_and_a_logged_change_is_not() {
        let mut index = RowIndex::default();
        let rows = [row(1, "1001", 1), row(2, "1002", 1), row(3, "1003", 1)];
        assert!(
            index.fold(rows.iter(), true).is_empty(),
            "nothing to compare with"
        );

        let mut logged = rows[0].clone();
        logged.use_remote_auth = true;
        logged.version = 2;
        let mut unlogged = rows[1].clone();
        unlogged.remote_auth_password = Some(SecretString::from("restored"));
        let mut moved = rows[2].clone();
        moved.node_address = "10.0.0.21".into();
        let again = [logged, unlogged, moved];
        assert_eq!(index.fold(again.iter(), true), vec!["1002", "1003"]);
        // Seen now: not named a second time.
        assert!(index.fold(again.iter(), true).is_empty());
    }

    #[test]
    fn columns_the_log_does_not_watch_change_nothing() {
        let mut index = RowIndex::default();
        index.fold([row(1, "1001", 4)].iter(), true);
        let mut written = row(1, "1001", 4);
        written.mbg_device_id = Some("guid-1".into());
        written.provisioned_by_us = true;
        written.state = ExtensionState::Provisioned;
        written.attempts = 3;
        written.last_error = Some("the MBG said no".into());
        assert!(index.fold([written].iter(), false).is_empty());
    }

    #[test]
    fn a_targeted_fold_keeps_the_other_rows_and_a_whole_one_forgets_the_deleted() {
        let mut index = RowIndex::default();
        index.fold([row(1, "1001", 1), row(3, "1003", 1)].iter(), true);
        index.fold([row(2, "1002", 1)].iter(), false);
        assert_eq!(index.len(), 3);
        let mut unlogged = row(3, "1003", 1);
        unlogged.number = "1333".into();
        assert_eq!(index.fold([unlogged].iter(), false), vec!["1333"]);
        index.fold([row(2, "1002", 1)].iter(), true);
        assert_eq!(index.len(), 1);
        // Row 1 was forgotten: back with other values, it is a new row, not an unlogged change.
        let mut back = row(1, "1001", 1);
        back.use_remote_auth = true;
        assert!(index.fold([back].iter(), false).is_empty());
    }
}
