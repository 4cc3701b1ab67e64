//! The client against fake nodes (axum on 127.0.0.1, port 0) that answer as told and record every call.

use crate::{Client, Error, LeaseLoss};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a fake node answers an acquire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OnAcquire {
    Grant,
    Unavailable,
    Locked,
    Timeout,
}

/// How a fake node answers a keepalive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OnKeepalive {
    Ok,
    Unavailable,
    LeaseLost,
    Failing,
}

#[derive(Debug)]
struct Fake {
    id: u16,
    on_acquire: OnAcquire,
    on_keepalive: OnKeepalive,
    acquires: Vec<(String, Value)>,
    keepalives: Vec<String>,
    releases: Vec<(String, Value)>,
}

type Shared = Arc<Mutex<Fake>>;

fn error(status: StatusCode, error: Value) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

async fn acquire(State(s): State<Shared>, Path(name): Path<String>, Json(body): Json<Value>) -> Response {
    let (id, mode) = {
        let mut f = s.lock().unwrap();
        f.acquires.push((name.clone(), body));
        (f.id, f.on_acquire)
    };
    match mode {
        OnAcquire::Grant => Json(json!({
            "name": name, "lease": format!("{id}.1.ab"), "fencing_token": 1000 + u64::from(id), "node_id": id,
            "algorithm": "lamport", "waited_ms": 0, "ttl_ms": 300
        }))
        .into_response(),
        OnAcquire::Unavailable => error(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"code": "unavailable", "message": format!("node {id} is in a minority")}),
        ),
        OnAcquire::Locked => {
            error(StatusCode::CONFLICT, json!({"code": "locked", "message": "held by node 2", "holder": 2}))
        }
        OnAcquire::Timeout => {
            error(StatusCode::CONFLICT, json!({"code": "timeout", "message": "timed out after 10 ms"}))
        }
    }
}

async fn keepalive(State(s): State<Shared>, Path(lease): Path<String>) -> Response {
    let mode = {
        let mut f = s.lock().unwrap();
        f.keepalives.push(lease);
        f.on_keepalive
    };
    match mode {
        OnKeepalive::Ok => Json(json!({"ttl_ms": 300})).into_response(),
        OnKeepalive::Unavailable => {
            error(StatusCode::SERVICE_UNAVAILABLE, json!({"code": "shutting_down", "message": "bye"}))
        }
        OnKeepalive::LeaseLost => error(
            StatusCode::CONFLICT,
            json!({"code": "lease_lost", "message": "node 0 restarted (incarnation 2)"}),
        ),
        OnKeepalive::Failing => {
            error(StatusCode::INTERNAL_SERVER_ERROR, json!({"code": "internal", "message": "busy"}))
        }
    }
}

async fn release(State(s): State<Shared>, Path(name): Path<String>, Json(body): Json<Value>) -> Response {
    let lease = body["lease"].clone();
    s.lock().unwrap().releases.push((name.clone(), body));
    Json(json!({"lease": lease, "name": name, "released": true})).into_response()
}

/// Starts fake node `id`; returns its endpoint and state.
async fn fake(id: u16, on_acquire: OnAcquire, on_keepalive: OnKeepalive) -> (String, Shared) {
    let state = Arc::new(Mutex::new(Fake {
        id,
        on_acquire,
        on_keepalive,
        acquires: Vec::new(),
        keepalives: Vec::new(),
        releases: Vec::new(),
    }));
    let app = Router::new()
        .route("/v1/locks/{name}/acquire", post(acquire))
        .route("/v1/locks/{name}/release", post(release))
        .route("/v1/leases/{lease}/keepalive", post(keepalive))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/"), state)
}

/// An endpoint where nothing listens (a port that was just free).
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}/", listener.local_addr().unwrap())
}

