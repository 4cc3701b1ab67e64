//! The OpenAPI 3.1 document of the HTTP API, generated with `utoipa` from the handlers' `#[utoipa::path]`
//! annotations (src/api/router.rs) and the wire types' `ToSchema` (the client crate's feature `openapi`), served
//! at `GET /openapi.json` and committed as docs/openapi.json.
//!
//! Two server-only answers are described as free-form objects, not field by field: `LockInfo`
//! (`GET /v1/locks/{name}?scope=local`, the algorithm cores' internal views) and `FlowResponse` (`GET /v1/flow`).
//! Both are for people watching the algorithms, not part of the client contract.
//!
//! Regenerate the committed file after changing the API: `DMUTEX_WRITE_OPENAPI=1 cargo test --lib openapi`.

use crate::api::types::{ErrorBody, LockInfo, LockState, Readiness};
use crate::obs::flow::FlowResponse;
use std::borrow::Cow;
use std::sync::OnceLock;
use utoipa::OpenApi;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, Type};

/// The document's description: what every client must know about statuses and codes.
const DESCRIPTION: &str = "\
The HTTP API of dmutex, a distributed lock service (Lamport 1978, Ricart–Agrawala 1981, probable owner).

Every error answer is `{\"error\": {\"code\", \"message\", ...}}` (schema `ErrorBody`); the code is the contract. \
An unknown path answers 404 `not_found`, a wrong method 405 `method_not_allowed` with an `Allow` header.

| status | code | meaning |
|---|---|---|
| 200 | | success (a grant: `Grant`) |
| 400 | `bad_request` | malformed request, unknown field, algorithm not served |
| 401 | `unauthorized` | no bearer token, or one the node does not know (only with `DMUTEX_API_TOKENS_FILE`) |
| 403 | `forbidden` | the token does not have the scope the operation needs (the message names it) |
| 404 | `not_found` | no such endpoint (or no workload configured) |
| 405 | `method_not_allowed` | wrong method; `Allow` lists the right ones |
| 409 | `timeout` | waited `timeout_ms` and was not granted |
| 409 | `locked` | try-lock failed; `holder`: the holding node, or null |
| 409 | `lease_not_found` | unknown, expired or released lease, or it does not hold this lock |
| 409 | `lease_lost` | the lease ended without its client releasing it (the message says why) |
| 409 | `lease_in_use` | the lease given to acquire holds another lock |
| 413 | `payload_too_large` | body over 16 KiB |
| 503 | `unavailable`, `shutting_down` | this node cannot serve now; the request holds nothing, so another endpoint may be tried |
| 500 | `internal` | something unexpected inside the node |

No status used for a lock outcome is one that common HTTP clients retry by themselves (408, 429, other 5xx).";

/// The generated document.
#[derive(OpenApi)]
#[openapi(
    info(title = "dmutex", description = DESCRIPTION, license(name = "MIT OR Apache-2.0")),
    paths(
        super::router::healthz,
        super::router::readyz,
        super::router::metrics,
        super::router::openapi_json,
        super::router::locks,
        super::router::lock_info,
        super::router::acquire,
        super::router::release,
        super::router::keepalive,
        super::router::cluster,
        super::router::stats,
        super::router::flow,
        super::router::workload,
    ),
    modifiers(&MethodNotAllowed, &BearerTokens),
    // Query parameters' schemas are not collected from the paths: `Scope` is listed here.
    components(schemas(ErrorBody, dmutex_client::ErrorDetail, dmutex_client::Algorithm, dmutex_client::Timeout, Scope)),
    tags(
        (name = "locks", description = "Acquire, release, keep alive and query locks."),
        (name = "cluster", description = "Membership."),
        (name = "health", description = "Liveness, readiness and this document."),
        (name = "observability", description = "Metrics, counts, message flow and the built-in workload."),
    )
)]
pub(crate) struct ApiDoc;

/// Adds the 405 every path answers to a wrong method to each operation.
struct MethodNotAllowed;

impl utoipa::Modify for MethodNotAllowed {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let response = error_response(
            "`method_not_allowed`: the path does not take this method; the `Allow` header lists the ones it \
             takes.",
        );
        for item in doc.paths.paths.values_mut() {
            for op in operations(item) {
                op.responses.responses.insert("405".into(), response.clone().into());
            }
        }
    }
}

