//! What the remote clients need from the network, in two places an administrator configures:
//! the MBG's own *Port Forwarding* page, and the site firewall in front of the MBG. Printed, not
//! probed: the firewall faces the internet, and this host sits behind it.
//!
//! The MBG is the SIP edge: teleworker phones and softphones register at its external address
//! on the node's NAT SIP port (what `extension show` prints), so the site firewall must let SIP
//! and RTP reach the MBG. The "no 5060" rule is about the MBG's Port Forwarding page, which
//! forwards the Phone Manager and 69xx ports on to the application server: SIP never goes
//! there.

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

/// Where the figures of the Port Forwarding page come from.
const APP_SUITE_MANUAL: &str = "MiVoice Office Application Suite Technical Manual, Engineering Guidelines > Remote/Teleworker Connections > MiVoice Border Gateway (online edition, for MBG 10 and later)";
/// Where the figures of the site firewall come from.
const MBG_GUIDELINES: &str = "MiVoice Border Gateway Engineering Guidelines, Release 8.0";

/// One rule of the MBG's *Port Forwarding* page: these TCP ports, from the internet, forwarded
/// by the MBG to the application server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub client: Client,
    pub protocol: &'static str,
    pub ports: &'static [u16],
    pub purpose: &'static str,
    /// The Mitel document the figure comes from.
    pub source: &'static str,
}

/// What the site firewall must let through to the MBG's external address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiteRule {
    pub protocol: &'static str,
    /// A port, a range (`20000-31000`), or where to read it.
    pub ports: String,
    pub purpose: String,
    /// The Mitel document the figure comes from, or the MBG page that shows it.
    pub source: &'static str,
}

/// What holds for every rule of the Port Forwarding page, whatever the clients.
pub(crate) const NOTES: [&str; 3] = [
    "SNAT on every rule of the MBG's Port Forwarding page: the application server must see the MBG as the source, so that its answers go back the same way",
    "no 5060 (SIP) rule on the MBG's Port Forwarding page: SIP ends at the MBG itself (the site firewall rules below), never forwarded on to the phone system or the application server",
    "remote softphones also need STUN (UDP 3478 by default); check the site's STUN server with `preflight --stun HOST[:PORT]`",
];

/// What the site firewall must let reach the MBG for teleworker SIP clients (every kind of
/// client here registers a SIP user): SIP on each NAT SIP port the nodes give the phones, SIP
/// over TLS where used, and the MBG's RTP range.
pub(crate) fn site_rules(nat_sip_ports: &[u16]) -> Vec<SiteRule> {
    let mut ports: Vec<u16> = nat_sip_ports.to_vec();
    if ports.is_empty() {
        ports.push(5060);
    }
    ports.sort_unstable();
    ports.dedup();
    let sip = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        SiteRule {
            protocol: "UDP and TCP",
            ports: sip,
            purpose: "SIP registration and calls of the teleworker phones and softphones, on the node's NAT SIP port (the port `extension show` prints)".into(),
            source: MBG_GUIDELINES,
        },
        SiteRule {
            protocol: "TCP",
            ports: "the MBG's SIP TLS port".into(),
            purpose: "SIP over TLS, only if the phones use it: not confirmed in the guidelines cited here, so read the port on the MBG's SIP settings before opening it".into(),
            source: "the MBG's SIP settings page",
        },
        SiteRule {
            protocol: "UDP",
            ports: "20000-31000".into(),
            purpose: "voice (RTP/SRTP) to the MBG: 20000 up to the upper bound configured on the MBG, 31000 by default".into(),
            source: MBG_GUIDELINES,
        },
    ]
}

/// The rules for `clients`, in the order given, each client once.
pub(crate) fn rules(clients: &[Client]) -> Vec<Rule> {
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
            source: APP_SUITE_MANUAL,
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
    fn the_site_firewall_lets_sip_reach_the_mbg_on_each_nat_sip_port() {
        let rules = site_rules(&[5062, 5060, 5062]);
        assert_eq!(rules[0].ports, "5060, 5062");
        assert!(rules[0].protocol.contains("UDP"));
        assert_eq!(site_rules(&[])[0].ports, "5060", "the default NAT SIP port");
        assert!(rules.iter().any(|r| r.ports == "20000-31000"));
        // Every figure says where it comes from.
        assert!(rules.iter().all(|r| !r.source.is_empty()));
        assert!(
            super::rules(&[Client::Desktop])
                .iter()
                .all(|r| !r.source.is_empty())
        );
    }

    #[test]
    fn a_client_named_twice_gets_its_rules_once() {
        assert_eq!(
            rules(&[Client::Mobile, Client::Phones69xx, Client::Mobile]).len(),
            3
        );
    }
}
