//! Whose each SIP user is: the ownership rule of the module's header, in one place.
//!
//! A device is held by the row whose guid it is (a wanted row first, then a released one), else
//! by the first row, in priority order, whose credentials it carries (the proof that one of our
//! creates made it); a further device carrying the credentials of a row that already holds one
//! is a duplicate. Every other device is nobody's: foreign, never updated or deleted.

use std::fmt;

use crate::mbg::SipDevice;
use crate::store::{Extension, Released};

use secrecy::{ExposeSecret, SecretString};

use super::{HashMap, HashSet, sort_by_guid};

/// Who holds a device once the plan is applied: an extension or a released row, by position.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Claim {
    Extension(usize),
    Released(usize),
    Duplicate,
}

pub(super) struct Claims {
    /// Per device position.
    of_device: Vec<Option<Claim>>,
    /// Per extension position: the device it holds, and whether by its recorded guid.
    of_extension: Vec<Option<(usize, bool)>>,
    of_released: HashMap<usize, usize>,
    /// Devices carrying the credentials of a row that holds another: (priority, position, the
    /// row).
    duplicates: Vec<(usize, usize, Claim)>,
    released_with_duplicates: HashSet<usize>,
}

/// A row that may prove a device its own: its claim, number and remote credentials.
type Owner<'a> = (Claim, &'a str, &'a Option<String>, &'a Option<SecretString>);

impl Claims {
    /// `by_priority`: extension positions, wanted rows first, each part in number order.
    pub(super) fn build(
        extensions: &[Extension],
        released: &[Released],
        devices: &[SipDevice],
        index_of: &HashMap<&str, usize>,
        by_priority: &[usize],
    ) -> Claims {
        let mut claims = Claims {
            of_device: vec![None; devices.len()],
            of_extension: vec![None; extensions.len()],
            of_released: HashMap::default(),
            duplicates: Vec::new(),
            released_with_duplicates: HashSet::default(),
        };
        for &p in by_priority {
            if let Some(&d) = extensions[p].recorded_guid().and_then(|g| index_of.get(g))
                && claims.of_device[d].is_none()
            {
                claims.of_device[d] = Some(Claim::Extension(p));
                claims.of_extension[p] = Some((d, true));
            }
        }
        for (i, r) in released.iter().enumerate() {
            if let Some(&d) = r.mbg_device_id.as_deref().and_then(|g| index_of.get(g))
                && claims.of_device[d].is_none()
            {
                claims.of_device[d] = Some(Claim::Released(i));
                claims.of_released.insert(i, d);
            }
        }
        let owners = by_priority
            .iter()
            .map(|&p| {
                let e = &extensions[p];
                let owner: Owner = (
                    Claim::Extension(p),
                    &e.number,
                    &e.remote_auth_name,
                    &e.remote_auth_password,
                );
                owner
            })
            .chain(released.iter().enumerate().map(|(i, r)| {
                (
                    Claim::Released(i),
                    r.number.as_str(),
                    &r.remote_auth_name,
                    &r.remote_auth_password,
                )
            }));
        claims.claim_proven(devices, owners);
        claims
    }