/// Waits (bounded) until `done` holds of the fake's state.
async fn eventually(s: &Shared, what: &str, done: impl Fn(&Fake) -> bool) {
    for _ in 0..200 {
        if done(&s.lock().unwrap()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 2 s: {what}; state {:?}", s.lock().unwrap());
}

#[tokio::test]
async fn a_dead_endpoint_is_skipped_and_the_live_one_remembered() {
    let (live, s) = fake(1, OnAcquire::Grant, OnKeepalive::Ok).await;
    let client = Client::new([dead_endpoint(), live.clone()]).unwrap();
    let guard = client.lock("db").ttl(Duration::from_secs(3)).timeout(Duration::from_secs(2)).await.unwrap();
    assert_eq!(guard.fencing_token(), 1001);
    assert_eq!(guard.lease().to_string(), "1.1.ab");
    assert_eq!(guard.name(), "db");
    assert_eq!(client.current_endpoint(), live, "the next call starts at the endpoint that answered");
    assert_eq!(s.lock().unwrap().acquires, [("db".to_string(), json!({"timeout_ms": 2000, "ttl_ms": 3000}))]);
    guard.release().await.unwrap();
    assert_eq!(s.lock().unwrap().releases, [("db".to_string(), json!({"lease": "1.1.ab"}))]);
}

#[tokio::test]
async fn a_503_moves_on_to_the_next_endpoint() {
    let (busy, b) = fake(0, OnAcquire::Unavailable, OnKeepalive::Ok).await;
    let (live, l) = fake(1, OnAcquire::Grant, OnKeepalive::Ok).await;
    let client = Client::new([busy, live.clone()]).unwrap();
    let guard = client.lock("db").wait_forever().await.unwrap();
    assert_eq!(guard.grant().node_id, Some(1));
    assert_eq!(b.lock().unwrap().acquires.len(), 1);
    assert_eq!(l.lock().unwrap().acquires, [("db".to_string(), json!({"timeout_ms": "forever"}))]);
    assert_eq!(client.current_endpoint(), live);
    guard.release().await.unwrap();
}

#[tokio::test]
async fn every_endpoint_unavailable_is_unavailable_naming_each() {
    let (busy, _) = fake(0, OnAcquire::Unavailable, OnKeepalive::Ok).await;
    let dead = dead_endpoint();
    let client = Client::new([busy.clone(), dead.clone()]).unwrap();
    let e = client.lock("db").await.unwrap_err();
    let Error::Unavailable { message } = &e else { panic!("{e:?}") };
    assert!(message.contains("node 0 is in a minority") && message.contains(&busy), "{message}");
    assert!(message.contains(&dead), "{message}");
}

#[tokio::test]
async fn a_409_is_the_answer_no_other_endpoint_is_asked() {
    let (locked, _) = fake(0, OnAcquire::Locked, OnKeepalive::Ok).await;
    let (live, l) = fake(1, OnAcquire::Grant, OnKeepalive::Ok).await;
    let client = Client::new([locked.clone(), live]).unwrap();
    let e = client.try_lock("db").await.unwrap_err();
    assert!(matches!(e, Error::Locked { holder: Some(2) }), "{e:?}");
    let (timeout, t) = fake(2, OnAcquire::Timeout, OnKeepalive::Ok).await;
    let client2 = Client::new([timeout, locked]).unwrap();
    let e = client2.lock("db").timeout(Duration::from_millis(10)).await.unwrap_err();
    assert!(matches!(&e, Error::Timeout { message } if message.contains("10 ms")), "{e:?}");
    assert!(l.lock().unwrap().acquires.is_empty(), "no failover on 409");
    assert_eq!(t.lock().unwrap().acquires.len(), 1);
}

#[tokio::test]
async fn try_lock_sends_wait_false_and_returns_a_guard_when_free() {
    let (ep, s) = fake(3, OnAcquire::Grant, OnKeepalive::Ok).await;
    let client = Client::new([ep]).unwrap();
    let guard = client.try_lock("job").ttl(Duration::from_millis(900)).await.unwrap();
    assert_eq!(guard.fencing_token(), 1003);
    assert_eq!(s.lock().unwrap().acquires, [("job".to_string(), json!({"wait": false, "ttl_ms": 900}))]);
    guard.release().await.unwrap();
}

#[tokio::test]
async fn the_guard_renews_every_third_of_the_ttl_until_released() {
    let (ep, s) = fake(0, OnAcquire::Grant, OnKeepalive::Ok).await;
    let client = Client::new([ep]).unwrap();
    // The grant says ttl_ms 300: a keepalive every 100 ms.
    let guard = client.lock("db").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let n = s.lock().unwrap().keepalives.len();
    assert!((5..=15).contains(&n), "{n} keepalives in 1 s");
    assert!(s.lock().unwrap().keepalives.iter().all(|l| l == "0.1.ab"));
    assert_eq!(guard.is_lost(), None, "several TTLs passed, the lease is still held");
    guard.release().await.unwrap();
    let after = s.lock().unwrap().keepalives.len();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(s.lock().unwrap().keepalives.len(), after, "no keepalive after the release");
    assert_eq!(s.lock().unwrap().releases.len(), 1);
}

#[tokio::test]
async fn keepalives_go_through_any_node() {
    let (a, sa) = fake(0, OnAcquire::Grant, OnKeepalive::Unavailable).await;
    let (b, sb) = fake(1, OnAcquire::Grant, OnKeepalive::Ok).await;
    let client = Client::new([a, b]).unwrap();
    let guard = client.lock("db").await.unwrap();
    assert_eq!(guard.grant().node_id, Some(0));
    eventually(&sb, "keepalives through node 1", |f| f.keepalives.len() >= 3).await;
    assert!(sb.lock().unwrap().keepalives.iter().all(|l| l == "0.1.ab"), "node 0's lease, through node 1");
    assert_eq!(sa.lock().unwrap().keepalives.len(), 1, "after one 503 the client stays with node 1");
    assert_eq!(guard.is_lost(), None);
    guard.release().await.unwrap();
    assert_eq!(sb.lock().unwrap().releases.len(), 1, "the release goes where the last answer came from");
}

#[tokio::test]
async fn lost_fires_when_a_keepalive_hears_lease_lost() {
    let (ep, s) = fake(0, OnAcquire::Grant, OnKeepalive::LeaseLost).await;
    let client = Client::new([ep]).unwrap();
    let guard = client.lock("db").await.unwrap();
    let loss = tokio::time::timeout(Duration::from_secs(2), guard.lost()).await.expect("lost() fired");
    assert_eq!(loss, LeaseLoss::Lost { message: "node 0 restarted (incarnation 2)".into() });
    assert_eq!(guard.is_lost(), Some(loss.clone()));
    assert_eq!(guard.lost().await, loss, "lost() keeps answering");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.lock().unwrap().keepalives.len(), 1, "no keepalive after the node said the lease is lost");
}

#[tokio::test]
async fn lost_fires_when_no_keepalive_succeeds_for_a_ttl() {
    let (ep, s) = fake(0, OnAcquire::Grant, OnKeepalive::Failing).await;
    let client = Client::new([ep]).unwrap();
    let started = tokio::time::Instant::now();
    let guard = client.lock("db").await.unwrap();
    let loss = tokio::time::timeout(Duration::from_secs(2), guard.lost()).await.expect("lost() fired");
    assert!(started.elapsed() >= Duration::from_millis(300), "not before the TTL ran out");
    let LeaseLoss::Expired { ttl, last_error } = &loss else { panic!("{loss:?}") };
    assert_eq!(*ttl, Duration::from_millis(300));
    assert!(last_error.contains("busy"), "{last_error}");
    assert!(loss.to_string().starts_with("no keepalive succeeded for 300 ms"), "{loss}");
    assert!(s.lock().unwrap().keepalives.len() >= 2, "failed keepalives are retried");
}

#[tokio::test]
async fn dropping_the_guard_releases_the_lock() {
    let (ep, s) = fake(0, OnAcquire::Grant, OnKeepalive::Ok).await;
    let client = Client::new([ep]).unwrap();
    let guard = client.lock("db").await.unwrap();
    drop(guard);
    eventually(&s, "the release after drop", |f| f.releases.len() == 1).await;
    assert_eq!(s.lock().unwrap().releases, [("db".to_string(), json!({"lease": "0.1.ab"}))]);
    let after = s.lock().unwrap().keepalives.len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.lock().unwrap().keepalives.len(), after, "the keepalive task ended with the guard");
}

