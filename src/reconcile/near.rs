//! What a targeted pass plans from: the changed rows and everything the plan's rules could weigh
//! against them, not the whole database. At 100,000 extensions, reading, decoding and planning
//! every row for one flipped flag took most of a second.
//!
//! The plan's rules connect a row to others only through four keys: its number (proof of
//! ownership, adoption, a number used elsewhere), its remote auth name (a name shared or taken),
//! the SIP user recorded against it, and, for SIP users, their guid, ICP-side and set-side names.
//! So the neighbourhood is closed under those keys: every row and SIP user sharing a key with
//! one inside is inside. Planned alone, it gives its rows the actions the whole plan would give
//! them (a property test holds `plan` to that), except the licence budget, which the pass turns
//! into the licences the SIP users outside already use.

use std::collections::{BTreeMap, BTreeSet};

use crate::store::{BadRow, Extension, ExtensionRows, Released, RowKeys};

use super::plan::HashSet;
use super::view::{MbgView, key};

/// Rounds of reading before a targeted pass gives up and plans from every row: each round
/// follows one more link, and a real site's links end after two or three.
pub(crate) const MAX_ROUNDS: usize = 32;

/// What closing a neighbourhood needs next.
pub(crate) enum Step {
    /// The rows matching these keys.
    Read(RowKeys),
    /// Nothing: no new key turned up.
    Closed,
    /// More than [`MAX_ROUNDS`] rounds: the caller plans from every row.
    TooFar,
}

#[derive(Default)]
pub(crate) struct Near {
    asked: Asked,
    /// Keys met and not yet asked of the database.
    next: RowKeys,
    /// The hashes of the keys met since the last look at the SIP users.
    fresh: Fresh,
    good: BTreeMap<i64, Extension>,
    bad: BTreeMap<i64, BadRow>,
    devices: BTreeSet<usize>,
    rounds: usize,
}

#[derive(Default)]
struct Fresh {
    guids: HashSet<u32>,
    numbers: HashSet<u32>,
    names: HashSet<u32>,
}

#[derive(Default)]
struct Asked {
    ids: HashSet<i64>,
    numbers: HashSet<String>,
    names: HashSet<String>,
    guids: HashSet<String>,
}

impl Near {
    pub(crate) fn new(ids: impl IntoIterator<Item = i64>) -> Near {
        let mut near = Near::default();
        for id in ids {
            if near.asked.ids.insert(id) {
                near.next.ids.push(id);
            }
        }
        near
    }

    /// Looks at the view's SIP users for the keys met so far, then says which rows to read
    /// next (give them to [`Near::add_rows`]). No I/O here: the caller reads, so that the
    /// rules are tested without a database and the reading future stays `Send`.
    pub(crate) fn step(&mut self, view: &MbgView) -> Step {
        self.add_devices(view);
        let keys = std::mem::take(&mut self.next);
        if keys.is_empty() {
            return Step::Closed;
        }
        self.rounds += 1;
        if self.rounds > MAX_ROUNDS {
            return Step::TooFar;
        }
        Step::Read(keys)
    }

    /// Released rows are always planned (their SIP users are deleted by any pass); their keys
    /// bring in what competes with them.
    pub(crate) fn add_released(&mut self, released: &[Released]) {
        for r in released {
            self.meet_number(&r.number);
            self.meet_name(r.remote_auth_name.as_deref());
            self.meet_guid(r.mbg_device_id.as_deref());
        }
    }

    pub(crate) fn add_rows(&mut self, rows: ExtensionRows) {
        for e in rows.good {
            if self.good.contains_key(&e.id) || self.bad.contains_key(&e.id) {
                continue;
            }
            self.meet_number(&e.number);
            self.meet_name(e.remote_auth_name.as_deref());
            self.meet_guid(e.mbg_device_id.as_deref());
            self.good.insert(e.id, e);
        }
        for bad in rows.bad {
            if self.bad.contains_key(&bad.id) {
                continue;
            }
            // The rounds are separate reads: a row read whole and, a round later, broken by
            // another program is planned as neither (a bad row hides its SIP user; planning the
            // good copy as well would create a second one).
            self.good.remove(&bad.id);
            if let Some(number) = &bad.number {
                self.meet_number(number);
            }
            self.meet_guid(bad.mbg_device_id.as_deref());
            self.bad.insert(bad.id, bad);
        }
    }

