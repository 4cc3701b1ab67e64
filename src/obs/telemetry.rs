//! Telemetry: logs (tracing-subscriber, text or JSON) and, when configured, OpenTelemetry traces over OTLP.
//!
//! Traces are exported only when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set;
//! otherwise no OpenTelemetry layer is installed at all, so spans cost what plain `tracing` spans cost.
//!
//! The OpenTelemetry crates read the standard variables themselves: the endpoint (the signal-specific one as
//! is, the generic one with `/v1/traces` appended for OTLP/HTTP), `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`,
//! `_TIMEOUT`, `_INSECURE`, `_COMPRESSION` (`none` only: no codec is compiled in), `OTEL_TRACES_SAMPLER(_ARG)`,
//! `OTEL_BSP_*`. This module adds only what they lack:
//! - exporting is off unless an endpoint is set (the SDK would assume `localhost`);
//! - `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` defaults to `http/protobuf`, as the specification says, whatever
//!   cargo features the exporter crate was built with (its own default depends on them);
//! - a misspelt protocol or sampler is a startup error: the crates log a warning and fall back to a default;
//! - `OTEL_RESOURCE_ATTRIBUTES` values are percent-decoded, as the specification says (the SDK's detector
//!   does not); `service.name` defaults to `dmutex` (`OTEL_SERVICE_NAME` wins, then the attribute);
//!   `service.instance.id` is a random UUID per process and `dmutex.node_id` the node id — with DNS discovery,
//!   where the id is learnt after start, from then on ([`TelemetryGuard::set_node_id`]), `host.name` before;
//! - an `https://` collector over OTLP/gRPC is trusted through the Mozilla roots, or only through the CA
//!   bundle in `OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE`, with an optional client certificate
//!   (`OTEL_EXPORTER_OTLP_(TRACES_)CLIENT_CERTIFICATE` / `_CLIENT_KEY`) ([`OtlpTls`]); the exporter's own
//!   TLS default trusts nothing. OTLP/HTTP to `https://` is a startup error: that exporter is built without
//!   TLS (its reqwest 0.13 `rustls` feature would pull aws-lc-rs).
//!
//! Invariants:
//! - Exporting never blocks the caller: finished spans go to the SDK's batch processor, a bounded queue
//!   (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2,048) drained by its own thread; when the queue is full the span is
//!   dropped, never waited for. An unreachable collector therefore costs lost spans, not latency.
//! - The SDK keeps its own count of queue-full drops private (it only logs the total at shutdown), so
//!   [`SpanCounters`] counts what it can see: spans ended, spans exported, spans whose export failed. Their
//!   difference is "queued or dropped"; after [`TelemetryGuard::shutdown`] it is exactly the spans lost.
//! - [`TelemetryGuard::shutdown`] flushes the queue from a blocking thread and gives up after
//!   [`SHUTDOWN_TIMEOUT`], so SIGTERM neither loses buffered spans nor hangs on a dead collector.
//! - The log filter and the OpenTelemetry filter are separate per-layer filters: a quiet log level (`warn`)
//!   must not silence the trace pipeline, and the exporter's own HTTP/2 stack (tonic, hyper, h2, reqwest) is
//!   never traced, which would feed back into itself.
//! - Log lines carry ANSI colour only on a terminal and never with `NO_COLOR` set ([`log_colour`]): files,
//!   pipes and `docker logs` get plain text.
//!
//! W3C trace context travels in peer messages as a `BTreeMap<String, String>` (`traceparent`, `tracestate`):
//! [`inject`] on the sending side, [`set_parent`] (or [`extract`]) on the receiving side.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};
use std::collections::BTreeMap;
use std::fmt;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer, Registry};

/// How long [`TelemetryGuard::shutdown`] waits for the last spans to reach the collector.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// Default `service.name`.
pub const DEFAULT_SERVICE_NAME: &str = "dmutex";

/// The instrumentation scope name of the tracer.
const TRACER_NAME: &str = "dmutex";

/// The signal-specific endpoint variable: a full URL, used as is.
pub const TRACES_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// The generic endpoint variable: a base URL (OTLP/HTTP appends `/v1/traces`).
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The signal-specific protocol variable (wins over [`PROTOCOL_VAR`]).
pub const TRACES_PROTOCOL_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
/// The generic protocol variable.
pub const PROTOCOL_VAR: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";

/// Set once an OpenTelemetry layer is installed by [`init_with`]: lets hot paths skip building spans and
/// trace maps altogether when nothing would export them.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces (an OTLP endpoint was configured and [`init`] installed the layer).
/// Cheap (one relaxed load); the node checks it before creating any per-message span.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// What [`init`] needs from the node configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// Log filter, `EnvFilter` syntax (`info`, `dmutex=debug,warn`).
    pub log: String,
    /// JSON log lines instead of text.
    pub json: bool,
    /// This node's id: `dmutex.node_id` on the resource of every span (`service.instance.id` is a random
    /// UUID per process).
    pub node_id: u16,
}

