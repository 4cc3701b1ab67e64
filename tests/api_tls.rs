//! HTTPS on the API against real `dmutex node` processes, with a test CA made here (`ThrowawayCa`): acquire and
//! release over HTTPS; a client that trusts another CA fails the handshake; with `DMUTEX_TLS_CLIENT_CA`, a
//! client without a certificate (or with one from another CA) is refused and one with a CA-issued certificate
//! is served; a certificate replaced on disk is served to new connections without a restart (and counted in
//! `dmutex_credential_reloads_total`); ALPN offers h2, which is served; garbage, a plaintext request and
//! stalled handshakes end only their own connection (the stalled one within the handshake timeout) while the
//! node keeps serving; a bad PEM file is a configuration error (exit 2, naming the DMUTEX_TLS_* key).

mod common;

use common::{Api, Cluster, poll};
use dmutex::net::peer_tls::{ThrowawayCa, Usage};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A test CA named `name`.
fn test_ca(name: &str) -> ThrowawayCa {
    ThrowawayCa::new(name).unwrap()
}

/// A leaf certificate and its key (PEM) for `san` from `ca`, with `serial`; a client or a server certificate.
fn leaf(ca: &ThrowawayCa, san: &str, serial: u64, client: bool) -> (String, String) {
    ca.issue_with(&[san], if client { Usage::Client } else { Usage::Server }, Some(serial)).unwrap()
}

/// A blocking client that trusts `ca` only, optionally presenting a client certificate.
fn client(ca: &ThrowawayCa, identity: Option<&(String, String)>) -> reqwest::blocking::Client {
    let mut b = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem().as_bytes()).unwrap());
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// A one-node cluster serving HTTPS with a certificate for its address from `ca` (serial 1); `env` adds
/// settings. Not started.
fn tls_node(test: &str, ca: &ThrowawayCa, env: &[(&str, &str)]) -> (Cluster, PathBuf, PathBuf) {
    let mut c = Cluster::new(test, 1, env);
    let (cert, key) = leaf(ca, &c.host(0), 1, false);
    let (cert_path, key_path) = (c.dir.join("api.crt"), c.dir.join("api.key"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    c.env.push(("DMUTEX_TLS_CERT".into(), cert_path.display().to_string()));
    c.env.push(("DMUTEX_TLS_KEY".into(), key_path.display().to_string()));
    c.use_api(Api::with_client(vec![https_url(&c)], client(ca, None)));
    (c, cert_path, key_path)
}

fn https_url(c: &Cluster) -> String {
    c.url(0).replacen("http://", "https://", 1)
}

/// The address `host:port` of node 0's API.
fn api_addr(c: &Cluster) -> String {
    https_url(c).trim_start_matches("https://").to_string()
}

/// A raw TLS client (rustls) trusting `ca`, offering `alpn`.
fn raw_tls(
    c: &Cluster,
    ca: &ThrowawayCa,
    alpn: &[&[u8]],
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.ca_pem().as_bytes()).unwrap()).unwrap();
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(c.host(0)).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(api_addr(c)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
    }
    tls
}

/// The leaf certificate node 0 serves to a new connection (DER).
fn served_leaf(c: &Cluster, ca: &ThrowawayCa) -> Vec<u8> {
    let tls = raw_tls(c, ca, &[b"http/1.1"]);
    tls.conn.peer_certificates().expect("a server certificate")[0].to_vec()
}

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

