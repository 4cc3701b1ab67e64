//! [`run`]: one node as a library function (cf. mini-redis `server::run`). The caller binds both listeners
//! and hands in the shutdown signal, so a test runs whole nodes in one process on port 0 and the binary only
//! binds, discovers and waits for SIGTERM.

use super::NodeSettings;
use super::driver::Node;
use super::handle::{Command, NodeHandle, Shared};
use super::membership::Exit;
use super::msg::NodeMsg;
use crate::algo::Incarnation;
use crate::api::auth::ApiAuth;
use crate::api::https::{HttpsConfig, TlsListener};
use crate::api::router::{AppState, router};
use crate::config::NodeConfig;
use crate::net::transport::{Transport, TransportConfig, TransportHandle};
use crate::obs::metrics::ReloadLabels;
use axum::Router;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How long the HTTP server may take to finish its responses after the node has shut down.
const HTTP_GRACE: Duration = Duration::from_secs(2);

/// How long the node loop may take to end once the HTTP server stopped.
const NODE_LOOP_GRACE: Duration = Duration::from_secs(1);

/// Extra HTTP endpoints mounted next to the API, built once the node runs (they may talk to it).
pub type Routes = Box<dyn FnOnce(&NodeHandle) -> Router + Send>;

/// What [`run`] needs besides the listeners and the shutdown signal.
pub struct RunConfig {
    /// The node's configuration. Its listen addresses are not used: the caller bound the listeners.
    pub node: NodeConfig,
    /// This process's incarnation ([`new_incarnation`] for a real start; a restart must use a larger one).
    pub incarnation: Incarnation,
    /// Endpoints the caller adds (the built-in workload's); they take precedence over the API's.
    pub routes: Option<Routes>,
    /// The API's TLS configuration, already loaded (`dmutex node` loads it before it starts, to exit with
    /// the configuration error). `None`: [`run`] loads it from `node.security.api_tls` if that is set, else
    /// the API is plain HTTP.
    pub https: Option<HttpsConfig>,
    /// The API tokens, already loaded (so that a bad file is the caller's configuration error); `None`:
    /// [`run`] loads them from `node.security` itself, if configured.
    pub auth: Option<Arc<ApiAuth>>,
}

impl RunConfig {
    /// A configuration for a fresh start: a new incarnation, no extra endpoints.
    pub fn new(node: NodeConfig) -> Self {
        RunConfig { node, incarnation: new_incarnation(), routes: None, https: None, auth: None }
    }
}

/// A fresh incarnation: microseconds since the UNIX epoch (grows across restarts of the same node).
pub fn new_incarnation() -> Incarnation {
    let micros = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1);
    Incarnation::new(micros)
}

/// Aborts a task when dropped, so that dropping [`run`]'s future stops what it started.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Stops the current transport (gracefully, in the background) if [`run`]'s future is dropped before it
/// finished: its tasks are not ours to abort.
struct StopTransport(Arc<std::sync::Mutex<Option<TransportHandle<NodeMsg>>>>);

impl Drop for StopTransport {
    fn drop(&mut self) {
        let current = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let (Some(t), Ok(rt)) = (current, tokio::runtime::Handle::try_current()) {
            rt.spawn(async move { t.shutdown().await });
        }
    }
}

/// The incarnations of one node process: each runs a transport on the same listener and a node loop on the
/// same command channel; a view that excludes the process while it is alive ends one and starts the next.
struct Lives {
    cfg: NodeConfig,
    listener: Arc<TcpListener>,
    shared: Arc<Shared>,
    current: Arc<std::sync::Mutex<Option<TransportHandle<NodeMsg>>>>,
    /// Mutual TLS on peer links (shared by every incarnation's transport), if configured.
    peer_tls: Option<Arc<crate::net::peer_tls::PeerTls>>,
}

