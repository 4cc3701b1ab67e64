//! An OTLP trace receiver for tests, built on the official `opentelemetry-proto` types.
//!
//! It serves OTLP/gRPC (tonic `TraceServiceServer`) and OTLP/HTTP with protobuf bodies (`POST /v1/traces`,
//! axum) on two 127.0.0.1 ports chosen by the OS, and collects every span it receives, flattened with its
//! resource attributes and the headers of its export request, into a shared list. Include it with `#[path = "support/otlp.rs"] mod otlp;`.

#![allow(dead_code)]

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Which OTLP transport delivered a span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP, protobuf.
    Http,
}

/// One received span, ids as lowercase hex.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CollectedSpan {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits; `None` for a root span.
    pub parent_span_id: Option<String>,
    /// The span name.
    pub name: String,
    /// Span attributes, values rendered as text.
    pub attributes: BTreeMap<String, String>,
    /// Resource attributes (`service.name`, `service.instance.id`, …).
    pub resource: BTreeMap<String, String>,
    /// How it arrived.
    pub transport: Transport,
    /// The headers (HTTP) or metadata (gRPC) of the export request that carried it; names in lower case.
    pub headers: BTreeMap<String, String>,
}

impl CollectedSpan {
    /// A span attribute.
    pub(crate) fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// The `dmutex.node_id` resource attribute (`service.instance.id` is a per-process UUID).
    pub(crate) fn instance(&self) -> Option<&str> {
        self.resource.get("dmutex.node_id").map(String::as_str)
    }
}

type Store = Arc<Mutex<Vec<CollectedSpan>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn value_text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => hex(b),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter().map(|kv| (kv.key.clone(), value_text(&kv.value))).collect()
}

fn header_map(headers: &axum::http::HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect()
}

fn collect(
    store: &Store,
    request: ExportTraceServiceRequest,
    transport: Transport,
    headers: &BTreeMap<String, String>,
) {
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let resource = rs.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                out.push(CollectedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty()).then(|| hex(&span.parent_span_id)),
                    name: span.name,
                    attributes: attributes(&span.attributes),
                    resource: resource.clone(),
                    transport,
                    headers: headers.clone(),
                });
            }
        }
    }
    match store.lock() {
        Ok(mut spans) => spans.extend(out),
        Err(poisoned) => poisoned.into_inner().extend(out),
    }
}

struct GrpcService {
    store: Store,
}

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = header_map(&request.metadata().clone().into_headers());
        collect(&self.store, request.into_inner(), Transport::Grpc, &headers);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

async fn http_export(
    State(store): State<Store>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            collect(&store, request, Transport::Http, &header_map(&headers));
            let reply = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
            ([(header::CONTENT_TYPE, "application/x-protobuf")], reply).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

/// A running receiver; dropping it stops both servers.
pub(crate) struct OtlpReceiver {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    store: Store,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl OtlpReceiver {
    /// Starts both servers on 127.0.0.1, ports chosen by the OS.
    pub(crate) async fn start() -> std::io::Result<Self> {
        Self::start_with(None).await
    }

    /// Like [`OtlpReceiver::start`], the gRPC server speaking TLS with this certificate and key (PEM).
    pub(crate) async fn start_tls(cert: &str, key: &str) -> std::io::Result<Self> {
        Self::start_with(Some(tonic::transport::Identity::from_pem(cert, key))).await
    }

    async fn start_with(tls: Option<tonic::transport::Identity>) -> std::io::Result<Self> {
        let store: Store = Arc::default();
        let grpc_listener = TcpListener::bind("127.0.0.1:0").await?;
        let http_listener = TcpListener::bind("127.0.0.1:0").await?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        let mut builder = tonic::transport::Server::builder();
        if let Some(identity) = tls {
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .map_err(std::io::Error::other)?;
        }
        let grpc = builder
            .add_service(TraceServiceServer::new(GrpcService { store: store.clone() }))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(grpc_listener));
        let app = Router::new().route("/v1/traces", post(http_export)).with_state(store.clone());
        let tasks = vec![
            tokio::spawn(async move {
                let _ = grpc.await;
            }),
            tokio::spawn(async move {
                let _ = axum::serve(http_listener, app).await;
            }),
        ];
        Ok(Self { grpc_addr, http_addr, store, tasks })
    }

    /// The gRPC endpoint (`http://127.0.0.1:PORT`).
    pub(crate) fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// The OTLP/HTTP base URL (what `OTEL_EXPORTER_OTLP_ENDPOINT` would hold).
    pub(crate) fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// The full OTLP/HTTP traces URL (base + `/v1/traces`).
    pub(crate) fn http_traces_url(&self) -> String {
        format!("http://{}/v1/traces", self.http_addr)
    }

    /// Every span received so far, in arrival order.
    pub(crate) fn spans(&self) -> Vec<CollectedSpan> {
        match self.store.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Forgets the spans received so far.
    pub(crate) fn clear(&self) {
        match self.store.lock() {
            Ok(mut s) => s.clear(),
            Err(poisoned) => poisoned.into_inner().clear(),
        }
    }

    /// Polls until `done(spans)` holds (`Ok(spans)`) or `timeout` passes (`Err(spans)`, for the message).
    pub(crate) async fn wait_for(
        &self,
        done: impl Fn(&[CollectedSpan]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<CollectedSpan>, Vec<CollectedSpan>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return Ok(spans);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(spans);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
