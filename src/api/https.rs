//! HTTPS for the API (`DMUTEX_TLS_CERT`, `DMUTEX_TLS_KEY`, optional `DMUTEX_TLS_CLIENT_CA`).
//!
//! [`HttpsConfig`] is the rustls server configuration built from the PEM files, rebuilt when they change
//! ([`crate::tls::Reloading`]): each new connection is handshaken with the configuration current when it
//! was accepted, so a certificate replaced on disk is served without a restart, while open connections keep
//! the one they started with. With a client CA, every client must present a certificate that chains to it
//! (rustls's `WebPkiClientVerifier`). ALPN offers `h2` and `http/1.1`.
//!
//! [`TlsListener`] is an [`axum::serve::Listener`]: a background task accepts TCP connections and runs each
//! handshake in its own task, bounded by [`HANDSHAKE_TIMEOUT`], handing finished streams to the server over
//! a channel. So a client that sends garbage, speaks plain HTTP to the TLS port or stalls mid-handshake costs
//! one task for at most the timeout and ends only its own connection (logged at debug); the server never
//! waits for one handshake to accept the next. At most [`MAX_HANDSHAKES`] handshakes run at once: beyond
//! that, new connections wait in the listen backlog. Dropping the listener stops its accept task.

use crate::config::ApiTls;
use crate::tls::{Reloading, TlsError};
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take to complete the TLS handshake once its TCP connection was accepted.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many TLS handshakes may run at once; further connections wait in the listen backlog.
pub const MAX_HANDSHAKES: usize = 1024;

/// Finished handshakes waiting for the server to take them.
const READY_QUEUE: usize = 64;

/// A certificate file of the API that cannot be used at start: the configuration key it came from and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {error}")]
pub struct HttpsError {
    /// The environment variable naming the file (`DMUTEX_TLS_CERT`, `DMUTEX_TLS_KEY`, `DMUTEX_TLS_CLIENT_CA`).
    pub key: &'static str,
    /// The file and what is wrong with it.
    pub error: TlsError,
}

/// The API's TLS server configuration, kept current with its files (cheap to clone: one shared value).
#[derive(Clone)]
pub struct HttpsConfig {
    files: ApiTls,
    current: Arc<Reloading<ServerConfig>>,
    watching: Arc<AtomicBool>,
}

impl std::fmt::Debug for HttpsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsConfig").field("files", &self.files).finish_non_exhaustive()
    }
}

impl HttpsConfig {
    /// Reads the certificate, key and (if set) client CA files and builds the server configuration. An error
    /// names the configuration key of the file at fault: the node exits with it, like any configuration error.
    pub fn load(files: &ApiTls) -> Result<Self, HttpsError> {
        let inputs: Vec<PathBuf> = [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let f = files.clone();
        let current = Reloading::new("API certificate", inputs, move || server_config(&f))
            .map_err(|error| HttpsError { key: key_of(files, &error.path), error })?;
        Ok(HttpsConfig { files: files.clone(), current, watching: Arc::new(AtomicBool::new(false)) })
    }

    /// The configuration new connections are handshaken with.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.get()
    }

    /// Tells `hook` the outcome of every reload (`true`: the new files are in use); set once, e.g. to count
    /// reloads in `dmutex_credential_reloads_total`.
    pub fn on_reload(&self, hook: impl Fn(bool) + Send + Sync + 'static) {
        self.current.on_reload(hook);
    }

    /// Starts checking the files every `every` on the current runtime (once per configuration: later calls
    /// do nothing). The check ends when the last clone of this configuration is dropped.
    pub fn watch(&self, every: Duration) {
        if !self.watching.swap(true, Ordering::SeqCst) {
            self.current.watch(every);
        }
    }

    /// Checks the files now (as the periodic check does); returns whether new ones are in use.
    pub fn check(&self) -> bool {
        self.current.check()
    }
}

/// The configuration key of `path` (the certificate's when one file is given for several).
fn key_of(files: &ApiTls, path: &Path) -> &'static str {
    if path == files.cert {
        "DMUTEX_TLS_CERT"
    } else if path == files.key {
        "DMUTEX_TLS_KEY"
    } else if files.client_ca.as_deref() == Some(path) {
        "DMUTEX_TLS_CLIENT_CA"
    } else {
        "DMUTEX_TLS_CERT"
    }
}

/// Builds the server configuration from the files: ring, TLS 1.2 and 1.3, client certificates required
/// when a client CA is given, ALPN `h2` then `http/1.1`.
fn server_config(files: &ApiTls) -> Result<ServerConfig, TlsError> {
    let pair = crate::tls::load_key_pair(&files.cert, &files.key)?;
    let builder = ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError { path: files.cert.clone(), what: format!("no usable TLS version: {e}") })?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let roots = crate::tls::load_ca(ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, crate::tls::provider())
                .build()
                .map_err(|e| TlsError { path: ca.clone(), what: format!("not a usable client CA: {e}") })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(pair)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Counts of what the accept task saw (for tests and logs).
