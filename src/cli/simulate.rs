//! `simulate`: the MBG simulator as a standalone server, until Ctrl-C.

use std::process::ExitCode;

use anyhow::{Context, Result};
use mbg_provision::sim::{self, SimConfig, SimConsumer};

use super::args::SimulateArgs;

pub async fn run(args: SimulateArgs) -> Result<ExitCode> {
    let mut config = SimConfig {
        auto_approve: args.auto_approve,
        approve_with: args.verifier.clone(),
        licences: args.licences,
        duplicate_setside_names: args.allow_duplicate_setside_names,
        ..SimConfig::default()
    };
    config.faults.latency_ms = args.latency_ms;
    config.faults.fail_rate = args.fail_rate;
    for consumer in &args.consumers {
        let (id, secret) = consumer
            .split_once(':')
            .with_context(|| format!("--consumer {consumer:?} must be ID:SECRET"))?;
        config.consumers.push(SimConsumer::new(id, secret));
    }
    for icp in &args.icps {
        let (name, address) = icp
            .split_once('=')
            .with_context(|| format!("--icp {icp:?} must be NAME=ADDRESS"))?;
        config.icps.push((name.to_string(), address.to_string()));
    }
    let handle = sim::start(config, args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!("MBG simulator serving {}", handle.base_url());
    println!("admin API: http://{}/sim/ (loopback only)", handle.addr());
    if let Some(verifier) = &args.verifier {
        println!("temporary tokens are approved at once; the verifier is {verifier}");
    }
    tokio::signal::ctrl_c().await?;
    Ok(ExitCode::SUCCESS)
}
