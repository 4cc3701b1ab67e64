//! [`Client`]: the HTTP calls of the lock API over a list of endpoints, with failover.
//!
//! Failover follows the contract: a node answers 503 only when the request holds nothing and waits nowhere,
//! and a refused connection never reached a node, so both are safe to try on the next endpoint. A 409 or 400
//! is the cluster's answer and is returned as it is, and so are a 401 or 403 (a missing, unknown or
//! insufficient token is the same mistake at every node of a cluster that shares its tokens file). An acquire whose connection broke after it was sent is
//! not repeated elsewhere (the node may be granting it); keepalive and release are, since repeating them is
//! harmless.

use crate::error::{self, Error};
use crate::lock::LockBuilder;
use crate::types::{AcquireBody, Grant, KeepaliveBody, KeepaliveResponse, LeaseId, ReleaseBody};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Serialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long connecting to one endpoint may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an idle connection is kept for the next request (a guard's keepalives reuse it).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a release may take.
pub(crate) const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// Added to an acquire's `timeout` for the HTTP exchange, so that the node's own `timeout` answer arrives first.
const ACQUIRE_SLACK: Duration = Duration::from_secs(10);

/// Where a [`ClientBuilder`]'s CA bundle comes from.
#[derive(Clone)]
enum CaSource {
    Pem(Vec<u8>),
    File(PathBuf),
}

/// The settings of a [`Client`] (from [`Client::builder`]): endpoints, a bearer token, a CA bundle.
///
/// ```no_run
/// # async fn f() -> Result<(), dmutex_client::Error> {
/// let token = std::env::var("DMUTEX_TOKEN").unwrap_or_default();
/// let client = dmutex_client::Client::builder(["https://dmutex-0.dmutex:8443", "https://dmutex-1.dmutex:8443"])
///     .with_token(token)
///     .with_ca_file("/etc/dmutex/ca.crt")
///     .build()?;
/// let guard = client.lock("nightly-backup").await?;
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use = "a ClientBuilder does nothing until build() is called"]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    token: Option<String>,
    ca: Option<CaSource>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token.
        f.debug_struct("ClientBuilder")
            .field("endpoints", &self.endpoints)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field(
                "ca",
                &self.ca.as_ref().map(|c| match c {
                    CaSource::Pem(_) => "PEM".to_string(),
                    CaSource::File(p) => p.display().to_string(),
                }),
            )
            .finish()
    }
}

impl ClientBuilder {
    /// Sends `Authorization: Bearer <token>` with every call (a token of the node's `DMUTEX_API_TOKENS_FILE`;
    /// locks need the `lock` scope). Surrounding whitespace (a file's final newline) is ignored. Over `http://`
    /// the token crosses the network in clear text: use `https://` endpoints beyond a trusted network.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Trusts exactly the CA certificates of this PEM bundle for `https://` endpoints: they replace the
    /// built-in web roots (as `curl --cacert` does).
    pub fn with_ca_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.ca = Some(CaSource::Pem(pem.as_ref().to_vec()));
        self
    }

    /// [`ClientBuilder::with_ca_pem`] with the bundle read from `path` (when [`ClientBuilder::build`] runs).
    pub fn with_ca_file(mut self, path: impl AsRef<Path>) -> Self {
        self.ca = Some(CaSource::File(path.as_ref().to_path_buf()));
        self
    }

    /// The client. Fails with [`Error::InvalidEndpoint`] for an endpoint that is not an http(s) base URL (or
    /// none), and [`Error::InvalidSettings`] for a token that cannot be a header value or a CA bundle that
    /// cannot be read or holds no usable certificate.
    pub fn build(self) -> Result<Client, Error> {
        let endpoints = self.endpoints.iter().map(|e| parse_endpoint(e)).collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(Error::InvalidEndpoint {
                endpoint: String::new(),
                reason: "no endpoint given".into(),
            });
        }
        let mut http = reqwest::Client::builder()
            // The nodes are local or in-cluster: a proxy configured for the outside world must not capture them.
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT);
        if let Some(token) = &self.token {
            http = http.default_headers(bearer_header(token)?);
        }
        if let Some(ca) = &self.ca {
            http = http.use_preconfigured_tls(tls_config(ca)?);
        }
        let http = http.build().map_err(|e| Error::InvalidSettings {
            what: "the HTTP client".into(),
            reason: error_chain(&e),
        })?;
        Ok(Client { inner: Arc::new(Inner { http, endpoints, preferred: AtomicUsize::new(0) }) })
    }
}