/// Errors setting telemetry up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter does not parse.
    #[error("invalid log filter {filter:?}: {reason}")]
    InvalidLogFilter {
        /// The filter as given.
        filter: String,
        /// Why it does not parse.
        reason: String,
    },
    /// An `OTEL_*` variable has a value this node does not support.
    #[error("invalid {var}={value:?}: {reason}")]
    InvalidSetting {
        /// The variable at fault, e.g. `OTEL_EXPORTER_OTLP_PROTOCOL`.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The OTLP exporter could not be built (bad endpoint, missing TLS support, …).
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// A TLS file for the collector connection (`OTEL_EXPORTER_OTLP_*CERTIFICATE`, `_CLIENT_KEY`) is unusable.
    #[error("{var}: {error}")]
    TlsFile {
        /// The variable that names the file.
        var: &'static str,
        /// The file and what is wrong with it.
        error: String,
    },
    /// A global tracing subscriber was already installed.
    #[error("a tracing subscriber is already installed: {0}")]
    AlreadyInitialised(String),
    /// Flushing the tracer provider failed or timed out.
    #[error("trace shutdown: {0}")]
    Shutdown(String),
}

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318, path `/v1/traces`).
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The protocol when neither protocol variable is set: `http/protobuf`, the OTLP exporter
    /// specification's default.
    pub const DEFAULT: OtlpProtocol = OtlpProtocol::HttpProtobuf;

    /// The name used in `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn name(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Where spans are sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OtlpEndpoint {
    /// Configured by an environment variable, which the exporter reads itself (the value is kept for the
    /// log): [`TRACES_ENDPOINT_VAR`] is used as is, [`ENDPOINT_VAR`] gets `/v1/traces` for OTLP/HTTP.
    Env {
        /// The variable that holds the endpoint.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// A URL given in code, used as is (for OTLP/HTTP the full URL including `/v1/traces`).
    Url(String),
}

impl fmt::Display for OtlpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OtlpEndpoint::Env { var, value } => write!(f, "{value} (from {var})"),
            OtlpEndpoint::Url(url) => f.write_str(url),
        }
    }
}

/// What this node decides about the trace pipeline; everything else the OpenTelemetry crates read from the
/// environment themselves (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpSettings {
    /// Where spans go.
    pub endpoint: OtlpEndpoint,
    /// `grpc` or `http/protobuf` (the default, as the OpenTelemetry specification says).
    pub protocol: OtlpProtocol,
    /// `service.name`.
    pub service_name: String,
    /// `service.instance.id`: a random UUID made when the process starts, unique per process as the
    /// semantic conventions ask (two clusters, or two incarnations of one node, never collide in one backend).
    pub instance_id: String,
    /// `dmutex.node_id`, when known at start. With DNS discovery it is not: the resource then names
    /// `host.name`, and gets `dmutex.node_id` once discovery gave the id ([`TelemetryGuard::set_node_id`]).
    pub node_id: Option<u16>,
    /// Further resource attributes (`OTEL_RESOURCE_ATTRIBUTES`, percent-decoded), in the given order.
    pub resource_attributes: Vec<(String, String)>,
    /// TLS files for an `https://` collector (the specification's `OTEL_EXPORTER_OTLP_*CERTIFICATE`
    /// variables).
    pub tls: OtlpTls,
}

/// TLS towards an `https://` collector (OTLP/gRPC), from the specification's variables (the signal-specific
/// one wins): `OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE`, a PEM CA bundle that replaces the built-in Mozilla
/// roots; `OTEL_EXPORTER_OTLP_(TRACES_)CLIENT_CERTIFICATE` and `_CLIENT_KEY`, a client certificate for
/// collectors that require one. The files are read when the exporter is built (at start).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct OtlpTls {
    /// The CA bundle and the variable that named it.
    pub certificate: Option<NamedFile>,
    /// The client certificate chain and its key, and the variables that named them.
    pub client: Option<(NamedFile, NamedFile)>,
}

/// A file and the variable that named it (for errors).
pub type NamedFile = (&'static str, PathBuf);

impl OtlpTls {
    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, TelemetryError> {
        let pick = |traces: &'static str, generic: &'static str| {
            get(traces)
                .map(|v| (traces, PathBuf::from(v)))
                .or_else(|| get(generic).map(|v| (generic, PathBuf::from(v))))
        };
        let certificate = pick("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE");
        let cert =
            pick("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE");
        let key = pick("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY");
        let client = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some((var, path)), None) | (None, Some((var, path))) => {
                return Err(TelemetryError::InvalidSetting {
                    var,
                    value: path.display().to_string(),
                    reason: "a client certificate needs both OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and \
                             OTEL_EXPORTER_OTLP_CLIENT_KEY",
                });
            }
        };
        Ok(OtlpTls { certificate, client })
    }

    fn is_set(&self) -> bool {
        self.certificate.is_some() || self.client.is_some()
    }

    /// The tonic TLS configuration: the CA bundle if given (else the Mozilla roots), the client certificate
    /// if given; each file checked with the crate's PEM loader so that an error names it.
    fn tonic_config(
        &self,
    ) -> Result<opentelemetry_otlp::tonic_types::transport::ClientTlsConfig, TelemetryError> {
        use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
        let file = |var: &'static str, path: &Path, check: &dyn Fn() -> Result<(), crate::tls::TlsError>| {
            check().map_err(|e| TelemetryError::TlsFile { var, error: e.to_string() })?;
            std::fs::read(path).map_err(|e| TelemetryError::TlsFile {
                var,
                error: format!("{}: cannot read: {e}", path.display()),
            })
        };
        let mut config = ClientTlsConfig::new();
        config = match &self.certificate {
            Some((var, path)) => {
                let pem = file(var, path, &|| crate::tls::load_ca(path).map(drop))?;
                config.ca_certificate(Certificate::from_pem(pem))
            }
            None => config.with_webpki_roots(),
        };
        if let Some(((cvar, cert), (kvar, key))) = &self.client {
            let cert_pem = file(cvar, cert, &|| crate::tls::load_certs(cert).map(drop))?;
            let key_pem = file(kvar, key, &|| crate::tls::load_key_pair(cert, key).map(drop))?;
            config = config.identity(Identity::from_pem(cert_pem, key_pem));
        }
        Ok(config)
    }
}

