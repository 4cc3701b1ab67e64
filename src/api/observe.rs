//! What the HTTP layer reports about itself: every request is counted and timed by route
//! (`dmutex_http_requests_total`, `dmutex_http_request_duration_seconds`) and, when traces are exported, runs
//! inside an OpenTelemetry server span (`GET /v1/locks/{name}`, with the usual `http.*` attributes) that
//! continues the caller's trace when the request carries a W3C `traceparent`. The node's `lock.acquire` span
//! is a child of it, so a client's own trace shows the lock wait and every peer message it caused.

use crate::node::Shared;
use crate::obs::metrics::{HttpLabels, RouteLabel};
use crate::obs::telemetry;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument as _;

/// The API's route patterns: the only values of the `route` label besides `other`.
pub const ROUTES: [&str; 14] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/v1/locks",
    "/v1/locks/{name}",
    "/v1/locks/{name}/acquire",
    "/v1/locks/{name}/release",
    "/v1/leases/{lease}/keepalive",
    "/v1/cluster",
    "/v1/stats",
    "/v1/flow",
    "/v1/workload",
    "other",
];

/// The route pattern a path matches (as the router matches it: one segment per parameter), or `other`.
pub(crate) fn route_of(path: &str) -> &'static str {
    let exact = ROUTES.iter().find(|r| !r.contains('{') && **r == path);
    if let Some(r) = exact {
        return r;
    }
    let one_segment = |s: &str| !s.is_empty() && !s.contains('/');
    if let Some(rest) = path.strip_prefix("/v1/locks/") {
        return match rest.rsplit_once('/') {
            None if one_segment(rest) => "/v1/locks/{name}",
            Some((name, "acquire")) if one_segment(name) => "/v1/locks/{name}/acquire",
            Some((name, "release")) if one_segment(name) => "/v1/locks/{name}/release",
            _ => "other",
        };
    }
    if let Some(rest) = path.strip_prefix("/v1/leases/") {
        if let Some((lease, "keepalive")) = rest.rsplit_once('/') {
            if one_segment(lease) {
                return "/v1/leases/{lease}/keepalive";
            }
        }
    }
    "other"
}

/// The path as a span records it: as sent, except where it carries a lease id (a secret: whoever knows it
/// can release the lock), which is replaced by the route pattern.
fn traced_path<'a>(path: &'a str, route: &'static str) -> &'a str {
    if route.contains("{lease}") || (route == "other" && path.starts_with("/v1/leases/")) {
        route
    } else {
        path
    }
}

/// The middleware: counts, times and (when exporting) traces one request.
pub(crate) async fn observe_http(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let route = route_of(req.uri().path());
    let method = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        _ => "other",
    };
    let started = Instant::now();
    let span = if telemetry::exporting() {
        let span = tracing::info_span!(
            "http.server",
            otel.name = %format!("{} {route}", req.method()),
            otel.kind = "server",
            http.request.method = %req.method(),
            http.route = route,
            url.path = %traced_path(req.uri().path(), route),
            http.response.status_code = tracing::field::Empty,
            node = shared.me.get(),
        );
        let carried: BTreeMap<String, String> = ["traceparent", "tracestate"]
            .iter()
            .filter_map(|k| {
                req.headers().get(*k).and_then(|v| v.to_str().ok()).map(|v| (k.to_string(), v.into()))
            })
            .collect();
        telemetry::set_parent(&span, &carried);
        span
    } else {
        tracing::Span::none()
    };
    let response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    let m = &shared.metrics;
    m.http_requests.inc(HttpLabels { route, method, status });
    m.http_duration.observe(RouteLabel(route), started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_their_route_pattern_and_nothing_else_is_a_label() {
        for (path, route) in [
            ("/healthz", "/healthz"),
            ("/v1/locks", "/v1/locks"),
            ("/v1/locks/db", "/v1/locks/{name}"),
            ("/v1/locks/db/acquire", "/v1/locks/{name}/acquire"),
            ("/v1/locks/release/release", "/v1/locks/{name}/release"),
            ("/v1/leases/0.1.ab/keepalive", "/v1/leases/{lease}/keepalive"),
            ("/v1/locks/a/b/acquire", "other"),
            ("/v1/locks/", "other"),
            ("/v1/locks//acquire", "other"),
            ("/v1/leases/x", "other"),
            ("/nope", "other"),
        ] {
            assert_eq!(route_of(path), route, "{path}");
        }
    }

    #[test]
    fn a_lease_id_never_reaches_a_span() {
        let lease = "0.1.00112233445566778899aabbccddeeff";
        for path in [
            format!("/v1/leases/{lease}/keepalive"),
            format!("/v1/leases/{lease}"),
            format!("/v1/leases/{lease}/x/y"),
        ] {
            assert!(!traced_path(&path, route_of(&path)).contains(lease), "{path}");
        }
        assert_eq!(
            traced_path("/v1/locks/db/acquire", route_of("/v1/locks/db/acquire")),
            "/v1/locks/db/acquire"
        );
    }
}