/// The `Authorization` header of `token`, marked sensitive (never shown in debug output).
fn bearer_header(token: &str) -> Result<HeaderMap, Error> {
    let invalid = |reason: &str| Error::InvalidSettings { what: "the token".into(), reason: reason.into() };
    let token = token.trim();
    if token.is_empty() {
        return Err(invalid("is empty"));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("contains whitespace or control characters"));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| invalid("is not a valid header value"))?;
    value.set_sensitive(true);
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, value);
    Ok(headers)
}

/// A TLS configuration that trusts exactly the CA certificates of `ca` (ring provider, HTTP/1.1).
fn tls_config(ca: &CaSource) -> Result<rustls::ClientConfig, Error> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let (what, pem) = match ca {
        CaSource::Pem(pem) => ("the CA bundle".to_string(), pem.clone()),
        CaSource::File(path) => {
            let what = format!("the CA bundle {}", path.display());
            match std::fs::read(path) {
                Ok(pem) => (what, pem),
                Err(e) => return Err(Error::InvalidSettings { what, reason: format!("cannot read: {e}") }),
            }
        }
    };
    let invalid = |reason: String| Error::InvalidSettings { what: what.clone(), reason };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("holds no certificate (expected -----BEGIN CERTIFICATE-----)".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| invalid(format!("not a usable CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // This client speaks HTTP/1.1 only (reqwest without its http2 feature).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Whether a call may be repeated on the next endpoint after its request was sent without an answer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Repeat {
    /// Only a connection that was never made is retried elsewhere (acquire).
    OnlyUnsent,
    /// Any failure without an answer is retried elsewhere (keepalive, release).
    Always,
}

/// A client of a dmutex cluster: the nodes' HTTP endpoints, tried in turn. Cloning is cheap and shares the
/// connection pool and the endpoint last found working.
///
/// ```
/// let client = dmutex_client::Client::new(["http://10.0.0.1:8080", "10.0.0.2:8080"])?;
/// assert_eq!(client.endpoints().count(), 2);
/// # Ok::<(), dmutex_client::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    endpoints: Vec<Url>,
    /// The endpoint that answered last: every call starts there.
    preferred: AtomicUsize,
}

impl Client {
    /// A client of the nodes at `endpoints` (`http://host:port` or `https://host:port`, optionally with a path
    /// prefix; `host:port` alone means http), without a token, trusting the built-in web roots for HTTPS.
    /// Calls go to the endpoint that answered last and move on to the next one when an endpoint cannot be
    /// reached or answers 503. [`Client::builder`] sets a token and a CA bundle.
    pub fn new<I, S>(endpoints: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Client::builder(endpoints).build()
    }

    /// The settings of a client of the nodes at `endpoints`: a bearer token
    /// ([`ClientBuilder::with_token`]), the CA bundle HTTPS endpoints must chain to
    /// ([`ClientBuilder::with_ca_pem`], [`ClientBuilder::with_ca_file`]).
    ///
    /// ```
    /// let pem = b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n";
    /// let e = dmutex_client::Client::builder(["https://10.0.0.1:8443"])
    ///     .with_token("0123456789abcdef0123")
    ///     .with_ca_pem(pem)
    ///     .build()
    ///     .unwrap_err();
    /// assert!(matches!(e, dmutex_client::Error::InvalidSettings { .. }), "{e}");
    /// ```
    pub fn builder<I, S>(endpoints: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        ClientBuilder {
            endpoints: endpoints.into_iter().map(|e| e.as_ref().to_string()).collect(),
            token: None,
            ca: None,
        }
    }

    /// The endpoints, in the order given.
    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        self.inner.endpoints.iter().map(Url::as_str)
    }

    /// The endpoint the next call starts with: the one that answered last.
    pub fn current_endpoint(&self) -> &str {
        self.inner.endpoints[self.preferred()].as_str()
    }

    fn preferred(&self) -> usize {
        self.inner.preferred.load(Ordering::Relaxed) % self.inner.endpoints.len()
    }

    /// Acquires lock `name`: set the options on the builder, then `.await` it (or call
    /// [`LockBuilder::acquire`]) for a [`LockGuard`](crate::LockGuard).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), dmutex_client::Error> {
    /// use std::time::Duration;
    /// let client = dmutex_client::Client::new(["http://127.0.0.1:8080"])?;
    /// let guard = client.lock("db").ttl(Duration::from_secs(10)).timeout(Duration::from_secs(30)).await?;
    /// println!("fencing token {}", guard.fencing_token());
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn lock(&self, name: impl Into<String>) -> LockBuilder {
        LockBuilder::new(self.clone(), name.into(), AcquireBody::default())
    }

    /// Try-lock `name` (`"wait": false`): granted only if the lock can be granted without waiting behind a
    /// holder or an earlier request, else [`Error::Locked`] at once.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), dmutex_client::Error> {
    /// let client = dmutex_client::Client::new(["http://127.0.0.1:8080"])?;
    /// match client.try_lock("report").await {
    ///     Ok(guard) => guard.release().await?,
    ///     Err(dmutex_client::Error::Locked { holder }) => println!("busy (held by node {holder:?})"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn try_lock(&self, name: impl Into<String>) -> LockBuilder {
        LockBuilder::new(
            self.clone(),
            name.into(),
            AcquireBody { wait: Some(false), ..AcquireBody::default() },
        )
    }

    /// `POST /v1/locks/{name}/acquire` with `body`: the raw grant, without a guard (nothing keeps its lease
    /// alive). The HTTP exchange may last the body's timeout plus a margin; without a timeout in the body
    /// (the node's default), or with [`Timeout::Forever`](crate::Timeout::Forever), it is not limited.
    pub async fn acquire(&self, name: &str, body: &AcquireBody) -> Result<Grant, Error> {
        let limit = body.timeout_ms.and_then(|t| t.as_duration()).map(|t| t + ACQUIRE_SLACK);
        self.post(&["v1", "locks", name, "acquire"], body, limit, Repeat::OnlyUnsent).await
    }

    /// `POST /v1/leases/{lease}/keepalive`, through any node, within `limit`: the lease runs for its TTL from
    /// now. Returns the TTL the node granted, if it said.
    pub async fn keepalive(&self, lease: &LeaseId, limit: Duration) -> Result<Option<Duration>, Error> {
        let lease = lease.to_string();
        let path = ["v1", "leases", &lease, "keepalive"];
        let call = self.post(&path, &KeepaliveBody {}, Some(limit), Repeat::Always);
        let reply: KeepaliveResponse = bounded(limit, call).await?;
        Ok(reply.ttl_ms.map(Duration::from_millis))
    }

    /// `POST /v1/locks/{name}/release` of `lease`, through any node.
    pub async fn release(&self, name: &str, lease: &LeaseId) -> Result<(), Error> {
        let body = ReleaseBody { lease: Some(lease.clone()) };
        let path = ["v1", "locks", name, "release"];
        let call = self.post(&path, &body, Some(RELEASE_TIMEOUT), Repeat::Always);
        // The answer's content does not matter (a server may say less than dmutex does), only that it is JSON.
        let _: IgnoredAny = bounded(RELEASE_TIMEOUT, call).await?;
        Ok(())
    }

    /// POSTs `body` to `segments` of the endpoints in turn, from the preferred one, until one answers other
    /// than 503; decodes a 2xx answer as `R`.
    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &B,
        limit: Option<Duration>,
        repeat: Repeat,
    ) -> Result<R, Error> {
        let n = self.inner.endpoints.len();
        let first = self.preferred();
        let mut failures = Vec::new();
        for i in (0..n).map(|k| (first + k) % n) {
            let url = url(&self.inner.endpoints[i], segments)?;
            let mut req = self.inner.http.post(url.clone()).json(body);
            if let Some(limit) = limit {
                req = req.timeout(limit);
            }
            req = crate::trace::inject(req);
            match send(req).await {
                Ok((status, bytes)) if status == StatusCode::SERVICE_UNAVAILABLE => {
                    let why = match error::from_answer(status.as_u16(), &bytes) {
                        Error::Unavailable { message } => message,
                        other => other.to_string(),
                    };
                    failures.push(format!("{url}: {why}"));
                }
                Ok((status, bytes)) => {
                    self.inner.preferred.store(i, Ordering::Relaxed);
                    return decode(&url, status, &bytes);
                }
                Err(e) if e.is_connect() || repeat == Repeat::Always => {
                    failures.push(format!("{url}: {}", error_chain(&e)));
                }
                Err(source) => return Err(Error::Transport { url: url.to_string(), source }),
            }
        }
        Err(Error::Unavailable { message: failures.join("; ") })
    }
}

