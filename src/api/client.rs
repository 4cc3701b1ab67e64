//! The HTTP client of a node's API: the one client every caller uses (`dmutex lock`, `dmutex health`,
//! `dmutex flow`, the `dmutex cluster` runner, the HTTP benchmark).
//!
//! It speaks the types of [`crate::api::types`]; every non-2xx answer becomes [`ClientError::Api`] with the
//! code and message of the node's `{"error":{"code","message"}}` body (or the raw body from something else).
//! Connection settings are made once in [`Client::new`] (or [`Client::with_security`]: a bearer token, the CA
//! bundle or the one pinned certificate an `https://` node must present); [`Client::at`] reuses them (and the
//! connection pool) for another node.

use crate::api::types::{
    AcquireBody, ErrorBody, Grant, KeepaliveBody, KeepaliveResponse, LeaseId, ReleaseBody, Stats,
};
use crate::obs::flow::FlowResponse;
use reqwest::{StatusCode, Url};
use rustls::DigitallySignedStruct as Dss;
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long connecting to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle connection is kept for the next request (reqwest's default, stated because a client that
/// polls or keeps a lease alive relies on reusing its connection).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Whom an `https://` node's certificate must satisfy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Trust {
    /// The built-in web roots (reqwest's default).
    #[default]
    WebRoots,
    /// A chain to one of the CA certificates of this PEM bundle, for the endpoint's host name (`--cacert`).
    Ca(PathBuf),
    /// Exactly the first certificate of this PEM file, whatever names it holds (the node's own
    /// `DMUTEX_TLS_CERT`, for `dmutex health` on `127.0.0.1` beside the node); the handshake signature is still
    /// verified against its key.
    Pinned(PathBuf),
}

/// How a client authenticates the node, and itself: [`Client::with_security`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// Sent as `Authorization: Bearer <token>` with every request.
    pub token: Option<String>,
    /// Whom an `https://` node's certificate must satisfy.
    pub trust: Trust,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Security")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("trust", &self.trust)
            .finish()
    }
}

/// An error talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is not an http(s) base URL.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A token or certificate file given to [`Client::with_security`] cannot be used.
    #[error("{what}: {reason}")]
    InvalidSettings {
        /// The setting (the token, or the certificate file).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The node answered with an error status.
    #[error("{message} (HTTP {status}, {code})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error code from the body (`http_<status>` when the body has none).
        code: String,
        /// The error message from the body (or the body itself).
        message: String,
    },
    /// The request did not get an answer (connection refused, timeout, …).
    #[error("cannot reach {url}: {source}")]
    Transport {
        /// The URL requested.
        url: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// The node answered 2xx with a body that does not decode.
    #[error("unexpected answer from {url}: {reason}")]
    BadResponse {
        /// The URL requested.
        url: String,
        /// What did not decode.
        reason: String,
    },
}

impl ClientError {
    /// Whether this is an answer from the node with HTTP status `status`.
    pub fn is_status(&self, status: u16) -> bool {
        matches!(self, ClientError::Api { status: s, .. } if *s == status)
    }
}

/// A client for one node's HTTP API. Cloning is cheap and shares the connection pool.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    /// The limit of a request whose call names none (`None`: wait as long as the node takes).
    timeout: Option<Duration>,
}

impl Client {
    /// A client for `endpoint` (`http://host:port`, optionally with a path prefix; `host:port` alone means
    /// http). Requests have no overall time limit unless [`Client::with_timeout`] sets one or the call passes
    /// its own.
    pub fn new(endpoint: &str) -> Result<Self, ClientError> {
        Client::with_security(endpoint, &Security::default())
    }

    /// [`Client::new`] with a bearer token and whom to trust for `https://` (see [`Security`]).
    pub fn with_security(endpoint: &str, security: &Security) -> Result<Self, ClientError> {
        let base = parse_endpoint(endpoint)?;
        let mut http = reqwest::Client::builder()
            // The node is local or in-cluster: a proxy configured for the outside world must not capture it.
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT);
        if let Some(token) = &security.token {
            http = http.default_headers(bearer_header(token)?);
        }
        match &security.trust {
            Trust::WebRoots => {}
            Trust::Ca(path) => {
                let roots = crate::tls::load_ca(path).map_err(invalid_file)?;
                let config = client_config().with_root_certificates(roots).with_no_client_auth();
                http = http.use_preconfigured_tls(http1(config));
            }
            Trust::Pinned(path) => {
                let cert = crate::tls::load_certs(path).map_err(invalid_file)?.swap_remove(0);
                let verifier = Arc::new(Pinned {
                    cert,
                    algorithms: crate::tls::provider().signature_verification_algorithms,
                });
                let config = client_config()
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth();
                http = http.use_preconfigured_tls(http1(config));
            }
        }
        let http = http.build().map_err(|e| ClientError::InvalidEndpoint {
            endpoint: endpoint.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Client { http, base, timeout: None })
    }

