//! The port-forwarding rules that remote clients need on the site's firewall, toward the MBG.
//! Printed, not probed: the firewall faces the internet, and this host sits behind it.

use serde::Serialize;

/// The kinds of remote client a site may have, as `preflight --clients` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Client {
    /// Phone Manager Desktop (with its softphone)
    Desktop,
    /// Phone Manager Mobile (and its softphone)
    Mobile,
    /// Mitel 69xx SIP phones
    #[value(name = "69xx")]
    #[serde(rename = "69xx")]
    Phones69xx,
}

impl Client {
    pub fn label(self) -> &'static str {
        match self {
            Client::Desktop => "Phone Manager Desktop",
            Client::Mobile => "Phone Manager Mobile",
            Client::Phones69xx => "69xx phones",
        }
    }
}

/// One forwarding rule: from the internet to the MBG's address, these ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub client: Client,
    pub protocol: &'static str,
    pub ports: &'static [u16],
    pub purpose: &'static str,
}

/// What holds for every rule, whatever the clients.
pub const NOTES: [&str; 3] = [
    "SNAT on every rule: the MBG must see the firewall as the source, so that its answers go back the same way",
    "never forward 5060 (SIP) from the internet to the phone system or the MBG: it invites toll fraud",
    "remote softphones also need STUN (UDP 3478 by default); check the site's STUN server with `preflight --stun HOST[:PORT]`",
];

/// The rules for `clients`, in the order given, each client once.
pub fn rules(clients: &[Client]) -> Vec<Rule> {
    let mut seen = Vec::new();
    let mut rules = Vec::new();
    for &client in clients {
        if seen.contains(&client) {
            continue;
        }
        seen.push(client);
        let rule = |ports, purpose| Rule {
            client,
            protocol: "TCP",
            ports,
            purpose,
        };
        match client {
            Client::Desktop => rules.extend([
                rule(&[8186, 8187][..], "Phone Manager Desktop"),
                rule(&[8188], "Phone Manager Desktop"),
                rule(&[2001], "Phone Manager Desktop"),
                rule(&[8200, 8204], "Phone Manager Desktop"),
            ]),
            Client::Mobile => rules.extend([
                rule(&[8185], "Phone Manager Mobile"),
                rule(&[8190], "Phone Manager Mobile softphone"),
            ]),
            Client::Phones69xx => rules.push(rule(&[8202], "69xx phones")),
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(clients: &[Client]) -> Vec<u16> {
        rules(clients)
            .iter()
            .flat_map(|r| r.ports.iter().copied())
            .collect()
    }

    #[test]
    fn each_client_gets_its_ports_and_none_forwards_5060() {
        assert_eq!(
            ports(&[Client::Desktop]),
            [8186, 8187, 8188, 2001, 8200, 8204]
        );
        assert_eq!(ports(&[Client::Mobile]), [8185, 8190]);
        assert_eq!(ports(&[Client::Phones69xx]), [8202]);
        let all = ports(&[Client::Desktop, Client::Mobile, Client::Phones69xx]);
        assert!(!all.contains(&5060));
        assert!(rules(&[Client::Mobile]).iter().all(|r| r.protocol == "TCP"));
    }

    #[test]
    fn a_client_named_twice_gets_its_rules_once() {
        assert_eq!(
            rules(&[Client::Mobile, Client::Phones69xx, Client::Mobile]).len(),
            3
        );
    }
}
