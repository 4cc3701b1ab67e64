//! The HTTP API: request/response types, the error type every endpoint answers with, the axum router and
//! the client that speaks to it.

pub mod auth;
pub mod client;
pub(crate) mod error;
pub mod https;
pub(crate) mod observe;
pub(crate) mod openapi;
pub(crate) mod router;
pub mod types;

pub use observe::ROUTES;
pub use router::waiting_router;