/// Error text of a request that must fail at the transport (with its sources).
fn transport_error(r: reqwest::Result<reqwest::blocking::Response>) -> String {
    match r {
        Ok(r) => panic!("expected a TLS failure, got HTTP {}", r.status()),
        Err(e) => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

#[test]
fn https_acquire_release_and_a_client_of_another_ca_fails() {
    let ca = test_ca("dmutex test CA");
    let (mut c, _, _) = tls_node("apitls-basic", &ca, &[]);
    c.spawn_all();
    let api = c.api();
    api.lock_once(0, "job", "lamport");
    let (s, g) = api.acquire(0, "held", json!({"timeout_ms": 5000, "ttl_ms": 30000}));
    assert_eq!(s, 200, "{g}");
    let lease = g["lease"].as_str().unwrap().to_string();
    assert_eq!(api.get(0, "/v1/locks/held").0, 200);
    assert_eq!(api.release(0, "held", &lease).0, 200);

    let stranger = client(&test_ca("another CA"), None);
    let e = transport_error(stranger.get(format!("{}/healthz", https_url(&c))).send());
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = reqwest::blocking::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    let r = plain.get(format!("{}/healthz", c.url(0))).send();
    assert!(r.is_err(), "plaintext HTTP is not served on the TLS port: {:?}", r.map(|r| r.status()));
    assert_eq!(api.get(0, "/healthz").0, 200, "still serving");
    assert!(c.log(0).contains("api_scheme=\"https\""), "{}", c.log(0));
}

#[test]
fn alpn_offers_h2_and_serves_it() {
    let ca = test_ca("dmutex test CA");
    let (mut c, _, _) = tls_node("apitls-alpn", &ca, &[]);
    c.spawn_all();
    let mut h1 = raw_tls(&c, &ca, &[b"http/1.1"]);
    assert_eq!(h1.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    write!(h1, "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = h1.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    let mut h2 = raw_tls(&c, &ca, &[b"h2", b"http/1.1"]);
    assert_eq!(h2.conn.alpn_protocol(), Some(&b"h2"[..]));
    // The client preface and an empty SETTINGS frame: an HTTP/2 server answers with its SETTINGS.
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").unwrap();
    h2.flush().unwrap();
    let mut header = [0u8; 9];
    h2.read_exact(&mut header).expect("an HTTP/2 frame");
    assert_eq!(header[3], 4, "the server's first frame is SETTINGS: {header:?}");
}

#[test]
fn client_certificates_are_required_with_a_client_ca() {
    let (ca, clients) = (test_ca("dmutex test CA"), test_ca("dmutex clients CA"));
    let (mut c, _, _) = tls_node("apitls-mtls", &ca, &[]);
    let client_ca = c.dir.join("clients.crt");
    std::fs::write(&client_ca, clients.ca_pem()).unwrap();
    c.env.push(("DMUTEX_TLS_CLIENT_CA".into(), client_ca.display().to_string()));
    let member = leaf(&clients, "backup-job", 7, true);
    c.use_api(Api::with_client(vec![https_url(&c)], client(&ca, Some(&member))));
    c.spawn_all();
    c.api().lock_once(0, "job", "ricart-agrawala");

    let url = format!("{}/healthz", https_url(&c));
    let anonymous = client(&ca, None);
    let e = transport_error(anonymous.get(&url).send());
    assert!(!e.is_empty());
    let outsider = leaf(&test_ca("someone else"), "backup-job", 8, true);
    transport_error(client(&ca, Some(&outsider)).get(&url).send());
    assert_eq!(c.api().get(0, "/healthz").0, 200, "the member is still served");
}

#[test]
fn a_replaced_certificate_is_served_without_a_restart() {
    let ca = test_ca("dmutex test CA");
    let (mut c, cert_path, key_path) =
        tls_node("apitls-reload", &ca, &[("DMUTEX_CREDENTIALS_RELOAD_MS", "200")]);
    c.spawn_all();
    let first = std::fs::read_to_string(&cert_path).unwrap();
    assert_eq!(served_leaf(&c, &ca), der_of(&first), "serial 1 is served");
    let api = c.api();
    let reloads = |result| {
        api.metric(0, "dmutex_credential_reloads_total", &[("what", "api_certificate"), ("result", result)])
    };
    assert_eq!(reloads("ok"), 0.0);
    let pid = c.pid(0);

    // The new pair, written as Kubernetes does it: whole files renamed into place.
    let (cert, key) = leaf(&ca, &c.host(0), 2, false);
    let (tmp_cert, tmp_key) = (c.dir.join("new.crt"), c.dir.join("new.key"));
    std::fs::write(&tmp_cert, &cert).unwrap();
    std::fs::write(&tmp_key, &key).unwrap();
    std::fs::rename(&tmp_key, &key_path).unwrap();
    std::fs::rename(&tmp_cert, &cert_path).unwrap();
    assert!(
        poll(Duration::from_secs(10), || served_leaf(&c, &ca) == der_of(&cert)),
        "serial 2 is served to new connections; log:\n{}",
        c.log(0)
    );
    assert!(reloads("ok") >= 1.0);
    assert_eq!(c.pid(0), pid, "no restart");
    api.lock_once(0, "job", "probable-owner");

    // A broken file is not taken: serial 2 stays in use, the failure is counted.
    std::fs::write(&cert_path, "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        .unwrap();
    assert!(poll(Duration::from_secs(10), || reloads("failed") >= 1.0), "{}", c.log(0));
    assert_eq!(served_leaf(&c, &ca), der_of(&cert));
    api.lock_once(0, "job", "lamport");
}

#[test]
fn garbage_plaintext_and_stalled_handshakes_do_not_stop_the_node() {
    let ca = test_ca("dmutex test CA");
    let (mut c, _, _) = tls_node("apitls-abuse", &ca, &[]);
    c.spawn_all();
    let addr = api_addr(&c);
    let started = Instant::now();
    let stalled: Vec<TcpStream> = (0..50).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    let mut garbage = TcpStream::connect(&addr).unwrap();
    garbage.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0xde, 0xad, 0xbe, 0xef, 0x00]).unwrap();
    let mut random = TcpStream::connect(&addr).unwrap();
    random.write_all(&[0xff; 300]).unwrap();
    let mut plain = TcpStream::connect(&addr).unwrap();
    plain
        .write_all(b"POST /v1/locks/job/acquire HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
        .unwrap();
    for s in [&garbage, &random, &plain] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    // While the stalled handshakes are pending, others are served.
    let api = c.api();
    for _ in 0..5 {
        api.lock_once(0, "job", "lamport");
    }
    for (name, mut s) in [("garbage", garbage), ("random bytes", random), ("plaintext HTTP", plain)] {
        let mut buf = Vec::new();
        let r = s.read_to_end(&mut buf);
        assert!(r.is_ok(), "{name}: the connection is closed, not left open: {r:?}");
        assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1"), "{name}: no HTTP answer");
    }
    // A stalled handshake is closed by the server after the handshake timeout (10 s).
    let mut first = stalled.into_iter().next().unwrap();
    first.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 16];
    let r = first.read(&mut buf);
    assert!(
        matches!(r, Ok(0)) || r.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{r:?}"
    );
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(9) && waited < Duration::from_secs(20), "{waited:?}");
    api.lock_once(0, "job", "ricart-agrawala");
    let log = c.log(0);
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_bad_pem_file_is_a_configuration_error_naming_its_key() {
    let ca = test_ca("dmutex test CA");
    let (c, cert, key) = tls_node("apitls-badpem", &ca, &[]);
    let garbage = c.dir.join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let (_, other_key) = leaf(&ca, "other", 9, false);
    let mismatched = c.dir.join("other.key");
    std::fs::write(&mismatched, other_key).unwrap();
    let cases: [(&str, &Path, &str); 4] = [
        ("DMUTEX_TLS_CERT", &garbage, "DMUTEX_TLS_CERT"),
        ("DMUTEX_TLS_KEY", &garbage, "DMUTEX_TLS_KEY"),
        ("DMUTEX_TLS_KEY", &mismatched, "DMUTEX_TLS_KEY"),
        ("DMUTEX_TLS_CLIENT_CA", &garbage, "DMUTEX_TLS_CLIENT_CA"),
    ];
    for (var, path, named) in cases {
        let out = c
            .command(0)
            .env("DMUTEX_TLS_CERT", &cert)
            .env("DMUTEX_TLS_KEY", &key)
            .env(var, path)
            .output()
            .expect("run dmutex node");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={}: {stderr}", path.display());
        assert!(
            stderr.contains(&format!("invalid configuration: {named}: {}", path.display())),
            "{var}: {stderr}"
        );
    }
    let _ = PrivateKeyDer::from_pem_file(&key).expect("the good key parses");
}
