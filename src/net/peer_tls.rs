//! Mutual TLS on peer links (`DMUTEX_PEER_TLS_CERT`, `DMUTEX_PEER_TLS_KEY`, `DMUTEX_PEER_TLS_CA`).
//!
//! Every node presents its certificate both ways (as the server of the connections it accepts, as the
//! client of those it dials) and verifies the other side's chain against the cluster CA. Identity:
//! - the dialer checks the acceptor's certificate is valid for the host of the address it dials (an IP
//!   literal or a DNS name, as rustls's server name);
//! - the acceptor checks, once the Hello names node X, that the dialer's certificate is valid for the host of
//!   X's address as this node knows it (the peer list, or the address the membership gave for a joiner): a
//!   node with a valid cluster certificate cannot claim another node's id.
//!
//! The certificate, key and CA are re-read when their files change (see [`crate::tls::Reloading`]); new
//! connections use the new ones, established ones keep theirs.

use crate::tls::{self, Reloading, TlsError};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The peer TLS credentials of a node, kept current from their files.
pub struct PeerTls {
    configs: Arc<Reloading<Configs>>,
}

struct Configs {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTls").finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Loads the node's certificate chain and key and the cluster CA (an error names the file).
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Arc<PeerTls>, TlsError> {
        let (c, k, a) = (cert.to_path_buf(), key.to_path_buf(), ca.to_path_buf());
        let files: Vec<PathBuf> = vec![c.clone(), k.clone(), a.clone()];
        let configs = Reloading::new("peer certificate", files, move || build(&c, &k, &a))?;
        Ok(Arc::new(PeerTls { configs }))
    }

    /// The peer TLS of a node's configuration (`None` when `DMUTEX_PEER_TLS_*` are not set), loaded; an
    /// error names the configuration key of the file that does not load.
    pub fn from_config(security: &crate::config::SecurityConfig) -> Result<Option<Arc<PeerTls>>, String> {
        let Some(files) = &security.peer_tls else { return Ok(None) };
        PeerTls::load(&files.cert, &files.key, &files.ca).map(Some).map_err(|e| {
            let key = if e.path == files.key {
                "DMUTEX_PEER_TLS_KEY"
            } else if e.path == files.ca {
                "DMUTEX_PEER_TLS_CA"
            } else {
                "DMUTEX_PEER_TLS_CERT"
            };
            format!("{key}: {e}")
        })
    }

    /// Re-reads the files every `every` on the current tokio runtime (until this is dropped).
    pub fn watch(&self, every: Duration) {
        self.configs.watch(every);
    }

    /// Sets the function told the outcome of every reload (e.g. to count it); once.
    pub fn on_reload(&self, hook: impl Fn(bool) + Send + Sync + 'static) {
        self.configs.on_reload(hook);
    }

    /// Checks the files now: reloads if they changed; whether new credentials are in use.
    pub fn check(&self) -> bool {
        self.configs.check()
    }

    /// The acceptor for new inbound connections (current credentials).
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.configs.get().server.clone())
    }

    /// The connector for new outbound connections (current credentials).
    pub(crate) fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.configs.get().client.clone())
    }
}

fn build(cert: &Path, key: &Path, ca: &Path) -> Result<Configs, TlsError> {
    let pair = tls::load_key_pair(cert, key)?;
    let roots = tls::load_ca(ca)?;
    let provider = tls::provider();
    let err = |path: &Path, what: String| TlsError { path: path.to_path_buf(), what };
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| err(ca, format!("cannot verify client certificates with this CA: {e}")))?;
    let resolver = Arc::new(Fixed(pair));
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(cert, format!("no TLS protocol version: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver.clone());
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(cert, format!("no TLS protocol version: {e}")))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(resolver);
    Ok(Configs { server: Arc::new(server), client: Arc::new(client) })
}

/// Always presents the node's one certificate.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl ResolvesClientCert for Fixed {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A throwaway cluster CA, for `dmutex cluster --peer-tls` and the tests: a fresh key every time, never
/// written anywhere but the run's directory. Not for production (use your PKI, e.g. cert-manager).
pub struct ThrowawayCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl fmt::Debug for ThrowawayCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrowawayCa").finish_non_exhaustive()
    }
}

