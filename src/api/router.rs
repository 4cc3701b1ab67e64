//! The HTTP API (axum, JSON). Handlers validate input and talk to the node loop through [`NodeHandle`];
//! they hold no lock state themselves.
//!
//! Errors are always `{"error":{"code","message"}}` with a proper status: 400 bad input (also an algorithm
//! this cluster does not serve), 404 no such endpoint, 405 wrong method (with `Allow`), 409 a lock or lease
//! outcome (`timeout`, `locked`, `lease_not_found`, `lease_lost`, `lease_in_use`), 413 body too large, 503
//! unavailable or shutting down. Each handler's `#[utoipa::path]` documents its answers in the OpenAPI
//! document (src/api/openapi.rs, `GET /openapi.json`).

use crate::algo::Algorithm;
use crate::api::error::ApiError;
use crate::api::types::{
    AcquireBody, AcquireRequest, ClusterInfo, ErrorBody, ErrorDetail, Grant, KeepaliveBody,
    KeepaliveResponse, LeaseId, LockList, Readiness, ReleaseBody, ReleaseResponse, Stats, Timeout,
};
use crate::node::NodeHandle;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Largest request body accepted.
pub(crate) const MAX_BODY_BYTES: usize = 16 * 1024;
/// Longest lock name (bytes).
pub(crate) const MAX_LOCK_NAME: usize = 256;
/// Longest acquire timeout a client may ask for.
pub(crate) const MAX_TIMEOUT_MS: u64 = 3_600_000;

// The OpenAPI descriptions several operations share (`#[utoipa::path]` below).
/// The `name` path parameter of the lock routes.
const LOCK_NAME: &str = "The lock: 1 to 256 bytes of UTF-8 without control characters.";
/// 400, for every operation that reads a body or a lock name.
const BAD_REQUEST: &str = "`bad_request`: malformed request (bad lock name, bad JSON, unknown field, impossible value, algorithm not served).";
/// 413, for the operations that read a body.
const TOO_LARGE: &str = "`payload_too_large`: the body is larger than 16 KiB.";
/// 503, for the operations that need a running node.
const UNAVAILABLE: &str = "`unavailable` or `shutting_down`: this node cannot serve now (minority, not joined, shutting down); the request holds nothing and waits nowhere, so another endpoint may be tried.";
/// 500.
const INTERNAL: &str = "`internal`: something unexpected inside the node.";

/// The 503 and 500 of every operation that needs a running node, for `#[utoipa::path]`'s `responses`.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code, reason = "documentation only: the handlers answer these as `ApiError`s")]
enum NodeErrors {
    #[response(status = 503, description = UNAVAILABLE)]
    Unavailable(ErrorBody),
    #[response(status = 500, description = INTERNAL)]
    Internal(ErrorBody),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let unread_body = matches!(self, ApiError::TooLarge);
        let mut response = (status, Json(self.body())).into_response();
        if unread_body {
            // The rest of the body was never read, so the server closes the connection after this response;
            // say so, or a client that reuses the connection fails its next request.
            response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        }
        response
    }
}

/// State of the HTTP layer.
#[derive(Clone)]
pub(crate) struct AppState {
    /// The handle the handlers send their commands through to the node loop.
    pub node: NodeHandle,
    /// The built-in workload's status, if one is configured.
    pub workload: Option<Arc<dyn Fn() -> serde_json::Value + Send + Sync>>,
    /// The algorithms a request may name (`DMUTEX_ALGORITHMS`); another one is refused with 400.
    pub algorithms: Vec<Algorithm>,
    /// The API tokens (`DMUTEX_API_TOKENS_FILE`), if any: then every route but the probes needs one.
    pub auth: Option<Arc<crate::api::auth::ApiAuth>>,
}

/// The router. Tests mount it on a listener they bound themselves.
pub(crate) fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/locks", get(locks))
        .route("/v1/locks/{name}", get(lock_info))
        .route("/v1/locks/{name}/acquire", post(acquire))
        .route("/v1/locks/{name}/release", post(release))
        .route("/v1/leases/{lease}/keepalive", post(keepalive))
        .route("/v1/cluster", get(cluster))
        .route("/v1/stats", get(stats))
        .route("/v1/flow", get(flow))
        .route("/v1/workload", get(workload))
        .route("/openapi.json", get(openapi_json))
        // After the routes: it applies to the routes registered before it.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(no_such_endpoint)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    // Inside the observation: refused requests are counted (401, 403) like any other answer.
    let routes = match &state.auth {
        Some(auth) => {
            routes.layer(axum::middleware::from_fn_with_state(auth.clone(), super::auth::authorize))
        }
        None => routes,
    };
    routes
        .layer(axum::middleware::from_fn_with_state(state.node.shared.clone(), super::observe::observe_http))
        .with_state(state)
}

