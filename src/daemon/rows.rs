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
//! row inserted or deleted with the triggers off, and one switched on that way that lacks
//! credentials (the pass fills them, and the version it plans with is the filled row's).

use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::LazyLock;

use secrecy::ExposeSecret;

use crate::reconcile::Planned;
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
    /// Takes in the rows a pass read and returns those changed at an unchanged version since
    /// this index last saw them, leaving out the rows with a recorded change (`changed`, by
    /// id): a row deleted and inserted again under its id starts again at version 1, and its
    /// change was logged. `whole`: the rows are all there are (a full pass), so rows missing
    /// from them are forgotten.
    pub(crate) fn fold<'a>(
        &mut self,
        rows: &'a Planned,
        changed: &[i64],
        whole: bool,
    ) -> Vec<&'a Extension> {
        let mut unlogged = Vec::new();
        let mut read = Vec::new();
        for row in rows.iter() {
            let mark = Mark::of(row);
            if let Ok(at) = self.0.binary_search_by_key(&row.id, |m| m.id) {
                let seen = self.0[at];
                if seen.version == mark.version
                    && seen.digest != mark.digest
                    && changed.binary_search(&row.id).is_err()
                {
                    unlogged.push(row);
                }
            }
            read.push(mark);
        }
        self.0 = if whole {
            read.shrink_to_fit();
            read
        } else {
            merge(std::mem::take(&mut self.0), read)
        };
        unlogged
    }
}

/// Two lists in id order as one, the later's mark kept where both have an id: one pass over
/// both (a targeted pass of 10,000 rows into 100,000 inserted one by one moved gigabytes).
fn merge(kept: Vec<Mark>, later: Vec<Mark>) -> Vec<Mark> {
    let mut merged = Vec::with_capacity(kept.len() + later.len());
    let mut kept = kept.into_iter().peekable();
    for mark in later {
        while let Some(old) = kept.next_if(|old| old.id < mark.id) {
            merged.push(old);
        }
        kept.next_if(|old| old.id == mark.id);
        merged.push(mark);
    }
    merged.extend(kept);
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::plan::tests::extension;
    use crate::store::ExtensionState;
    use secrecy::SecretString;

    fn row(id: i64, number: &str, version: i64) -> Extension {
        let mut row = extension(id, number, "10.0.0.20", false);
        row.version = version;
        row
    }

    fn fold(index: &mut RowIndex, rows: &[Extension], whole: bool) -> Vec<String> {
        index.fold_numbers(rows, &[], whole)
    }

    impl RowIndex {
        fn len(&self) -> usize {
            self.0.len()
        }

        fn fold_numbers(
            &mut self,
            rows: &[Extension],
            changed: &[i64],
            whole: bool,
        ) -> Vec<String> {
            let planned = Planned::new(rows.to_vec());
            let unlogged = self.fold(&planned, changed, whole);
            unlogged.iter().map(|e| e.number.clone()).collect()
        }
    }

    #[test]
    fn a_watched_column_changed_at_the_same_version_is_named_and_a_logged_change_is_not() {
        let mut index = RowIndex::default();
        let rows = [row(1, "1001", 1), row(2, "1002", 1), row(3, "1003", 1)];
        assert!(
            fold(&mut index, &rows, true).is_empty(),
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
        assert_eq!(fold(&mut index, &again, true), vec!["1002", "1003"]);
        // Seen now: not named a second time.
        assert!(fold(&mut index, &again, true).is_empty());
    }

    #[test]
    fn columns_the_log_does_not_watch_change_nothing() {
        let mut index = RowIndex::default();
        fold(&mut index, &[row(1, "1001", 4)], true);
        let mut written = row(1, "1001", 4);
        written.mbg_device_id = Some("guid-1".into());
        written.provisioned_by_us = true;
        written.state = ExtensionState::Provisioned;
        written.attempts = 3;
        written.last_error = Some("the MBG said no".into());
        assert!(fold(&mut index, &[written], false).is_empty());
    }

    #[test]
    fn a_targeted_fold_keeps_the_other_rows_and_a_whole_one_forgets_the_deleted() {
        let mut index = RowIndex::default();
        fold(&mut index, &[row(1, "1001", 1), row(3, "1003", 1)], true);
        fold(&mut index, &[row(2, "1002", 1)], false);
        assert_eq!(index.len(), 3);
        let mut unlogged = row(3, "1003", 1);
        unlogged.number = "1333".into();
        assert_eq!(fold(&mut index, &[unlogged], false), vec!["1333"]);
        fold(&mut index, &[row(2, "1002", 1)], true);
        assert_eq!(index.len(), 1);
        // Row 1 was forgotten: back with other values, it is a new row, not an unlogged change.
        let mut back = row(1, "1001", 1);
        back.use_remote_auth = true;
        assert!(fold(&mut index, &[back], false).is_empty());
    }

    #[test]
    fn a_row_replaced_under_its_id_with_its_change_logged_is_not_named() {
        let mut index = RowIndex::default();
        index.fold_numbers(&[row(7, "1007", 1)], &[], true);
        // `REPLACE INTO`: deleted and inserted again, version 1 again, both changes logged.
        let mut replaced = row(7, "1007", 1);
        replaced.sip_password = SecretString::from("new-pbx-pass");
        assert!(
            index
                .fold_numbers(&[replaced.clone()], &[7], false)
                .is_empty()
        );
        let mut again = replaced;
        again.use_remote_auth = true;
        assert_eq!(index.fold_numbers(&[again], &[3, 9], false), vec!["1007"]);
    }

    #[test]
    fn a_targeted_fold_merges_in_id_order_keeping_the_later_mark() {
        let mut index = RowIndex::default();
        index.fold_numbers(
            &[row(2, "1002", 1), row(4, "1004", 1), row(6, "1006", 1)],
            &[],
            true,
        );
        let mut logged = row(4, "1004", 2);
        logged.use_remote_auth = true;
        index.fold_numbers(
            &[
                row(1, "1001", 1),
                logged,
                row(5, "1005", 1),
                row(9, "1009", 1),
            ],
            &[],
            false,
        );
        let ids: Vec<(i64, u32)> = index.0.iter().map(|m| (m.id, m.version)).collect();
        assert_eq!(ids, vec![(1, 1), (2, 1), (4, 2), (5, 1), (6, 1), (9, 1)]);
    }
}
