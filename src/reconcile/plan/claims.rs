//! Whose each SIP user is: the ownership rule of the module's header, in one place.
//!
//! A device is held by the row whose guid it is (a wanted row first, then a released one), else
//! by the first row, in priority order, whose credentials it carries (the proof that one of our
//! creates made it); a further device carrying the credentials of a row that already holds one
//! is a duplicate. Every other device is nobody's: foreign, never updated or deleted.

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
    /// Devices carrying the credentials of a row that holds another: (priority, position).
    duplicates: Vec<(usize, usize)>,
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
                self.duplicates.push((priority, d));
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
        self.duplicates.iter().map(|&(_, d)| d)
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