/// The router of a node that cannot run yet (DNS discovery still waits for its replicas): `/healthz` is 200,
/// `/readyz` and `/v1/cluster` are 503 with `{"ready": false, "reasons": [what it waits for]}`, and every other
/// endpoint (the lock calls) answers 503 `unavailable` with the same reason. `waiting` holds the current reason.
pub fn waiting_router(waiting: tokio::sync::watch::Receiver<String>) -> Router {
    let not_ready = |w: tokio::sync::watch::Receiver<String>| async move {
        let r = Readiness { ready: false, reasons: vec![w.borrow().clone()] };
        (StatusCode::SERVICE_UNAVAILABLE, Json(r)).into_response()
    };
    let unavailable = |w: tokio::sync::watch::Receiver<String>| async move {
        ApiError::Unavailable(format!("the node is not running yet: {}", *w.borrow())).into_response()
    };
    let (r1, r2, r3) = (waiting.clone(), waiting.clone(), waiting);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(move || not_ready(r1.clone())))
        .route("/v1/cluster", get(move || not_ready(r2.clone())))
        .fallback(move || unavailable(r3.clone()))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// An error answer in the API's JSON shape for a status [`ApiError`] has no variant for.
fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(ErrorBody { error: ErrorDetail { code: code.into(), message, holder: None } }))
        .into_response()
}

async fn no_such_endpoint(method: Method, uri: Uri) -> Response {
    error_response(StatusCode::NOT_FOUND, "not_found", format!("no such endpoint: {method} {}", uri.path()))
}

/// axum adds the `Allow` header with the methods the path takes.
async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let message =
        format!("{method} is not allowed on {} (the Allow header lists the methods it takes)", uri.path());
    error_response(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", message)
}

/// Refuses an algorithm the cluster does not serve, naming the ones it does.
fn check_algorithm(allowed: &[Algorithm], asked: Option<Algorithm>) -> Result<(), ApiError> {
    match asked {
        Some(a) if !allowed.contains(&a) => Err(ApiError::BadRequest(format!(
            "algorithm {a} is not served by this cluster; allowed: {} (DMUTEX_ALGORITHMS)",
            crate::config::algorithm_list(allowed)
        ))),
        _ => Ok(()),
    }
}

/// `GET /openapi.json`: the document generated once per process.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    description = "This OpenAPI 3.1 document (also committed as docs/openapi.json).",
    responses((status = 200, description = "The document.", body = serde_json::Value)))]
async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::api::openapi::json()).into_response()
}

#[utoipa::path(get, path = "/healthz", tag = "health",
    description = "Liveness: the process answers.",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = crate::api::openapi::Health)))]
async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

#[utoipa::path(get, path = "/readyz", tag = "health",
    description = "Readiness: whether the node can grant (a member of its view holding its member lease).",
    responses(
        (status = 200, description = "Ready.", body = Readiness),
        (status = 503, description = "Not ready; `reasons` says why.", body = Readiness)))]
async fn readyz(State(s): State<AppState>) -> Response {
    let r = s.node.shared.readiness();
    let status = if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(r)).into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "observability",
    description = "Prometheus metrics in the text exposition format.",
    responses((status = 200, description = "The exposition.", body = String, content_type = "text/plain; version=0.0.4")))]
async fn metrics(State(s): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.node.shared.metrics.render()).into_response()
}

/// Checks a lock name: 1–256 bytes of UTF-8 without control characters.
pub(crate) fn validate_lock_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > MAX_LOCK_NAME {
        return Err(ApiError::BadRequest(format!("lock name must be 1 to {MAX_LOCK_NAME} bytes")));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest("lock name must not contain control characters".into()));
    }
    Ok(())
}

/// A lease named in a body: this node's leases are strings, so a number cannot name one.
fn lease_string(lease: LeaseId) -> Result<String, ApiError> {
    match lease {
        LeaseId::Str(lease) => Ok(lease),
        LeaseId::Num(_) => Err(ApiError::BadRequest("lease must be a string".into())),
    }
}

fn parse_body<T: for<'de> Deserialize<'de> + Default>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge
        } else {
            ApiError::BadRequest(e.body_text())
        }
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// What acquire and release start with: the lock name checked, then the JSON body parsed (empty: all
/// defaults), so a bad name is refused before the body is looked at.
fn lock_request<T: for<'de> Deserialize<'de> + Default>(
    name: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    validate_lock_name(name)?;
    parse_body(body)
}

