//! A STUN Binding request (RFC 8489), for `preflight --stun`: remote softphones find their public
//! address through the site's STUN server, and a blocked UDP port there shows up only as one-way
//! audio on the first call. A request and its answer are a few dozen bytes, so the encoder and
//! decoder are here, tested against the RFC 5769 vectors, rather than a crate with a whole agent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;

const MAGIC_COOKIE: u32 = 0x2112_A442;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;
const MAPPED_ADDRESS: u16 = 0x0001;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ERROR_CODE: u16 = 0x0009;
const HEADER_LEN: usize = 20;

/// The default STUN port (RFC 8489 §18.6).
pub(crate) const DEFAULT_PORT: u16 = 3478;

/// First retransmission timeout; each later one doubles (RFC 8489 §6.2.1). The RFC's seven
/// transmissions take 39.5 s, too long for a check an engineer waits for: four go out, at 0,
/// 0.5, 1.5 and 3.5 s, and the answer may come until 5.5 s.
const RTO: Duration = Duration::from_millis(500);
const TRANSMISSIONS: u32 = 4;
const LAST_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StunError {
    #[error("cannot resolve {host}: {why}")]
    Resolve { host: String, why: String },
    #[error("cannot send to {server}: {why}")]
    Io { server: SocketAddr, why: String },
    #[error(
        "{server} refused the request (ICMP port unreachable): no STUN server listens on that UDP port"
    )]
    Refused { server: SocketAddr },
    #[error(
        "no answer from {server} after {transmissions} requests over {seconds:.1} s: UDP to that port is blocked, or no STUN server runs there"
    )]
    NoAnswer {
        server: SocketAddr,
        transmissions: u32,
        seconds: f64,
    },
    #[error("{server} answered with STUN error {code}: {reason}")]
    ErrorResponse {
        server: SocketAddr,
        code: u16,
        reason: String,
    },
    #[error("{server} answered something that is not a STUN Binding answer: {why}")]
    Malformed { server: SocketAddr, why: String },
}

/// A Binding request with this transaction id: a bare header, no attributes.
pub(crate) fn binding_request(transaction: [u8; 12]) -> [u8; HEADER_LEN] {
    let mut message = [0u8; HEADER_LEN];
    message[0..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
    // Message length 0: no attributes.
    message[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    message[8..20].copy_from_slice(&transaction);
    message
}

/// What a datagram said in answer to the request with `transaction`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The address the server saw the request come from.
    Mapped(SocketAddr),
    Error {
        code: u16,
        reason: String,
    },
    /// Not an answer to our request (another transaction, not STUN): keep waiting.
    Unrelated,
}

/// Reads a Binding answer. `Err` names what is wrong with an answer to our transaction.
pub(crate) fn parse_answer(datagram: &[u8], transaction: &[u8; 12]) -> Result<Answer, String> {
    if datagram.len() < HEADER_LEN
        || datagram[0] & 0xC0 != 0
        || u32::from_be_bytes(datagram[4..8].try_into().expect("4 bytes")) != MAGIC_COOKIE
        || &datagram[8..20] != transaction
    {
        return Ok(Answer::Unrelated);
    }
    let kind = u16::from_be_bytes([datagram[0], datagram[1]]);
    let length = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let Some(body) = datagram.get(HEADER_LEN..HEADER_LEN + length) else {
        return Err(format!(
            "its length field says {length} bytes, the datagram holds {}",
            datagram.len() - HEADER_LEN
        ));
    };
    let mut mapped = None;
    let mut xor_mapped = None;
    let mut error = None;
    for (attribute, value) in attributes(body)? {
        match attribute {
            XOR_MAPPED_ADDRESS => xor_mapped = Some(address(value, Some(transaction))?),
            MAPPED_ADDRESS => mapped = Some(address(value, None)?),
            ERROR_CODE if value.len() >= 4 => {
                let code = u16::from(value[2] & 0x07) * 100 + u16::from(value[3]);
                let reason = String::from_utf8_lossy(&value[4..]).trim().to_string();
                error = Some((code, reason));
            }
            _ => {}
        }
    }
    match kind {
        BINDING_SUCCESS => xor_mapped
            .or(mapped)
            .map(Answer::Mapped)
            .ok_or_else(|| "a success answer without a mapped address".to_string()),
        BINDING_ERROR => {
            let (code, reason) = error.unwrap_or((0, "no ERROR-CODE attribute".into()));
            Ok(Answer::Error { code, reason })
        }
        other => Err(format!("message type {other:#06x} is not a Binding answer")),
    }
}

/// Whether a datagram has a STUN header (RFC 8489 §5: two zero bits, the magic cookie).
fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN
        && datagram[0] & 0xC0 == 0
        && datagram[4..8] == MAGIC_COOKIE.to_be_bytes()
}