impl OtlpSettings {
    /// Settings for an explicit `endpoint` with every other field at its default (for tests and programmatic
    /// use). For HTTP, `endpoint` is the full URL including `/v1/traces`.
    pub fn new(endpoint: impl Into<String>, protocol: OtlpProtocol, node_id: u16) -> Self {
        Self {
            endpoint: OtlpEndpoint::Url(endpoint.into()),
            protocol,
            service_name: DEFAULT_SERVICE_NAME.into(),
            instance_id: random_instance_id(),
            node_id: Some(node_id),
            resource_attributes: Vec::new(),
            tls: OtlpTls::default(),
        }
    }

    /// Reads the process environment; `Ok(None)` when no endpoint is configured (no exporter).
    pub fn from_env(node_id: u16) -> Result<Option<Self>, TelemetryError> {
        Self::from_lookup(node_id, |k| std::env::var(k).ok())
    }

    /// Like [`OtlpSettings::from_env`] with an explicit variable lookup (so tests need not touch the
    /// process environment). Empty values count as unset, as the exporter treats them.
    pub fn from_lookup(
        node_id: u16,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, TelemetryError> {
        let get = |k: &str| lookup(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let endpoint = match (get(TRACES_ENDPOINT_VAR), get(ENDPOINT_VAR)) {
            (Some(value), _) => OtlpEndpoint::Env { var: TRACES_ENDPOINT_VAR, value },
            (None, Some(value)) => OtlpEndpoint::Env { var: ENDPOINT_VAR, value },
            (None, None) => return Ok(None),
        };
        let protocol = match (get(TRACES_PROTOCOL_VAR), get(PROTOCOL_VAR)) {
            (Some(p), _) => parse_protocol(TRACES_PROTOCOL_VAR, p)?,
            (None, Some(p)) => parse_protocol(PROTOCOL_VAR, p)?,
            (None, None) => OtlpProtocol::DEFAULT,
        };
        check_sampler(get("OTEL_TRACES_SAMPLER"), get("OTEL_TRACES_SAMPLER_ARG"))?;
        let tls = OtlpTls::from_lookup(get)?;
        let https = match &endpoint {
            OtlpEndpoint::Env { value, .. } | OtlpEndpoint::Url(value) => is_https(value),
        };
        if https && protocol == OtlpProtocol::HttpProtobuf {
            let (var, value) = match &endpoint {
                OtlpEndpoint::Env { var, value } => (*var, value.clone()),
                OtlpEndpoint::Url(value) => (ENDPOINT_VAR, value.clone()),
            };
            return Err(TelemetryError::InvalidSetting {
                var,
                value,
                reason: "an https:// collector needs OTEL_EXPORTER_OTLP_PROTOCOL=grpc (this build's OTLP/HTTP \
                         exporter has no TLS)",
            });
        }
        let resource_attributes =
            get("OTEL_RESOURCE_ATTRIBUTES").map(|s| parse_resource_attributes(&s)).unwrap_or_default();
        let service_name = get("OTEL_SERVICE_NAME")
            .or_else(|| resource_attributes.iter().find(|(k, _)| k == "service.name").map(|(_, v)| v.clone()))
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.into());
        Ok(Some(Self {
            endpoint,
            protocol,
            service_name,
            instance_id: random_instance_id(),
            node_id: Some(node_id),
            resource_attributes,
            tls,
        }))
    }

    /// The resource every span carries: the configured attributes, then `service.name`, `service.version`,
    /// `service.instance.id` and `dmutex.node_id` (which win over the same keys in `OTEL_RESOURCE_ATTRIBUTES`).
    pub fn resource(&self) -> Resource {
        let builder = Resource::builder_empty()
            .with_detector(Box::new(opentelemetry_sdk::resource::TelemetryResourceDetector))
            .with_attributes(
                self.resource_attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .with_service_name(self.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .with_attribute(KeyValue::new("service.instance.id", self.instance_id.clone()));
        match self.node_id {
            Some(id) => builder.with_attribute(KeyValue::new("dmutex.node_id", i64::from(id))).build(),
            None => builder.build(),
        }
    }
}

/// Whether an endpoint URL asks for TLS.
fn is_https(url: &str) -> bool {
    url.get(..8).is_some_and(|p| p.eq_ignore_ascii_case("https://"))
}

/// A random (version 4) UUID from the OS's generator, in its usual text form.
fn random_instance_id() -> String {
    use rand::{Rng, TryRngCore};
    let mut b: [u8; 16] = rand::rngs::OsRng.unwrap_err().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// The exporter compares protocol names case-insensitively; so does this.
fn parse_protocol(var: &'static str, value: String) -> Result<OtlpProtocol, TelemetryError> {
    match value.to_ascii_lowercase().as_str() {
        "grpc" => Ok(OtlpProtocol::Grpc),
        "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
        _ => Err(TelemetryError::InvalidSetting { var, value, reason: "supported: grpc, http/protobuf" }),
    }
}

/// Rejects what the SDK would only warn about and replace by its default: an unknown sampler name, or a
/// ratio sampler whose argument is not a ratio. The SDK builds the sampler from the same two variables.
fn check_sampler(name: Option<String>, arg: Option<String>) -> Result<(), TelemetryError> {
    let needs_ratio = match name.as_deref() {
        None | Some("always_on" | "always_off" | "parentbased_always_on" | "parentbased_always_off") => false,
        Some("traceidratio" | "parentbased_traceidratio") => true,
        Some(_) => {
            return Err(TelemetryError::InvalidSetting {
                var: "OTEL_TRACES_SAMPLER",
                value: name.unwrap_or_default(),
                reason: "supported: always_on, always_off, traceidratio, parentbased_always_on, \
                         parentbased_always_off, parentbased_traceidratio",
            });
        }
    };
    match arg {
        Some(a) if needs_ratio && !a.parse::<f64>().is_ok_and(|r| (0.0..=1.0).contains(&r)) => {
            Err(TelemetryError::InvalidSetting {
                var: "OTEL_TRACES_SAMPLER_ARG",
                value: a,
                reason: "expected a ratio between 0 and 1",
            })
        }
        _ => Ok(()),
    }
}

/// `k=v,k2=v2` with percent-encoded values (W3C Baggage octets); malformed members are skipped, as the
/// specification asks.
fn parse_resource_attributes(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|member| {
            let (k, v) = member.split_once('=')?;
            let k = k.trim();
            if k.is_empty() {
                return None;
            }
            Some((k.to_string(), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug, Default)]
struct Counters {
    ended: AtomicU64,
    exported: AtomicU64,
    export_failed: AtomicU64,
}

/// Counts of the spans that went through the export pipeline (see the module doc for what "dropped" means).
#[derive(Clone, Debug, Default)]
pub struct SpanCounters(Arc<Counters>);

/// A snapshot of [`SpanCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpanStats {
    /// Sampled spans that ended and were handed to the batch processor.
    pub ended: u64,
    /// Spans the collector accepted.
    pub exported: u64,
    /// Spans in batches whose export failed (collector unreachable, rejected, timed out).
    pub export_failed: u64,
}

impl SpanStats {
    /// Spans neither exported nor failed: still queued, or dropped because the queue was full. After
    /// shutdown, the spans lost to a full queue.
    pub fn queued_or_dropped(&self) -> u64 {
        self.ended.saturating_sub(self.exported.saturating_add(self.export_failed))
    }
}

impl SpanCounters {
    /// The current counts.
    pub fn snapshot(&self) -> SpanStats {
        SpanStats {
            ended: self.0.ended.load(Ordering::Relaxed),
            exported: self.0.exported.load(Ordering::Relaxed),
            export_failed: self.0.export_failed.load(Ordering::Relaxed),
        }
    }
}

/// Counts spans in front of the batch processor; everything else is delegated.
#[derive(Debug)]
struct CountingProcessor {
    inner: BatchSpanProcessor,
    counters: SpanCounters,
}

impl SpanProcessor for CountingProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.counters.0.ended.fetch_add(1, Ordering::Relaxed);
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A node id learnt after the trace pipeline started (DNS discovery): set once, read by the exporter, which
/// adds it to the resource (`dmutex.node_id`) of every batch it sends from then on.
#[derive(Clone, Debug, Default)]
pub struct LateNodeId(Arc<OnceLock<u16>>);

impl LateNodeId {
    /// Records the id; a second call keeps the first id (a node's id does not change while it runs).
    pub fn set(&self, id: u16) {
        let _ = self.0.set(id);
    }

    /// The id, once set.
    pub fn get(&self) -> Option<u16> {
        self.0.get().copied()
    }
}

/// `resource` with `dmutex.node_id` (replacing one it had).
fn with_node_id(resource: &Resource, id: u16) -> Resource {
    Resource::builder_empty()
        .with_attributes(resource.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())))
        .with_attribute(KeyValue::new("dmutex.node_id", i64::from(id)))
        .build()
}

/// Counts export outcomes behind the batch processor, and puts a node id learnt late ([`LateNodeId`]) on the
/// resource of the exports that follow.
///
/// The inner exporter sits behind an async mutex only so that the resource can be changed from `export`
/// (`&self`); the batch processor calls `export`, `force_flush` and `shutdown` one at a time from its own
/// thread, so the lock is never contended.
#[derive(Debug)]
struct CountingExporter<E = opentelemetry_otlp::SpanExporter> {
    inner: tokio::sync::Mutex<E>,
    counters: SpanCounters,
    /// The resource the provider gave (`set_resource`), to extend once the node id is known.
    resource: Option<Resource>,
    late: LateNodeId,
    /// Whether the late node id is on the inner exporter's resource already.
    late_applied: AtomicBool,
}

impl<E: SpanExporter> CountingExporter<E> {
    fn new(inner: E, counters: SpanCounters, late: LateNodeId) -> Self {
        CountingExporter {
            inner: tokio::sync::Mutex::new(inner),
            counters,
            resource: None,
            late,
            late_applied: AtomicBool::new(false),
        }
    }

    /// Runs `f` on the inner exporter, which is free unless an export is running (the SDK never overlaps them).
    fn with_inner(&self, f: impl FnOnce(&E) -> OTelSdkResult) -> OTelSdkResult {
        match self.inner.try_lock() {
            Ok(inner) => f(&inner),
            Err(_) => {
                Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure("an export is running".into()))
            }
        }
    }
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        let mut inner = self.inner.lock().await;
        if let (Some(id), Some(resource)) = (self.late.get(), &self.resource)
            && !self.late_applied.swap(true, Ordering::Relaxed)
        {
            inner.set_resource(&with_node_id(resource, id));
        }
        let result = inner.export(batch).await;
        drop(inner);
        let counter = if result.is_ok() { &self.counters.0.exported } else { &self.counters.0.export_failed };
        counter.fetch_add(n, Ordering::Relaxed);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.with_inner(|inner| inner.shutdown_with_timeout(timeout))
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.with_inner(SpanExporter::force_flush)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = Some(resource.clone());
        let resource = match self.late.get() {
            Some(id) => {
                *self.late_applied.get_mut() = true;
                with_node_id(resource, id)
            }
            None => resource.clone(),
        };
        self.inner.get_mut().set_resource(&resource);
    }
}

/// Builds the OTLP exporter, the bounded batch processor and the tracer provider for `settings`.
///
/// Must be called inside a tokio runtime when the protocol is gRPC (the tonic channel's worker is spawned
/// on it, lazily connecting; the runtime must outlive the provider). The exporter reads the endpoint (unless
/// `settings` gives a URL), headers, timeout and compression from the environment; the provider reads the
/// sampler; the batch processor its queue size and delays (`OTEL_BSP_*`, defaults 2,048 spans and 5 s).
pub fn build_tracer_provider(
    settings: &OtlpSettings,
) -> Result<(SdkTracerProvider, SpanCounters), TelemetryError> {
    build_tracer_provider_with(settings, LateNodeId::default())
}

/// [`build_tracer_provider`] with a node id that may be learnt later: once `late` is set, every export
/// carries it on its resource as `dmutex.node_id`.
pub fn build_tracer_provider_with(
    settings: &OtlpSettings,
    late: LateNodeId,
) -> Result<(SdkTracerProvider, SpanCounters), TelemetryError> {
    let url = match &settings.endpoint {
        OtlpEndpoint::Url(url) => Some(url.clone()),
        OtlpEndpoint::Env { .. } => None,
    };
    // The transport is chosen here, not by the exporter's own default, which depends on its cargo features.
    let exporter = match settings.protocol {
        OtlpProtocol::Grpc => {
            use opentelemetry_otlp::WithTonicConfig as _;
            let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            let https = match &settings.endpoint {
                OtlpEndpoint::Env { value, .. } | OtlpEndpoint::Url(value) => is_https(value),
            };
            // The exporter's own TLS default has no trust anchors at all: always say which ones.
            if https || settings.tls.is_set() {
                builder = builder.with_tls_config(settings.tls.tonic_config()?);
            }
            match url {
                Some(url) => builder.with_endpoint(url).build()?,
                None => builder.build()?,
            }
        }
        OtlpProtocol::HttpProtobuf => {
            let builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            match url {
                Some(url) => builder.with_endpoint(url).build()?,
                None => builder.build()?,
            }
        }
    };
    let counters = SpanCounters::default();
    let exporter = CountingExporter::new(exporter, counters.clone(), late);
    // The batch processor exports from its own thread, outside the runtime: hence the blocking HTTP client
    // (`reqwest-blocking-client` in Cargo.toml, where the reason is written down).
    let processor = BatchSpanProcessor::builder(exporter).build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(CountingProcessor { inner: processor, counters: counters.clone() })
        .with_resource(settings.resource())
        .build();
    Ok((provider, counters))
}

/// The per-layer filter of the OpenTelemetry layer: this crate's spans down to `debug`, others' from
/// `info`, and never the exporter's own transport stack (tracing it would trace its own exports).
pub fn otel_filter() -> Targets {
    Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target("dmutex", LevelFilter::DEBUG)
        .with_target("opentelemetry", LevelFilter::OFF)
        .with_target("opentelemetry_sdk", LevelFilter::OFF)
        .with_target("opentelemetry_otlp", LevelFilter::OFF)
        .with_target("tonic", LevelFilter::OFF)
        .with_target("h2", LevelFilter::OFF)
        .with_target("hyper", LevelFilter::OFF)
        .with_target("hyper_util", LevelFilter::OFF)
        .with_target("tower", LevelFilter::OFF)
        .with_target("reqwest", LevelFilter::OFF)
}

/// The `tracing` → OpenTelemetry layer for `provider`, already filtered by [`otel_filter`].
pub fn otel_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + Send + Sync + use<S>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer(TRACER_NAME)).with_filter(otel_filter())
}