    /// The same client with `limit` on every request whose call does not pass its own.
    pub fn with_timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// A client for another node's `endpoint` with the same settings and connection pool.
    pub fn at(&self, endpoint: &str) -> Result<Self, ClientError> {
        Ok(Client { http: self.http.clone(), base: parse_endpoint(endpoint)?, timeout: self.timeout })
    }

    /// The endpoint's URL with `segments` appended (each percent-encoded, so any lock name is safe).
    fn url(&self, segments: &[&str]) -> Result<Url, ClientError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| ClientError::InvalidEndpoint {
                endpoint: self.base.to_string(),
                reason: "cannot append a path".into(),
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Sends `req`, bounded by `limit` or the client's timeout; returns the status and the whole body.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: &Url,
        limit: Option<Duration>,
    ) -> Result<(StatusCode, bytes::Bytes), ClientError> {
        let req = match limit.or(self.timeout) {
            Some(limit) => req.timeout(limit),
            None => req,
        };
        let transport = |source| ClientError::Transport { url: url.to_string(), source };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(transport)?;
        Ok((status, bytes))
    }

    /// Decodes a 2xx answer's body as `R`, or turns the answer into [`ClientError::Api`].
    fn decode<R: DeserializeOwned>(url: &Url, status: StatusCode, body: &[u8]) -> Result<R, ClientError> {
        if !status.is_success() {
            return Err(api_error(status, body));
        }
        serde_json::from_slice(body)
            .map_err(|e| ClientError::BadResponse { url: url.to_string(), reason: e.to_string() })
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &B,
        limit: Option<Duration>,
    ) -> Result<R, ClientError> {
        let url = self.url(segments)?;
        let (status, bytes) = self.send(self.http.post(url.clone()).json(body), &url, limit).await?;
        Self::decode(&url, status, &bytes)
    }

    /// `GET` of the endpoint's `segments` with `query` pairs, decoded as `R`.
    pub(crate) async fn get_json<R: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<R, ClientError> {
        let mut url = self.url(segments)?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let (status, bytes) = self.send(self.http.get(url.clone()), &url, None).await?;
        Self::decode(&url, status, &bytes)
    }

    /// Acquires `name`, waiting as the node allows. `limit` bounds the whole HTTP exchange.
    pub async fn acquire(
        &self,
        name: &str,
        body: &AcquireBody,
        limit: Option<Duration>,
    ) -> Result<Grant, ClientError> {
        self.post(&["v1", "locks", name, "acquire"], body, limit).await
    }

    /// Renews `lease`; returns the TTL the node granted, if it said.
    pub async fn keepalive(&self, lease: &LeaseId, limit: Duration) -> Result<Option<Duration>, ClientError> {
        let lease = lease.to_string();
        let reply: KeepaliveResponse =
            self.post(&["v1", "leases", &lease, "keepalive"], &KeepaliveBody {}, Some(limit)).await?;
        Ok(reply.ttl_ms.map(Duration::from_millis))
    }

    /// Releases `name` held under `lease`.
    pub async fn release(&self, name: &str, lease: &LeaseId, limit: Duration) -> Result<(), ClientError> {
        let body = ReleaseBody { lease: Some(lease.clone()) };
        // The answer's content does not matter (a server may say less than this one), only that it is JSON.
        let _: IgnoredAny = self.post(&["v1", "locks", name, "release"], &body, Some(limit)).await?;
        Ok(())
    }

    /// GETs `path` (e.g. `healthz`) and returns the status, whatever it is.
    pub async fn probe(&self, path: &str, limit: Duration) -> Result<StatusCode, ClientError> {
        let url = self.url(&[path])?;
        let (status, _) = self.send(self.http.get(url.clone()), &url, Some(limit)).await?;
        Ok(status)
    }

    /// `GET /v1/stats`.
    pub(crate) async fn stats(&self) -> Result<Stats, ClientError> {
        self.get_json(&["v1", "stats"], &[]).await
    }

    /// `GET /v1/flow?lock=NAME`: the node's recent flow records of `lock`.
    pub async fn flow(&self, lock: &str) -> Result<FlowResponse, ClientError> {
        self.get_json(&["v1", "flow"], &[("lock", lock)]).await
    }
}