/// `call`, or [`Error::Unavailable`] when it has not finished within `limit` (each request has the limit
/// too, but failover over several endpoints could add them up).
async fn bounded<R>(limit: Duration, call: impl Future<Output = Result<R, Error>>) -> Result<R, Error> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(Error::Unavailable { message: format!("no answer within {} ms", limit.as_millis()) })
    })
}

/// Sends `req`; returns the status and the whole body.
async fn send(req: reqwest::RequestBuilder) -> Result<(StatusCode, Vec<u8>), reqwest::Error> {
    let resp = req.send().await?;
    let status = resp.status();
    Ok((status, resp.bytes().await?.to_vec()))
}

/// A 2xx answer's body as `R`, or the error the answer means.
fn decode<R: DeserializeOwned>(url: &Url, status: StatusCode, body: &[u8]) -> Result<R, Error> {
    if !status.is_success() {
        return Err(error::from_answer(status.as_u16(), body));
    }
    serde_json::from_slice(body)
        .map_err(|e| Error::BadResponse { url: url.to_string(), reason: e.to_string() })
}

/// The error with its causes (reqwest's own message is only "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// `base` with `segments` appended, each percent-encoded (so any lock name is safe).
fn url(base: &Url, segments: &[&str]) -> Result<Url, Error> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| Error::InvalidEndpoint {
            endpoint: base.to_string(),
            reason: "cannot append a path".into(),
        })?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// Checks an endpoint and makes it a base URL.
