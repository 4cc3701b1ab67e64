//! The HTTP client of a node's API: the one client every caller uses (`dmutex lock`, `dmutex health`,
//! `dmutex flow`, the `dmutex cluster` runner, the HTTP benchmark).
//!
//! It speaks the types of [`crate::api::types`]; every non-2xx answer becomes [`ClientError::Api`] with the
//! code and message of the node's `{"error":{"code","message"}}` body (or the raw body from something else).
//! Connection settings are made once in [`Client::new`]; [`Client::at`] reuses them (and the connection pool)
//! for another node.

use crate::api::types::{
    AcquireBody, ErrorBody, Grant, KeepaliveBody, KeepaliveResponse, LeaseId, ReleaseBody, Stats,
};
use crate::obs::flow::FlowResponse;
use reqwest::{StatusCode, Url};
use serde::Serialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use std::time::Duration;

/// How long connecting to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle connection is kept for the next request (reqwest's default, stated because a client that
/// polls or keeps a lease alive relies on reusing its connection).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

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
        let base = parse_endpoint(endpoint)?;
        let http = reqwest::Client::builder()
            // The node is local or in-cluster: a proxy configured for the outside world must not capture it.
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()
            .map_err(|e| ClientError::InvalidEndpoint {
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
    use crate::algo::Algorithm;

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
    fn acquire_body_omits_absent_fields() {
        assert_eq!(serde_json::to_string(&AcquireBody::default()).unwrap(), "{}");
        let r = AcquireBody {
            timeout_ms: Some(5),
            ttl_ms: None,
            algorithm: Some(Algorithm::RicartAgrawala),
            wait: None,
        };
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"timeout_ms":5,"algorithm":"ricart-agrawala"}"#);
    }

    #[test]
    fn grant_accepts_numeric_or_string_ids() {
        let g: Grant = serde_json::from_str(
            r#"{"name":"x","lease":7,"fencing_token":"123","algorithm":"lamport","node_id":1,"waited_ms":2}"#,
        )
        .unwrap();
        assert_eq!(g.lease, LeaseId::Num(7));
        assert_eq!(g.fencing_token.to_string(), "123");
        assert_eq!(serde_json::json!({ "lease": g.lease }).to_string(), r#"{"lease":7}"#);
        let g: Grant = serde_json::from_str(r#"{"name":"x","lease":"l-1","fencing_token":9}"#).unwrap();
        assert_eq!(g.lease, LeaseId::Str("l-1".into()));
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