/// Adds the bearer security scheme and, on every operation that needs a token when `DMUTEX_API_TOKENS_FILE`
/// is set, its requirement (the scope as the role name, as OpenAPI 3.1 allows) and the 401/403 answers.
/// `/metrics` needs one only with `DMUTEX_METRICS_AUTH=read`: its requirement is optional (`{}` or bearer).
struct BearerTokens;

impl utoipa::Modify for BearerTokens {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use crate::api::auth::{Need, need_of};
        use crate::config::MetricsAuth;
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "A token of the node's DMUTEX_API_TOKENS_FILE (`<token> <scope>[,<scope>...]` per line), sent as                  `Authorization: Bearer <token>`. Without that file the API needs no token. Scopes: `lock`                  (acquire, release, keepalive), `read` (lock, cluster and flow state, stats, this document;                  /metrics with DMUTEX_METRICS_AUTH=read), `admin` (/v1/workload). /healthz and /readyz never                  need one.",
            ))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
        for (path, item) in doc.paths.paths.iter_mut() {
            let (scope, optional) = match (need_of(path, MetricsAuth::Open), need_of(path, MetricsAuth::Read))
            {
                (Need::Scope(s), _) => (s, false),
                (Need::Open, Need::Scope(s)) => (s, true),
                _ => continue,
            };
            let when = if optional { " (only with DMUTEX_METRICS_AUTH=read)" } else { "" };
            let unauthorized = error_response(&format!(
                "`unauthorized`: no bearer token, or one the node does not know{when}; `WWW-Authenticate: Bearer`."
            ));
            let forbidden =
                error_response(&format!("`forbidden`: the token does not have the `{scope}` scope{when}."));
            let mut security = vec![SecurityRequirement::new("bearer", [scope.as_str()])];
            if optional {
                security.insert(0, SecurityRequirement::default());
            }
            for op in operations(item) {
                op.security = Some(security.clone());
                op.responses.responses.insert("401".into(), unauthorized.clone().into());
                op.responses.responses.insert("403".into(), forbidden.clone().into());
            }
        }
    }
}

/// An error answer (an `ErrorBody` as JSON) described by `description`, for the modifiers to add to
/// operations.
fn error_response(description: &str) -> utoipa::openapi::Response {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
        )
        .build()
}

/// The operations of a path (the API uses GET and POST only).
fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [&mut item.get, &mut item.post].into_iter().flatten()
}

/// The document as pretty JSON with a final newline (the exact bytes of docs/openapi.json).
pub(crate) fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        // utoipa reads the version of the crate that expands the derive: this one.
        doc.info.version = env!("CARGO_PKG_VERSION").into();
        let mut text = doc.to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        text.push('\n');
        text
    })
}

/// `GET /healthz`'s answer (the handler writes it as a literal).
#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "a schema only: the handler sends the same shape as a JSON literal")]
pub(crate) struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    status: String,
}

/// The `scope` query parameter of `GET /v1/locks/{name}`.
#[derive(utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code, reason = "a schema only: the handler matches the query string")]
pub(crate) enum Scope {
    /// Asked of every member (the default).
    Cluster,
    /// This node's own view.
    Local,
}

/// `GET /v1/locks/{name}`: the cluster's answer, or with `scope=local` this node's view.
#[derive(utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code, reason = "a schema only: the handler answers one or the other")]
pub(crate) enum LockAnswer {
    /// `scope=cluster` (the default).
    Cluster(LockState),
    /// `scope=local`.
    Local(LockInfo),
}

/// `GET /v1/cluster` → 503: a node waiting for its replicas, or shutting down.
#[derive(utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code, reason = "a schema only: the handlers answer one or the other")]
pub(crate) enum NotRunning {
    /// Still waiting for its replicas (DNS discovery).
    Waiting(Readiness),
    /// `shutting_down` (or `unavailable`).
    Error(ErrorBody),
}

/// A free-form object with a description.
fn free_form(description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::FreeForm(true)))
        .description(Some(description))
        .into()
}

impl utoipa::PartialSchema for LockInfo {
    fn schema() -> RefOr<Schema> {
        free_form(
            "This node's own view of a lock (`scope=local`): `{\"name\", \"leases\": [{\"algorithm\", \
             \"fencing_token\", \"expires_in_ms\"}], \"algorithms\": {<algorithm>: {\"held_here\", \"holder\", \
             \"last_token\", \"queue\", \"own_request\", \"local_waiters\"}}}`. Free-form: the algorithm cores' \
             internal view, not part of the client contract.",
        )
    }
}

impl utoipa::ToSchema for LockInfo {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("LockInfo")
    }
}