fn parse_endpoint(endpoint: &str) -> Result<Url, Error> {
    let invalid = |reason: String| Error::InvalidEndpoint { endpoint: endpoint.to_string(), reason };
    let endpoint = endpoint.trim();
    let text = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
    let base = Url::parse(&text).map_err(|e| invalid(e.to_string()))?;
    if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() || base.host().is_none() {
        return Err(invalid("expected http://host:port".into()));
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_lock_names_and_keep_prefixes() {
        let base = parse_endpoint("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            url(&base, &["v1", "locks", "a b/c", "acquire"]).unwrap().as_str(),
            "http://127.0.0.1:8080/v1/locks/a%20b%2Fc/acquire"
        );
        let base = parse_endpoint("http://host:1/prefix/").unwrap();
        assert_eq!(url(&base, &["healthz"]).unwrap().as_str(), "http://host:1/prefix/healthz");
        let base = parse_endpoint(" node-0:8080").unwrap();
        assert_eq!(url(&base, &["readyz"]).unwrap().as_str(), "http://node-0:8080/readyz");
    }

    #[test]
    fn endpoints_must_be_http_base_urls_and_at_least_one() {
        assert!(matches!(Client::new(["ftp://x"]), Err(Error::InvalidEndpoint { .. })));
        assert!(matches!(Client::new(["http://"]), Err(Error::InvalidEndpoint { .. })));
        assert!(matches!(Client::new(Vec::<String>::new()), Err(Error::InvalidEndpoint { .. })));
        let c = Client::new(["a:1", "http://b:2/p"]).unwrap();
        assert_eq!(c.endpoints().collect::<Vec<_>>(), ["http://a:1/", "http://b:2/p"]);
        assert_eq!(c.current_endpoint(), "http://a:1/");
    }
}
