//! `cargo bench --bench plan`: how long `reconcile::plan` takes for 100,000 extensions against
//! 100,000 SIP users, against the bound of the engine-at-scale issue (100 ms). Pure CPU, no I/O.
//!
//! A small harness in the manner of criterion (one warm-up, then samples; median and spread),
//! without its dependency tree. Three shapes, each at 10k and 100k so that the growth shows:
//! - steady: every extension provisioned and matching (the no-change pass);
//! - fresh: every extension wanted, no SIP user yet (100,000 creates);
//! - mixed: a tenth switched off, a tenth drifted, a tenth foreign devices with their numbers
//!   under the right ICP (adoptions), a tenth lost guids (taken back by their credentials).

use std::time::{Duration, Instant};

use mbg_provision::mbg::{Icp, SipDevice};
use mbg_provision::reconcile::plan::{self, description};
use mbg_provision::store::{Extension, ExtensionKind, ExtensionState};
use secrecy::SecretString;

const BOUND: Duration = Duration::from_millis(100);
const SAMPLES: usize = 9;

fn icps() -> Vec<Icp> {
    (0..4)
        .map(|i| Icp {
            guid: format!("icp-guid-{i}"),
            name: format!("icp{i}"),
            address: format!("10.0.0.{}", 20 + i),
            icptype: "MiVoice Office".into(),
        })
        .collect()
}

fn extension(i: usize) -> Extension {
    let node = i % 4;
    Extension {
        id: i as i64 + 1,
        node_id: node as i64 + 1,
        node_name: format!("pbx{node}"),
        node_address: format!("10.0.0.{}", 20 + node),
        number: format!("{}", 1_000_000 + i),
        kind: ExtensionKind::Sip,
        sip_password: SecretString::from(format!("sip-password-{i}")),
        use_remote_auth: true,
        remote_auth_name: Some(format!("r{i:09}")),
        remote_auth_password: Some(SecretString::from(format!("remote-password-{i}"))),
        mbg_device_id: None,
        provisioned_by_us: false,
        state: ExtensionState::Pending,
        last_error: None,
        attempts: 0,
        next_attempt_at: None,
        version: 1,
        updated_at: 0,
    }
}

fn device_of(e: &Extension, guid: String) -> SipDevice {
    SipDevice {
        guid,
        icp: format!("icp{}", e.node_id - 1),
        setside_username: e.remote_auth_name.clone().unwrap(),
        setside_password: e.remote_auth_password.clone().unwrap(),
        icpside_username: e.number.clone(),
        icpside_password: e.sip_password.clone(),
        description: description(&e.number),
        enabled: true,
    }
}

/// The extensions and devices of one shape.
fn shape(name: &str, n: usize) -> (Vec<Extension>, Vec<SipDevice>) {
    let mut extensions: Vec<Extension> = (0..n).map(extension).collect();
    let mut devices = Vec::with_capacity(n);
    for (i, e) in extensions.iter_mut().enumerate() {
        let guid = format!(
            "{:08x}-0000-4000-8000-{i:012x}",
            i * 2_654_435_761 % (1 << 32)
        );
        match (name, i % 10) {
            ("fresh", _) => continue,
            ("mixed", 0) => {
                e.use_remote_auth = false;
                e.mbg_device_id = Some(guid.clone());
                e.provisioned_by_us = true;
                devices.push(device_of(e, guid));
            }
            ("mixed", 1) => {
                e.mbg_device_id = Some(guid.clone());
                e.provisioned_by_us = true;
                let mut drifted = device_of(e, guid);
                drifted.description = "changed by hand".into();
                devices.push(drifted);
            }
            ("mixed", 2) => {
                let mut foreign = device_of(e, guid);
                foreign.setside_username = format!("hand{i}");
                devices.push(foreign);
            }
            ("mixed", 3) => devices.push(device_of(e, guid)), // guid never recorded
            ("mixed", 4) => continue,                         // to create
            _ => {
                e.mbg_device_id = Some(guid.clone());
                e.provisioned_by_us = true;
                e.state = ExtensionState::Provisioned;
                devices.push(device_of(e, guid));
            }
        }
    }
    (extensions, devices)
}

fn main() {
    let icps = icps();
    println!("plan(): median of {SAMPLES} samples after one warm-up; bound {BOUND:?} at 100k");
    println!(
        "{:<8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>8}",
        "shape", "rows", "devices", "median", "min", "max", "actions"
    );
    let mut worst_ratio: f64 = 0.0;
    for name in ["steady", "fresh", "mixed"] {
        for n in [10_000, 100_000] {
            let (extensions, devices) = shape(name, n);
            let warm = plan::plan(&extensions, &[], &icps, &devices, None);
            let actions = warm.actions.len();
            let mut samples: Vec<Duration> = (0..SAMPLES)
                .map(|_| {
                    let started = Instant::now();
                    let made = plan::plan(&extensions, &[], &icps, &devices, None);
                    let took = started.elapsed();
                    assert_eq!(made.actions.len(), actions, "the plan is deterministic");
                    took
                })
                .collect();
            samples.sort();
            let median = samples[SAMPLES / 2];
            println!(
                "{name:<8} {n:>8} {:>8} {:>10.1?} {:>10.1?} {:>10.1?} {actions:>8}",
                devices.len(),
                median,
                samples[0],
                samples[SAMPLES - 1],
            );
            if n == 100_000 {
                worst_ratio = worst_ratio.max(median.as_secs_f64() / BOUND.as_secs_f64());
            }
        }
    }
    println!(
        "worst 100k median / bound = {worst_ratio:.2} ({})",
        if worst_ratio <= 1.0 { "met" } else { "MISSED" }
    );
}