impl ThrowawayCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Result<Self, rcgen::Error> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose as K};
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![K::KeyCertSign, K::CrlSign, K::DigitalSignature];
        Ok(ThrowawayCa { issuer: rcgen::CertifiedIssuer::self_signed(params, KeyPair::generate()?)? })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A node certificate for `hosts` (IP addresses become IP SANs, names DNS SANs), usable as TLS server
    /// and client, and its private key: `(certificate PEM, key PEM)`.
    pub fn issue(&self, hosts: &[&str]) -> Result<(String, String), rcgen::Error> {
        self.issue_with(hosts, Usage::ServerAndClient, None)
    }

    /// [`ThrowawayCa::issue`] for `usage` only and, if given, with serial number `serial` (otherwise rcgen
    /// derives one from the key): for tests that tell certificates apart or need a client-only one.
    pub fn issue_with(
        &self,
        hosts: &[&str],
        usage: Usage,
        serial: Option<u64>,
    ) -> Result<(String, String), rcgen::Error> {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose as E, KeyPair, KeyUsagePurpose as K};
        let mut params = CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, hosts.first().copied().unwrap_or("dmutex"));
        params.serial_number = serial.map(rcgen::SerialNumber::from);
        params.key_usages = vec![K::DigitalSignature];
        params.extended_key_usages = match usage {
            Usage::ServerAndClient => vec![E::ServerAuth, E::ClientAuth],
            Usage::Server => vec![E::ServerAuth],
            Usage::Client => vec![E::ClientAuth],
        };
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Writes `ca.pem` (if missing) and `<name>.crt`/`<name>.key` for `hosts` into `dir`: the paths of the
    /// certificate, key and CA.
    pub fn write(
        &self,
        dir: &Path,
        name: &str,
        hosts: &[&str],
    ) -> std::io::Result<(PathBuf, PathBuf, PathBuf)> {
        let (cert, key) = self.issue(hosts).map_err(std::io::Error::other)?;
        let (c, k, a) =
            (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")), dir.join("ca.pem"));
        std::fs::write(&c, cert)?;
        std::fs::write(&k, key)?;
        if !a.exists() {
            std::fs::write(&a, self.ca_pem())?;
        }
        Ok((c, k, a))
    }
}

/// What a certificate from [`ThrowawayCa::issue_with`] may be used for (its extended key usage).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// TLS server and client: a node's certificate ([`ThrowawayCa::issue`]).
    ServerAndClient,
    /// TLS server only.
    Server,
    /// TLS client only.
    Client,
}

/// The host of a `host:port` peer address (brackets around an IPv6 literal), as a TLS server name.
pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = match addr.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => addr,
    };
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host:?} (from {addr:?}) is neither an IP address nor a DNS name: {e}"))
}

/// Whether `cert` (an end-entity certificate whose chain was verified) is valid for the host of `addr`.
pub fn names_host(cert: &CertificateDer<'_>, addr: &str) -> Result<(), String> {
    let name = server_name(addr)?;
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("unparsable certificate: {e}"))?;
    ee.verify_is_valid_for_subject_name(&name)
        .map_err(|e| format!("the certificate is not valid for {:?}: {e}", name.to_str()))
}

/// The rustls error inside an I/O error of a TLS stream, if that is what it is.
pub(crate) fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
}

/// What went wrong in a TLS handshake, as a refusal reason (a `dmutex_refused_connections_total` label) and
/// a sentence for the log.
pub(crate) fn classify(e: &std::io::Error, side: &str) -> (&'static str, String) {
    use rustls::{AlertDescription as A, Error as E};
    let Some(err) = rustls_error(e) else {
        return ("tls_handshake", format!("connection failed during the TLS handshake: {e}"));
    };
    match err {
        E::InvalidCertificate(c) => (
            "tls_bad_certificate",
            format!("the {side}'s certificate does not verify against the cluster CA: {c:?}"),
        ),
        E::NoCertificatesPresented => ("tls_bad_certificate", format!("the {side} presented no certificate")),
        E::AlertReceived(
            a @ (A::UnknownCA
            | A::BadCertificate
            | A::CertificateUnknown
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::UnsupportedCertificate
            | A::CertificateRequired
            | A::AccessDenied),
        ) => (
            "tls_bad_certificate",
            format!("the {side} does not accept our certificate (alert {a:?}): another CA?"),
        ),
        E::InvalidMessage(m) => (
            "tls_handshake",
            format!("the {side} does not speak TLS, or sent garbage ({m:?}): is peer TLS set there?"),
        ),
        other => ("tls_handshake", format!("TLS handshake failed: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host_of_the_address() {
        assert_eq!(server_name("127.0.0.2:7070").unwrap().to_str(), "127.0.0.2");
        assert_eq!(server_name("[::1]:7070").unwrap().to_str(), "::1");
        assert_eq!(server_name("node-1.dmutex.svc:7070").unwrap().to_str(), "node-1.dmutex.svc");
        assert!(matches!(server_name("127.0.0.2:7070").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("node-1:7070").unwrap(), ServerName::DnsName(_)));
        assert!(server_name("bad host:7070").is_err());
        assert!(server_name(":7070").is_err());
    }

    #[test]
    fn a_certificate_names_only_its_own_hosts() {
        let ip = rcgen::generate_simple_self_signed(vec!["127.0.0.2".into(), "node-1".into()]).unwrap();
        let der = ip.cert.der().clone();
        assert!(names_host(&der, "127.0.0.2:7070").is_ok());
        assert!(names_host(&der, "node-1:7070").is_ok());
        let e = names_host(&der, "127.0.0.3:7070").unwrap_err();
        assert!(e.contains("127.0.0.3"), "{e}");
        assert!(names_host(&der, "node-2:7070").is_err());
        assert!(names_host(&CertificateDer::from(vec![1u8, 2, 3]), "127.0.0.2:1").is_err());
    }
}
