//! Clients' requests through their life: an acquire waits ([`Pending`]) until its core grants or rejects it;
//! a grant becomes a lease ([`super::leases`]) that the client keeps alive and releases, or that expires in
//! the core; shutdown answers every waiter and releases every lease.

use super::driver::Node;
use super::leases::Lease;
use super::msg::NodeMsg;
use super::observe::{Cause, Seen};
use crate::algo::{Algorithm, Event, FencingToken, Millis, RejectReason, RequestId};
use crate::api::error::ApiError;
use crate::api::types::{AcquireRequest, Grant};
use crate::net::transport::Inbound;
use crate::obs::metrics::Outcome;
use crate::obs::telemetry;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// A local acquire that has not been answered yet.
pub(crate) struct Pending {
    pub(super) algorithm: Algorithm,
    pub(super) lock: String,
    reply: Option<oneshot::Sender<Result<Grant, ApiError>>>,
    pub(super) started: Instant,
    /// How long it may wait; `None`: without a limit.
    timeout: Option<Duration>,
    /// Its deadline on the node's clock (`None`: without a limit).
    deadline: Option<Millis>,
    /// An ordinary acquire (it waits), not a try.
    wait: bool,
    ttl: Duration,
    /// Set when the node itself withdrew the request (peer down, shutdown): the answer to give.
    pub(super) withdrawn: Option<ApiError>,
    /// Flow id of this acquire.
    acquire_id: String,
    /// The `lock.acquire` root span (a disabled span when not exporting); ends at the outcome.
    span: tracing::Span,
}

/// The answer to a request whose deadline passed.
fn timed_out(p: &Pending) -> ApiError {
    ApiError::Timeout(p.timeout.map_or(0, |t| t.as_millis() as u64))
}