#[derive(Debug, Default)]
struct Counts {
    accepted: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    in_flight: AtomicU64,
}

/// A snapshot of a [`TlsListener`]'s handshakes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandshakeStats {
    /// TCP connections accepted.
    pub accepted: u64,
    /// Handshakes that failed (not TLS, a protocol error, a refused client certificate, the peer left).
    pub failed: u64,
    /// Handshakes that did not finish within the timeout.
    pub timed_out: u64,
    /// Handshakes running now.
    pub in_flight: u64,
}

/// A TLS listener for [`axum::serve()`]: accepts TCP and handshakes in the background (see the module doc).
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    counts: Arc<Counts>,
    accept: JoinHandle<()>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener").field("local", &self.local).finish_non_exhaustive()
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl TlsListener {
    /// Serves TLS on `listener` with `config`; starts the accept task on the current runtime.
    pub fn new(listener: TcpListener, config: HttpsConfig) -> std::io::Result<Self> {
        Self::with_timeout(listener, config, HANDSHAKE_TIMEOUT)
    }

    /// [`TlsListener::new`] with another handshake timeout.
    pub fn with_timeout(
        listener: TcpListener,
        config: HttpsConfig,
        timeout: Duration,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let counts = Arc::new(Counts::default());
        let accept = tokio::spawn(accept_loop(listener, config, timeout, tx, counts.clone()));
        Ok(TlsListener { ready, local, counts, accept })
    }

    /// What the accept task has seen so far.
    pub fn stats(&self) -> HandshakeStats {
        HandshakeStats {
            accepted: self.counts.accepted.load(Ordering::Relaxed),
            failed: self.counts.failed.load(Ordering::Relaxed),
            timed_out: self.counts.timed_out.load(Ordering::Relaxed),
            in_flight: self.counts.in_flight.load(Ordering::Relaxed),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task never ends by itself (it is aborted only when this listener is dropped).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: HttpsConfig,
    timeout: Duration,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    counts: Arc<Counts>,
) {
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                accept_error(e).await;
                continue;
            }
        };
        counts.accepted.fetch_add(1, Ordering::Relaxed);
        // The handshake's flights and the small API exchanges must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(config.current());
        let (ready, counts) = (ready.clone(), counts.clone());
        counts.in_flight.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    // Fails only when the server stopped accepting: the connection is then dropped.
                    let _ = ready.send((stream, peer)).await;
                }
                Ok(Err(e)) => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    counts.timed_out.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, ?timeout, "TLS handshake timed out");
                }
            }
            counts.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Like axum's own listener: errors of one connection are ignored, others (out of file descriptors) wait a
