//! `node add`, `node set` and `node list`: the PBX nodes.

use std::process::ExitCode;

use anyhow::Result;
use mbg_provision::app::App;
use mbg_provision::store::{NewNode, Node, NodeChange, StoreError};

use super::args::NodeCommand;
use super::output::print_json;

/// `--json` prints the stored node (`node add`) or the list of them (`node list`), each with
/// `id`, `name`, `address`, `nat_address` and `nat_sip_port`.
pub async fn run(app: &App, command: NodeCommand) -> Result<ExitCode> {
    match command {
        NodeCommand::Add {
            name,
            address,
            nat_address,
            nat_sip_port,
            output,
        } => {
            let node = app
                .store
                .add_node(&NewNode {
                    name,
                    address,
                    nat_address,
                    nat_sip_port,
                })
                .await
                .map_err(option_error)?;
            if output.json {
                print_json(&node)?;
            } else {
                println!("added node {} ({})", node.name, node.address);
            }
        }
        NodeCommand::Set {
            name,
            address,
            nat_address,
            nat_sip_port,
            output,
        } => {
            let node = app
                .store
                .update_node(
                    &name,
                    &NodeChange {
                        address,
                        nat_address,
                        nat_sip_port,
                    },
                )
                .await
                .map_err(option_error)?;
            if output.json {
                print_json(&node)?;
            } else {
                println!(
                    "node {}: address {}, NAT address {}, NAT SIP port {}",
                    node.name,
                    node.address,
                    node.nat_address.as_deref().unwrap_or("not set"),
                    node.nat_sip_port
                        .map_or_else(|| "not set (5060)".to_string(), |p| p.to_string())
                );
            }
        }
        NodeCommand::List { output } => {
            let nodes = app.store.nodes().await?;
            if output.json {
                print_json(&nodes)?;
            } else {
                print_nodes(&nodes);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An IP address or a DNS host name, as the MBG's ICP page accepts.
/// The store names a bad address by its column; on the command line it is the option.
fn option_error(error: StoreError) -> anyhow::Error {
    match &error {
        StoreError::Invalid {
            field: "node address",
            reason,
        } => anyhow::anyhow!("--address {reason}"),
        StoreError::Invalid {
            field: "node NAT address",
            reason,
        } => anyhow::anyhow!("--nat-address {reason}"),
        _ => error.into(),
    }
}

fn print_nodes(nodes: &[Node]) {
    if nodes.is_empty() {
        println!("no nodes yet: add one with `mbg-provision node add NAME --address IP`");
        return;
    }
    println!(
        "{:<20} {:<40} {:<40} NAT SIP PORT",
        "NAME", "ADDRESS", "NAT ADDRESS"
    );
    for node in nodes {
        println!(
            "{:<20} {:<40} {:<40} {}",
            node.name,
            node.address,
            node.nat_address.as_deref().unwrap_or("-"),
            node.nat_sip_port.map_or("-".to_string(), |p| p.to_string())
        );
    }
}