/// Keeps the trace pipeline alive; [`TelemetryGuard::shutdown`] flushes it.
#[derive(Debug)]
#[must_use = "dropping the guard without shutdown() loses the spans still queued"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    counters: SpanCounters,
    late_node_id: LateNodeId,
}

impl TelemetryGuard {
    /// The node id, learnt after start (DNS discovery): from now on every export carries it on its
    /// resource as `dmutex.node_id` (also for spans that ended before and were still queued). A no-op without
    /// an exporter, or after a first call.
    pub fn set_node_id(&self, id: u16) {
        self.late_node_id.set(id);
    }

    /// A handle for [`TelemetryGuard::set_node_id`] to give to whatever learns the id.
    pub fn late_node_id(&self) -> LateNodeId {
        self.late_node_id.clone()
    }

    /// Whether an OTLP exporter is configured.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Export counts (all zero without an exporter).
    pub fn span_stats(&self) -> SpanStats {
        self.counters.snapshot()
    }

    /// Flushes queued spans and stops the exporter, waiting at most [`SHUTDOWN_TIMEOUT`]. Without an exporter
    /// it returns at once.
    pub async fn shutdown(mut self) -> Result<SpanStats, TelemetryError> {
        if let Some(provider) = self.provider.take() {
            shutdown_provider(provider, SHUTDOWN_TIMEOUT).await?;
        }
        Ok(self.counters.snapshot())
    }
}

