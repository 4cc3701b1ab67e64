//! [`LockBuilder`] (the options of one acquire) and [`LockGuard`] (a held lock whose lease a background task
//! keeps alive).

use crate::client::Client;
use crate::error::Error;
use crate::types::{AcquireBody, Algorithm, Grant, LeaseId, Timeout};
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

/// The TTL assumed until the node tells (a grant without `ttl_ms` and no [`LockBuilder::ttl`]); the first
/// keepalive is then sent at once to learn it.
const ASSUMED_TTL: Duration = Duration::from_secs(15);
/// The shortest time limit of one keepalive call, and the shortest pause between two.
const MIN_KEEPALIVE_STEP: Duration = Duration::from_millis(10);

/// One acquire's options: `.await` it (or call [`LockBuilder::acquire`]) to wait for the lock. Options left
/// unset take the node's defaults.
#[derive(Clone, Debug)]
#[must_use = "a LockBuilder does nothing until it is awaited"]
pub struct LockBuilder {
    client: Client,
    name: String,
    body: AcquireBody,
}

impl LockBuilder {
    pub(crate) fn new(client: Client, name: String, body: AcquireBody) -> Self {
        LockBuilder { client, name, body }
    }

    /// The lease's time to live: without a keepalive the node ends the lease this long after the grant. The
    /// guard renews it every third of the TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.body.ttl_ms = Some(millis(ttl).max(1));
        self
    }

    /// Wait at most `timeout` for the lock ([`Error::Timeout`] then); zero means try-lock.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.body.timeout_ms = Some(Timeout::from(timeout));
        self
    }

    /// Wait for the lock without a time limit (`"timeout_ms": "forever"`).
    pub fn wait_forever(mut self) -> Self {
        self.body.timeout_ms = Some(Timeout::Forever);
        self
    }

    /// The algorithm that serves the request (the cluster must serve it, else [`Error::BadRequest`]).
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.body.algorithm = Some(algorithm);
        self
    }

    /// The acquire body this builder sends.
    pub fn body(&self) -> &AcquireBody {
        &self.body
    }

    /// Sends the acquire and waits for the grant; the guard starts keeping its lease alive at once. Must run
    /// inside a tokio runtime (the keepalive task is spawned on it).
    pub async fn acquire(self) -> Result<LockGuard, Error> {
        let grant = self.client.acquire(&self.name, &self.body).await?;
        let granted_at = Instant::now();
        Ok(LockGuard::start(self.client, grant, self.body.ttl_ms, granted_at))
    }
}

impl IntoFuture for LockBuilder {
    type Output = Result<LockGuard, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.acquire())
    }
}

/// How a guard's lease was lost: what [`LockGuard::lost`] resolves to. From then on the lock may be someone
/// else's; stop using what it protects (the fencing token makes a late write harmless to a resource that
/// checks it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseLoss {
    /// A keepalive was answered 409 `lease_lost`: the lease ended without its client releasing it (the
    /// granting node lost its member lease, was excluded, restarted or is gone).
    #[error("the lease was lost: {message}")]
    Lost {
        /// The node's explanation.
        message: String,
    },
    /// A keepalive was answered 409 `lease_not_found` (or another answer that the lease is unknown): it
    /// expired or was released.
    #[error("the node no longer knows the lease: {message}")]
    NotFound {
        /// The node's explanation.
        message: String,
    },
    /// No keepalive succeeded for a whole TTL (every endpoint failed or was too slow): the lease has expired
    /// by now, whatever the nodes say later.
    #[error("no keepalive succeeded for {} ms (last failure: {last_error})", ttl.as_millis())]
    Expired {
        /// The TTL that ran out.
        ttl: Duration,
        /// Why the last keepalive failed.
        last_error: String,
    },
}

/// A held lock. Its lease is kept alive by a background task (every third of the TTL, through any endpoint)
/// until [`LockGuard::release`] or drop; dropping the guard releases the lock in a task spawned on the current
/// tokio runtime, best effort.
///
/// ```no_run
/// # async fn f() -> Result<(), dmutex_client::Error> {
/// use std::time::Duration;
/// let client = dmutex_client::Client::new(["http://127.0.0.1:8080", "http://127.0.0.2:8080"])?;
/// let guard = client.lock("nightly-backup").ttl(Duration::from_secs(10)).wait_forever().await?;
/// tokio::select! {
///     _ = tokio::time::sleep(Duration::from_secs(60)) => guard.release().await?, // the work, then release
///     loss = guard.lost() => eprintln!("stopped: {loss}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LockGuard {
    client: Client,
    grant: Grant,
    loss: watch::Receiver<Option<LeaseLoss>>,
    keeper: JoinHandle<()>,
    released: bool,
}

