//! Observability: Prometheus metrics, OpenTelemetry traces and the message-flow records.

pub mod flow;
pub mod metrics;
pub(crate) mod process;
pub mod telemetry;