/// The token a guarded fake node takes for lock calls, and one it knows without the `lock` scope.
const LOCK_TOKEN: &str = "lock-token-0123456789abcdef";
const READ_TOKEN: &str = "read-token-0123456789abcdef";

/// A fake node that checks `Authorization` as a node with API tokens does: 401 without a known token, 403 for
/// the read-only one; counts the acquires that reached it.
fn guarded(calls: Arc<Mutex<usize>>) -> Router {
    let acquire = move |headers: axum::http::HeaderMap, Path(name): Path<String>| {
        let calls = calls.clone();
        async move {
            *calls.lock().unwrap() += 1;
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
            if auth == format!("Bearer {LOCK_TOKEN}") {
                Json(json!({"name": name, "lease": "0.1.ab", "fencing_token": 7, "ttl_ms": 60000}))
                    .into_response()
            } else if auth == format!("Bearer {READ_TOKEN}") {
                error(
                    StatusCode::FORBIDDEN,
                    json!({"code": "forbidden", "message": "/v1/locks/{name}/acquire needs a token with the lock scope"}),
                )
            } else {
                let mut r = error(
                    StatusCode::UNAUTHORIZED,
                    json!({"code": "unauthorized", "message": "/v1/locks/{name}/acquire needs a bearer token"}),
                );
                r.headers_mut().insert("www-authenticate", "Bearer realm=\"dmutex\"".parse().unwrap());
                r
            }
        }
    };
    let release =
        |Json(body): Json<Value>| async move { Json(json!({"lease": body["lease"], "released": true})) };
    Router::new()
        .route("/v1/locks/{name}/acquire", post(acquire))
        .route("/v1/locks/{name}/release", post(release))
        .route("/v1/leases/{lease}/keepalive", post(|| async { Json(json!({"ttl_ms": 60000})) }))
}

