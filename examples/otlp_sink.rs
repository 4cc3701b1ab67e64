//! A minimal OTLP trace receiver for the container end-to-end tests (`tests/docker_e2e.rs`): Jaeger cannot be
//! pulled on a machine without a registry, so the test builds this into a `FROM scratch` image of its own.
//!
//! It accepts OTLP/HTTP with protobuf bodies (`POST /v1/traces` on `0.0.0.0:4318`) and OTLP/gRPC (`0.0.0.0:4317`),
//! keeps a flat summary of every span (ids as hex, name, `service.name`, `service.instance.id`) in memory, and
//! serves them as JSON at `GET /spans` on `0.0.0.0:8080`. Nothing is persisted; memory is bounded by
//! [`MAX_SPANS`] (later spans are dropped and counted).
//!
//! Build it static, like the dmutex image (`--target x86_64-unknown-linux-gnu`, `-C target-feature=+crt-static`),
//! and run it as the image's entry point; a listen address may be overridden with `OTLP_SINK_HTTP`,
//! `OTLP_SINK_GRPC` and `OTLP_SINK_QUERY`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use prost::Message as _;
use serde::Serialize;
use std::sync::{Arc, Mutex};

/// At most this many spans are kept.
const MAX_SPANS: usize = 200_000;

/// One received span, summarised.
#[derive(Clone, Debug, Serialize)]
struct SpanSummary {
    trace_id: String,
    span_id: String,
    parent_span_id: Option<String>,
    name: String,
    service_name: Option<String>,
    instance: Option<String>,
    transport: &'static str,
}

#[derive(Default)]
struct Collected {
    spans: Vec<SpanSummary>,
    dropped: u64,
}

type Store = Arc<Mutex<Collected>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn string_attr(kvs: &[KeyValue], key: &str) -> Option<String> {
    kvs.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    })
}

fn collect(store: &Store, request: ExportTraceServiceRequest, transport: &'static str) {
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
        let service_name = string_attr(&resource, "service.name");
        let instance = string_attr(&resource, "service.instance.id");
        for ss in rs.scope_spans {
            for span in ss.spans {
                out.push(SpanSummary {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty()).then(|| hex(&span.parent_span_id)),
                    name: span.name,
                    service_name: service_name.clone(),
                    instance: instance.clone(),
                    transport,
                });
            }
        }
    }
    let mut c = store.lock().unwrap_or_else(|p| p.into_inner());
    for s in out {
        if c.spans.len() < MAX_SPANS {
            c.spans.push(s);
        } else {
            c.dropped += 1;
        }
    }
}

struct Grpc {
    store: Store,
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        collect(&self.store, request.into_inner(), "grpc");
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

async fn http_export(State(store): State<Store>, body: Bytes) -> axum::response::Response {
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            collect(&store, request, "http");
            let reply = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
            ([(header::CONTENT_TYPE, "application/x-protobuf")], reply).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn spans(State(store): State<Store>) -> axum::response::Response {
    let c = store.lock().unwrap_or_else(|p| p.into_inner());
    axum::Json(serde_json::json!({"spans": c.spans, "dropped": c.dropped})).into_response()
}

fn addr(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let store: Store = Arc::default();
    let http = tokio::net::TcpListener::bind(addr("OTLP_SINK_HTTP", "0.0.0.0:4318")).await?;
    let grpc = tokio::net::TcpListener::bind(addr("OTLP_SINK_GRPC", "0.0.0.0:4317")).await?;
    let query = tokio::net::TcpListener::bind(addr("OTLP_SINK_QUERY", "0.0.0.0:8080")).await?;
    eprintln!(
        "otlp_sink: OTLP/HTTP on {}, OTLP/gRPC on {}, GET /spans on {}",
        http.local_addr()?,
        grpc.local_addr()?,
        query.local_addr()?
    );
    let grpc_server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Grpc { store: store.clone() }))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(grpc));
    let http_app = Router::new().route("/v1/traces", post(http_export)).with_state(store.clone());
    let query_app = Router::new().route("/spans", get(spans)).with_state(store);
    let stop = async {
        // SIGTERM (docker stop) ends the sink at once: it holds nothing worth draining.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(())
    };
    tokio::select! {
        r = grpc_server => r?,
        r = axum::serve(http, http_app).into_future() => r?,
        r = axum::serve(query, query_app).into_future() => r?,
        r = stop => r?,
    }
    Ok(())
}
