//! HTTP client for a node's API, and the `dmutex lock` and `dmutex health` commands.
//!
//! `dmutex lock NAME -- CMD…` is a lease holder in the shape of `flock(1)`:
//!
//! 1. `POST /v1/locks/{name}/acquire` `{timeout_ms?, ttl_ms?, algorithm?}` → 200 `{name, lease, fencing_token,
//!    algorithm, node_id, waited_ms}`; 408 when the wait timed out; errors are `{"error":{"code","message"}}`.
//! 2. Spawn `CMD` with `DMUTEX_LOCK`, `DMUTEX_FENCING_TOKEN` and `DMUTEX_LEASE` in its environment.
//! 3. While it runs, `POST /v1/leases/{lease}/keepalive` → 200 `{ttl_ms}` every TTL/3 (409 or 404: the lease is
//!    gone). When the TTL is not known (no `--ttl` and no `ttl_ms` in the grant), the first keepalive is sent at
//!    once to learn it.
//! 4. `POST /v1/locks/{name}/release` `{lease}` once the command has ended (409: unknown or expired lease).
//!
//! Lease loss: the node answers 409/404 to a keepalive, or no keepalive has succeeded for a whole TTL. The
//! TTL is counted from when the last successful keepalive was *sent* (the node cannot have started its new TTL
//! earlier), and for the grant from when its answer arrived. Then the command gets SIGTERM, SIGKILL after
//! `--grace`, and `dmutex lock` exits with [`EXIT_LEASE_LOST`]. The command may thus outlive its lease by up to
//! the grace period plus one network delay: a lease only *bounds* overlap, the fencing token is what makes a
//! late writer harmless.
//!
//! Signals: SIGINT and SIGTERM received by `dmutex lock` are forwarded to the command (only to its pid, not to
//! its process group), and the lease is released once it has exited. A terminal's Ctrl-C reaches the command
//! directly too (same process group), so an interactive command sees SIGINT twice.

use crate::algo::Algorithm;
use crate::cli::{HealthArgs, LockArgs};
use reqwest::{StatusCode, Url};
use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep_until, timeout};

/// `dmutex lock`: the lock could not be acquired (node unreachable or unavailable, request refused).
pub const EXIT_ACQUIRE_FAILED: i32 = 1;
/// `dmutex lock`: the acquire timed out (the node answered 408).
pub const EXIT_TIMEOUT: i32 = 3;
/// `dmutex lock`: the lease was lost while the command ran (BSD `EX_TEMPFAIL`).
pub const EXIT_LEASE_LOST: i32 = 75;
/// `dmutex lock`: the command exists but could not be started (as in a shell).
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
/// `dmutex lock`: the command was not found (as in a shell).
pub const EXIT_NOT_FOUND: i32 = 127;

/// How long the final release may take before `dmutex lock` gives up on it (the lease then simply expires).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// The TTL assumed until the node tells: shorter than any sane server default would make keepalives wasteful,
/// and the first keepalive is sent at once anyway when the TTL is unknown.
const ASSUMED_TTL: Duration = Duration::from_secs(15);
/// Slack added to `--timeout` for the acquire request itself, so the node's 408 arrives before ours.
const ACQUIRE_SLACK: Duration = Duration::from_secs(10);

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
    /// The node answered 200 with a body that does not decode.
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

/// An identifier the node chose (a lease, a fencing token): a JSON number or string, passed back as it came.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ApiId {
    /// A numeric identifier.
    Num(u64),
    /// A string identifier.
    Str(String),
}

impl fmt::Display for ApiId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiId::Num(n) => write!(f, "{n}"),
            ApiId::Str(s) => f.write_str(s),
        }
    }
}

/// The body of an acquire request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AcquireRequest {
    /// How long to wait, in milliseconds (node default when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The lease's TTL, in milliseconds (node default when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// The algorithm (node default when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
}

/// A granted lock.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Grant {
    /// The lock's name.
    pub name: String,
    /// The lease to keep alive and release.
    pub lease: ApiId,
    /// The fencing token: strictly increasing per lock in grant order.
    pub fencing_token: ApiId,
    /// The algorithm that granted it.
    #[serde(default)]
    pub algorithm: Option<String>,
    /// The node that granted it.
    #[serde(default)]
    pub node_id: Option<u64>,
    /// How long the request waited.
    #[serde(default)]
    pub waited_ms: Option<u64>,
    /// The lease's TTL, if the node reports it.
    #[serde(default)]
    pub ttl_ms: Option<u64>,
}