impl Lives {
    async fn run(self, mut settings: NodeSettings, mut commands: mpsc::Receiver<Command>) {
        let mut rejoin = None;
        loop {
            let incarnation = settings.incarnation;
            let clock = self.shared.clone();
            let mut tcfg = TransportConfig::new(
                settings.me,
                incarnation,
                self.cfg.cluster_name.clone(),
                settings.peers.clone(),
            );
            tcfg.algorithm = self.cfg.algorithm;
            tcfg.algorithms = self.cfg.algorithms.clone();
            tcfg.secret = self.cfg.cluster_secret.as_ref().map(|s| s.expose().to_string());
            tcfg.max_frame = self.cfg.max_frame_bytes;
            // Nodes outside the peer list may join: their handshakes are taken (bounded by the transport) and
            // the membership layer decides whether they are admitted.
            tcfg.accept_unknown = true;
            tcfg.tls = self.peer_tls.clone();
            let (transport, inbound) = Transport::start_shared::<NodeMsg>(
                tcfg,
                self.listener.clone(),
                Arc::new(move || clock.clock()),
            );
            *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(transport.clone());
            let mut node = match Node::new(settings.clone(), transport.clone(), self.shared.clone()) {
                Ok(node) => node,
                Err(e) => {
                    tracing::error!("cannot start the node: {e}");
                    transport.shutdown().await;
                    return;
                }
            };
            match rejoin.take() {
                Some((view, lost)) => node.rejoin(view, lost),
                // A node beyond the forming set never forms view 1: it asks to join from the start.
                None if settings.me.index() >= settings.formation_size => node.rejoin(None, Vec::new()),
                None => {}
            }
            let (exit, back) = node.run(commands, inbound).await;
            commands = back;
            match exit {
                Exit::Shutdown => return,
                Exit::Reincarnate { view, lost } => {
                    let next = new_incarnation().get().max(incarnation.get() + 1);
                    tracing::warn!(
                        old = incarnation.get(),
                        new = next,
                        "excluded while alive: starting again as a new incarnation, which joins"
                    );
                    settings.incarnation = Incarnation::new(next);
                    rejoin = Some((view, lost));
                }
            }
        }
    }
}

/// Serves `app` on `listener` until `stopped` resolves (then drains, as [`axum::serve()`] does).
fn spawn_server<L>(
    listener: L,
    app: Router,
    stopped: oneshot::Receiver<()>,
) -> JoinHandle<std::io::Result<()>>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let server = axum::serve(listener, app).with_graceful_shutdown(async {
        let _ = stopped.await;
    });
    tokio::spawn(async move { server.await })
}

/// The API's TLS configuration: the one given, else the one the node configuration names (loaded now).
fn https_of(given: Option<HttpsConfig>, cfg: &NodeConfig) -> std::io::Result<Option<HttpsConfig>> {
    match (given, &cfg.security.api_tls) {
        (Some(h), _) => Ok(Some(h)),
        (None, Some(files)) => HttpsConfig::load(files)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())),
        (None, None) => Ok(None),
    }
}