impl utoipa::PartialSchema for FlowResponse {
    fn schema() -> RefOr<Schema> {
        free_form(
            "`{\"node\", \"records\": [{\"at_unix_ms\", \"node\", \"direction\", \"peer\", \"kind\", \"lock\", \
             \"algorithm\", \"lamport_ts\", \"trace_id\", ...}]}`. Free-form: a debugging view, not part of the \
             client contract.",
        )
    }
}

impl utoipa::ToSchema for FlowResponse {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("FlowResponse")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const COMMITTED: &str = "docs/openapi.json";

    #[test]
    fn the_committed_openapi_document_is_the_generated_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(COMMITTED);
        if std::env::var_os("DMUTEX_WRITE_OPENAPI").is_some() {
            std::fs::write(&path, json()).expect("write docs/openapi.json");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == json(),
            "{COMMITTED} differs from the document the code generates (src/api/openapi.rs, the handlers' \
             #[utoipa::path] and the wire types); regenerate it with `DMUTEX_WRITE_OPENAPI=1 cargo test --lib \
             openapi` and commit it"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1_with_this_version_and_the_error_schema() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let timeout = &doc["components"]["schemas"]["Timeout"]["oneOf"];
        assert_eq!(timeout[0]["type"], "integer", "{timeout}");
        assert_eq!(timeout[1]["enum"], serde_json::json!(["forever"]), "{timeout}");
        let acquire = &doc["paths"]["/v1/locks/{name}/acquire"]["post"]["responses"];
        for status in ["200", "400", "405", "409", "413", "503", "500"] {
            assert!(acquire.get(status).is_some(), "acquire has no {status}: {acquire}");
        }
        assert_eq!(
            acquire["409"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody"
        );
        assert!(doc["components"]["schemas"]["ErrorDetail"]["properties"]["holder"].is_object());
    }

    /// Every operation that needs a token says which scope and answers 401 and 403; the probes need none.
    #[test]
    fn protected_operations_name_their_scope_and_answer_401_and_403() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        for (path, method, scope) in [
            ("/v1/locks/{name}/acquire", "post", "lock"),
            ("/v1/leases/{lease}/keepalive", "post", "lock"),
            ("/v1/locks/{name}", "get", "read"),
            ("/v1/flow", "get", "read"),
            ("/openapi.json", "get", "read"),
            ("/v1/workload", "get", "admin"),
        ] {
            let op = &doc["paths"][path][method];
            assert_eq!(op["security"], serde_json::json!([{"bearer": [scope]}]), "{path}");
            assert!(op["responses"]["401"].is_object() && op["responses"]["403"].is_object(), "{path}");
        }
        assert_eq!(
            doc["paths"]["/metrics"]["get"]["security"],
            serde_json::json!([{}, {"bearer": ["read"]}])
        );
        for probe in ["/healthz", "/readyz"] {
            let op = &doc["paths"][probe]["get"];
            assert!(op.get("security").is_none() && op["responses"].get("401").is_none(), "{probe}");
        }
    }

    /// Every `$ref` names a schema of the document (a query parameter's schema is not collected by itself).
    #[test]
    fn every_reference_resolves() {
        fn refs<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(serde_json::Value::String(r)) = m.get("$ref") {
                        out.push(r);
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 20, "{found:?}");
        for r in found {
            let name =
                r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("unexpected $ref {r}"));
            assert!(doc["components"]["schemas"].get(name).is_some(), "dangling $ref {r}");
        }
    }

    /// Every `.route(...)` of `router()` is in the document and the document has no other path, so a new route
    /// without its `#[utoipa::path]` fails here.
    #[test]
    fn every_route_of_the_router_is_documented() {
        let source = include_str!("router.rs");
        let start = source.find("pub(crate) fn router(").expect("router() in router.rs");
        let end = start + source[start..].find("\n}\n").expect("the end of router()");
        let routes: BTreeSet<&str> =
            source[start..end].split(".route(\"").skip(1).filter_map(|rest| rest.split('"').next()).collect();
        assert!(routes.len() >= 13, "{routes:?}");
        let doc = ApiDoc::openapi();
        let paths: BTreeSet<&str> = doc.paths.paths.keys().map(String::as_str).collect();
        assert_eq!(routes, paths, "router() routes vs documented paths");
        let labelled: BTreeSet<&str> = crate::api::ROUTES.iter().copied().filter(|r| *r != "other").collect();
        assert_eq!(labelled, paths, "observe::ROUTES vs documented paths");
    }
}