/// second before accepting again.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset) {
        return;
    }
    tracing::error!("accepting an HTTPS connection: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::peer_tls::{ThrowawayCa, Usage};
    use axum::serve::Listener as _;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn ca(name: &str) -> ThrowawayCa {
        ThrowawayCa::new(name).unwrap()
    }

    /// A client or a server certificate for `san` from `ca`, and its key (PEM).
    fn leaf(ca: &ThrowawayCa, san: &str, client: bool) -> (String, String) {
        ca.issue_with(&[san], if client { Usage::Client } else { Usage::Server }, None).unwrap()
    }

    fn files(dir: &Path, ca: &ThrowawayCa, client_ca: Option<&ThrowawayCa>) -> ApiTls {
        let (cert, key) = leaf(ca, "127.0.0.1", false);
        let files = ApiTls {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            client_ca: client_ca.map(|_| dir.join("client-ca.crt")),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        if let (Some(path), Some(c)) = (&files.client_ca, client_ca) {
            std::fs::write(path, c.ca_pem()).unwrap();
        }
        files
    }

    fn client(ca: &ThrowawayCa, identity: Option<(String, String)>) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca.ca_pem().as_bytes()).unwrap()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                    rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    use rustls::pki_types::pem::PemObject;

    /// Handshakes with `connector`, then the server echoes one line through the TLS stream it accepted.
    async fn round_trip(
        listener: &mut TlsListener,
        connector: &tokio_rustls::TlsConnector,
    ) -> Result<(), String> {
        let addr = listener.local_addr().unwrap();
        let connector = connector.clone();
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let name = ServerName::try_from("127.0.0.1").unwrap();
            let mut tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
            tls.write_all(b"ping\n").await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await.map_err(|e| format!("reading the echo: {e}"))?;
            Ok::<_, String>(buf)
        });
        // The server side serves the connections that complete their handshake; the client's outcome decides.
        let served = async {
            loop {
                let (mut io, _) = axum::serve::Listener::accept(listener).await;
                let mut buf = [0u8; 5];
                if io.read_exact(&mut buf).await.is_ok() {
                    let _ = io.write_all(&buf).await;
                    let _ = io.flush().await;
                }
            }
        };
        let client = tokio::time::timeout(Duration::from_secs(5), client);
        tokio::select! {
            r = client => {
                let echo = r.map_err(|_| "no answer within 5 s".to_string())?.map_err(|e| e.to_string())??;
                assert_eq!(&echo, b"ping\n");
                Ok(())
            }
            () = served => unreachable!("the server loop never ends"),
        }
    }

    /// The stats once every handshake task has ended (a refused handshake may end on the server side a
    /// little after the client saw it fail).
    async fn settled(listener: &TlsListener) -> HandshakeStats {
        for _ in 0..200 {
            if listener.stats().in_flight == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        listener.stats()
    }

    #[tokio::test]
    async fn a_bad_file_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let good = files(dir.path(), &ca("ca"), None);
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not PEM").unwrap();
        for (files, key) in [
            (ApiTls { cert: garbage.clone(), ..good.clone() }, "DMUTEX_TLS_CERT"),
            (ApiTls { key: garbage.clone(), ..good.clone() }, "DMUTEX_TLS_KEY"),
            (ApiTls { client_ca: Some(garbage.clone()), ..good.clone() }, "DMUTEX_TLS_CLIENT_CA"),
        ] {
            let e = HttpsConfig::load(&files).unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(e.to_string().starts_with(&format!("{key}: {}", garbage.display())), "{e}");
        }
        let c = HttpsConfig::load(&good).unwrap().current();
        assert_eq!(c.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[tokio::test]
    async fn serves_tls_and_requires_client_certificates_with_a_client_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (server_ca, client_ca, other) = (ca("server ca"), ca("client ca"), ca("other"));
        let config = HttpsConfig::load(&files(dir.path(), &server_ca, Some(&client_ca))).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut listener = TlsListener::new(tcp, config).unwrap();
        let e = round_trip(&mut listener, &client(&server_ca, None)).await.unwrap_err();
        assert!(!e.is_empty(), "no client certificate: refused");
        let stranger = leaf(&other, "client", true);
        round_trip(&mut listener, &client(&server_ca, Some(stranger))).await.unwrap_err();
        let member = leaf(&client_ca, "client", true);
        round_trip(&mut listener, &client(&server_ca, Some(member))).await.unwrap();
        let e = round_trip(&mut listener, &client(&other, None)).await.unwrap_err();
        assert!(e.contains("certificate"), "a client that trusts another CA fails: {e}");
        let s = settled(&listener).await;
        assert_eq!((s.accepted, s.failed, s.timed_out, s.in_flight), (4, 3, 0, 0), "{s:?}");
    }

    #[tokio::test]
    async fn garbage_and_stalled_handshakes_end_only_their_connection() {
        let dir = tempfile::tempdir().unwrap();
        let server_ca = ca("server ca");
        let config = HttpsConfig::load(&files(dir.path(), &server_ca, None)).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut listener = TlsListener::with_timeout(tcp, config, Duration::from_millis(300)).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut garbage = TcpStream::connect(addr).await.unwrap();
        garbage.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 0, 0, 0, 0]).await.unwrap();
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let _stalled = TcpStream::connect(addr).await.unwrap();
        // While those three are pending, a real client is served.
        round_trip(&mut listener, &client(&server_ca, None)).await.unwrap();
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
        assert!(n.is_ok(), "the plaintext client's connection is closed");
        tokio::time::sleep(Duration::from_millis(600)).await;
        let s = settled(&listener).await;
        assert_eq!((s.accepted, s.failed, s.timed_out, s.in_flight), (4, 2, 1, 0), "{s:?}");
        round_trip(&mut listener, &client(&server_ca, None)).await.unwrap();
    }

    #[tokio::test]
    async fn new_connections_get_a_replaced_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (ca("first"), ca("second"));
        let files = files(dir.path(), &first, None);
        let config = HttpsConfig::load(&files).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut listener = TlsListener::new(tcp, config.clone()).unwrap();
        round_trip(&mut listener, &client(&first, None)).await.unwrap();
        let (cert, key) = leaf(&second, "127.0.0.1", false);
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        assert!(config.check());
        round_trip(&mut listener, &client(&second, None)).await.unwrap();
        round_trip(&mut listener, &client(&first, None)).await.unwrap_err();
    }

    #[tokio::test]
    async fn dropping_the_listener_stops_accepting() {
        let dir = tempfile::tempdir().unwrap();
        let config = HttpsConfig::load(&files(dir.path(), &ca("ca"), None)).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = TlsListener::new(tcp, config).unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(addr).await.is_err(), "the socket is closed");
    }
}
