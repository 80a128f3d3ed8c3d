//! Reconcile: make the MBG hold what the database says. [`plan`] decides (pure), [`apply`] acts,
//! [`run_pass`] ties them to the database and the MBG.

pub mod apply;
mod fill;
mod near;
pub mod plan;
mod recorder;
mod view;

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::config::Config;
use crate::credentials;
use crate::mbg::{MbgClient, MbgError, SipDevice};
use crate::shutdown::Shutdown;
use crate::store::{
    BadRow, Change, DeviceFact, Extension, ExtensionRows, ExtensionState, OutcomeWrite, PassWrite,
    Released, StateUpdate, Store, StoreError,
};
pub use apply::{ApplyOptions, ApplyReport, DeviceEffect, Outcome, Status, count_outcomes};
pub use plan::{Action, Adoption, Owner, Plan, Problem, Row, Whose};
pub use view::MbgView;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plan only: no database write, no MBG write (credentials are drawn in memory, not stored).
    DryRun,
    Apply,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    // Not `#[from]`/`#[source]`: the message already quotes the MBG's, and anyhow would repeat it.
    #[error("cannot read the MBG's state: {0}")]
    Mbg(MbgError),
    #[error(
        "cannot read the MBG's state: it kept failing for {} s ({attempts} attempts, mbg.retry_deadline); last: {last}",
        .waited.as_secs()
    )]
    GaveUp {
        attempts: u32,
        waited: Duration,
        last: MbgError,
    },
    #[error("stopped by a signal before the MBG's state was read")]
    Interrupted,
    #[error(transparent)]
    CredentialsNotStored(Box<CredentialsNotStored>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The database refused the remote credentials a pass drew (see [`fill`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot store the remote credentials generated for {extensions} extension(s), so the MBG was not called{}: {error}",
    if *.during_calls { " for them (the pass stopped there)" } else { "" }
)]
pub struct CredentialsNotStored {
    extensions: usize,
    /// Whether the calls for extensions whose credentials were stored had begun.
    during_calls: bool,
    /// Until when a create of those calls whose answer was lost may still land.
    uncertain_until: Option<Instant>,
    error: StoreError,
}

impl ReconcileError {
    /// The MBG's answer, when the pass failed on one (a 401 among them).
    pub fn mbg(&self) -> Option<&MbgError> {
        match self {
            ReconcileError::Mbg(e) | ReconcileError::GaveUp { last: e, .. } => Some(e),
            _ => None,
        }
    }

    /// Until when a create the failed pass sent, whose answer was lost, may still land on the
    /// MBG: the next pass must read the MBG again after it.
    pub fn uncertain_until(&self) -> Option<Instant> {
        match self {
            ReconcileError::CredentialsNotStored(e) => e.uncertain_until,
            _ => None,
        }
    }

    /// The database's error, when the pass failed on one.
    pub(crate) fn store(&self) -> Option<&StoreError> {
        match self {
            ReconcileError::Store(e) => Some(e),
            ReconcileError::CredentialsNotStored(e) => Some(&e.error),
            _ => None,
        }
    }
}

impl From<MbgError> for ReconcileError {
    fn from(error: MbgError) -> Self {
        ReconcileError::Mbg(error)
    }
}

/// Extensions that were waiting for a retry when the pass began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    pub count: usize,
    /// The earliest and latest `next_attempt_at` among them.
    pub due_from: i64,
    pub due_until: i64,
}

#[derive(Debug, Default)]
pub struct PassReport {
    pub plan: Plan,
    pub applied: Option<ApplyReport>,
    /// The extensions as planned (for printing node names and such).
    pub extensions: Planned,
    pub waiting: Option<Waiting>,
    /// Rows that cannot be read (written by another program); marked `needs_attention`.
    pub bad_rows: Vec<BadRow>,
    /// The extensions whose recorded changes the pass read before its rows, by id.
    pub(crate) changed: Vec<i64>,
}