/// Runs one node: starts the transport on `peer_listener`, the node loop, and the HTTP API on
/// `http_listener` (HTTPS when the configuration has `security.api_tls`); when `shutdown` resolves, shuts down gracefully (refuses new acquires, answers waiters,
/// releases leases, tells peers, within `shutdown_grace`), then stops the HTTP server.
///
/// Returns an error only if the HTTP server failed (the node is shut down first). Must be called inside a
/// tokio runtime; dropping the future stops the node without the graceful part.
pub async fn run(
    peer_listener: TcpListener,
    http_listener: TcpListener,
    config: RunConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let RunConfig { node: cfg, incarnation, routes, https, auth } = config;
    let https = https_of(https, &cfg)?;
    let auth = match auth {
        Some(auth) => Some(auth),
        None => ApiAuth::from_config(&cfg.security)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
    };
    let settings = NodeSettings::from_config(&cfg, incarnation);
    let me = settings.me;
    tracing::info!(
        node = me.get(),
        incarnation = incarnation.get(),
        peers = ?settings.peers,
        peer_addr = ?peer_listener.local_addr().ok(),
        http_addr = ?http_listener.local_addr().ok(),
        api_scheme = if https.is_some() { "https" } else { "http" },
        algorithm = %cfg.algorithm,
        "dmutex node starting"
    );

    let shared = Shared::new(me, incarnation);
    let peer_tls = crate::net::peer_tls::PeerTls::from_config(&cfg.security)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    if let Some(tls) = &peer_tls {
        let counted = shared.clone();
        tls.on_reload(move |ok| {
            let result = if ok { "ok" } else { "failed" };
            counted.metrics.credential_reloads.inc(ReloadLabels { what: "peer_certificate", result });
        });
        tls.watch(cfg.security.credentials_reload);
        tracing::info!("mutual TLS on peer links");
    }
    let listener = Arc::new(peer_listener);
    let current = Arc::new(std::sync::Mutex::new(None::<TransportHandle<NodeMsg>>));
    let stop_transport = StopTransport(current.clone());

    let (tx, commands) = mpsc::channel(1024);
    let handle = NodeHandle::new(tx, shared.clone());
    let lives = Lives { cfg: cfg.clone(), listener, shared: shared.clone(), current, peer_tls };
    let mut node_task = AbortOnDrop(tokio::spawn(lives.run(settings, commands)));

    if let Some(auth) = &auth {
        auth.watch(shared.clone());
    }
    let api = router(AppState {
        node: handle.clone(),
        workload: None,
        algorithms: cfg.algorithms.clone(),
        auth: auth.clone(),
    });
    let app = match (routes, &auth) {
        // The caller's endpoints need the token their route needs too (the API's router checks its own).
        (Some(routes), Some(auth)) => routes(&handle)
            .layer(axum::middleware::from_fn_with_state(auth.clone(), crate::api::auth::authorize))
            .fallback_service(api),
        (Some(routes), None) => routes(&handle).fallback_service(api),
        (None, _) => api,
    };
    let (stop_http, stopped) = oneshot::channel::<()>();
    let server = match https {
        Some(https) => {
            let metrics = shared.clone();
            https.on_reload(move |ok| {
                let result = if ok { "ok" } else { "failed" };
                metrics.metrics.credential_reloads.inc(ReloadLabels { what: "api_certificate", result });
            });
            https.watch(cfg.security.credentials_reload);
            spawn_server(TlsListener::new(http_listener, https)?, app, stopped)
        }
        None => spawn_server(http_listener, app, stopped),
    };
    let mut server_task = AbortOnDrop(server);

    let mut failed = None;
    tokio::select! {
        () = shutdown => {}
        result = &mut server_task.0 => {
            let e = match result {
                Ok(Ok(())) => std::io::Error::other("the HTTP server stopped by itself"),
                Ok(Err(e)) => e,
                Err(e) => std::io::Error::other(e),
            };
            tracing::error!("http server: {e}");
            failed = Some(e);
        }
    }
    tracing::info!("shutting down: refusing new acquires, answering waiters, releasing leases");
    let grace = cfg.shutdown_grace + cfg.view_change_bound();
    if tokio::time::timeout(grace, handle.shutdown()).await.is_err() {
        tracing::warn!("node shutdown took longer than {grace:?}");
    }
    let _ = stop_http.send(());
    if failed.is_none() {
        match tokio::time::timeout(HTTP_GRACE, &mut server_task.0).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!("http server: {e}"),
            Ok(Err(e)) => tracing::warn!("http server task: {e}"),
            Err(_) => tracing::warn!("http server did not stop within {HTTP_GRACE:?}"),
        }
    }
    let _ = tokio::time::timeout(NODE_LOOP_GRACE, &mut node_task.0).await;
    // The node loop stopped the transport as its last step, unless the grace ran out: then this does.
    drop(stop_transport);
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `dmutex node` does after the shutdown grace (this HTTP drain, the node loop's end, then the trace
    /// flush) fits in the margin that deployment grace periods are sized with.
    #[test]
    fn the_stop_after_the_grace_fits_the_configured_margin() {
        let after_grace = HTTP_GRACE + NODE_LOOP_GRACE + crate::obs::telemetry::SHUTDOWN_TIMEOUT;
        assert!(after_grace <= crate::config::STOP_MARGIN, "{after_grace:?}");
    }
}
