//! Prometheus metrics for `/metrics`.
//!
//! Code records through the `metrics` facade with the typed functions below, so every metric
//! name and label lives in this file, and every label value comes from a closed set of
//! `&'static str` (never a guid, a number, a user name or a secret: a label that could hold one
//! would also blow up the number of series). Until [`Telemetry::install`] is called the
//! functions are no-ops, which is what one-shot commands such as `sync` want.
//!
//! The exporter is built without its own HTTP listener: `/metrics` is rendered by our axum
//! server (`crate::http`), so there is one HTTP stack in the binary.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::store::ExtensionState;

/// Metric names, all prefixed `mbg_provision_`.
pub mod names {
    /// Counter: change rows read from `extension_changes`.
    pub const CHANGES_SEEN: &str = "mbg_provision_changes_seen_total";
    /// Counter: finished actions, labels `action` and `outcome`.
    pub(crate) const ACTIONS: &str = "mbg_provision_actions_total";
    /// Histogram: MBG request latency, labels `method` and `endpoint` (a group, never a path).
    pub(crate) const MBG_REQUEST_DURATION: &str = "mbg_provision_mbg_request_duration_seconds";
    /// Gauge: extensions per state, label `state`.
    pub(crate) const EXTENSIONS: &str = "mbg_provision_extensions";
    /// Gauge: seconds until the access token expires (negative once expired).
    pub(crate) const TOKEN_EXPIRY: &str = "mbg_provision_token_expiry_seconds";
    /// Gauge: 1 when the token needs a human (renewal impossible, rejected, none stored).
    pub(crate) const TOKEN_NEEDS_ATTENTION: &str = "mbg_provision_token_needs_attention";
    /// Gauge: end of the last successful full reconcile, epoch seconds.
    pub(crate) const LAST_FULL_RECONCILE: &str =
        "mbg_provision_last_full_reconcile_timestamp_seconds";
    /// Gauge: 1 while this instance holds the leader lock.
    pub(crate) const LEADER: &str = "mbg_provision_leader";
    /// Counter: console sign-ins refused, label `reason` (`wrong_password`, `locked_out`).
    pub(crate) const CONSOLE_SIGN_IN_REFUSED: &str = "mbg_provision_console_sign_in_refused_total";

    /// Counter: SIP users found added, removed or changed on the MBG by someone else, when a
    /// full reconcile reads the MBG and compares it with the view the daemon kept.
    pub(crate) const MBG_DRIFT: &str = "mbg_provision_mbg_drift_total";
    /// Counter: extension rows a pass found changed without the change log recording it (a
    /// write with the triggers off); should stay 0.
    pub(crate) const UNEXPECTED_ROW_CHANGES: &str = "mbg_provision_unexpected_row_changes_total";

    /// Every family, for documentation and tests.
    pub const ALL: [&str; 11] = [
        MBG_DRIFT,
        UNEXPECTED_ROW_CHANGES,
        CHANGES_SEEN,
        ACTIONS,
        MBG_REQUEST_DURATION,
        EXTENSIONS,
        TOKEN_EXPIRY,
        TOKEN_NEEDS_ATTENTION,
        LAST_FULL_RECONCILE,
        LEADER,
        CONSOLE_SIGN_IN_REFUSED,
    ];
}

/// Latency buckets (seconds): a healthy MBG answers in tens of milliseconds; the top bucket is
/// the longest `mbg.timeout` anyone should configure, so a timed-out call still lands in one.
pub(crate) const MBG_LATENCY_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
];

/// How often [`Telemetry::run_upkeep`] should run. Histogram samples are kept until upkeep or a
/// scrape drains them; without it an unscraped daemon would grow by every MBG call.
pub(crate) const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The installed Prometheus recorder; cheap to clone.
#[derive(Debug, Clone)]
pub struct Telemetry {
    handle: PrometheusHandle,
}

static INSTALLED: OnceLock<Telemetry> = OnceLock::new();

impl Telemetry {
    /// Installs the process-wide recorder on the first call and returns it on every call, so
    /// tests and a restarted daemon loop in one process can all call it.
    ///
    /// If some other recorder was installed first (not by this crate), the returned handle
    /// renders nothing: recording keeps going to the other recorder. That is logged, not
    /// fatal: metrics must never stop provisioning.
    pub fn install() -> Telemetry {
        INSTALLED
            .get_or_init(|| {
                let recorder = builder().build_recorder();
                let handle = recorder.handle();
                if let Err(e) = metrics::set_global_recorder(recorder) {
                    tracing::warn!("metrics recorder not installed, /metrics will be empty: {e}");
                }
                describe();
                Telemetry { handle }
            })
            .clone()
    }

