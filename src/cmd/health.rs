//! `dmutex health`: a container HEALTHCHECK that needs no curl in the image.
//!
//! Without `--endpoint` or `DMUTEX_ENDPOINT` it probes the node of its own container: the address in
//! `DMUTEX_HTTP_ADDR` (the node's listen address, in the same environment), so a moved port moves the probe too.
//!
//! On a node serving HTTPS (`DMUTEX_TLS_CERT` in the same environment) and without `--cacert`, it probes
//! `https://` and trusts exactly that certificate (pinned: byte for byte, whatever names it holds, so
//! `127.0.0.1` works with a certificate made for the node's DNS name; the handshake still proves the node holds
//! its key). Just after the certificate file is replaced, the probe fails until the node has reloaded it
//! (`DMUTEX_CREDENTIALS_RELOAD_MS`); a HEALTHCHECK's retries cover that.

use crate::cmd::{ClientSecurityArgs, DEFAULT_ENDPOINT};
use clap::Args;
use dmutex::api::client::{Client, Trust};
use reqwest::StatusCode;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// `dmutex health`.
#[derive(Debug, Clone, Args)]
pub(crate) struct HealthArgs {
    /// Node HTTP endpoint [default: http://<DMUTEX_HTTP_ADDR> with 0.0.0.0 read as 127.0.0.1 and :: as ::1,
    /// else http://127.0.0.1:8080; https:// when DMUTEX_TLS_CERT is set]. `--endpoints` is the same flag (the spelling of `dmutex lock` and
    /// `dmutex flow`); a probe asks one node.
    #[arg(long, visible_alias = "endpoints", env = "DMUTEX_ENDPOINT", value_name = "URL")]
    pub(crate) endpoint: Option<String>,
    /// The node's listen address, the endpoint's default (read from the environment only).
    #[arg(skip = std::env::var("DMUTEX_HTTP_ADDR").ok())]
    pub(crate) http_addr: Option<String>,
    /// Probe readiness (/readyz: the node has joined its cluster) instead of liveness (/healthz).
    #[arg(long)]
    pub(crate) ready: bool,
    /// Give up after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s", value_name = "DURATION")]
    pub(crate) timeout: Duration,
    /// The node's own certificate (`DMUTEX_TLS_CERT`, read from the environment only): without --cacert, the
    /// probe uses https and trusts exactly this certificate.
    #[arg(skip = std::env::var_os("DMUTEX_TLS_CERT").filter(|v| !v.is_empty()).map(PathBuf::from))]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The CA bundle and the token (the probes need no token; one is sent if given).
    #[command(flatten)]
    pub(crate) security: ClientSecurityArgs,
}

/// The endpoint of a node listening on `http_addr` (`DMUTEX_HTTP_ADDR`), as seen from the same host: an
/// unspecified address (listen on all) is reached on loopback. Unset or empty: [`DEFAULT_ENDPOINT`]. `https`:
/// the node serves HTTPS.
pub(crate) fn endpoint_for_listen_addr(http_addr: Option<&str>, https: bool) -> Result<String, String> {
    let scheme = if https { "https" } else { "http" };
    let Some(text) = http_addr.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(DEFAULT_ENDPOINT.replacen("http", scheme, 1));
    };
    let addr: SocketAddr = text
        .parse()
        .map_err(|e| format!("DMUTEX_HTTP_ADDR: \"{text}\" is not a socket address (ip:port): {e}"))?;
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    // SocketAddr's Display puts an IPv6 address in brackets, as a URL needs.
    Ok(format!("{scheme}://{}", SocketAddr::new(ip, addr.port())))
}

impl HealthArgs {
    /// The endpoint to probe: `--endpoint`, else `DMUTEX_ENDPOINT`, else the one `DMUTEX_HTTP_ADDR` implies.
    pub(crate) fn endpoint(&self) -> Result<String, String> {
        match &self.endpoint {
            Some(e) => Ok(e.clone()),
            None => endpoint_for_listen_addr(self.http_addr.as_deref(), self.tls_cert.is_some()),
        }
    }

    /// The client's settings: `--cacert` if given, else the node's own pinned certificate if
    /// `DMUTEX_TLS_CERT` is set, else the built-in roots.
    pub(crate) fn security(&self) -> Result<dmutex::api::client::Security, String> {
        let mut security = self.security.security()?;
        if let (None, Some(cert)) = (&self.security.cacert, &self.tls_cert) {
            security.trust = Trust::Pinned(cert.clone());
        }
        Ok(security)
    }
}

/// Runs `dmutex health`: 0 if `/healthz` (or `/readyz` with `--ready`) answers 200, else 1.
pub(crate) async fn run(args: &HealthArgs) -> i32 {
    let path = if args.ready { "readyz" } else { "healthz" };
    let client = args.endpoint().and_then(|e| {
        let security = args.security()?;
        Client::with_security(&e, &security).map_err(|e| e.to_string())
    });
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dmutex health: {e}");
            return 1;
        }
    };
    match client.probe(path, args.timeout).await {
        Ok(status) if status == StatusCode::OK => 0,
        Ok(status) => {
            eprintln!("dmutex health: /{path} answered {status}");
            1
        }
        Err(e) => {
            // The causes too: reqwest's own message is only "error sending request".
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            eprintln!("dmutex health: {text}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_endpoint_follows_the_listen_address() {
        let e = |a: Option<&str>| endpoint_for_listen_addr(a, false);
        assert_eq!(e(None).unwrap(), DEFAULT_ENDPOINT);
        assert_eq!(e(Some("")).unwrap(), DEFAULT_ENDPOINT);
        assert_eq!(e(Some("0.0.0.0:9090")).unwrap(), "http://127.0.0.1:9090");
        assert_eq!(e(Some("[::]:8081")).unwrap(), "http://[::1]:8081");
        assert_eq!(e(Some("10.1.2.3:8080")).unwrap(), "http://10.1.2.3:8080");
        assert_eq!(e(Some("[fd00::5]:80")).unwrap(), "http://[fd00::5]:80");
        let err = e(Some("node:8080")).unwrap_err();
        assert!(err.starts_with("DMUTEX_HTTP_ADDR: \"node:8080\" is not a socket address"), "{err}");
        assert_eq!(endpoint_for_listen_addr(Some("0.0.0.0:8443"), true).unwrap(), "https://127.0.0.1:8443");
        assert_eq!(endpoint_for_listen_addr(None, true).unwrap(), "https://127.0.0.1:8080");
    }

    #[test]
    fn the_node_certificate_is_pinned_unless_a_ca_is_given() {
        let mut args = HealthArgs {
            endpoint: None,
            http_addr: Some("0.0.0.0:8443".into()),
            ready: false,
            timeout: Duration::from_secs(1),
            tls_cert: Some("/certs/node.crt".into()),
            security: ClientSecurityArgs::default(),
        };
        assert_eq!(args.endpoint().unwrap(), "https://127.0.0.1:8443");
        assert_eq!(args.security().unwrap().trust, Trust::Pinned("/certs/node.crt".into()));
        args.security.cacert = Some("/certs/ca.crt".into());
        assert_eq!(args.security().unwrap().trust, Trust::Ca("/certs/ca.crt".into()));
        args.tls_cert = None;
        args.security.cacert = None;
        assert_eq!(args.endpoint().unwrap(), "http://127.0.0.1:8443");
        assert_eq!(args.security().unwrap().trust, Trust::WebRoots);
    }
}