/// A TLS client configuration's first steps: the ring provider, rustls's safe protocol versions.
fn client_config() -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier> {
    rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| unreachable!("the ring provider supports TLS 1.2 and 1.3"))
}

/// `config` offering HTTP/1.1, the only version this client speaks (reqwest without `http2`).
fn http1(mut config: rustls::ClientConfig) -> rustls::ClientConfig {
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

fn invalid_file(e: crate::tls::TlsError) -> ClientError {
    ClientError::InvalidSettings { what: e.path.display().to_string(), reason: e.what }
}

/// The `Authorization` header of `token`, marked sensitive (never shown in debug output).
fn bearer_header(token: &str) -> Result<reqwest::header::HeaderMap, ClientError> {
    let invalid =
        |reason: &str| ClientError::InvalidSettings { what: "the token".into(), reason: reason.into() };
    let token = token.trim();
    if token.is_empty() {
        return Err(invalid("is empty"));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("contains whitespace or control characters"));
    }
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| invalid("is not a valid header value"))?;
    value.set_sensitive(true);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(headers)
}

/// What [`Pinned`] answers for a handshake signature.
type SignatureCheck = Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error>;

/// Trusts exactly one end-entity certificate (byte for byte), whatever names it holds and whoever issued it;
/// the handshake's signature is verified against that certificate's key as usual, so only the holder of its
/// private key passes.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    // The handshake's signature: checked as usual, against the pinned certificate's key (rustls's checks of
    // each TLS version with the provider's algorithms).
    fn verify_tls12_signature(&self, msg: &[u8], cert: &CertificateDer<'_>, dss: &Dss) -> SignatureCheck {
        rustls::crypto::verify_tls12_signature(msg, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(&self, msg: &[u8], cert: &CertificateDer<'_>, dss: &Dss) -> SignatureCheck {
        rustls::crypto::verify_tls13_signature(msg, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Checks an endpoint and makes it a base URL.
fn parse_endpoint(endpoint: &str) -> Result<Url, ClientError> {
    let invalid = |reason: String| ClientError::InvalidEndpoint { endpoint: endpoint.to_string(), reason };
    let text = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
    let base = Url::parse(&text).map_err(|e| invalid(e.to_string()))?;
    if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() || base.host().is_none() {
        return Err(invalid("expected http://host:port".into()));
    }
    Ok(base)
}

/// Decodes `{"error":{"code","message"}}`, or falls back to the raw body.
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => ClientError::Api { status: status.as_u16(), code: b.error.code, message: b.error.message },
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.trim().chars().take(200).collect();
            let message =
                if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
            ClientError::Api { status: status.as_u16(), code: format!("http_{}", status.as_u16()), message }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_lock_names_and_keep_prefixes() {
        let c = Client::new("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            c.url(&["v1", "locks", "a b/c", "acquire"]).unwrap().as_str(),
            "http://127.0.0.1:8080/v1/locks/a%20b%2Fc/acquire"
        );
        let c = Client::new("http://host:1/prefix/").unwrap();
        assert_eq!(c.url(&["healthz"]).unwrap().as_str(), "http://host:1/prefix/healthz");
        let c = Client::new("node-0:8080").unwrap();
        assert_eq!(c.url(&["readyz"]).unwrap().as_str(), "http://node-0:8080/readyz");
        assert!(Client::new("ftp://x").is_err());
        assert!(Client::new("http://").is_err());
    }

    #[test]
    fn another_node_keeps_the_settings() {
        let c = Client::new("http://127.0.0.1:8080").unwrap().with_timeout(Duration::from_secs(2));
        let d = c.at("127.0.0.2:8080").unwrap();
        assert_eq!(d.url(&["readyz"]).unwrap().as_str(), "http://127.0.0.2:8080/readyz");
        assert_eq!(d.timeout, Some(Duration::from_secs(2)));
        assert!(c.at("ftp://x").is_err());
    }

    #[test]
    fn api_errors_decode_or_fall_back() {
        let e =
            api_error(StatusCode::REQUEST_TIMEOUT, br#"{"error":{"code":"timeout","message":"waited 1s"}}"#);
        assert!(e.is_status(408));
        assert_eq!(e.to_string(), "waited 1s (HTTP 408, timeout)");
        let e = api_error(StatusCode::BAD_GATEWAY, b"upstream down");
        assert_eq!(e.to_string(), "upstream down (HTTP 502, http_502)");
        let e = api_error(StatusCode::SERVICE_UNAVAILABLE, b"");
        assert_eq!(e.to_string(), "Service Unavailable (HTTP 503, http_503)");
    }
}