async fn serve_plain(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/")
}

#[tokio::test]
async fn the_token_is_sent_and_401_and_403_are_typed_answers_not_retried_elsewhere() {
    let (first, second) = (Arc::new(Mutex::new(0)), Arc::new(Mutex::new(0)));
    let endpoints = [serve_plain(guarded(first.clone())).await, serve_plain(guarded(second.clone())).await];
    let e = Client::new(&endpoints).unwrap().lock("db").await.unwrap_err();
    assert!(
        matches!(&e, Error::Unauthorized { message } if message.contains("needs a bearer token")),
        "{e:?}"
    );
    let e =
        Client::builder(&endpoints).with_token("wrong-token-0123456789").build().unwrap().lock("db").await;
    assert!(matches!(e, Err(Error::Unauthorized { .. })), "{e:?}");
    let e = Client::builder(&endpoints).with_token(READ_TOKEN).build().unwrap().lock("db").await.unwrap_err();
    assert!(matches!(&e, Error::Forbidden { message } if message.contains("lock scope")), "{e:?}");
    assert_eq!(e.to_string(), "forbidden: /v1/locks/{name}/acquire needs a token with the lock scope");
    assert_eq!(
        (*first.lock().unwrap(), *second.lock().unwrap()),
        (3, 0),
        "401/403 are not retried elsewhere"
    );
    // A token read from a file keeps its final newline: it is trimmed.
    let builder = Client::builder(&endpoints).with_token(format!("{LOCK_TOKEN}\n"));
    assert!(!format!("{builder:?}").contains(LOCK_TOKEN), "{builder:?}");
    let client = builder.build().unwrap();
    assert!(!format!("{client:?}").contains(LOCK_TOKEN), "{client:?}");
    let guard = client.lock("db").await.unwrap();
    assert_eq!(guard.fencing_token(), 7);
    guard.release().await.unwrap();
}

#[test]
fn tokens_and_ca_bundles_that_cannot_work_are_refused_at_build() {
    for token in ["", "  \n", "two words", "tab\there"] {
        let e = Client::builder(["http://a:1"]).with_token(token).build().unwrap_err();
        assert!(matches!(&e, Error::InvalidSettings { what, .. } if what == "the token"), "{token:?}: {e:?}");
        assert!(!e.to_string().contains("words"), "the token is never shown: {e}");
    }
    let e = Client::builder(["https://a:1"]).with_ca_pem("no certificate here").build().unwrap_err();
    assert!(e.to_string().contains("holds no certificate"), "{e}");
    let e = Client::builder(["https://a:1"]).with_ca_file("/nonexistent/ca.pem").build().unwrap_err();
    assert!(e.to_string().contains("/nonexistent/ca.pem") && e.to_string().contains("cannot read"), "{e}");
}

/// HTTPS against an in-test server: a CA made here, a server certificate for `localhost` it signed.
mod https {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio_rustls::TlsAcceptor;

    /// A TLS listener for `axum::serve` (handshakes inline: enough for one client at a time).
    struct TlsListener {
        tcp: tokio::net::TcpListener,
        acceptor: TlsAcceptor,
    }