    /// The metrics in Prometheus text format (version 0.0.4).
    pub(crate) fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains histogram samples into their buckets; see [`UPKEEP_INTERVAL`]. `crate::http::serve`
    /// runs it while it serves.
    pub(crate) fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(names::MBG_REQUEST_DURATION.to_string()),
            &MBG_LATENCY_BUCKETS,
        )
        .expect("the bucket list is not empty")
}

fn describe() {
    describe_counter!(
        names::MBG_DRIFT,
        "SIP users added, removed or changed on the MBG other than by this daemon (by hand, or a create whose answer was lost), found by each full reconcile."
    );
    describe_counter!(
        names::UNEXPECTED_ROW_CHANGES,
        "Extension rows found changed without the change log recording it (a write with the triggers off, a restore): such a change reaches the MBG at the next full reconcile only. Should stay 0."
    );
    describe_counter!(
        names::CONSOLE_SIGN_IN_REFUSED,
        "Console sign-ins refused, by reason (wrong_password: a wrong name or password; locked_out: too many failures for that name from that address)."
    );
    describe_counter!(
        names::CHANGES_SEEN,
        "Change rows read from extension_changes (before coalescing)."
    );
    describe_counter!(
        names::ACTIONS,
        "Actions finished, by action (create/update/adopt/delete/forget/problem) and outcome (done/failed/needs_attention/skipped/stale)."
    );
    describe_histogram!(
        names::MBG_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "MBG REST request latency, by HTTP method and endpoint group, failures included."
    );
    describe_gauge!(
        names::EXTENSIONS,
        "Extensions in the database, by provisioning state."
    );
    describe_gauge!(
        names::TOKEN_EXPIRY,
        metrics::Unit::Seconds,
        "Seconds until the MBG access token expires; negative once expired."
    );
    describe_gauge!(
        names::TOKEN_NEEDS_ATTENTION,
        "1 when the MBG token needs a human (cannot be renewed automatically, rejected, or none)."
    );
    describe_gauge!(
        names::LAST_FULL_RECONCILE,
        metrics::Unit::Seconds,
        "When the last successful full reconcile finished, epoch seconds."
    );
    describe_gauge!(
        names::LEADER,
        "1 while this instance holds the leader lock and does the work, else 0."
    );
}

/// The `action` label of [`names::ACTIONS`]: the reconcile plan's verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    Create,
    Update,
    Adopt,
    Delete,
    Forget,
    /// A `Report`: nothing changed, a human must look.
    Problem,
}

impl ActionKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ActionKind::Create => "create",
            ActionKind::Update => "update",
            ActionKind::Adopt => "adopt",
            ActionKind::Delete => "delete",
            ActionKind::Forget => "forget",
            ActionKind::Problem => "problem",
        }
    }

    /// From `reconcile::Action::verb()`; `None` for a verb this file does not know yet.
    pub(crate) fn from_verb(verb: &str) -> Option<ActionKind> {
        Some(match verb {
            "create" => ActionKind::Create,
            "update" => ActionKind::Update,
            "adopt" => ActionKind::Adopt,
            "delete" => ActionKind::Delete,
            "forget" => ActionKind::Forget,
            "problem" => ActionKind::Problem,
            _ => return None,
        })
    }
}

/// The `outcome` label of [`names::ACTIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionOutcome {
    Done,
    Failed,
    NeedsAttention,
    Skipped,
    Stale,
}

impl ActionOutcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ActionOutcome::Done => "done",
            ActionOutcome::Failed => "failed",
            ActionOutcome::NeedsAttention => "needs_attention",
            ActionOutcome::Skipped => "skipped",
            ActionOutcome::Stale => "stale",
        }
    }
}

/// `n` change rows were read from `extension_changes` (count rows, before coalescing, so the
/// rate shows how busy the phone system is).
pub fn changes_seen(n: u64) {
    counter!(names::CHANGES_SEEN).increment(n);
}

/// A console sign-in was refused: `wrong_password` or `locked_out`.
pub fn console_sign_in_refused(reason: &'static str) {
    counter!(names::CONSOLE_SIGN_IN_REFUSED, "reason" => reason).increment(1);
}

/// One action finished with this outcome.
pub fn action(kind: ActionKind, outcome: ActionOutcome) {
    counter!(names::ACTIONS, "action" => kind.as_str(), "outcome" => outcome.as_str()).increment(1);
}