#[utoipa::path(post, path = "/v1/locks/{name}/acquire", tag = "locks",
    description = "Acquire a lock: waits up to `timeout_ms` (or forever), or with `\"wait\": false` (or `timeout_ms: 0`) tries once. An empty body means all defaults. With the `lease` of a grant that holds this lock, answers that grant again (re-entrant).",
    params(("name" = String, Path, description = LOCK_NAME)),
    request_body(content = Option<AcquireBody>, description = "All fields optional; unknown fields are refused (400)."),
    responses(
        (status = 200, description = "Granted: the lock is held under `lease` until released or expired.", body = Grant),
        (status = 400, description = BAD_REQUEST, body = ErrorBody),
        (status = 409, description = "`timeout` (waited `timeout_ms`), `locked` (try-lock failed; `holder`: the holding node or null), `lease_not_found` (the given lease is unknown or expired), `lease_lost` (the given lease ended without its client releasing it), `lease_in_use` (the given lease holds another lock).", body = ErrorBody),
        (status = 413, description = TOO_LARGE, body = ErrorBody), NodeErrors))]
async fn acquire(
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b: AcquireBody = lock_request(&name, body)?;
    if matches!(b.timeout_ms, Some(Timeout::Ms(t)) if t > MAX_TIMEOUT_MS) {
        return Err(ApiError::BadRequest(format!("timeout_ms must be at most {MAX_TIMEOUT_MS}")));
    }
    if b.ttl_ms == Some(0) {
        return Err(ApiError::BadRequest("ttl_ms must be positive".into()));
    }
    check_algorithm(&s.algorithms, b.algorithm)?;
    let lease = b.lease.map(lease_string).transpose()?;
    let grant = s
        .node
        .acquire(AcquireRequest {
            lock: name,
            algorithm: b.algorithm,
            // "forever" waits as long as a node lets anyone wait (the node's acquire always has a deadline).
            timeout: b.timeout_ms,
            ttl: b.ttl_ms.map(Duration::from_millis),
            lease,
            parent: crate::obs::telemetry::context_of(&tracing::Span::current()),
            // etcd's try-lock: `"wait": false`, and `timeout_ms: 0` as the same thing.
            wait: b.wait != Some(false) && b.timeout_ms != Some(Timeout::Ms(0)),
        })
        .await?;
    Ok(Json(grant).into_response())
}

#[utoipa::path(post, path = "/v1/locks/{name}/release", tag = "locks",
    description = "Release a lock held under `lease`; works through any node.",
    params(("name" = String, Path, description = LOCK_NAME)),
    request_body(content = ReleaseBody, description = "`{\"lease\": \"...\"}`: the lease the grant returned (required)."),
    responses(
        (status = 200, description = "Released.", body = ReleaseResponse),
        (status = 400, description = BAD_REQUEST, body = ErrorBody),
        (status = 409, description = "`lease_not_found` (unknown, expired or released lease, or it does not hold this lock) or `lease_lost` (the lease ended without its client releasing it; the message says why).", body = ErrorBody),
        (status = 413, description = TOO_LARGE, body = ErrorBody), NodeErrors))]
async fn release(
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b: ReleaseBody = lock_request(&name, body)?;
    let lease = b.lease.map(lease_string).transpose()?;
    let lease =
        lease.ok_or_else(|| ApiError::BadRequest("body must name the lease: {\"lease\": \"...\"}".into()))?;
    s.node.release(&name, &lease).await?;
    Ok(Json(ReleaseResponse { lease: lease.into(), name, released: true }).into_response())
}

/// The body is not read: the lease is in the path, and clients send `{}` or nothing.
#[utoipa::path(post, path = "/v1/leases/{lease}/keepalive", tag = "locks",
    description = "Renew a lease for its TTL from now; works through any node. The body is not read (send `{}` or nothing).",
    params(("lease" = String, Path, description = "The lease id from the grant (opaque).")),
    request_body(content = Option<KeepaliveBody>, description = "Ignored."),
    responses(
        (status = 200, description = "Renewed.", body = KeepaliveResponse),
        (status = 409, description = "`lease_not_found` (unknown, expired or released lease) or `lease_lost` (the lease ended without its client releasing it; the message says why).", body = ErrorBody),
        NodeErrors))]
async fn keepalive(State(s): State<AppState>, Path(lease): Path<String>) -> Result<Response, ApiError> {
    let ttl = s.node.keepalive(&lease).await?;
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    Ok(Json(KeepaliveResponse { lease: Some(lease.into()), ttl_ms: Some(ttl_ms) }).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockQuery {
    /// `local`: what this node alone knows (its cores' views); `cluster` (default): asked of every member.
    scope: Option<String>,
}

/// `GET /v1/locks/{name}`: the lock as the cluster knows it (the same answer from every node), or with
/// `?scope=local` this node's own view of it. Never shows a lease id.
#[utoipa::path(get, path = "/v1/locks/{name}", tag = "locks",
    description = "The lock as the cluster knows it (the same answer from every node), or with `scope=local` this node's own view. Never shows a lease id.",
    params(("name" = String, Path, description = LOCK_NAME), ("scope" = Option<crate::api::openapi::Scope>, Query, description = "`cluster` (default): asked of every member; `local`: this node's cores' views.")),
    responses(
        (status = 200, description = "`LockState` (scope `cluster`) or `LockInfo` (scope `local`).", body = crate::api::openapi::LockAnswer),
        (status = 400, description = BAD_REQUEST, body = ErrorBody), NodeErrors))]