#[derive(Deserialize)]
struct KeepaliveReply {
    ttl_ms: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// A client for one node's HTTP API.
#[derive(Clone, Debug)]
pub struct NodeClient {
    http: reqwest::Client,
    base: Url,
}

impl NodeClient {
    /// A client for `endpoint` (`http://host:port`, optionally with a path prefix; `host:port` alone means
    /// http).
    pub fn new(endpoint: &str) -> Result<Self, ClientError> {
        let invalid =
            |reason: String| ClientError::InvalidEndpoint { endpoint: endpoint.to_string(), reason };
        let text = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
        let base = Url::parse(&text).map_err(|e| invalid(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() || base.host().is_none() {
            return Err(invalid("expected http://host:port".into()));
        }
        let http = reqwest::Client::builder()
            // The node is local or in-cluster: a proxy configured for the outside world must not capture it.
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(NodeClient { http, base })
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

    async fn post<B: Serialize, R: for<'de> Deserialize<'de>>(
        &self,
        url: Url,
        body: &B,
        limit: Option<Duration>,
    ) -> Result<R, ClientError> {
        let mut req = self.http.post(url.clone()).json(body);
        if let Some(limit) = limit {
            req = req.timeout(limit);
        }
        let resp =
            req.send().await.map_err(|source| ClientError::Transport { url: url.to_string(), source })?;
        let status = resp.status();
        let bytes =
            resp.bytes().await.map_err(|source| ClientError::Transport { url: url.to_string(), source })?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::BadResponse { url: url.to_string(), reason: e.to_string() })
    }

    /// Acquires `name`, waiting as the node allows. `limit` bounds the whole HTTP exchange.
    pub async fn acquire(
        &self,
        name: &str,
        req: &AcquireRequest,
        limit: Option<Duration>,
    ) -> Result<Grant, ClientError> {
        self.post(self.url(&["v1", "locks", name, "acquire"])?, req, limit).await
    }

    /// Renews `lease`; returns the TTL the node granted, if it said.
    pub async fn keepalive(&self, lease: &ApiId, limit: Duration) -> Result<Option<Duration>, ClientError> {
        let lease = lease.to_string();
        let reply: KeepaliveReply = self
            .post(self.url(&["v1", "leases", &lease, "keepalive"])?, &serde_json::json!({}), Some(limit))
            .await?;
        Ok(reply.ttl_ms.map(Duration::from_millis))
    }

    /// Releases `name` held under `lease`.
    pub async fn release(&self, name: &str, lease: &ApiId, limit: Duration) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .post(
                self.url(&["v1", "locks", name, "release"])?,
                &serde_json::json!({ "lease": lease }),
                Some(limit),
            )
            .await?;
        Ok(())
    }

    /// GETs `path` (e.g. `healthz`) and returns the status.
    pub async fn probe(&self, path: &str, limit: Duration) -> Result<StatusCode, ClientError> {
        let url = self.url(&[path])?;
        let resp = self
            .http
            .get(url.clone())
            .timeout(limit)
            .send()
            .await
            .map_err(|source| ClientError::Transport { url: url.to_string(), source })?;
        Ok(resp.status())
    }
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

/// The shell-style exit code of a finished process: its status, or 128+N if signal N killed it.
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}

/// Sends `sig` to `pid`. The pid is the child's, not yet reaped, so it cannot have been reused.
fn send_signal(pid: Option<u32>, sig: Signal) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()).and_then(Pid::from_raw) {
        // ESRCH (already exited) is the only expected failure, and harmless.
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Why the keepalive task gave up.
type LossReason = String;

/// Keeps `lease` alive until it is lost (then reports why) or the task is aborted.
async fn keep_alive(
    client: NodeClient,
    lease: ApiId,
    mut ttl: Duration,
    mut last_ok: Instant,
    first: Instant,
    lost: oneshot::Sender<LossReason>,
) {
    let mut next = first;
    let mut failing = false;
    loop {
        sleep_until(next).await;
        let sent = Instant::now();
        let deadline = last_ok + ttl;
        if sent >= deadline {
            let _ = lost.send(format!("no keepalive succeeded for {}", humantime::format_duration(ttl)));
            return;
        }
        let limit = (deadline - sent).min((ttl / 3).max(Duration::from_millis(100)));
        match timeout(limit, client.keepalive(&lease, limit)).await {
            Ok(Ok(granted)) => {
                last_ok = sent;
                ttl = granted.unwrap_or(ttl);
                next = sent + ttl / 3;
                if failing {
                    eprintln!("dmutex lock: keepalive succeeded again");
                    failing = false;
                }
            }
            Ok(Err(e)) if e.is_status(409) || e.is_status(404) || e.is_status(410) => {
                let _ = lost.send(format!("the node no longer knows the lease: {e}"));
                return;
            }
            other => {
                if !failing {
                    let why = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {}", humantime::format_duration(limit)),
                    };
                    eprintln!(
                        "dmutex lock: keepalive failed ({why}); retrying until the lease's TTL runs out"
                    );
                    failing = true;
                }
                let retry = (ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
                next = (Instant::now() + retry).min(last_ok + ttl);
            }
        }
    }
}

/// Runs `dmutex lock`: acquire, run the command under the lease, release. Returns the process exit code.
pub async fn run_lock(args: &LockArgs) -> anyhow::Result<i32> {
    let name = &args.name;
    let Some((program, program_args)) = args.command.split_first() else {
        anyhow::bail!("no command given");
    };
    let client = match NodeClient::new(&args.endpoint) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dmutex lock: {e}");
            return Ok(EXIT_ACQUIRE_FAILED);
        }
    };
    // Installed before the acquire so that a signal while waiting ends the wait instead of killing us with the
    // request half done.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    let req = AcquireRequest {
        timeout_ms: args.timeout.map(millis),
        ttl_ms: args.ttl.map(millis),
        algorithm: args.algorithm,
    };
    let limit = args.timeout.map(|t| t + ACQUIRE_SLACK);
    let grant = tokio::select! {
        r = client.acquire(name, &req, limit) => r,
        _ = sigint.recv() => return Ok(128 + libc::SIGINT),
        _ = sigterm.recv() => return Ok(128 + libc::SIGTERM),
    };
    let granted_at = Instant::now();
    let grant = match grant {
        Ok(g) => g,
        Err(e) if e.is_status(408) => {
            eprintln!("dmutex lock: timed out waiting for lock {name:?}: {e}");
            return Ok(EXIT_TIMEOUT);
        }
        Err(e) => {
            eprintln!("dmutex lock: cannot acquire lock {name:?}: {e}");
            return Ok(EXIT_ACQUIRE_FAILED);
        }
    };
    if args.verbose {
        eprintln!(
            "dmutex lock: acquired {name:?} (lease {}, fencing token {}, algorithm {}, node {}, waited {} ms)",
            grant.lease,
            grant.fencing_token,
            grant.algorithm.as_deref().unwrap_or("?"),
            grant.node_id.map_or("?".to_string(), |n| n.to_string()),
            grant.waited_ms.unwrap_or(0),
        );
    }

    let mut child = match tokio::process::Command::new(program)
        .args(program_args)
        .env("DMUTEX_LOCK", name)
        .env("DMUTEX_FENCING_TOKEN", grant.fencing_token.to_string())
        .env("DMUTEX_LEASE", grant.lease.to_string())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dmutex lock: cannot run {program:?}: {e}");
            release(&client, name, &grant.lease, args.verbose).await;
            return Ok(if e.kind() == std::io::ErrorKind::NotFound {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_EXECUTE
            });
        }
    };
    let pid = child.id();

    let known_ttl = grant.ttl_ms.map(Duration::from_millis).or(args.ttl);
    let ttl = known_ttl.unwrap_or(ASSUMED_TTL);
    let first = if known_ttl.is_some() { granted_at + ttl / 3 } else { granted_at };
    let (lost_tx, mut lost_rx) = oneshot::channel();
    let keeper =
        tokio::spawn(keep_alive(client.clone(), grant.lease.clone(), ttl, granted_at, first, lost_tx));

    enum Outcome {
        Exited(ExitStatus),
        Lost(LossReason),
    }
    let outcome = loop {
        tokio::select! {
            status = child.wait() => break Outcome::Exited(status?),
            reason = &mut lost_rx => {
                break Outcome::Lost(reason.unwrap_or_else(|_| "the keepalive task failed".to_string()));
            }
            _ = sigint.recv() => send_signal(pid, Signal::INT),
            _ = sigterm.recv() => send_signal(pid, Signal::TERM),
        }
    };
    keeper.abort();

    match outcome {
        Outcome::Exited(status) => {
            release(&client, name, &grant.lease, args.verbose).await;
            Ok(exit_code(status))
        }
        Outcome::Lost(reason) => {
            eprintln!(
                "dmutex lock: LOST the lease on lock {name:?}: {reason}; terminating the command (SIGTERM, SIGKILL \
                 after {})",
                humantime::format_duration(args.grace)
            );
            send_signal(pid, Signal::TERM);
            match timeout(args.grace, child.wait()).await {
                Ok(status) => {
                    status?;
                }
                Err(_) => {
                    eprintln!("dmutex lock: the command ignored SIGTERM; sending SIGKILL");
                    child.kill().await?;
                }
            }
            // Best effort: if the node still has the lease (we only lost contact), free it now.
            release(&client, name, &grant.lease, args.verbose).await;
            Ok(EXIT_LEASE_LOST)
        }
    }
}