    impl axum::serve::Listener for TlsListener {
        type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
        type Addr = std::net::SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            loop {
                let Ok((tcp, addr)) = self.tcp.accept().await else { continue };
                if let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept(tcp)).await
                {
                    return (tls, addr);
                }
            }
        }

        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            self.tcp.local_addr()
        }
    }

    /// A CA: its PEM and its issuer.
    fn ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), rcgen::Issuer::new(params, key))
    }

    /// Serves `app` over HTTPS on 127.0.0.1 with a `localhost` certificate from `issuer`.
    async fn serve(app: Router, issuer: &rcgen::Issuer<'static, rcgen::KeyPair>) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, issuer)
            .unwrap();
        let der: CertificateDer<'static> = cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![der], key)
                .unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let listener = TlsListener { tcp, acceptor: TlsAcceptor::from(Arc::new(config)) };
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("https://localhost:{port}/")
    }

    #[tokio::test]
    async fn https_works_with_the_given_ca_and_fails_with_another_or_the_web_roots() {
        let (ca_pem, issuer) = ca("dmutex test CA");
        let (other_pem, _) = ca("another CA");
        let endpoint = serve(guarded(Arc::new(Mutex::new(0))), &issuer).await;
        let client =
            Client::builder([&endpoint]).with_token(LOCK_TOKEN).with_ca_pem(&ca_pem).build().unwrap();
        let guard = client.lock("db").await.unwrap();
        assert_eq!(guard.fencing_token(), 7);
        guard.release().await.unwrap();
        // The CA from a file, as `dmutex lock --cacert` gives it.
        let dir = std::env::temp_dir().join(format!("dmutex-client-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ca.pem");
        std::fs::write(&file, &ca_pem).unwrap();
        let client = Client::builder([&endpoint]).with_token(LOCK_TOKEN).with_ca_file(&file).build().unwrap();
        client.lock("db").await.unwrap().release().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        // Another CA, or the built-in web roots (the given CA replaces them; here nothing else could work).
        for client in [
            Client::builder([&endpoint]).with_token(LOCK_TOKEN).with_ca_pem(&other_pem).build().unwrap(),
            Client::builder([&endpoint]).with_token(LOCK_TOKEN).build().unwrap(),
        ] {
            let e = client.lock("db").await.unwrap_err();
            let Error::Unavailable { message } = &e else { panic!("{e:?}") };
            assert!(message.to_lowercase().contains("certificate"), "{message}");
        }
    }
}

/// The `[dependencies]` of this crate's manifest: (name, the rest of its line).
fn normal_dependencies(manifest: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == "[dependencies]";
        } else if inside && !line.is_empty() && !line.starts_with('#') {
            if let Some((name, spec)) = line.split_once('=') {
                out.push((name.trim().to_string(), spec.trim().to_string()));
            }
        }
    }
    out
}

/// Every package reachable from `roots` through the `dependencies` of the workspace's Cargo.lock (by name,
/// over every version: an over-approximation of the normal dependency tree — the lock holds no dev-dependencies
/// of registry packages).
fn reachable(lock: &str, roots: &[String]) -> std::collections::BTreeSet<String> {
    let mut deps: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
    for block in lock.split("[[package]]").skip(1) {
        let name =
            block.lines().find_map(|l| l.strip_prefix("name = ")).unwrap_or_default().trim_matches('"');
        let list =
            block.split("dependencies = [").nth(1).and_then(|d| d.split(']').next()).unwrap_or_default();
        let names = list.split(',').filter_map(|d| d.trim().trim_matches('"').split(' ').next());
        deps.entry(name.to_string()).or_default().extend(names.filter(|n| !n.is_empty()).map(str::to_string));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut todo: Vec<String> = roots.to_vec();
    while let Some(n) = todo.pop() {
        if seen.insert(n.clone()) {
            todo.extend(deps.get(&n).into_iter().flatten().cloned());
        }
    }
    seen
}

/// The client's normal dependency tree holds no OpenTelemetry SDK, exporter or bridge, even with every feature:
/// `opentelemetry` (the API crate only) is optional and off by default. Its tests enable it through a
/// dev-dependency only (Cargo.toml).
#[test]
fn the_normal_dependency_tree_holds_no_opentelemetry_sdk() {
    let manifest = include_str!("../Cargo.toml");
    let deps = normal_dependencies(manifest);
    let names: Vec<String> = deps.iter().map(|(n, _)| n.replace('_', "-")).collect();
    assert!(
        names.contains(&"reqwest".to_string()) && names.contains(&"opentelemetry".to_string()),
        "{names:?}"
    );
    let (_, api) = deps.iter().find(|(n, _)| n == "opentelemetry").unwrap();
    assert!(api.contains("optional = true") && api.contains("default-features = false"), "{api}");
    assert!(!manifest.contains("default = ["), "no default features");
    let lock = include_str!("../../Cargo.lock");
    let roots: Vec<String> = deps.iter().map(|(n, _)| n.clone()).collect();
    let tree = reachable(lock, &roots);
    assert!(tree.contains("opentelemetry") && tree.contains("hyper"), "the walk works: {tree:?}");
    for sdk in ["opentelemetry_sdk", "opentelemetry-otlp", "opentelemetry-proto", "tracing-opentelemetry"] {
        assert!(!tree.contains(sdk), "{sdk} is in the client's normal dependency tree");
    }
}