async fn lock_info(
    State(s): State<AppState>,
    Path(name): Path<String>,
    q: Result<axum::extract::Query<LockQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    validate_lock_name(&name)?;
    let axum::extract::Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    match q.scope.as_deref() {
        None | Some("cluster") => Ok(Json(s.node.lock_state(&name).await?).into_response()),
        Some("local") => Ok(Json(s.node.lock_info(&name).await?).into_response()),
        Some(other) => Err(ApiError::BadRequest(format!("scope must be cluster or local, not {other:?}"))),
    }
}

/// `GET /v1/locks`: every lock a client holds or waits for, cluster-wide.
#[utoipa::path(get, path = "/v1/locks", tag = "locks",
    description = "Every lock a client holds or waits for, cluster-wide.",
    responses((status = 200, description = "The locks.", body = LockList), NodeErrors))]
async fn locks(State(s): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(s.node.locks().await?).into_response())
}

#[utoipa::path(get, path = "/v1/cluster", tag = "cluster",
    description = "This node, its view, its peers and its clocks.",
    responses(
        (status = 200, description = "The node's view of the cluster.", body = ClusterInfo),
        (status = 503, description = "A node still waiting for its replicas (DNS discovery) answers `Readiness` saying what it waits for; a node shutting down answers `shutting_down`.", body = crate::api::openapi::NotRunning),
        (status = 500, description = INTERNAL, body = ErrorBody)))]
async fn cluster(State(s): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(s.node.cluster().await?).into_response())
}

#[utoipa::path(get, path = "/v1/stats", tag = "observability",
    description = "Message and grant counts in the original programs' form.",
    responses((status = 200, description = "The counts.", body = Stats), NodeErrors))]
async fn stats(State(s): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(s.node.stats().await?).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowQuery {
    lock: Option<String>,
    acquire: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/flow?lock=NAME[&acquire=ID][&limit=N]`: this node's recent flow records (see [`crate::obs::flow`]).
#[utoipa::path(get, path = "/v1/flow", tag = "observability",
    description = "This node's recent flow records (messages and local events), oldest first.",
    params(
        ("lock" = Option<String>, Query, description = "Only records of this lock."),
        ("acquire" = Option<String>, Query, description = "Only records of this acquire (its trace id)."),
        ("limit" = Option<usize>, Query, description = "At most this many records (capped at the node's buffer size).")),
    responses(
        (status = 200, description = "`{\"node\", \"records\": [...]}`.", body = crate::obs::flow::FlowResponse),
        (status = 400, description = BAD_REQUEST, body = ErrorBody)))]
async fn flow(
    State(s): State<AppState>,
    q: Result<axum::extract::Query<FlowQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if let Some(lock) = &q.lock {
        validate_lock_name(lock)?;
    }
    let limit = q.limit.unwrap_or(crate::obs::flow::DEFAULT_CAPACITY).min(crate::obs::flow::DEFAULT_CAPACITY);
    let records = s.node.shared.flow_records(q.lock.as_deref(), q.acquire.as_deref(), limit);
    Ok(Json(crate::obs::flow::FlowResponse { node: s.node.shared.me.get(), records }).into_response())
}

#[utoipa::path(get, path = "/v1/workload", tag = "observability",
    description = "The built-in workload's status, when one is configured.",
    responses(
        (status = 200, description = "The workload's status (free-form).", body = serde_json::Value),
        (status = 404, description = "`not_found`: no workload is configured on this node.", body = ErrorBody)))]
async fn workload(State(s): State<AppState>) -> Response {
    match &s.workload {
        Some(f) => Json(f()).into_response(),
        None => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "no workload is configured on this node".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_algorithm_outside_the_list_is_refused_naming_the_allowed_ones() {
        let allowed = [Algorithm::Lamport, Algorithm::ProbableOwner];
        assert_eq!(check_algorithm(&allowed, None), Ok(()), "no algorithm: the default, which config checks");
        assert_eq!(check_algorithm(&allowed, Some(Algorithm::ProbableOwner)), Ok(()));
        let e = check_algorithm(&allowed, Some(Algorithm::RicartAgrawala)).unwrap_err();
        assert_eq!(e.status(), 400);
        assert_eq!(
            e.to_string(),
            "algorithm ricart-agrawala is not served by this cluster; allowed: lamport,probable-owner \
             (DMUTEX_ALGORITHMS)"
        );
    }
}