    /// A device that no recorded guid claims goes to the first owner, in priority order, whose
    /// credentials it carries. Only the unclaimed devices are looked at (none, in a steady
    /// state), each against the owners of its number.
    fn claim_proven<'a>(
        &mut self,
        devices: &'a [SipDevice],
        owners: impl Iterator<Item = Owner<'a>>,
    ) {
        let mut unclaimed: Vec<usize> = (0..devices.len())
            .filter(|&d| self.of_device[d].is_none())
            .collect();
        sort_by_guid(&mut unclaimed, devices);
        let numbers: HashSet<&str> = unclaimed
            .iter()
            .map(|&d| devices[d].icpside_username.as_str())
            .collect();
        let mut owners_of: HashMap<&str, Vec<(usize, Owner)>> = HashMap::default();
        for (priority, owner) in owners
            .enumerate()
            .filter(|_| !numbers.is_empty())
            .filter(|(_, (_, number, ..))| numbers.contains(number))
        {
            owners_of
                .entry(owner.1)
                .or_default()
                .push((priority, owner));
        }
        for d in unclaimed {
            let device = &devices[d];
            let number = device.icpside_username.as_str();
            let Some(&(priority, (owner, ..))) =
                owners_of
                    .get(number)
                    .into_iter()
                    .flatten()
                    .find(|(_, (_, _, name, password))| {
                        carries_credentials(device, number, name.as_deref(), password.as_ref())
                    })
            else {
                continue;
            };
            let held = match owner {
                Claim::Extension(p) => self.of_extension[p].get_or_insert((d, false)).0,
                Claim::Released(i) => *self.of_released.entry(i).or_insert(d),
                Claim::Duplicate => unreachable!("owners are rows"),
            };
            if held == d {
                self.of_device[d] = Some(owner);
            } else {
                self.of_device[d] = Some(Claim::Duplicate);
                self.duplicates.push((priority, d, owner));
                if let Claim::Released(i) = owner {
                    self.released_with_duplicates.insert(i);
                }
            }
        }
        self.duplicates.sort_by(|a, b| {
            (a.0, &devices[a.1].guid, &devices[a.1].icpside_username).cmp(&(
                b.0,
                &devices[b.1].guid,
                &devices[b.1].icpside_username,
            ))
        });
    }

    /// Whether nobody holds the device at position `d`.
    pub(super) fn is_foreign(&self, d: usize) -> bool {
        self.of_device[d].is_none()
    }

    /// The device the extension at position `p` holds, and whether by its recorded guid.
    pub(super) fn held_by_extension(&self, p: usize) -> Option<(usize, bool)> {
        self.of_extension[p]
    }

    /// The device the released row at position `i` holds, and whether it is its last one.
    pub(super) fn held_by_released(&self, i: usize) -> Option<(usize, bool)> {
        self.of_released
            .get(&i)
            .map(|&d| (d, !self.released_with_duplicates.contains(&i)))
    }

    /// The duplicates' positions, in priority order.
    pub(super) fn duplicates(&self) -> impl Iterator<Item = usize> + '_ {
        self.duplicates.iter().map(|&(_, d, _)| d)
    }

    /// Whose the device at position `d` is, in words a human reads.
    pub(super) fn whose(
        &self,
        d: usize,
        devices: &[SipDevice],
        extensions: &[Extension],
        released: &[Released],
    ) -> Whose {
        let row = |claim| match claim {
            Claim::Extension(p) => Row::Extension {
                id: extensions[p].id,
                number: extensions[p].number.clone(),
                wanted: extensions[p].use_remote_auth,
            },
            Claim::Released(i) => Row::Released {
                number: released[i].number.clone(),
            },
            Claim::Duplicate => unreachable!("a duplicate is held by nobody"),
        };
        match self.of_device[d] {
            None => Whose::Foreign,
            Some(Claim::Extension(p)) => match self.of_extension[p] {
                Some((_, true)) => Whose::Recorded(row(Claim::Extension(p))),
                _ => Whose::Proven(row(Claim::Extension(p))),
            },
            Some(Claim::Released(i)) => {
                if released[i].mbg_device_id.as_deref() == Some(devices[d].guid.as_str()) {
                    Whose::Recorded(row(Claim::Released(i)))
                } else {
                    Whose::Proven(row(Claim::Released(i)))
                }
            }
            Some(Claim::Duplicate) => {
                let holder = self
                    .duplicates
                    .iter()
                    .find(|&&(_, duplicate, _)| duplicate == d)
                    .map(|&(_, _, holder)| holder)
                    .expect("every duplicate is listed with its holder");
                Whose::Duplicate(row(holder))
            }
        }
    }
}

/// Whose a SIP user is, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whose {
    /// Recorded against the row (its `mbg_device_id`): ours.
    Recorded(Row),
    /// Carries the row's number and remote credentials: ours, made by a create whose answer
    /// never reached the database. A pass records it.
    Proven(Row),
    /// Carries the credentials of a row that holds another SIP user: ours, and deleted by
    /// the next pass.
    Duplicate(Row),
    /// Nobody's: added by hand on the MBG (or by another program). Never updated or deleted;
    /// adopted only by a wanted extension with exactly its number, under the node's ICP.
    Foreign,
}

impl fmt::Display for Whose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DELETED: &str = "the next pass deletes it";
        match self {
            Whose::Recorded(row) => {
                write!(f, "ours, recorded against {}", row.named())?;
                if !row.is_wanted() {
                    write!(f, ": {DELETED}")?;
                }
                Ok(())
            }
            Whose::Proven(row) => write!(
                f,
                "ours, carrying the remote credentials of {} (a create whose answer was lost): {}",
                row.named(),
                if row.is_wanted() {
                    "the next pass records it"
                } else {
                    DELETED
                }
            ),
            Whose::Duplicate(row) => write!(
                f,
                "ours, a second copy of the SIP user of {}: {DELETED}",
                row.named()
            ),
            Whose::Foreign => f.write_str(
                "not ours (added by hand on the MBG): never changed or deleted, unless a wanted extension with exactly its number under its node's ICP adopts it",
            ),
        }
    }
}

impl Whose {
    /// Ours and as the database says: nothing for a pass to record or delete.
    pub(crate) fn is_settled(&self) -> bool {
        matches!(self, Whose::Recorded(row) if row.is_wanted())
    }
}

/// The row a SIP user of ours belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// `wanted`: its "use remote authorization credentials" is on (else its SIP user goes).
    Extension {
        id: i64,
        number: String,
        wanted: bool,
    },
    /// A deleted extension's: its SIP user is deleted by the next pass.
    Released { number: String },
}

impl Row {
    pub fn number(&self) -> &str {
        match self {
            Row::Extension { number, .. } | Row::Released { number } => number,
        }
    }

    fn is_wanted(&self) -> bool {
        matches!(self, Row::Extension { wanted: true, .. })
    }

    fn named(&self) -> String {
        match self {
            Row::Extension { number, .. } => format!("extension {number}"),
            Row::Released { number } => format!("deleted extension {number}"),
        }
    }
}

/// Whether `device` carries this number and these remote credentials: the proof that one of our
/// creates made it (they are random, and stored before any create). Also how apply finds the
/// SIP user of a create whose answer was lost.
pub(crate) fn carries_credentials(
    device: &SipDevice,
    number: &str,
    name: Option<&str>,
    password: Option<&SecretString>,
) -> bool {
    match (name, password) {
        (Some(name), Some(password)) => {
            device.icpside_username == number
                && device.setside_username == name
                && device.setside_password.expose_secret() == password.expose_secret()
        }
        _ => false,
    }
}
