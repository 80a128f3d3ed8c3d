//! Why the MBG's certificate is not trusted, in the words an engineer can act on.
//!
//! The HTTP client only says "invalid peer certificate: UnknownIssuer". Here a TLS handshake is
//! made with the same trust (the system's roots plus `mbg.ca_file`, through the same platform
//! verifier the client uses), the certificate chain the MBG sends is kept, and the refusal is
//! told apart: self-signed, issued by a CA we do not trust, expired, or made for another name.
//! The handshake stops at the refusal: nothing is sent over a connection that is not trusted.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// What the MBG's certificate is, to a client with our trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Certificate {
    Trusted,
    /// Signed by its own key: trust it by naming it (or, better, the CA that should sign it) in
    /// `mbg.ca_file`.
    SelfSigned,
    /// Issued by a CA that neither the system nor `mbg.ca_file` trusts.
    UnknownIssuer,
    /// Past its `notAfter` (epoch seconds, when the verifier says).
    Expired {
        not_after: Option<i64>,
    },
    NotYetValid,
    /// Made for other names than the host in `mbg.base_url`.
    WrongHost {
        host: String,
        presented: Vec<String>,
    },
    /// A CA certificate (basicConstraints CA:TRUE) presented as the server's own, as openssl
    /// makes self-signed ones by default: WebPKI refuses it even as a trust anchor.
    CaAsServer,
    /// Any other refusal (revoked, bad signature, wrong key usage...), as rustls words it.
    Other(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProbeError {
    #[error("cannot connect to {address}: {why}")]
    Connect { address: String, why: String },
    #[error("no TLS handshake with {address}: {why}")]
    Handshake { address: String, why: String },
    #[error("{0}")]
    Setup(String),
}

/// Connects to `host:port` and judges the certificate it presents for `host`.
pub async fn probe(
    host: &str,
    port: u16,
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<Certificate, ProbeError> {
    let address = format!("{host}:{port}");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let extra_roots = match ca_file {
        Some(file) => read_roots(file)?,
        None => Vec::new(),
    };
    let trusted =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())
            .map_err(|e| ProbeError::Setup(format!("cannot load the trusted CAs: {e}")))?;
    let recorder = Arc::new(Recorder {
        inner: Arc::new(trusted),
        seen: Mutex::new(None),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ProbeError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
        .map_err(|e| ProbeError::Setup(format!("\"{host}\" is not a server name: {e}")))?
        .to_owned();
    let connect = |why: String| ProbeError::Connect {
        address: address.clone(),
        why,
    };
    let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&address))
        .await
        .map_err(|_| connect(format!("no answer within {} s", timeout.as_secs_f64())))?
        .map_err(|e| connect(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let handshake = tokio::time::timeout(timeout, connector.connect(name.clone(), tcp)).await;
    let seen = recorder.seen.lock().expect("not poisoned").take();
    let Some((chain, verdict)) = seen else {
        let why = match handshake {
            Err(_) => format!("no answer within {} s", timeout.as_secs_f64()),
            Ok(Err(e)) => e.to_string(),
            Ok(Ok(_)) => "the server sent no certificate".into(),
        };
        return Err(ProbeError::Handshake { address, why });
    };
    Ok(match verdict {
        Ok(()) => Certificate::Trusted,
        Err(rustls::Error::InvalidCertificate(error)) => {
            judge(error, &chain, &name, host, provider)
        }
        Err(other) => Certificate::Other(other.to_string()),
    })
}

fn read_roots(file: &Path) -> Result<Vec<CertificateDer<'static>>, ProbeError> {
    let setup = |why: String| ProbeError::Setup(format!("mbg.ca_file {}: {why}", file.display()));
    let roots = CertificateDer::pem_file_iter(file)
        .map_err(|e| setup(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| setup(format!("not PEM: {e}")))?;
    if roots.is_empty() {
        return Err(setup("holds no certificate".into()));
    }
    Ok(roots)
}

fn judge(
    error: CertificateError,
    chain: &[CertificateDer<'static>],
    name: &ServerName<'static>,
    host: &str,
    provider: Arc<CryptoProvider>,
) -> Certificate {
    use CertificateError as E;
    match error {
        E::UnknownIssuer if is_self_signed(chain, name, provider) => Certificate::SelfSigned,
        E::UnknownIssuer => Certificate::UnknownIssuer,
        E::Expired => Certificate::Expired { not_after: None },
        E::ExpiredContext { not_after, .. } => Certificate::Expired {
            not_after: i64::try_from(not_after.as_secs()).ok(),
        },
        E::NotValidYet | E::NotValidYetContext { .. } => Certificate::NotYetValid,
        E::NotValidForName => Certificate::WrongHost {
            host: host.to_string(),
            presented: Vec::new(),
        },
        E::NotValidForNameContext { presented, .. } => Certificate::WrongHost {
            host: host.to_string(),
            presented,
        },
        other => {
            let text = rustls::Error::InvalidCertificate(other).to_string();
            if text.contains("CaUsedAsEndEntity") {
                Certificate::CaAsServer
            } else {
                Certificate::Other(text)
            }
        }
    }
}

/// Whether the end-entity certificate verifies with itself as the only trust anchor: it was
/// signed by its own key. (A certificate issued by an unknown CA fails that with
/// `UnknownIssuer` again.)
fn is_self_signed(
    chain: &[CertificateDer<'static>],
    name: &ServerName<'static>,
    provider: Arc<CryptoProvider>,
) -> bool {
    let Some(end_entity) = chain.first() else {
        return false;
    };
    let mut itself = rustls::RootCertStore::empty();
    if itself.add(end_entity.clone()).is_err() {
        return false;
    }
    let Ok(verifier) =
        WebPkiServerVerifier::builder_with_provider(Arc::new(itself), provider).build()
    else {
        return false;
    };
    match verifier.verify_server_cert(end_entity, &[], name, &[], UnixTime::now()) {
        Ok(_) => true,
        Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => false,
        // Verified up to its own key, refused for its dates or names: still self-signed.
        Err(_) => true,
    }
}

/// The platform verifier, which also keeps the chain the server sent and its verdict.
#[derive(Debug)]
struct Recorder {
    inner: Arc<dyn ServerCertVerifier>,
    seen: Mutex<Option<Seen>>,
}

type Seen = (Vec<CertificateDer<'static>>, Result<(), rustls::Error>);

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        *self.seen.lock().expect("not poisoned") =
            Some((chain, verdict.as_ref().map(|_| ()).map_err(Clone::clone)));
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