impl LockGuard {
    /// Starts keeping `grant`'s lease alive. `asked_ttl_ms` is the TTL the acquire asked for, used when the
    /// grant does not say; `granted_at` is when the grant arrived, the start of its first TTL.
    fn start(client: Client, grant: Grant, asked_ttl_ms: Option<u64>, granted_at: Instant) -> LockGuard {
        let known_ttl = grant.ttl_ms.or(asked_ttl_ms).map(Duration::from_millis);
        let ttl = known_ttl.unwrap_or(ASSUMED_TTL);
        let first = if known_ttl.is_some() { granted_at + step(ttl) } else { granted_at };
        let (tx, loss) = watch::channel(None);
        let keeper =
            tokio::spawn(keep_alive(client.clone(), grant.lease.clone(), ttl, granted_at, first, tx));
        LockGuard { client, grant, loss, keeper, released: false }
    }

    /// The fencing token: strictly increasing per lock in grant order. Pass it to what the lock protects.
    pub fn fencing_token(&self) -> u64 {
        self.grant.fencing_token
    }

    /// The lease the lock is held under.
    pub fn lease(&self) -> &LeaseId {
        &self.grant.lease
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.grant.name
    }

    /// The grant as the node sent it (algorithm, granting node, wait, TTL).
    pub fn grant(&self) -> &Grant {
        &self.grant
    }

    /// Resolves when the keepalive task learns that the lease is lost, with how; never while it is not.
    pub async fn lost(&self) -> LeaseLoss {
        let mut loss = self.loss.clone();
        if let Some(l) = loss.wait_for(Option::is_some).await.ok().and_then(|state| state.clone()) {
            return l;
        }
        // The keepalive task ends only after reporting a loss or when the guard goes: nothing more to say.
        std::future::pending().await
    }

    /// The loss, if the keepalive task has already learned of one.
    pub fn is_lost(&self) -> Option<LeaseLoss> {
        self.loss.borrow().clone()
    }

    /// Stops the keepalives and releases the lock (through any endpoint).
    pub async fn release(mut self) -> Result<(), Error> {
        self.released = true;
        self.keeper.abort();
        self.client.release(&self.grant.name, &self.grant.lease).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.keeper.abort();
        if self.released {
            return;
        }
        // Best effort: without a runtime (or when it is shutting down) the lease simply expires.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (client, name, lease) =
                (self.client.clone(), self.grant.name.clone(), self.grant.lease.clone());
            runtime.spawn(async move {
                let _ = client.release(&name, &lease).await;
            });
        }
    }
}

/// The pause between two keepalives of a lease with `ttl`: a third of it.
fn step(ttl: Duration) -> Duration {
    (ttl / 3).max(MIN_KEEPALIVE_STEP)
}

/// What a keepalive's error says about the lease: `Some` when the node says it is gone, `None` when the call
/// failed and may succeed again.
fn loss_of(e: &Error) -> Option<LeaseLoss> {
    match e {
        Error::LeaseLost { message } => Some(LeaseLoss::Lost { message: message.clone() }),
        Error::LeaseNotFound { message } => Some(LeaseLoss::NotFound { message: message.clone() }),
        // A node of the same API that says so with another code.
        Error::Server { status: 404 | 409 | 410, .. } => Some(LeaseLoss::NotFound { message: e.to_string() }),
        _ => None,
    }
}

/// Keeps `lease` alive until it is lost (then reports how on `loss`) or the task is aborted.
///
/// The TTL is counted from when the last successful keepalive was *sent* (the node cannot have started its new
/// TTL earlier), and for the grant from when its answer arrived. A failed keepalive is retried (every tenth of
/// the TTL, 50 ms to 1 s) until a whole TTL has passed since the last success.
async fn keep_alive(
    client: Client,
    lease: LeaseId,
    mut ttl: Duration,
    mut last_ok: Instant,
    first: Instant,
    loss: watch::Sender<Option<LeaseLoss>>,
) {
    let mut next = first;
    let mut last_error = String::from("no keepalive could be sent in time");
    loop {
        sleep_until(next).await;
        let sent = Instant::now();
        let deadline = last_ok + ttl;
        if sent >= deadline {
            loss.send_replace(Some(LeaseLoss::Expired { ttl, last_error }));
            return;
        }
        let limit = (deadline - sent).min(step(ttl).max(Duration::from_millis(100)));
        match client.keepalive(&lease, limit).await {
            Ok(granted) => {
                last_ok = sent;
                ttl = granted.unwrap_or(ttl);
                next = sent + step(ttl);
            }
            Err(e) => {
                if let Some(l) = loss_of(&e) {
                    loss.send_replace(Some(l));
                    return;
                }
                last_error = e.to_string();
                let retry = (ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
                next = (Instant::now() + retry).min(last_ok + ttl);
            }
        }
    }
}

/// Whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