/// The extensions a pass planned, by id: a sorted list, not a hash map, which at 100,000 rows
/// held a second copy of them (30 MB) while the list it was built from was freed.
#[derive(Debug, Default)]
pub struct Planned(Vec<Extension>);

impl Planned {
    pub fn new(mut extensions: Vec<Extension>) -> Planned {
        // Not shrunk: that would copy the rows at a pass's busiest moment, for a list that is
        // dropped with its report.
        extensions.sort_unstable_by_key(|e| e.id);
        Planned(extensions)
    }

    pub fn get(&self, id: &i64) -> Option<&Extension> {
        let at = self.0.binary_search_by_key(id, |e| e.id).ok()?;
        Some(&self.0[at])
    }

    pub(crate) fn contains_key(&self, id: &i64) -> bool {
        self.get(id).is_some()
    }

    /// In id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Extension> {
        self.0.iter()
    }

    /// Takes in a later pass's extensions: where both have one, the later copy.
    fn take_in(&mut self, later: Planned) {
        let mut all = std::mem::take(&mut self.0);
        all.extend(later.0);
        // Stable: of equal ids, the later copy comes last and is the one kept.
        all.sort_by_key(|e| e.id);
        all.reverse();
        all.dedup_by_key(|e| e.id);
        all.reverse();
        self.0 = all;
    }
}

impl PassReport {
    pub fn needs_attention(&self) -> bool {
        if !self.bad_rows.is_empty() {
            return true;
        }
        match &self.applied {
            Some(report) => report
                .outcomes
                .iter()
                .any(|o| o.status == Status::NeedsAttention),
            None => self.plan.problems().next().is_some(),
        }
    }

    /// Until when a create of this pass whose answer was lost may still land on the MBG.
    pub fn uncertain_until(&self) -> Option<Instant> {
        self.applied.as_ref().and_then(|a| a.uncertain_until)
    }

    /// Takes in a later pass that read the MBG again (see [`PassReport::uncertain_until`]): its
    /// actions and outcomes follow this one's.
    pub fn absorb_follow_up(&mut self, later: PassReport) {
        self.plan.actions.extend(later.plan.actions);
        self.bad_rows = later.bad_rows;
        self.extensions.take_in(later.extensions);
        self.changed.extend(later.changed);
        self.changed.sort_unstable();
        self.changed.dedup();
        match (&mut self.applied, later.applied) {
            (Some(applied), Some(later)) => {
                applied.outcomes.extend(later.outcomes);
                applied.done_not_kept += later.done_not_kept;
                applied.calls += later.calls;
                applied.interrupted |= later.interrupted;
                applied.uncertain_until = later.uncertain_until;
                if applied.token_refused.is_none() {
                    applied.token_refused = later.token_refused;
                }
            }
            (applied, later) => *applied = later.or(applied.take()),
        }
    }

    /// Everything applied worked, or there was nothing to apply.
    pub fn succeeded(&self) -> bool {
        self.applied.as_ref().is_none_or(|report| {
            report.token_refused.is_none()
                && !report.interrupted
                && report.outcomes.iter().all(|o| {
                    matches!(
                        o.status,
                        Status::Done | Status::NeedsAttention | Status::Stale
                    )
                })
        })
    }
}

/// Which extensions a pass acts on. A full pass plans from every row; a targeted pass (`only`)
/// from the rows and SIP users near those extensions (see [`near`]), and applies only what
/// concerns them. A pass that honours backoff leaves failed extensions alone until their
/// `next_attempt_at`. Deleted rows (released SIP users, duplicates) are always handled.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub only: Option<HashSet<i64>>,
    pub honour_backoff: bool,
    /// Counted as the pass goes, for whoever shows progress.
    pub progress: Option<std::sync::Arc<Progress>>,
    /// Outcomes that are done are counted in the actions metric as they come instead of kept
    /// in the report: the daemon logs only the others, and a first pass of 100,000 creates
    /// held some 20 MB of their texts to its end. `sync` keeps them all, to print.
    pub count_done_only: bool,
}

