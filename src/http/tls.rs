//! TLS on `http.listen` (`http.tls_cert`, `http.tls_key`): the console's passwords and session
//! cookies, and `/healthz` and `/metrics` with them, over rustls (the crypto provider the rest
//! of the program uses). A renewed certificate is picked up without a restart: the files are
//! looked at again, at most every [`RECHECK`], and read again when they changed.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How often the certificate files are looked at for a change.
const RECHECK: Duration = Duration::from_secs(10);
/// How long a client may take over its handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {key} {}: {error}", .path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        error: String,
    },
    #[error("{key} {}: {reason}", .path.display())]
    Bad {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// The certificate files, and what was last read from them.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    modified: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let read = |what: &'static str, path: &Path| {
        std::fs::read(path).map_err(|e| TlsError::Read {
            key: what,
            path: path.to_path_buf(),
            error: e.to_string(),
        })
    };
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read("http.tls_cert", cert)?)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Bad {
                key: "http.tls_cert",
                path: cert.to_path_buf(),
                reason: format!("not PEM certificates: {e}"),
            })?;
    if certs.is_empty() {
        return Err(TlsError::Bad {
            key: "http.tls_cert",
            path: cert.to_path_buf(),
            reason: "holds no certificate".into(),
        });
    }
    let private =
        PrivateKeyDer::from_pem_slice(&read("http.tls_key", key)?).map_err(|e| TlsError::Bad {
            key: "http.tls_key",
            path: key.to_path_buf(),
            reason: format!("no PEM private key: {e}"),
        })?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&private).map_err(|e| {
        TlsError::Bad {
            key: "http.tls_key",
            path: key.to_path_buf(),
            reason: format!("not a usable private key: {e}"),
        }
    })?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|e| TlsError::Bad {
        key: "http.tls_key",
        path: key.to_path_buf(),
        reason: format!("does not belong to the certificate in http.tls_cert: {e}"),
    })?;
    Ok(Arc::new(certified))
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= RECHECK {
            state.checked = Instant::now();
            let now = (modified(&self.cert), modified(&self.key));
            if now != state.modified {
                // A renewal half written keeps the old pair until both files are complete.
                match load(&self.cert, &self.key) {
                    Ok(key) => {
                        tracing::info!(cert = %self.cert.display(), "http: the TLS certificate changed on disk and is now served");
                        state.key = key;
                        state.modified = now;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "http: the TLS certificate changed but cannot be used; the previous one is still served")
                    }
                }
            }
        }
        Some(state.key.clone())
    }
}

/// The acceptor for `http.tls_cert` and `http.tls_key`, read now so that a bad file stops the
/// start naming it.
pub(crate) fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let loaded = load(cert, key)?;
    let resolver = Reloading {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        state: Mutex::new(Loaded {
            key: loaded,
            modified: (modified(cert), modified(key)),
            checked: Instant::now(),
        }),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Bad {
            key: "http.tls_cert",
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts TLS connections: handshakes run in their own tasks, so that one slow client holds
/// up nobody else.
pub(crate) struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub(crate) fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (done, ready) = mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::debug!(error = %e, "http: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, done) = (acceptor.clone(), done.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = done.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %peer, "http: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "http: TLS handshake took too long"),
                    }
                });
            }
        });
        Ok(TlsListener {
            local,
            ready,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
