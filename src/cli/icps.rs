//! `icps`: which ICP on the MBG each node's address maps to; nodes with no ICP, ICPs with no
//! node.

use std::collections::HashSet;
use std::process::ExitCode;

use anyhow::Result;
use mbg_provision::app::App;
use serde::Serialize;

use super::context::{record_refusal, signed_client};
use super::output::{attention_if, print_json};

/// `icps --json`.
#[derive(Serialize)]
struct IcpsOutput<'a> {
    /// Every node, with the ICP whose address equals the node's (exit code 2 when one has none).
    nodes: Vec<NodeIcp<'a>>,
    /// ICPs on the MBG that no node's address matches.
    icps_without_node: Vec<OrphanIcp<'a>>,
}

/// A node and its ICP, in `icps --json`.
#[derive(Serialize)]
struct NodeIcp<'a> {
    /// The node's name.
    node: &'a str,
    /// The node's address, which must equal the ICP's "hostname or IP address".
    address: &'a str,
    /// The matching ICP's name; `null` when no ICP has this address.
    icp: Option<&'a str>,
    /// The matching ICP's guid; `null` when no ICP has this address.
    icp_guid: Option<&'a str>,
}

/// An ICP that no node maps to, in `icps --json`.
#[derive(Serialize)]
struct OrphanIcp<'a> {
    /// The ICP's name on the MBG.
    icp: &'a str,
    /// Its "hostname or IP address".
    address: &'a str,
    /// Its guid.
    guid: &'a str,
}

pub async fn run(app: &App, json: bool) -> Result<ExitCode> {
    let (client, generation) = signed_client(app).await?;
    let icps = match client.icps().await {
        Ok(icps) => icps,
        Err(e) => {
            record_refusal(app, generation, &e).await?;
            return Err(e.into());
        }
    };
    let nodes = app.store.nodes().await?;
    let rows: Vec<_> = nodes
        .iter()
        .map(|node| {
            let icp = icps.iter().find(|icp| icp.address == node.address);
            (node, icp)
        })
        .collect();
    let used: HashSet<&str> = rows
        .iter()
        .filter_map(|(_, icp)| icp.map(|i| i.guid.as_str()))
        .collect();
    let orphans: Vec<_> = icps
        .iter()
        .filter(|i| !used.contains(i.guid.as_str()))
        .collect();
    let unmapped = rows.iter().filter(|(_, icp)| icp.is_none()).count();
    if json {
        print_json(&IcpsOutput {
            nodes: rows
                .iter()
                .map(|(node, icp)| NodeIcp {
                    node: &node.name,
                    address: &node.address,
                    icp: icp.map(|i| i.name.as_str()),
                    icp_guid: icp.map(|i| i.guid.as_str()),
                })
                .collect(),
            icps_without_node: orphans
                .iter()
                .map(|i| OrphanIcp {
                    icp: &i.name,
                    address: &i.address,
                    guid: &i.guid,
                })
                .collect(),
        })?;
    } else {
        for (node, icp) in &rows {
            match icp {
                Some(icp) => println!("{:<16} {:<20} -> ICP {}", node.name, node.address, icp.name),
                None => println!(
                    "{:<16} {:<20} -> no ICP with this address: add one on the MBG or correct the node address",
                    node.name, node.address
                ),
            }
        }
        for icp in &orphans {
            println!(
                "ICP {} ({}) has no node: add one with `mbg-provision node add NAME --address {}`",
                icp.name, icp.address, icp.address
            );
        }
    }
    Ok(attention_if(unmapped > 0))
}