/// Releases the lock, reporting (not failing on) errors: the command's status is what the caller wants.
async fn release(client: &NodeClient, name: &str, lease: &ApiId, verbose: bool) {
    match client.release(name, lease, RELEASE_TIMEOUT).await {
        Ok(()) => {
            if verbose {
                eprintln!("dmutex lock: released {name:?}");
            }
        }
        Err(e) if e.is_status(409) || e.is_status(404) => {
            eprintln!("dmutex lock: warning: the lease on {name:?} had already expired at release: {e}");
        }
        Err(e) => eprintln!("dmutex lock: warning: could not release {name:?} (its lease will expire): {e}"),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs `dmutex health`: 0 if `/healthz` (or `/readyz` with `--ready`) answers 200, else 1.
pub async fn run_health(args: &HealthArgs) -> i32 {
    let path = if args.ready { "readyz" } else { "healthz" };
    let client = match NodeClient::new(&args.endpoint) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dmutex health: {e}");
            return 1;
        }
    };
    match client.probe(path, args.timeout).await {
        Ok(status) if status == StatusCode::OK => 0,
        Ok(status) => {
            eprintln!("dmutex health: /{path} answered {status}");
            1
        }
        Err(e) => {
            eprintln!("dmutex health: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_lock_names_and_keep_prefixes() {
        let c = NodeClient::new("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            c.url(&["v1", "locks", "a b/c", "acquire"]).unwrap().as_str(),
            "http://127.0.0.1:8080/v1/locks/a%20b%2Fc/acquire"
        );
        let c = NodeClient::new("http://host:1/prefix/").unwrap();
        assert_eq!(c.url(&["healthz"]).unwrap().as_str(), "http://host:1/prefix/healthz");
        let c = NodeClient::new("node-0:8080").unwrap();
        assert_eq!(c.url(&["readyz"]).unwrap().as_str(), "http://node-0:8080/readyz");
        assert!(NodeClient::new("ftp://x").is_err());
        assert!(NodeClient::new("http://").is_err());
    }

    #[test]
    fn acquire_body_omits_absent_fields() {
        assert_eq!(serde_json::to_string(&AcquireRequest::default()).unwrap(), "{}");
        let r =
            AcquireRequest { timeout_ms: Some(5), ttl_ms: None, algorithm: Some(Algorithm::RicartAgrawala) };
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"timeout_ms":5,"algorithm":"ricart-agrawala"}"#);
    }

    #[test]
    fn grant_accepts_numeric_or_string_ids() {
        let g: Grant = serde_json::from_str(
            r#"{"name":"x","lease":7,"fencing_token":"123","algorithm":"lamport","node_id":1,"waited_ms":2}"#,
        )
        .unwrap();
        assert_eq!(g.lease, ApiId::Num(7));
        assert_eq!(g.fencing_token.to_string(), "123");
        assert_eq!(serde_json::json!({ "lease": g.lease }).to_string(), r#"{"lease":7}"#);
        let g: Grant = serde_json::from_str(r#"{"name":"x","lease":"l-1","fencing_token":9}"#).unwrap();
        assert_eq!(g.lease, ApiId::Str("l-1".into()));
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

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 128 + 9);
    }
}