    /// Takes in the SIP users that match a key met since the last look (one sweep over their
    /// hashes; the others matched no earlier key and are not looked at again for it). A hash
    /// that matches by chance only brings in one more SIP user, with what competes with it:
    /// the neighbourhood stays closed.
    fn add_devices(&mut self, view: &MbgView) {
        let fresh = std::mem::take(&mut self.fresh);
        if fresh.numbers.is_empty() && fresh.names.is_empty() && fresh.guids.is_empty() {
            return;
        }
        // A bit per hash first: at 100,000 SIP users the sweep is three shifts per device, and
        // the sets are asked only for the few the bits let through.
        let mut bits = [0u64; 64];
        let slot = |h: u32| ((h >> 6) & 63) as usize;
        for &h in fresh.guids.iter().chain(&fresh.numbers).chain(&fresh.names) {
            bits[slot(h)] |= 1 << (h & 63);
        }
        let maybe = |h: u32| bits[slot(h)] & (1 << (h & 63)) != 0;
        let mut found = Vec::new();
        for (d, key) in view.device_keys().iter().enumerate() {
            if !(maybe(key.guid) || maybe(key.number) || maybe(key.name)) {
                continue;
            }
            let matches = fresh.guids.contains(&key.guid)
                || fresh.numbers.contains(&key.number)
                || fresh.names.contains(&key.name);
            if matches && self.devices.insert(d) {
                found.push(d);
            }
        }
        for d in found {
            let (guid, number, name) = view.device_texts(d);
            self.meet_number(number);
            self.meet_name(Some(name));
            self.meet_guid(Some(&guid.to_string()));
        }
    }

    fn meet_number(&mut self, number: &str) {
        if self.asked.numbers.insert(number.to_string()) {
            self.next.numbers.push(number.to_string());
            self.fresh.numbers.insert(key(number));
        }
    }

    fn meet_name(&mut self, name: Option<&str>) {
        if let Some(name) = name.filter(|n| !n.is_empty())
            && self.asked.names.insert(name.to_string())
        {
            self.next.names.push(name.to_string());
            self.fresh.names.insert(key(name));
        }
    }

    fn meet_guid(&mut self, guid: Option<&str>) {
        if let Some(guid) = guid.filter(|g| !g.is_empty())
            && self.asked.guids.insert(guid.to_string())
        {
            self.next.guids.push(guid.to_string());
            self.fresh.guids.insert(key(guid));
        }
    }

    /// The rows (in id order) and the positions of the SIP users (in the MBG's order).
    pub(crate) fn into_parts(self) -> (ExtensionRows, Vec<usize>) {
        let rows = ExtensionRows {
            good: self.good.into_values().collect(),
            bad: self.bad.into_values().collect(),
        };
        (rows, self.devices.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ExtensionKind, ExtensionState};

    fn row(id: i64, number: &str) -> Extension {
        Extension {
            id,
            node_id: 1,
            node_name: "pbx1".into(),
            node_address: "10.0.0.1".into(),
            number: number.into(),
            kind: ExtensionKind::Sip,
            sip_password: secrecy::SecretString::from("sip-pass"),
            use_remote_auth: true,
            remote_auth_name: None,
            remote_auth_password: None,
            mbg_device_id: Some("g1".into()),
            provisioned_by_us: true,
            state: ExtensionState::Provisioned,
            last_error: None,
            attempts: 0,
            next_attempt_at: None,
            version: 1,
            updated_at: 0,
        }
    }

    /// A row read whole in one round and unreadable in the next (another program broke it in
    /// between) is planned as a bad row only: planned as both, its SIP user would be hidden
    /// from the plan while the row still asked for one, and a second would be created.
    #[test]
    fn a_row_read_good_then_bad_is_planned_as_bad_only() {
        let mut near = Near::new([7]);
        near.add_rows(ExtensionRows {
            good: vec![row(7, "1001")],
            bad: Vec::new(),
        });
        let broken = BadRow {
            id: 7,
            number: Some("1001".into()),
            mbg_device_id: Some("g1".into()),
            column: "sip_password",
            reason: "is NULL".into(),
        };
        near.add_rows(ExtensionRows {
            good: vec![row(7, "1001")],
            bad: vec![broken],
        });
        near.add_rows(ExtensionRows {
            good: vec![row(7, "1001")],
            bad: Vec::new(),
        });
        let (rows, _) = near.into_parts();
        assert!(rows.good.is_empty(), "{:?}", rows.good);
        assert_eq!(rows.bad.len(), 1);
    }
}