/// Shuts `provider` down (flushing its queue) on a blocking thread, giving up after `timeout`; the SDK's
/// shutdown blocks, and on a runtime thread it could deadlock with the gRPC channel it waits for.
pub async fn shutdown_provider(provider: SdkTracerProvider, timeout: Duration) -> Result<(), TelemetryError> {
    let task = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(timeout));
    // The SDK honours its timeout; the outer one (with slack) guards against a wedged exporter thread.
    match tokio::time::timeout(timeout + Duration::from_millis(500), task).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(TelemetryError::Shutdown(e.to_string())),
        Ok(Err(join)) => Err(TelemetryError::Shutdown(join.to_string())),
        Err(_) => Err(TelemetryError::Shutdown(format!("no answer within {timeout:?}"))),
    }
}

/// Installs the global subscriber: logs to stderr (filter `cfg.log`, text or JSON) and, when
/// `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` is set, the OTLP trace pipeline. Call inside the tokio runtime.
pub fn init(cfg: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    init_with(cfg, OtlpSettings::from_env(cfg.node_id)?)
}

/// Whether log lines carry ANSI colour: only when they go to a terminal, and never when `NO_COLOR` is set to
/// a non-empty value (<https://no-color.org>).
pub fn log_colour(stderr_is_terminal: bool, no_color: Option<&str>) -> bool {
    stderr_is_terminal && no_color.is_none_or(str::is_empty)
}

