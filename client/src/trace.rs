//! W3C trace context on outgoing requests: with the `opentelemetry` feature, a call made while an
//! OpenTelemetry span is current (also a `tracing` span under `tracing-opentelemetry`, which activates its
//! context on entry) carries `traceparent` (and `tracestate`), so the node's spans continue the caller's
//! trace. Only the OpenTelemetry API crate is used: the caller's SDK decides sampling and export.

/// `req` with the current span's `traceparent`, if there is a valid one.
#[cfg(feature = "opentelemetry")]
pub(crate) fn inject(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match traceparent(&opentelemetry::Context::current()) {
        Some((parent, state)) => {
            let req = req.header("traceparent", parent);
            if state.is_empty() { req } else { req.header("tracestate", state) }
        }
        None => req,
    }
}

/// Without the `opentelemetry` feature: `req` as it is.
#[cfg(not(feature = "opentelemetry"))]
pub(crate) fn inject(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    req
}

/// The `traceparent` and `tracestate` values of `cx`'s span (version 00), if its span context is valid.
#[cfg(feature = "opentelemetry")]
fn traceparent(cx: &opentelemetry::Context) -> Option<(String, String)> {
    use opentelemetry::trace::TraceContextExt as _;
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return None;
    }
    let parent = format!("00-{:032x}-{:016x}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8());
    Some((parent, sc.trace_state().header()))
}

#[cfg(all(test, feature = "opentelemetry"))]
mod tests {
    use super::*;
    use axum::extract::State;
    use axum::http::{HeaderMap, Uri};
    use axum::response::{IntoResponse as _, Response};
    use axum::routing::post;
    use axum::{Json, Router};
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState};
    use serde_json::json;
    use std::sync::{Arc, Mutex};

    #[test]
    fn the_current_span_becomes_a_traceparent() {
        assert_eq!(traceparent(&opentelemetry::Context::new()), None, "no span, no header");
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(sc);
        let (parent, state) = traceparent(&cx).unwrap();
        assert_eq!(parent, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(state, "");
    }

    /// What a fake node saw of one call: the path, `traceparent` and `tracestate`.
    type Seen = Arc<Mutex<Vec<(String, Option<String>, Option<String>)>>>;

    async fn record(State(seen): State<Seen>, uri: Uri, headers: HeaderMap) -> Response {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        seen.lock().unwrap().push((uri.path().to_string(), header("traceparent"), header("tracestate")));
        if uri.path().ends_with("/acquire") {
            Json(json!({"name": "db", "lease": "1.1.ab", "fencing_token": 7, "node_id": 1, "ttl_ms": 60000}))
        } else {
            Json(json!({"released": true}))
        }
        .into_response()
    }

    /// The calls the library makes (acquire through a guard, release, the raw acquire) carry the current
    /// OpenTelemetry span's context on the wire, and nothing when no span is current.
    #[tokio::test]
    async fn calls_made_inside_a_span_carry_its_traceparent_on_the_wire() {
        use crate::{AcquireBody, Client};
        use opentelemetry::context::FutureExt as _;
        let seen = Seen::default();
        let app = Router::new().fallback(post(record)).with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client = Client::new([format!("http://{addr}/")]).unwrap();

        let sc = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "x1")]).unwrap(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(sc);
        let traced = {
            let client = client.clone();
            async move {
                let guard = client.lock("db").acquire().await.unwrap();
                guard.release().await.unwrap();
            }
        };
        traced.with_context(cx).await;
        let _ = client.acquire("db", &AcquireBody::default()).await.unwrap();

        let parent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string());
        let state = Some("vendor=x1".to_string());
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [
                ("/v1/locks/db/acquire".to_string(), parent.clone(), state.clone()),
                ("/v1/locks/db/release".to_string(), parent, state),
                ("/v1/locks/db/acquire".to_string(), None, None),
            ],
            "inside the span: its context; outside: no header"
        );
    }
}