/// One MBG request took `elapsed`, whatever its result. `path` is the API path as the client
/// builds it (`mbg/v1/devices/sip/{guid}/`); only its group reaches the label.
pub fn mbg_request(method: &str, path: &str, elapsed: Duration) {
    histogram!(
        names::MBG_REQUEST_DURATION,
        "method" => method_label(method),
        "endpoint" => endpoint_group(path),
    )
    .record(elapsed.as_secs_f64());
}

/// A closed set, so that an odd method cannot make a new series.
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        _ => "other",
    }
}

/// The endpoint group of an MBG API path: `devices`, `icps`, `token` (the OAuth exchange and
/// token management), `ping` or `other`. Guids in paths never reach a label.
pub(crate) fn endpoint_group(path: &str) -> &'static str {
    let path = path.trim_start_matches('/');
    if path.starts_with("mbg/v1/devices/") {
        "devices"
    } else if path.starts_with("mbg/v1/icps/") {
        "icps"
    } else if path.starts_with("ping") {
        "ping"
    } else if path.starts_with("base/v1/managetoken")
        || path.starts_with("initiate")
        || path.starts_with("token")
    {
        "token"
    } else {
        "other"
    }
}

/// The number of extensions in each state. States missing from `counts` are set to 0, so a
/// state that empties does not keep its last value.
pub fn extensions_by_state(counts: &[(ExtensionState, u64)]) {
    for state in [
        ExtensionState::Idle,
        ExtensionState::Pending,
        ExtensionState::Provisioned,
        ExtensionState::Failed,
        ExtensionState::NeedsAttention,
    ] {
        let n: u64 = counts
            .iter()
            .filter(|(s, _)| *s == state)
            .map(|(_, n)| n)
            .sum();
        gauge!(names::EXTENSIONS, "state" => state.as_str()).set(n as f64);
    }
}

/// Seconds from now until the access token expires (negative once expired). With no stored
/// expiry, the gauge is left alone; `token_needs_attention` says whether that is a problem.
pub fn token_expiry(expires_at: i64, now: i64) {
    gauge!(names::TOKEN_EXPIRY).set((expires_at - now) as f64);
}

/// Whether the token needs a human: renewal failed or is impossible by API, the token was
/// rejected, or there is none.
pub fn token_needs_attention(needs: bool) {
    gauge!(names::TOKEN_NEEDS_ATTENTION).set(if needs { 1.0 } else { 0.0 });
}

/// A full reconcile found `n` SIP users changed on the MBG since the view it kept.
pub fn mbg_drift(n: u64) {
    counter!(names::MBG_DRIFT).increment(n);
}

/// A pass found `n` extension rows changed behind the change log's back.
pub fn unexpected_row_changes(n: u64) {
    counter!(names::UNEXPECTED_ROW_CHANGES).increment(n);
}

/// A full reconcile finished without error at `at` (epoch seconds).
pub fn full_reconcile_done(at: i64) {
    gauge!(names::LAST_FULL_RECONCILE).set(at as f64);
}

/// This instance gained (`true`) or lost (`false`) the leader lock.
pub fn leader(is_leader: bool) {
    gauge!(names::LEADER).set(if is_leader { 1.0 } else { 0.0 });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_groups_never_carry_a_guid() {
        let guid = "6f1c2d3e-0000-4000-8000-123456789abc";
        assert_eq!(
            endpoint_group(&format!("mbg/v1/devices/sip/{guid}/")),
            "devices"
        );
        assert_eq!(endpoint_group("mbg/v1/devices/sip/all/"), "devices");
        assert_eq!(endpoint_group(&format!("mbg/v1/icps/{guid}/")), "icps");
        assert_eq!(endpoint_group("ping/"), "ping");
        assert_eq!(endpoint_group("base/v1/managetoken/"), "token");
        assert_eq!(endpoint_group("initiate"), "token");
        assert_eq!(endpoint_group("token"), "token");
        assert_eq!(endpoint_group(guid), "other");
        assert_eq!(method_label("PATCH"), "other");
    }

    #[test]
    fn verbs_round_trip() {
        for kind in [
            ActionKind::Create,
            ActionKind::Update,
            ActionKind::Adopt,
            ActionKind::Delete,
            ActionKind::Forget,
            ActionKind::Problem,
        ] {
            assert_eq!(ActionKind::from_verb(kind.as_str()), Some(kind));
        }
        assert_eq!(ActionKind::from_verb("explode"), None);
    }

    #[test]
    fn install_twice_gives_one_recorder() {
        let first = Telemetry::install();
        let second = Telemetry::install();
        leader(true);
        let text = second.render();
        assert!(text.contains("mbg_provision_leader 1"), "{text}");
        assert_eq!(first.render(), text);
    }
}