/// [`init`] with explicit trace settings (`None`: logs only).
pub fn init_with(
    cfg: &TelemetryConfig,
    otlp: Option<OtlpSettings>,
) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_new(&cfg.log)
        .map_err(|e| TelemetryError::InvalidLogFilter { filter: cfg.log.clone(), reason: e.to_string() })?;
    let ansi = log_colour(std::io::stderr().is_terminal(), std::env::var("NO_COLOR").ok().as_deref());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> =
        if cfg.json { fmt.json().with_filter(filter).boxed() } else { fmt.with_filter(filter).boxed() };
    let late_node_id = LateNodeId::default();
    let pipeline = otlp.as_ref().map(|o| build_tracer_provider_with(o, late_node_id.clone())).transpose()?;
    let otel = pipeline.as_ref().map(|(provider, _)| otel_layer(provider));
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| TelemetryError::AlreadyInitialised(e.to_string()))?;
    if let Some(s) = &otlp {
        EXPORTING.store(true, Ordering::Relaxed);
        tracing::info!(
            endpoint = %s.endpoint,
            protocol = s.protocol.name(),
            service = %s.service_name,
            "exporting traces over OTLP"
        );
    }
    let (provider, counters) = match pipeline {
        Some((p, c)) => (Some(p), c),
        None => (None, SpanCounters::default()),
    };
    Ok(TelemetryGuard { provider, counters, late_node_id })
}

struct MapInjector<'a>(&'a mut BTreeMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

struct MapExtractor<'a>(&'a BTreeMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The W3C trace context (`traceparent`, and `tracestate` when non-empty) of `span`, for a peer message.
///
/// Empty when the span has no OpenTelemetry context: no exporter configured (no OpenTelemetry layer), a
/// disabled span, or a span the sampler dropped with no valid context. Note: this starts the span on the
/// OpenTelemetry side, so call [`set_parent`] on a span before injecting it.
pub fn inject(span: &tracing::Span) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut MapInjector(&mut map));
    }
    map
}

/// The W3C trace context of an OpenTelemetry context (as kept for a queued request), for a peer message;
/// empty when the context holds no valid span.
pub fn inject_context(cx: &Context) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(cx, &mut MapInjector(&mut map));
    }
    map
}

/// The OpenTelemetry context of `span` (to parent later spans on it after `span` ended), or `None` when the
/// span has none (no exporter).
pub fn context_of(span: &tracing::Span) -> Option<Context> {
    let cx = span.context();
    cx.span().span_context().is_valid().then_some(cx)
}

/// Whether `cx` holds a valid span context (e.g. one [`extract`]ed from a peer message).
pub fn is_valid(cx: &Context) -> bool {
    cx.span().span_context().is_valid()
}

/// Makes `span` a child of `parent` (a context kept from an earlier span); see [`set_parent`].
pub fn set_parent_context(span: &tracing::Span, parent: &Context) {
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent.clone());
    }
}

/// The remote parent context carried by a peer message's trace map (an empty context when absent or
/// malformed: the propagator validates, so untrusted input never panics).
pub fn extract(map: &BTreeMap<String, String>) -> Context {
    TraceContextPropagator::new().extract(&MapExtractor(map))
}

/// Makes `span` a child of the context in `map` (as sent by [`inject`]). A no-op when the map carries no
/// valid context, or without an OpenTelemetry layer; must be called before the span is entered.
pub fn set_parent(span: &tracing::Span, map: &BTreeMap<String, String>) {
    let cx = extract(map);
    if cx.span().span_context().is_valid() {
        // Fails only when there is no OpenTelemetry layer or the span already started: nothing to link.
        let _ = span.set_parent(cx);
    }
}