/// How far a pass has got: its MBG changes planned, and those finished (done, failed or
/// skipped). Written by the pass, read by a progress display while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    total: std::sync::atomic::AtomicUsize,
    finished: std::sync::atomic::AtomicUsize,
}

impl Progress {
    pub fn total(&self) -> usize {
        self.total.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn finished(&self) -> usize {
        self.finished.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn plan(&self, total: usize) {
        self.total
            .store(total, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn step(&self) {
        self.finished
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Scope {
    fn includes(&self, extension: &Extension, now: i64) -> bool {
        self.only
            .as_ref()
            .is_none_or(|ids| ids.contains(&extension.id))
            && !(self.honour_backoff
                && extension.state == ExtensionState::Failed
                && extension.next_attempt_at.is_some_and(|at| at > now))
    }
}

/// One full reconcile, as `sync` runs it: the MBG's state, then [`run_pass_with`].
///
/// In [`Mode::Apply`] the caller must hold the pass lock ([`Store::lock_passes`]).
pub async fn run_pass(
    store: &Store,
    client: &MbgClient,
    config: &Config,
    mode: Mode,
    shutdown: &Shutdown,
    now: i64,
) -> Result<PassReport, ReconcileError> {
    let (mut view, full) = read_full(store, client, config, shutdown, mode).await?;
    run_pass_with(
        store,
        client,
        config,
        mode,
        shutdown,
        now,
        &mut view,
        &Scope::default(),
        Some(full),
    )
    .await
}

/// A pass against a known view of the MBG: the rows, remote credentials drawn for those that
/// lack them, the plan, and in [`Mode::Apply`] its execution, with `view` corrected by the
/// answers. Drawn credentials are stored before any call for their extension (see [`fill`]).
/// Changes recorded before the pass for extensions in scope are acknowledged with their
/// extension's outcome (see [`apply::Covered`]) or after the pass (those with nothing to call,
/// and outcomes the database could not take);
/// never those of extensions that changed meanwhile or were not reached (stopped, token
/// refused): the next pass takes them.
#[allow(clippy::too_many_arguments)]
pub async fn run_pass_with(
    store: &Store,
    client: &MbgClient,
    config: &Config,
    mode: Mode,
    shutdown: &Shutdown,
    now: i64,
    view: &mut MbgView,
    scope: &Scope,
    full: Option<FullRead>,
) -> Result<PassReport, ReconcileError> {
    let retry_until = Instant::now() + config.mbg.retry_deadline;
    let FullRead {
        covered_changes,
        read: Read {
            rows,
            released,
            devices,
        },
    } = match full {
        Some(full) if scope.only.is_none() => full,
        _ => FullRead {
            covered_changes: covered_changes(store, mode).await?,
            read: read_rows(store, scope, view).await?,
        },
    };
    for bad in &rows.bad {
        warn!(row = bad.id, column = bad.column, "{bad}");
        if mode == Mode::Apply {
            store.mark_bad_row(bad.id, &bad.to_string()).await?;
        }
    }
    let mut extensions = rows.good;
    let mut random = credentials::Draw::default();
    let lengths = &config.credentials;
    let drawn = fill::draw(&mut extensions, || {
        (
            random.auth_name(lengths.name_length),
            random.password(lengths.password_length),
        )
    });
    drop(random);
    let waiting = waiting_retries(&extensions, now);
    let devices = plannable_devices(view, devices.as_deref(), &extensions, &rows.bad, &released);
    // The licences used by SIP users the plan does not see: those of bad rows, and outside a
    // targeted pass's neighbourhood.
    let unseen = u32::try_from(view.len() - devices.len()).unwrap_or(u32::MAX);
    let mut plan = plan::plan(
        &extensions,
        &released,
        &view.icps,
        &devices,
        config
            .mbg
            .teleworker_licences
            .map(|b| b.saturating_sub(unseen)),
    );
    let by_id = Planned::new(extensions);
    let in_scope = |id: Option<i64>| {
        id.is_none_or(|id| by_id.get(&id).is_some_and(|e| scope.includes(e, now)))
    };
    plan.actions.retain(|a| in_scope(a.extension_id()));
    plan.settled.retain(|s| in_scope(Some(s.extension_id)));
    let mut changed: Vec<i64> = covered_changes.iter().map(|c| c.extension_id).collect();
    changed.sort_unstable();
    changed.dedup();
    let mut report = PassReport {
        plan,
        applied: None,
        extensions: by_id,
        waiting,
        bad_rows: rows.bad,
        changed,
    };
    if mode == Mode::DryRun {
        return Ok(report);
    }

    // Rows already as the MBG holds them, whose recorded state says otherwise: one group.
    let settling: Vec<PassWrite> = report
        .plan
        .settled
        .iter()
        .filter_map(|settled| {
            let extension = report.extensions.get(&settled.extension_id)?;
            let differs = extension.state != settled.state || extension.last_error.is_some();
            differs.then_some(PassWrite::Outcome(OutcomeWrite {
                extension_id: extension.id,
                planned_version: extension.version,
                device: DeviceFact::Unchanged,
                state: StateUpdate {
                    state: settled.state,
                    last_error: None,
                    attempts: 0,
                    next_attempt_at: None,
                },
                acknowledges: Vec::new(),
            }))
        })
        .collect();
    let written = store.write_group(&settling).await?;
    let mut stale: HashSet<i64> = settling
        .iter()
        .zip(written)
        .filter(|(_, written)| !written)
        .filter_map(|(write, _)| match write {
            PassWrite::Outcome(outcome) => Some(outcome.extension_id),
            _ => None,
        })
        .collect();
    let options = ApplyOptions {
        max_in_flight: config.mbg.max_in_flight,
        max_retry_after: config.mbg.max_retry_after,
        retry_until,
        now,
        mbg_timeout: config.mbg.timeout,
        keep_done: !scope.count_done_only,
    };
    if let Some(progress) = &scope.progress {
        progress.plan(report.plan.changes().count());
    }
    let planned_after = covered_changes.iter().map(|c| c.seq).max().unwrap_or(0);
    let covered = apply::Covered::new(&covered_changes);
    drop(covered_changes);
    let superseded = apply::Superseded::default();
    let call_order = apply::call_order(&report.plan);
    let (gate, mut fill) = fill::prepare(
        drawn,
        |id| call_order.get(&id).copied().unwrap_or(usize::MAX),
        config.mbg.max_in_flight,
    );
    drop(call_order);
    fill.first(store, &superseded)
        .await
        .map_err(|e| not_stored(e, None))?;
    // The rows were read beside the MBG's lists, which may have taken long: what changed
    // meanwhile is not sent (the watch below looks again every poll interval).
    match store.changed_after(planned_after).await {
        Ok(ids) => superseded.extend(ids),
        Err(e) => warn!(error = %e, "cannot look for changes made during the pass"),
    }
    let cx = apply::Context {
        store,
        client,
        planned: &report.extensions,
        shutdown,
        options: &options,
        progress: scope.progress.as_deref(),
        superseded: &superseded,
        covered: &covered,
        fill: &gate,
    };
    // Beside the calls: which extensions change while they are made.
    let watch_changes = async {
        loop {
            tokio::time::sleep(config.watch.poll_interval).await;
            match store.changed_after(planned_after).await {
                Ok(ids) => superseded.extend(ids),
                Err(e) => warn!(error = %e, "cannot look for changes made during the pass"),
            }
        }
    };
    let calls = async {
        tokio::join!(
            apply::apply(&cx, &report.plan),
            fill.rest(store, &superseded, shutdown)
        )
    };
    let (applied, filled) = tokio::select! {
        both = calls => both,
        () = watch_changes => unreachable!("the watch never ends"),
    };
    let mut applied = applied?;
    filled.map_err(|e| not_stored(e, Some(&applied)))?;
    view.absorb(std::mem::take(&mut applied.mbg_changes));
    stale.extend(
        applied
            .outcomes
            .iter()
            .filter(|o| matches!(o.status, Status::Stale | Status::Skipped))
            .filter_map(|o| o.extension_id),
    );
    // A deleted row's change is covered once its released row is handled; keep it when the pass
    // was cut short, to be safe.
    let cut_short = applied.token_refused.is_some() || applied.interrupted;
    let acknowledged_with_outcomes = covered.taken();
    let seqs: Vec<i64> = covered
        .rest()
        .into_iter()
        .filter(|(extension_id, _)| {
            scope
                .only
                .as_ref()
                .is_none_or(|ids| ids.contains(extension_id))
        })
        .filter(|(extension_id, _)| !stale.contains(extension_id))
        .filter(|(extension_id, _)| !cut_short || report.extensions.contains_key(extension_id))
        .map(|(_, seq)| seq)
        .collect();
    store.delete_changes(&seqs).await?;
    store.vacuum_after(acknowledged_with_outcomes + seqs.len() + fill.stored());
    report.applied = Some(applied);
    Ok(report)
}

/// The SIP users at `positions` of the view (all when `None`) that a plan may weigh: a row that
/// cannot be read still holds its SIP user, which is kept out of the plan's reach (it would
/// look like nobody's) but counts as a licence used.
fn plannable_devices(
    view: &MbgView,
    positions: Option<&[usize]>,
    rows: &[Extension],
    bad_rows: &[BadRow],
    released: &[Released],
) -> Vec<SipDevice> {
    let mut devices = view.devices_for(positions, rows, released);
    let held = held_by_bad_rows(bad_rows);
    devices.retain(|d| !held.contains(d.guid.as_str()));
    devices
}

/// The guids that rows which cannot be read record: no plan, and no report of whose a SIP user
/// is, may take those SIP users for nobody's.
pub(crate) fn held_by_bad_rows(bad_rows: &[BadRow]) -> HashSet<&str> {
    bad_rows
        .iter()
        .filter_map(|b| b.mbg_device_id.as_deref())
        .collect()
}

/// The SIP users that bear on `extension` (its number, its set-side name, its recorded guid, or
/// proven its own), each with whose it is, judged as a pass judges them: from the extension's
/// neighbourhood (see [`near`]), not from every row.
async fn sip_users_of(
    store: &Store,
    view: &MbgView,
    extension: &Extension,
) -> Result<Vec<SipUser>, StoreError> {
    let scope = Scope {
        only: Some(HashSet::from([extension.id])),
        ..Scope::default()
    };
    let Read {
        rows,
        released,
        devices,
    } = read_rows(store, &scope, view).await?;
    let devices = plannable_devices(view, devices.as_deref(), &rows.good, &rows.bad, &released);
    let whose = plan::whose(&rows.good, &released, &devices);
    let bears_on = |device: &SipDevice, whose: &Whose| {
        device.icpside_username == extension.number
            || extension.mbg_device_id.as_deref() == Some(device.guid.as_str())
            || extension.remote_auth_name.as_deref() == Some(device.setside_username.as_str())
            || matches!(whose, Whose::Recorded(Row::Extension { id, .. })
                | Whose::Proven(Row::Extension { id, .. })
                | Whose::Duplicate(Row::Extension { id, .. }) if *id == extension.id)
    };
    Ok(devices
        .into_iter()
        .zip(whose)
        .filter(|(device, whose)| bears_on(device, whose))
        .map(|(device, whose)| SipUser {
            guid: device.guid,
            icp: device.icp,
            icpside_username: device.icpside_username,
            setside_username: device.setside_username,
            whose,
        })
        .collect())
}

/// What the MBG holds for one extension: the ICP of its node, and the SIP users that bear on it
/// with whose each is. For a person asking: `extension show`, the console's extension page.
pub struct OnTheMbg {
    pub icp: Option<String>,
    /// Asked after the ICPs, and alone in failing when the consumer may read the ICPs but not
    /// the SIP users, or their list takes longer than `mbg.timeout`.
    pub sip_users: Result<Vec<SipUser>, AskError>,
}

/// A SIP user as a person is shown it: its names and whose it is, never its passwords.
pub struct SipUser {
    pub guid: String,
    pub icp: String,
    pub icpside_username: String,
    pub setside_username: String,
    pub whose: Whose,
}

#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("the MBG access token is {0}")]
    Token(crate::token::TokenStatus),
    #[error(transparent)]
    Client(#[from] crate::token::TokenError),
    // Not `#[source]`: the message already quotes the MBG's.
    #[error("cannot ask the MBG: {0}")]
    Mbg(MbgError),
    #[error(transparent)]
    Read(ReconcileError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Asks the MBG once (a person is waiting: no retries over `mbg.retry_deadline`); a 401 marks
/// the token rejected, as in a pass.
pub async fn ask_the_mbg(
    store: &Store,
    config: &Config,
    extension: &Extension,
    now: i64,
) -> Result<OnTheMbg, AskError> {
    let settings = store.mbg_settings().await?;
    let status = crate::token::TokenStatus::of(&settings, now);
    if !status.is_usable() {
        return Err(AskError::Token(status));
    }
    let client = crate::token::client(config, &settings)?;
    let refused = async |said: MbgError| {
        if let Err(e) =
            crate::token::record_refusal(store, settings.token_generation, &said, now).await
        {
            warn!(error = %e, "cannot record the MBG's answer to the token");
        }
        AskError::Mbg(said)
    };
    let icps = match client.icps().await {
        Ok(icps) => icps,
        Err(said) => return Err(refused(said).await),
    };
    let icp = icps
        .iter()
        .find(|icp| icp.address == extension.node_address)
        .map(|icp| icp.name.clone());
    let once = Instant::now();
    let sip_users = match MbgView::read_devices(icps, &client, config, &Shutdown::new(), once).await
    {
        Ok(view) => sip_users_of(store, &view, extension)
            .await
            .map_err(AskError::from),
        Err(ReconcileError::Mbg(said) | ReconcileError::GaveUp { last: said, .. }) => {
            Err(refused(said).await)
        }
        Err(other) => Err(AskError::Read(other)),
    };
    Ok(OnTheMbg { icp, sip_users })
}

/// What a pass plans from.
struct Read {
    rows: ExtensionRows,
    released: Vec<Released>,
    /// The positions in the view of the SIP users near a targeted pass's changes; `None`: all.
    devices: Option<Vec<usize>>,
}

/// Every row, or for a targeted pass the rows and SIP users near its extensions (see
/// [`near`]). Released rows are read after the rows, so that a row deleted meanwhile is in one
/// or the other.
async fn read_rows(store: &Store, scope: &Scope, view: &MbgView) -> Result<Read, StoreError> {
    if let Some(ids) = &scope.only {
        let mut near = near::Near::new(ids.iter().copied());
        if close(&mut near, store, view).await? {
            let released = store.released().await?;
            near.add_released(&released);
            if close(&mut near, store, view).await? {
                let (rows, devices) = near.into_parts();
                return Ok(Read {
                    rows,
                    released,
                    devices: Some(devices),
                });
            }
        }
        warn!(
            "the changes are linked to more rows than a targeted pass follows ({} rounds): planning from every row",
            near::MAX_ROUNDS
        );
    }
    read_every_row(store).await
}

async fn read_every_row(store: &Store) -> Result<Read, StoreError> {
    let rows = store.extension_rows().await?;
    let released = store.released().await?;
    Ok(Read {
        rows,
        released,
        devices: None,
    })
}

/// The changes a pass covers, read before its rows: a change recorded after that read is
/// reflected in the rows, or left for the next pass.
async fn covered_changes(store: &Store, mode: Mode) -> Result<Vec<Change>, StoreError> {
    match mode {
        Mode::Apply => store.pending_changes(u32::MAX).await,
        Mode::DryRun => Ok(Vec::new()),
    }
}

/// What a full pass reads from the database before it plans: the changes it covers, then
/// every row. See [`read_full`].
pub struct FullRead {
    covered_changes: Vec<Change>,
    read: Read,
}

/// The MBG's state and, at the same time, what a full pass reads from the database: neither
/// waits for the other (at 10,000 rows the rows take longer than the MBG's two lists).
pub async fn read_full(
    store: &Store,
    client: &MbgClient,
    config: &Config,
    shutdown: &Shutdown,
    mode: Mode,
) -> Result<(MbgView, FullRead), ReconcileError> {
    let rows = async {
        Ok::<_, StoreError>(FullRead {
            covered_changes: covered_changes(store, mode).await?,
            read: read_every_row(store).await?,
        })
    };
    let (view, rows) = tokio::join!(MbgView::read(client, config, shutdown), rows);
    // The MBG's error says more (a refused token stops the daemon's calls), then the database.
    Ok((view?, rows?))
}

/// Reads rows until the neighbourhood is closed: `false` when that took more than
/// [`near::MAX_ROUNDS`] rounds.
async fn close(near: &mut near::Near, store: &Store, view: &MbgView) -> Result<bool, StoreError> {
    loop {
        match near.step(view) {
            near::Step::Read(keys) => near.add_rows(store.extension_rows_matching(&keys).await?),
            near::Step::Closed => return Ok(true),
            near::Step::TooFar => return Ok(false),
        }
    }
}

/// The fill failed, before the calls began or (`calls`) during them.
fn not_stored(e: fill::NotStored, calls: Option<&ApplyReport>) -> ReconcileError {
    ReconcileError::CredentialsNotStored(Box::new(CredentialsNotStored {
        extensions: e.extensions,
        during_calls: calls.is_some(),
        uncertain_until: calls.and_then(|a| a.uncertain_until),
        error: e.error,
    }))
}

/// Reads the MBG's state, retrying a 429, a 503 or a lost connection with backoff (honouring
/// `Retry-After`) until `retry_until`: one busy moment must not abort a whole pass.
pub(crate) async fn read_with_retry<T, F, Fut>(
    max_retry_after: Duration,
    shutdown: &Shutdown,
    retry_until: Instant,
    mut read: F,
) -> Result<T, ReconcileError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, MbgError>>,
{
    let started = Instant::now();
    for attempt in 1u32.. {
        let error = match read().await {
            Ok(value) => return Ok(value),
            Err(e) if e.is_retryable() => e,
            Err(e) => return Err(e.into()),
        };
        let after = match error.kind {
            crate::mbg::MbgErrorKind::RateLimited(after) => after,
            _ => None,
        };
        let delay = apply::in_pass_delay(attempt - 1, after, max_retry_after);
        if Instant::now() + delay > retry_until {
            return Err(ReconcileError::GaveUp {
                attempts: attempt,
                waited: started.elapsed(),
                last: error,
            });
        }
        warn!(error = %error, delay_ms = delay.as_millis() as u64, "the MBG is busy; reading again");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.triggered() => return Err(ReconcileError::Interrupted),
        }
    }
    unreachable!("the loop returns")
}

fn waiting_retries(extensions: &[Extension], now: i64) -> Option<Waiting> {
    let due: Vec<i64> = extensions
        .iter()
        .filter(|e| e.state == ExtensionState::Failed)
        .filter_map(|e| e.next_attempt_at)
        .filter(|at| *at > now)
        .collect();
    Some(Waiting {
        count: due.len(),
        due_from: *due.iter().min()?,
        due_until: *due.iter().max()?,
    })
}
