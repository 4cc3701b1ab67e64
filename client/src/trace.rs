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
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState};

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
}