/// The trace id of `span` as 32 lowercase hex digits, when it has an OpenTelemetry context (see [`inject`]).
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: BTreeMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| vars.get(k).cloned()
    }

    #[test]
    fn tls_settings_follow_the_specification_variables() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/ca.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/traces-ca.pem"),
        ]);
        assert_eq!(
            s.tls.certificate,
            Some(("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", PathBuf::from("/traces-ca.pem")))
        );
        assert_eq!(s.tls.client, None);
        let err = |vars: &[(&str, &str)]| OtlpSettings::from_lookup(1, lookup(vars)).unwrap_err().to_string();
        let e = err(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/client.pem"),
        ]);
        assert!(e.starts_with("invalid OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE=\"/client.pem\""), "{e}");
        let e = err(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "HTTPS://c:4318")]);
        assert!(e.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc"), "{e}");
    }

    #[tokio::test]
    async fn an_unusable_collector_ca_names_its_variable() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("ca.pem");
        std::fs::write(&bad, "not a certificate").unwrap();
        let mut s = OtlpSettings::new("https://c:4317", OtlpProtocol::Grpc, 0);
        s.tls.certificate = Some(("OTEL_EXPORTER_OTLP_CERTIFICATE", bad.clone()));
        let e = build_tracer_provider(&s).unwrap_err().to_string();
        assert!(e.starts_with(&format!("OTEL_EXPORTER_OTLP_CERTIFICATE: {}", bad.display())), "{e}");
        // Without a CA file an https collector is trusted by the built-in roots: the exporter builds.
        assert!(build_tracer_provider(&OtlpSettings::new("https://c:4317", OtlpProtocol::Grpc, 0)).is_ok());
    }

    #[test]
    fn no_endpoint_means_no_exporter() {
        assert_eq!(OtlpSettings::from_lookup(3, lookup(&[("OTEL_SERVICE_NAME", "x")])).ok(), Some(None));
    }

    fn settings(vars: &[(&str, &str)]) -> OtlpSettings {
        match OtlpSettings::from_lookup(1, lookup(vars)) {
            Ok(Some(s)) => s,
            other => panic!("settings expected for {vars:?}: {other:?}"),
        }
    }

    /// The exporter reads the endpoint itself (and appends `/v1/traces` to the generic one for OTLP/HTTP,
    /// which tests/otlp_cluster.rs sees arrive); this side only decides whether there is one and which.
    #[test]
    fn signal_specific_endpoint_wins_over_the_generic_one() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " http://jaeger:4318/ ")]);
        assert_eq!(s.endpoint, OtlpEndpoint::Env { var: ENDPOINT_VAR, value: "http://jaeger:4318/".into() });
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:9/custom"),
        ]);
        assert_eq!(
            s.endpoint,
            OtlpEndpoint::Env { var: TRACES_ENDPOINT_VAR, value: "http://c:9/custom".into() }
        );
        assert_eq!(s.endpoint.to_string(), "http://c:9/custom (from OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)");
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://b:1"),
        ]);
        assert_eq!(
            s.endpoint,
            OtlpEndpoint::Env { var: ENDPOINT_VAR, value: "http://b:1".into() },
            "empty is unset"
        );
    }

    /// The OTLP exporter specification: the default protocol is `http/protobuf`; the signal-specific
    /// variable wins over the generic one.
    #[test]
    fn protocol_defaults_to_http_protobuf_and_the_traces_variable_wins() {
        assert_eq!(OtlpProtocol::DEFAULT, OtlpProtocol::HttpProtobuf);
        assert_eq!(OtlpProtocol::DEFAULT.name(), "http/protobuf");
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318")]);
        assert_eq!(s.protocol, OtlpProtocol::HttpProtobuf);
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        assert_eq!(s.protocol, OtlpProtocol::Grpc);
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "GRPC"),
        ]);
        assert_eq!(s.protocol, OtlpProtocol::Grpc, "signal-specific, compared case-insensitively");
    }

    #[test]
    fn service_name_and_resource_attributes() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=dev,service.name=fromattrs,bad,team=a%2Cb"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ]);
        assert_eq!(s.service_name, "fromattrs");
        assert_eq!(s.instance_id.len(), 36, "a UUID: {}", s.instance_id);
        assert_eq!(s.instance_id.as_bytes()[14], b'4', "version 4: {}", s.instance_id);
        assert_ne!(s.instance_id, settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")]).instance_id);
        assert_eq!(s.node_id, Some(1));
        assert_eq!(
            s.resource_attributes,
            vec![
                ("deployment.environment".to_string(), "dev".to_string()),
                ("service.name".to_string(), "fromattrs".to_string()),
                ("team".to_string(), "a,b".to_string()),
            ]
        );
        let r = s.resource();
        assert_eq!(r.get(&"service.instance.id".into()).map(|v| v.to_string()), Some(s.instance_id.clone()));
        assert_eq!(r.get(&"dmutex.node_id".into()).map(|v| v.to_string()), Some("1".to_string()));
        let version = r.get(&"service.version".into()).map(|v| v.to_string());
        assert_eq!(version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
        assert_eq!(r.get(&"service.name".into()).map(|v| v.to_string()), Some("fromattrs".to_string()));
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=fromattrs"),
            ("OTEL_SERVICE_NAME", "svc"),
            ("OTEL_TRACES_SAMPLER", "always_off"),
        ]);
        assert_eq!(s.service_name, "svc");
        assert_eq!(settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")]).service_name, "dmutex");
    }

    #[test]
    fn bad_settings_are_errors() {
        for vars in [
            [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
            [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_TRACES_SAMPLER", "xray")],
        ] {
            assert!(OtlpSettings::from_lookup(0, lookup(&vars)).is_err(), "{vars:?}");
        }
        let r = OtlpSettings::from_lookup(
            0,
            lookup(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http"),
            ]),
        );
        assert!(
            matches!(
                r,
                Err(TelemetryError::InvalidSetting { var: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", .. })
            ),
            "the error names the variable that was wrong: {r:?}"
        );
        let r = OtlpSettings::from_lookup(
            0,
            lookup(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ]),
        );
        assert!(r.is_err());
    }

    #[test]
    fn without_an_otel_layer_inject_is_empty_and_extract_tolerates_garbage() {
        let span = tracing::info_span!("x");
        assert!(inject(&span).is_empty());
        assert_eq!(trace_id_of(&span), None);
        let mut map = BTreeMap::new();
        map.insert("traceparent".to_string(), "00-zz-\u{fffd}-01".to_string());
        assert!(!extract(&map).span().span_context().is_valid());
        set_parent(&span, &map);
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(log_colour(true, None));
        assert!(log_colour(true, Some("")), "an empty NO_COLOR counts as unset (no-color.org)");
        assert!(!log_colour(true, Some("1")));
        assert!(!log_colour(false, None), "files, pipes and `docker logs` get no escapes");
        assert!(!log_colour(false, Some("1")));
    }

    #[test]
    fn extract_reads_a_valid_traceparent() {
        let mut map = BTreeMap::new();
        map.insert(
            "traceparent".to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
        );
        let cx = extract(&map);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote());
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    /// What an exporter was given: per export, the batch size and its resource's `dmutex.node_id`,
    /// `host.name` and `service.name`.
    type Exports = Arc<std::sync::Mutex<Vec<(usize, [Option<String>; 3])>>>;

    /// An exporter that records what it exports and under which resource.
    #[derive(Debug, Default)]
    struct Recording {
        resource: Option<Resource>,
        exports: Exports,
    }

    impl SpanExporter for Recording {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let attr = |k: &'static str| {
                self.resource.as_ref().and_then(|r| r.get(&k.into())).map(|v| v.to_string())
            };
            let seen = [attr("dmutex.node_id"), attr("host.name"), attr("service.name")];
            self.exports.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((batch.len(), seen));
            Ok(())
        }

        fn set_resource(&mut self, resource: &Resource) {
            self.resource = Some(resource.clone());
        }
    }

    /// Settings as `dmutex node` makes them with DNS discovery: no node id at start, `host.name` instead.
    fn discovery_settings() -> OtlpSettings {
        let mut s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]);
        s.node_id = None;
        s.resource_attributes.push(("host.name".into(), "dmutex-2".into()));
        s
    }

    #[test]
    fn a_node_id_learnt_late_is_on_the_resource_of_every_export_from_then_on() {
        let s = discovery_settings();
        assert_eq!(s.resource().get(&"dmutex.node_id".into()), None, "unknown at start");
        let exports = Exports::default();
        let late = LateNodeId::default();
        let mut exporter = CountingExporter::new(
            Recording { resource: None, exports: exports.clone() },
            SpanCounters::default(),
            late.clone(),
        );
        exporter.set_resource(&s.resource());
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(exporter.export(Vec::new())).unwrap();
        late.set(2);
        rt.block_on(exporter.export(Vec::new())).unwrap();
        late.set(5);
        rt.block_on(exporter.export(Vec::new())).unwrap();
        let (host, name) = (Some("dmutex-2".to_string()), Some("dmutex".to_string()));
        assert_eq!(
            *exports.lock().unwrap(),
            [
                (0, [None, host.clone(), name.clone()]),
                (0, [Some("2".to_string()), host.clone(), name.clone()]),
                (0, [Some("2".to_string()), host, name]),
            ],
            "the id once known, the other attributes kept; a node's id does not change"
        );
        exporter.force_flush().unwrap();
        exporter.shutdown().unwrap();
    }

    /// Through a tracer provider and its batch processor, as `dmutex node` builds them: spans exported before
    /// discovery lack the id, spans after it carry it; a known id is there from the start.
    #[test]
    fn the_providers_resource_gets_the_late_node_id() {
        use opentelemetry::trace::{Span as _, Tracer as _};
        for (s, learnt, expected) in [
            (discovery_settings(), Some(3), [None, Some("3".to_string())]),
            (
                settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]),
                None,
                [Some("1".to_string()), Some("1".to_string())],
            ),
        ] {
            let exports = Exports::default();
            let late = LateNodeId::default();
            let exporter = CountingExporter::new(
                Recording { resource: None, exports: exports.clone() },
                SpanCounters::default(),
                late.clone(),
            );
            let provider = SdkTracerProvider::builder()
                .with_span_processor(BatchSpanProcessor::builder(exporter).build())
                .with_resource(s.resource())
                .build();
            let tracer = provider.tracer("test");
            tracer.start("before").end();
            provider.force_flush().unwrap();
            if let Some(id) = learnt {
                late.set(id);
            }
            tracer.start("after").end();
            provider.force_flush().unwrap();
            provider.shutdown().unwrap();
            let ids: Vec<Option<String>> =
                exports.lock().unwrap().iter().filter(|(n, _)| *n > 0).map(|(_, r)| r[0].clone()).collect();
            assert_eq!(ids, expected, "{s:?}");
        }
    }
}