/// The attributes of a message body, each padded to 4 bytes (RFC 8489 §14).
fn attributes(mut body: &[u8]) -> Result<Vec<(u16, &[u8])>, String> {
    let mut found = Vec::new();
    while !body.is_empty() {
        if body.len() < 4 {
            return Err("an attribute header is cut short".into());
        }
        let attribute = u16::from_be_bytes([body[0], body[1]]);
        let length = usize::from(u16::from_be_bytes([body[2], body[3]]));
        let padded = length.div_ceil(4) * 4;
        let value = body
            .get(4..4 + length)
            .ok_or_else(|| format!("attribute {attribute:#06x} is cut short"))?;
        found.push((attribute, value));
        body = body.get(4 + padded..).unwrap_or_default();
    }
    Ok(found)
}

/// A (XOR-)MAPPED-ADDRESS value; XORed with the cookie and `transaction` when given.
fn address(value: &[u8], transaction: Option<&[u8; 12]>) -> Result<SocketAddr, String> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port_mask = transaction.map_or(0, |_| (MAGIC_COOKIE >> 16) as u16);
    if value.len() < 4 {
        return Err("a mapped address attribute cut short".into());
    }
    let port = u16::from_be_bytes([value[2], value[3]]) ^ port_mask;
    let ip = match (value[1], value.len()) {
        (0x01, 8) => {
            let mut octets: [u8; 4] = value[4..8].try_into().expect("4 bytes");
            if transaction.is_some() {
                octets.iter_mut().zip(cookie).for_each(|(o, c)| *o ^= c);
            }
            IpAddr::V4(Ipv4Addr::from(octets))
        }
        (0x02, 20) => {
            let mut octets: [u8; 16] = value[4..20].try_into().expect("16 bytes");
            if let Some(transaction) = transaction {
                let mask = cookie.iter().chain(transaction);
                octets.iter_mut().zip(mask).for_each(|(o, m)| *o ^= m);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        (family, _) => return Err(format!("address family {family:#04x} of the wrong length")),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Sends a Binding request to `host[:port]` over UDP and returns the mapped address it answers.
pub async fn binding(server: &str) -> Result<(SocketAddr, SocketAddr), StunError> {
    let server = resolve(server).await?;
    let io = |e: std::io::Error| StunError::Io {
        server,
        why: e.to_string(),
    };
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await.map_err(io)?;
    // Connected: the kernel drops datagrams from elsewhere and reports ICMP unreachable.
    socket.connect(server).await.map_err(io)?;
    let transaction: [u8; 12] = rand::RngExt::random(&mut rand::rng());
    let request = binding_request(transaction);
    let started = std::time::Instant::now();
    let mut buffer = [0u8; 1500];
    let mut wait = RTO;
    for sent in 1..=TRANSMISSIONS {
        match socket.send(&request).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(StunError::Refused { server });
            }
            other => other.map_err(io)?,
        };
        let deadline = tokio::time::Instant::now()
            + if sent == TRANSMISSIONS {
                LAST_WAIT
            } else {
                wait
            };
        loop {
            let received = tokio::time::timeout_at(deadline, socket.recv(&mut buffer)).await;
            let Ok(received) = received else { break };
            let n = match received {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err(StunError::Refused { server });
                }
                other => other.map_err(io)?,
            };
            match parse_answer(&buffer[..n], &transaction) {
                Ok(Answer::Mapped(mapped)) => return Ok((server, mapped)),
                Ok(Answer::Error { code, reason }) => {
                    return Err(StunError::ErrorResponse {
                        server,
                        code,
                        reason,
                    });
                }
                // Something answered, but not with STUN (a SIP or HTTP port, an echo service).
                Ok(Answer::Unrelated) if !is_stun(&buffer[..n]) => {
                    return Err(StunError::Malformed {
                        server,
                        why: format!(
                            "{n} bytes without a STUN header: is this the STUN server's port?"
                        ),
                    });
                }
                Ok(Answer::Unrelated) => continue,
                Err(why) => return Err(StunError::Malformed { server, why }),
            }
        }
        wait *= 2;
    }
    Err(StunError::NoAnswer {
        server,
        transmissions: TRANSMISSIONS,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `HOST`, `HOST:PORT`, `[V6]:PORT`, a bare IPv6 address, or the `stun:` URI form softphones
/// are configured with; the port defaults to 3478.
async fn resolve(given: &str) -> Result<SocketAddr, StunError> {
    let resolve_error = |why: String| StunError::Resolve {
        host: given.to_string(),
        why,
    };
    let server = given.trim();
    let server = server.strip_prefix("stun:").unwrap_or(server);
    if server.is_empty() {
        return Err(resolve_error("no host given".into()));
    }
    if let Ok(ip) = server.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    let with_port = match server.rsplit_once(':') {
        Some((_, "0")) => return Err(resolve_error("port 0 is not a port to send to".into())),
        Some((_, port)) if port.parse::<u16>().is_ok() => server.to_string(),
        Some((_, port)) if !server.ends_with(']') => {
            return Err(resolve_error(format!("\"{port}\" is not a port number")));
        }
        _ => format!("{server}:{DEFAULT_PORT}"),
    };
    let mut addresses = tokio::net::lookup_host(&with_port)
        .await
        .map_err(|e| resolve_error(e.to_string()))?;
    addresses
        .next()
        .ok_or_else(|| resolve_error("no address".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5769 §2.1–2.3 use this transaction id.
    const TRANSACTION: [u8; 12] = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];

    #[test]
    fn a_request_is_a_bare_binding_header() {
        let request = binding_request(TRANSACTION);
        assert_eq!(
            &request[..8],
            &[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42]
        );
        assert_eq!(&request[8..], &TRANSACTION);
    }

    /// RFC 5769 §2.2, "Sample IPv4 Response", byte for byte (with SOFTWARE, MESSAGE-INTEGRITY
    /// and FINGERPRINT, which are skipped).
    #[test]
    fn the_rfc_5769_ipv4_response_maps_to_192_0_2_1_port_32853() {
        let response: [u8; 80] = [
            0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34,
            0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74,
            0x20, 0x76, 0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01,
            0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99,
            0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b,
            0xe7, 0xd7, 0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96,
        ];
        assert_eq!(
            parse_answer(&response, &TRANSACTION),
            Ok(Answer::Mapped("192.0.2.1:32853".parse().unwrap()))
        );
        let mut other = TRANSACTION;
        other[0] ^= 1;
        assert_eq!(parse_answer(&response, &other), Ok(Answer::Unrelated));
        assert!(
            parse_answer(&response[..60], &TRANSACTION).is_err(),
            "cut short"
        );
    }

    /// The XOR-MAPPED-ADDRESS of RFC 5769 §2.3, "Sample IPv6 Response".
    #[test]
    fn the_rfc_5769_ipv6_address_decodes() {
        let mut response = vec![0x01, 0x01, 0x00, 0x18, 0x21, 0x12, 0xa4, 0x42];
        response.extend_from_slice(&TRANSACTION);
        response.extend_from_slice(&[
            0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3,
            0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        ]);
        assert_eq!(
            parse_answer(&response, &TRANSACTION),
            Ok(Answer::Mapped(
                "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                    .parse()
                    .unwrap()
            ))
        );
    }

    #[test]
    fn an_error_answer_gives_its_code_and_reason() {
        let mut response = vec![0x01, 0x11, 0x00, 0x10, 0x21, 0x12, 0xa4, 0x42];
        response.extend_from_slice(&TRANSACTION);
        // ERROR-CODE 420 "Unknown", padded to 12 bytes.
        response.extend_from_slice(&[0x00, 0x09, 0x00, 0x0b, 0, 0, 4, 20]);
        response.extend_from_slice(b"Unknown\0");
        assert_eq!(
            parse_answer(&response, &TRANSACTION),
            Ok(Answer::Error {
                code: 420,
                reason: "Unknown".into()
            })
        );
    }

    #[test]
    fn a_success_without_an_address_is_malformed() {
        let mut response = vec![0x01, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        response.extend_from_slice(&TRANSACTION);
        assert!(parse_answer(&response, &TRANSACTION).is_err());
    }

    /// Found by a hostile run: a UDP service that is not STUN (here, one answering "hello")
    /// was reported as "blocked" after 5.5 s.
    #[tokio::test]
    async fn a_service_that_is_not_stun_is_named_as_such() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buffer = [0u8; 64];
            while let Ok((_, from)) = server.recv_from(&mut buffer).await {
                let _ = server.send_to(b"hello", from).await;
            }
        });
        let started = std::time::Instant::now();
        let answer = binding(&address.to_string()).await;
        assert!(
            matches!(&answer, Err(StunError::Malformed { why, .. }) if why.contains("without a STUN header")),
            "{answer:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn hosts_and_ports_resolve_with_3478_by_default() {
        assert_eq!(
            resolve("127.0.0.1").await.unwrap(),
            "127.0.0.1:3478".parse().unwrap()
        );
        assert_eq!(resolve("localhost:5349").await.unwrap().port(), 5349);
        assert_eq!(resolve("::1").await.unwrap(), "[::1]:3478".parse().unwrap());
        assert_eq!(
            resolve("stun:127.0.0.1:3479").await.unwrap(),
            "127.0.0.1:3479".parse().unwrap(),
            "the URI form softphones use"
        );
        assert_eq!(
            resolve(" 127.0.0.1 ").await.unwrap(),
            "127.0.0.1:3478".parse().unwrap()
        );
        for bad in ["stun.example:x", "", "  ", "127.0.0.1:0", "127.0.0.1:70000"] {
            assert!(
                matches!(resolve(bad).await, Err(StunError::Resolve { .. })),
                "{bad:?}"
            );
        }
    }
}