fn millis(d: Duration) -> Millis {
    Millis::new(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Node {
    pub(super) fn acquire(&mut self, req: AcquireRequest, reply: oneshot::Sender<Result<Grant, ApiError>>) {
        let algorithm = req.algorithm.unwrap_or(self.settings.default_algorithm);
        if self.shared.shutting_down() {
            self.observer.seen(Seen::Answered { algorithm, outcome: Outcome::Shutdown });
            let _ = reply.send(Err(ApiError::ShuttingDown));
            return;
        }
        let ttl = req.ttl.unwrap_or(self.settings.default_ttl);
        if ttl > self.settings.max_ttl || ttl.is_zero() {
            let _ = reply.send(Err(ApiError::BadRequest(format!(
                "ttl_ms must be between 1 and {}",
                self.settings.max_ttl.as_millis()
            ))));
            return;
        }
        if let Some(why) = self.unavailable() {
            self.observer.seen(Seen::Answered { algorithm, outcome: Outcome::Unavailable });
            let _ = reply.send(Err(ApiError::Unavailable(why)));
            return;
        }
        // `None`: waits without a limit (the client asked for `"forever"`).
        let timeout = match req.timeout {
            None => Some(self.settings.default_timeout),
            Some(t) => t.as_duration(),
        };
        let id = RequestId::new(self.next_req);
        self.next_req += 1;
        let deadline = timeout.map(|t| Millis::new(self.now().get().saturating_add(millis(t).get())));
        let clock = self.cores.get(algorithm).clock();
        let parent = req.parent.as_ref();
        let mut cause =
            self.observer.seen(Seen::Acquire { algorithm, lock: &req.lock, req: id, clock, parent });
        let span = cause.span.take().unwrap_or_else(tracing::Span::none);
        let p = Pending {
            algorithm,
            lock: req.lock.clone(),
            reply: Some(reply),
            started: Instant::now(),
            timeout,
            deadline,
            wait: req.wait,
            ttl,
            withdrawn: None,
            acquire_id: cause.acquire.clone().unwrap_or_default(),
            span,
        };
        if req.wait && !self.may_grant() {
            // Admitted without a member lease: the lease is expected back (`unavailable` said so).
            self.parked.push(p);
            return;
        }
        self.pending.insert(id, p);
        let event = if req.wait {
            Event::Acquire { req: id, lock: req.lock, deadline, ttl: Some(millis(ttl)) }
        } else {
            Event::TryAcquire { req: id, lock: req.lock, ttl: Some(millis(ttl)) }
        };
        self.work.push_back((algorithm, event, cause));
    }

    /// The core granted `req`: the waiting client gets a lease, or, if it went away, the lock goes back.
    pub(super) fn granted(
        &mut self,
        algorithm: Algorithm,
        req: RequestId,
        lock: String,
        token: FencingToken,
        cause: &Cause,
    ) {
        let Some(mut p) = self.pending.remove(&req) else {
            // Nobody waits for it any more: give it back at once.
            self.work.push_back((algorithm, Event::Release { req }, cause.kept()));
            return;
        };
        if !self.may_grant() {
            // The driver rule: a node without its member lease never hands out a grant. The lock goes back
            // at once; where the lease is expected back (a view change under way), the request asks again
            // and waits on, else the client hears why.
            self.work.push_back((algorithm, Event::Release { req }, cause.kept()));
            if p.wait && p.withdrawn.is_none() && self.may_recover() {
                self.parked.push(p);
                return;
            }
            let why = self.unavailable().unwrap_or_else(|| "no member lease".into());
            self.observer.seen(Seen::Ended {
                algorithm,
                lock: &lock,
                acquire: &p.acquire_id,
                outcome: Outcome::Unavailable,
                waited: p.started.elapsed(),
                span: &p.span,
                clock: self.cores.get(algorithm).clock(),
            });
            if let Some(reply) = p.reply.take() {
                let _ = reply.send(Err(p.withdrawn.take().unwrap_or(ApiError::Unavailable(why))));
            }
            return;
        }
        let waited = p.started.elapsed();
        let clock = self.cores.get(algorithm).clock();
        let (acquire, span) = (p.acquire_id.as_str(), &p.span);
        self.observer.seen(Seen::Entered { algorithm, lock: &lock, acquire, token, waited, span, clock });
        let otel = telemetry::context_of(&p.span);
        let ended = |outcome| Seen::Ended { algorithm, lock: &lock, acquire, outcome, waited, span, clock };
        match p.reply.take() {
            Some(reply) if !reply.is_closed() => {
                self.observer.seen(ended(Outcome::Granted));
                let lease = Lease {
                    req,
                    algorithm,
                    lock: lock.clone(),
                    token,
                    ttl: p.ttl,
                    granted: Instant::now(),
                    acquire_id: p.acquire_id.clone(),
                    otel,
                };
                let owner = super::forward::LeaseOwner {
                    node: self.settings.me,
                    incarnation: self.settings.incarnation,
                };
                let id = self.leases.insert(owner, lease);
                let grant = Grant {
                    name: lock,
                    lease: id.clone().into(),
                    fencing_token: token.get(),
                    algorithm: Some(algorithm),
                    node_id: Some(self.settings.me.get()),
                    waited_ms: Some(waited.as_millis() as u64),
                    ttl_ms: Some(p.ttl.as_millis() as u64),
                };
                if reply.send(Ok(grant)).is_err() {
                    // The client went away between the check and the send: release now.
                    self.end_lease(&id);
                }
            }
            _ => {
                self.observer.seen(ended(Outcome::Abandoned));
                let release = Seen::Release { algorithm, lock: &lock, token, acquire, otel: otel.as_ref() };
                let cause = self.observer.seen(release);
                self.work.push_back((algorithm, Event::Release { req }, cause));
            }
        }
    }

    /// The core ended `req` without a grant: the client learns why.
    pub(super) fn rejected(&mut self, req: RequestId, reason: RejectReason) {
        let Some(mut p) = self.pending.remove(&req) else { return };
        let err = match (p.withdrawn.take(), reason) {
            (Some(e), _) => e,
            (None, RejectReason::TimedOut) => timed_out(&p),
            (None, RejectReason::Cancelled) => ApiError::Cancelled,
            (None, RejectReason::Locked { holder }) => ApiError::Locked { holder: holder.map(|h| h.get()) },
        };
        self.finish(p, err);
    }

    /// The member lease is back: every parked request asks its core (a new request, at the back of the
    /// queue), with its own deadline.
    pub(super) fn unpark(&mut self) {
        for p in std::mem::take(&mut self.parked) {
            let req = RequestId::new(self.next_req);
            self.next_req += 1;
            let (algorithm, lock, deadline, ttl) =
                (p.algorithm, p.lock.clone(), p.deadline, Some(millis(p.ttl)));
            let cause = Cause {
                acquire: Some(p.acquire_id.clone()),
                otel: telemetry::context_of(&p.span),
                span: None,
            };
            self.pending.insert(req, p);
            self.work.push_back((algorithm, Event::Acquire { req, lock, deadline, ttl }, cause));
        }
    }

    /// Housekeeping of the parked requests: past their deadline → timeout; client gone → dropped; the lease
    /// no longer expected back → `why`.
    pub(super) fn check_parked(&mut self, why: Option<&ApiError>) {
        let now = self.now();
        for p in std::mem::take(&mut self.parked) {
            if p.reply.as_ref().is_none_or(|r| r.is_closed()) {
                self.finish(p, ApiError::Cancelled);
            } else if p.deadline.is_some_and(|d| d <= now) {
                let err = timed_out(&p);
                self.finish(p, err);
            } else if let Some(why) = why {
                self.finish(p, why.clone());
            } else {
                self.parked.push(p);
            }
        }
    }

    /// Answers a request that is in no core (any more) with `err`.
    fn finish(&mut self, mut p: Pending, err: ApiError) {
        let outcome = match &err {
            ApiError::Timeout(_) => Outcome::Timeout,
            ApiError::Unavailable(_) => Outcome::Unavailable,
            ApiError::ShuttingDown => Outcome::Shutdown,
            ApiError::Locked { .. } => Outcome::Locked,
            _ => Outcome::Cancelled,
        };
        let algorithm = p.algorithm;
        self.observer.seen(Seen::Ended {
            algorithm,
            lock: &p.lock,
            acquire: &p.acquire_id,
            outcome,
            waited: p.started.elapsed(),
            span: &p.span,
            clock: self.cores.get(algorithm).clock(),
        });
        if let Some(reply) = p.reply.take() {
            let _ = reply.send(Err(err));
        }
    }

    pub(super) fn release(&mut self, lock: &str, lease: &str) -> Result<(), ApiError> {
        match self.leases.get(lease) {
            Some(l) if l.lock == lock => {
                self.end_lease(lease);
                Ok(())
            }
            Some(_) => Err(ApiError::LeaseNotFound(format!("lease {lease} does not hold lock {lock:?}"))),
            None => Err(self.lease_gone(lease)),
        }
    }

    /// The error for a lease this node does not hold (any more).
    pub(super) fn lease_gone(&self, lease: &str) -> ApiError {
        if self.member.was_lost(lease) {
            ApiError::LeaseLost(format!(
                "lease {lease} was lost: this node lost its member lease (no majority reached), so the lock may \
                 be held by someone else now"
            ))
        } else if let Some(o) = super::forward::LeaseOwner::of(lease)
            .filter(|o| o.node == self.settings.me && o.incarnation != self.settings.incarnation)
        {
            ApiError::LeaseLost(format!(
                "lease {lease} was lost: node {} that granted it restarted (incarnation {} is gone)",
                o.node.get(),
                o.incarnation.get()
            ))
        } else {
            ApiError::LeaseNotFound(format!("lease {lease} is unknown or expired"))
        }
    }

    /// Extends a lease by its TTL, in its core (which refuses a keepalive that comes too late).
    pub(super) fn keepalive(&mut self, lease: &str) -> Result<Duration, ApiError> {
        let gone = || ApiError::LeaseNotFound(format!("lease {lease} is unknown or expired"));
        let (algorithm, req, ttl) = self
            .leases
            .get(lease)
            .map(|l| (l.algorithm, l.req, l.ttl))
            .ok_or_else(|| self.lease_gone(lease))?;
        let until = Millis::new(self.now().get().saturating_add(millis(ttl).get()));
        match self.feed(algorithm, Event::KeepAlive { req, until }, &Cause::default()) {
            Ok(()) => Ok(ttl),
            Err(e) => {
                tracing::debug!(lease, error = %e, "keepalive refused");
                Err(gone())
            }
        }
    }

    /// The core released `req`'s lock because its lease ran out.
    pub(super) fn lease_expired(&mut self, req: RequestId, lock: &str) {
        let Some((id, l)) = self.leases.remove_request(req) else { return };
        tracing::info!(lease = %id, lock, "lease expired");
        self.lease_ended(&l, true);
    }

    /// Ends a lease the node still knows: records it and releases the lock in its core.
    pub(super) fn end_lease(&mut self, id: &str) {
        let Some(l) = self.leases.remove(id) else { return };
        self.lease_ended(&l, false);
        let cause = self.observer.seen(Seen::Release {
            algorithm: l.algorithm,
            lock: &l.lock,
            token: l.token,
            acquire: &l.acquire_id,
            otel: l.otel.as_ref(),
        });
        self.work.push_back((l.algorithm, Event::Release { req: l.req }, cause));
    }

    fn lease_ended(&self, l: &Lease, expired: bool) {
        self.observer.seen(Seen::LeaseEnded {
            algorithm: l.algorithm,
            lock: &l.lock,
            acquire: &l.acquire_id,
            held: l.granted.elapsed(),
            expired,
            clock: self.cores.get(l.algorithm).clock(),
        });
    }

    /// The cause of the core's release when `req`'s lease timer fires: its `lock.release` span.
    pub(super) fn release_cause(&self, req: RequestId) -> Cause {
        match self.leases.of_request(req) {
            Some(l) => self.observer.seen(Seen::Release {
                algorithm: l.algorithm,
                lock: &l.lock,
                token: l.token,
                acquire: &l.acquire_id,
                otel: l.otel.as_ref(),
            }),
            None => Cause::default(),
        }
    }

    /// Ends what local clients have: every waiting request not yet withdrawn is withdrawn (its client hears
    /// `why`), every lease ended (its lock released in the core). Returns the ended lease ids.
    pub(super) fn end_clients(&mut self, why: &ApiError) -> Vec<String> {
        self.withdraw_waiting(why);
        self.end_leases()
    }

    /// Withdraws every waiting request not yet withdrawn (parked ones included); its client hears `why`.
    pub(super) fn withdraw_waiting(&mut self, why: &ApiError) {
        self.check_parked(Some(why));
        let waiting: Vec<RequestId> =
            self.pending.iter().filter(|(_, p)| p.withdrawn.is_none()).map(|(id, _)| *id).collect();
        for id in waiting {
            self.withdraw(id, why.clone());
        }
    }

    /// Ends every lease (its lock released in the core); returns their ids.
    pub(super) fn end_leases(&mut self) -> Vec<String> {
        let leases = self.leases.ids();
        for id in &leases {
            self.end_lease(id);
        }
        leases
    }

    /// Withdraws the waiting requests whose client went away (its HTTP request was dropped, e.g. the
    /// connection closed): a request that waits without a limit would otherwise stay queued for ever, and one
    /// with a limit would still be granted and given back for nothing.
    pub(super) fn withdraw_abandoned(&mut self) {
        let gone: Vec<RequestId> = (self.pending.iter())
            .filter(|(_, p)| p.withdrawn.is_none() && p.reply.as_ref().is_some_and(|r| r.is_closed()))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.withdraw(id, ApiError::Cancelled);
        }
    }

    /// Withdraws a waiting request on the node's own initiative; `why` is what its client will hear.
    pub(super) fn withdraw(&mut self, id: RequestId, why: ApiError) {
        let Some(p) = self.pending.get_mut(&id) else { return };
        p.withdrawn = Some(why);
        let cause =
            Cause { acquire: Some(p.acquire_id.clone()), otel: telemetry::context_of(&p.span), span: None };
        self.work.push_back((p.algorithm, Event::Cancel { req: id }, cause));
    }

    /// Refuses new acquires, answers every waiter, releases every lease (telling peers), leaves the view
    /// (keeps handling peer input and membership timers until a view without this node is installed, or
    /// the leave bound `S + L + 2·retry` has passed), then flushes and stops the transport.
    pub(super) async fn graceful_shutdown(
        &mut self,
        inbound: &mut mpsc::UnboundedReceiver<Inbound<NodeMsg>>,
    ) {
        self.shared.begin_shutdown();
        self.end_clients(&ApiError::ShuttingDown);
        self.run_work();
        // Anything still pending (should be nothing) is answered too.
        for (_, mut p) in std::mem::take(&mut self.pending) {
            if let Some(reply) = p.reply.take() {
                let _ = reply.send(Err(ApiError::ShuttingDown));
            }
        }
        self.leave_view(inbound).await;
        self.transport.shutdown().await;
    }

    /// Graceful leave: resign and wait (handling peer input and timers) for a view without this node.
    async fn leave_view(&mut self, inbound: &mut mpsc::UnboundedReceiver<Inbound<NodeMsg>>) {
        let alone = self.member.core.view().is_none_or(|v| v.members.len() <= 1);
        if !self.member.core.is_member() || alone {
            return;
        }
        self.member_event(crate::algo::membership::Event::Leave);
        let started = Instant::now();
        let wait = self.settings.leave_wait;
        let deadline = tokio::time::Instant::now() + wait;
        while !self.member.left {
            let next = self.member.next_timer().map(|at| self.instant_of(at)).unwrap_or(deadline.into());
            let wake = tokio::time::Instant::from_std(next).min(deadline);
            tokio::select! {
                Some(input) = inbound.recv() => self.on_inbound(input),
                () = tokio::time::sleep_until(wake) => {
                    if tokio::time::Instant::now() >= deadline {
                        tracing::warn!("left without seeing the view that removes this node ({wait:?})");
                        return;
                    }
                    self.fire_member_timers();
                }
            }
            self.run_work();
        }
        tracing::info!(took_ms = started.elapsed().as_millis() as u64, "left the view");
    }
}
