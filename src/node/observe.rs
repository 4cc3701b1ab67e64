//! The one observe hook: everything the node reports about its work goes through [`Observer::seen`], which
//! feeds the metrics, the flow log (`GET /v1/flow`) and, when exporting, the spans of an acquire's trace.
//!
//! A trace follows one acquire across nodes: `lock.acquire` (root, at the requesting node) → `peer.send` →
//! `peer.recv` at the receiver → the sends that work causes → … → `lock.enter`, and later `lock.release`. The
//! flow log groups the same records by the acquire's flow id, so diagrams need no tracing backend. What
//! caused a piece of work travels with it as a [`Cause`].
//!
//! Must never: change what the node does (observing is a side channel), or allocate label strings per
//! message (label sets are plain values; spans are built only when exporting).

use super::handle::Shared;
use super::msg::PeerMsg;
use crate::algo::{Algorithm, FencingToken, Incarnation, LamportTs, NodeId, ProtocolMessage, RequestId};
use crate::net::wire::Envelope;
use crate::obs::flow::{Direction, FlowRecord};
use crate::obs::metrics::{
    AlgorithmLabel, LinkFrameLabels, MessageLabels, Outcome, OutcomeLabels, PeerLabel, ReasonLabel,
};
use crate::obs::telemetry;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Key of the node-local acquire id in a peer message's trace map: the flow records of one acquire are
/// grouped by it (the trace id when tracing, else `node-incarnation-request`), so diagrams need no backend.
pub(crate) const ACQUIRE_KEY: &str = "dmutex-acquire";

/// Longest acquire id accepted from a peer (ids are at most 32 hex digits; anything longer is garbage).
pub(crate) const MAX_ACQUIRE_ID: usize = 64;

/// What caused a piece of work: the acquire it belongs to and the span its messages are children of.
#[derive(Clone, Default)]
pub(crate) struct Cause {
    /// Flow id of the acquire (see [`ACQUIRE_KEY`]).
    pub(crate) acquire: Option<String>,
    /// Parent of the spans of the messages this work sends (`None` when not exporting).
    pub(crate) otel: Option<opentelemetry::Context>,
    /// Keeps the causing span (`lock.acquire`, `peer.recv`, `lock.release`) open while its work is processed.
    pub(crate) span: Option<tracing::Span>,
}

impl Cause {
    /// The same cause without holding its span open (to be remembered for later work).
    pub(crate) fn kept(&self) -> Cause {
        Cause { acquire: self.acquire.clone(), otel: self.otel.clone(), span: None }
    }
}

/// A snapshot of the node's state for the gauges (taken at every housekeeping tick).
pub(crate) struct Status {
    pub(crate) ready: bool,
    /// Every other peer and whether its link is up.
    pub(crate) connected: Vec<(NodeId, bool)>,
    /// Per algorithm: waiting local requests and the core's Lamport clock.
    pub(crate) cores: Vec<(Algorithm, usize, LamportTs)>,
    pub(crate) held_leases: usize,
    /// Kept by the transport: reconnects per peer, refused handshakes per reason.
    pub(crate) reconnects: Vec<(NodeId, u64)>,
    pub(crate) refused: Vec<(&'static str, u64)>,
    /// Keepalive frames sent and received (link-level, not algorithm messages).
    pub(crate) keepalives: (u64, u64),
}

/// Something the node did or saw.
pub(crate) enum Seen<'a> {
    /// A local acquire arrived: the root span of its trace, and ACQUIRE in the flow log. The returned cause
    /// carries the acquire's flow id and its root span.
    Acquire {
        algorithm: Algorithm,
        lock: &'a str,
        req: RequestId,
        clock: LamportTs,
        /// The caller's trace (the HTTP server span), if any: `lock.acquire` is its child.
        parent: Option<&'a opentelemetry::Context>,
    },
    /// An acquire was answered at once, without reaching a core (shutting down, a needed peer down).
    Answered { algorithm: Algorithm, outcome: Outcome },
    /// A peer message arrived. The returned cause is its `peer.recv` span, child of the sender's.
    Received { from: NodeId, env: &'a Envelope<PeerMsg> },
    /// A peer message leaves as part of `cause`'s work; the trace context it carries is written to `trace`.
    Sent { to: NodeId, msg: &'a PeerMsg, cause: &'a Cause, trace: &'a mut BTreeMap<String, String> },
    /// A local request entered the critical section.
    Entered {
        algorithm: Algorithm,
        lock: &'a str,
        acquire: &'a str,
        token: FencingToken,
        waited: Duration,
        span: &'a tracing::Span,
        clock: LamportTs,
    },
    /// An acquire ended: granted (after [`Seen::Entered`]), or not.
    Ended {
        algorithm: Algorithm,
        lock: &'a str,
        acquire: &'a str,
        outcome: Outcome,
        waited: Duration,
        span: &'a tracing::Span,
        clock: LamportTs,
    },
    /// The node releases a lock (the client released it, its lease expired, nobody waited for the grant, or
    /// shutdown). The returned cause is the `lock.release` span, child of the acquire's trace.
    Release {
        algorithm: Algorithm,
        lock: &'a str,
        token: FencingToken,
        acquire: &'a str,
        otel: Option<&'a opentelemetry::Context>,
    },
    /// A lease ended, released or `expired`.
    LeaseEnded {
        algorithm: Algorithm,
        lock: &'a str,
        acquire: &'a str,
        held: Duration,
        expired: bool,
        clock: LamportTs,
    },
    /// Peer input the node dropped or a core refused, by reason.
    Dropped { reason: &'static str },
    /// The periodic snapshot for the gauges.
    Status(&'a Status),
}

/// The hook's state: where metrics and flow records go, and who this node is.
pub(crate) struct Observer {
    shared: Arc<Shared>,
    me: NodeId,
    incarnation: Incarnation,
}

/// Wall-clock milliseconds since the Unix epoch (flow records of different nodes are merged by it).
pub(super) fn unix_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

impl Observer {
    /// The observer of incarnation `incarnation` of the node `shared` belongs to.
    pub(crate) fn new(shared: Arc<Shared>, incarnation: crate::algo::Incarnation) -> Self {
        let me = shared.me;
        Observer { shared, me, incarnation }
    }

    /// The one hook. Returns the cause of the work that follows, for the happenings that start some.
    pub(crate) fn seen(&self, what: Seen<'_>) -> Cause {
        let m = &self.shared.metrics;
        match what {
            Seen::Acquire { algorithm, lock, req, clock, parent } => {
                // The root of this acquire's trace; without an exporter no span is built at all.
                let span = if telemetry::exporting() {
                    tracing::info_span!(
                        parent: None,
                        "lock.acquire",
                        lock = %lock,
                        algorithm = algorithm.as_str(),
                        node = self.me.get(),
                        fencing_token = tracing::field::Empty,
                        waited_ms = tracing::field::Empty,
                        outcome = tracing::field::Empty,
                    )
                } else {
                    tracing::Span::none()
                };
                if let Some(parent) = parent {
                    telemetry::set_parent_context(&span, parent);
                }
                let otel = telemetry::context_of(&span);
                let acquire = telemetry::trace_id_of(&span).unwrap_or_else(|| {
                    format!("{}-{:x}-{}", self.me.get(), self.incarnation.get() & 0xffff, req.get())
                });
                self.local("ACQUIRE", lock, algorithm, &acquire, clock, None);
                return Cause { acquire: Some(acquire), otel, span: Some(span) };
            }
            Seen::Answered { algorithm, outcome } => {
                m.acquire_outcomes.inc(OutcomeLabels { algorithm, outcome });
            }
            Seen::Received { from, env } => return self.received(from, env),
            Seen::Sent { to, msg, cause, trace } => self.sent(to, msg, cause, trace),
            Seen::Entered { algorithm, lock, acquire, token, waited, span, clock } => {
                span.record("fencing_token", token.get());
                span.record("waited_ms", waited.as_millis() as u64);
                if telemetry::exporting() && telemetry::context_of(span).is_some() {
                    let _enter =
                        tracing::debug_span!(parent: span, "lock.enter", fencing_token = token.get())
                            .entered();
                }
                self.local("ENTER", lock, algorithm, acquire, clock, Some(format!("token={}", token.get())));
            }
            Seen::Ended { algorithm, lock, acquire, outcome, waited, span, clock } => {
                let labels = OutcomeLabels { algorithm, outcome };
                m.acquire_duration.observe(labels, waited.as_secs_f64());
                m.acquire_outcomes.inc(labels);
                span.record("outcome", outcome.as_str());
                span.record("waited_ms", waited.as_millis() as u64);
                let kind = match outcome {
                    Outcome::Granted => {
                        m.grants.inc(AlgorithmLabel(algorithm));
                        None
                    }
                    Outcome::Abandoned => None,
                    Outcome::Timeout => Some("TIMEOUT"),
                    Outcome::Unavailable => Some("UNAVAILABLE"),
                    Outcome::Cancelled => Some("CANCELLED"),
                    Outcome::Shutdown => Some("SHUTDOWN"),
                    Outcome::Locked => Some("LOCKED"),
                };
                if let Some(kind) = kind {
                    self.local(kind, lock, algorithm, acquire, clock, None);
                }
            }
            Seen::Release { algorithm, lock, token, acquire, otel } => {
                let (otel, span) = match otel {
                    Some(parent) if telemetry::exporting() => {
                        let span = tracing::info_span!(
                            parent: None,
                            "lock.release",
                            lock = %lock,
                            algorithm = algorithm.as_str(),
                            node = self.me.get(),
                            fencing_token = token.get(),
                        );
                        telemetry::set_parent_context(&span, parent);
                        (telemetry::context_of(&span), Some(span))
                    }
                    _ => (None, None),
                };
                return Cause { acquire: Some(acquire.to_string()), otel, span };
            }
            Seen::LeaseEnded { algorithm, lock, acquire, held, expired, clock } => {
                if expired {
                    m.lease_expiries.inc(AlgorithmLabel(algorithm));
                }
                m.hold_duration.observe(AlgorithmLabel(algorithm), held.as_secs_f64());
                let detail = format!("held={}ms", held.as_millis());
                self.local("EXIT", lock, algorithm, acquire, clock, Some(detail));
            }
            Seen::Dropped { reason } => m.bad_frames.inc(ReasonLabel(reason)),
            Seen::Status(s) => {
                m.ready.set((), if s.ready { 1.0 } else { 0.0 });
                for &(peer, up) in &s.connected {
                    m.peer_connected.set(PeerLabel(peer), if up { 1.0 } else { 0.0 });
                }
                for &(algorithm, waiting, clock) in &s.cores {
                    m.waiting_requests.set(AlgorithmLabel(algorithm), waiting as f64);
                    m.lamport_clock.set(AlgorithmLabel(algorithm), clock.get() as f64);
                }
                m.held_leases.set((), s.held_leases as f64);
                for &(peer, n) in &s.reconnects {
                    m.peer_reconnects.set(PeerLabel(peer), n);
                }
                for &(reason, n) in &s.refused {
                    m.refused_connections.set(ReasonLabel(reason), n);
                }
                let (sent, received) = s.keepalives;
                m.link_frames.set(LinkFrameLabels { kind: "keepalive", direction: "sent" }, sent);
                m.link_frames.set(LinkFrameLabels { kind: "keepalive", direction: "received" }, received);
            }
        }
        Cause::default()
    }

    /// Counts a received message and builds the cause of its handling: a `peer.recv` span whose parent is the
    /// sender's span (from the message's trace map), in the sender's acquire.
    fn received(&self, from: NodeId, env: &Envelope<PeerMsg>) -> Cause {
        let msg = &env.body;
        let m = &self.shared.metrics;
        m.messages_received.inc(MessageLabels { algorithm: msg.algorithm(), kind: msg.kind(), peer: from });
        if msg.is_redirect() {
            m.redirects.inc(());
        }
        let acquire = env.trace.get(ACQUIRE_KEY).filter(|a| a.len() <= MAX_ACQUIRE_ID).cloned();
        self.message(Direction::Received, from, msg, acquire.as_deref());
        let (otel, span) = if telemetry::exporting() {
            let span = tracing::debug_span!(
                parent: None,
                "peer.recv",
                "msg.type" = msg.kind(),
                "lamport.ts" = msg.timestamp().map_or(env.ts.get(), |t| t.get()),
                from = from.get(),
                node = self.me.get(),
                lock = %msg.lock(),
                algorithm = msg.algorithm().as_str(),
                "msg.detail" = msg.flow_detail(),
            );
            telemetry::set_parent(&span, &env.trace);
            (telemetry::context_of(&span), Some(span))
        } else {
            (None, None)
        };
        Cause { acquire, otel, span }
    }

    /// Puts the acquire id and (when exporting) a `peer.send` span's context into a leaving message's trace
    /// map, records the message in the flow log and counts it.
    fn sent(&self, to: NodeId, msg: &PeerMsg, cause: &Cause, trace: &mut BTreeMap<String, String>) {
        if let Some(a) = &cause.acquire {
            trace.insert(ACQUIRE_KEY.to_string(), a.clone());
        }
        if telemetry::exporting()
            && let Some(parent) = &cause.otel
        {
            let span = tracing::debug_span!(
                parent: None,
                "peer.send",
                "msg.type" = msg.kind(),
                "lamport.ts" = msg.timestamp().map(|t| t.get()),
                to = to.get(),
                node = self.me.get(),
                lock = %msg.lock(),
                algorithm = msg.algorithm().as_str(),
                "msg.detail" = msg.flow_detail(),
            );
            telemetry::set_parent_context(&span, parent);
            trace.extend(telemetry::inject(&span));
        }
        self.message(Direction::Sent, to, msg, cause.acquire.as_deref());
        let labels = MessageLabels { algorithm: msg.algorithm(), kind: msg.kind(), peer: to };
        self.shared.metrics.messages_sent.inc(labels);
    }

    /// Records a local event (ACQUIRE, ENTER, EXIT, TIMEOUT, …) of an acquire in the flow log.
    fn local(
        &self,
        kind: &'static str,
        lock: &str,
        algorithm: Algorithm,
        acquire: &str,
        clock: LamportTs,
        detail: Option<String>,
    ) {
        self.shared.push_flow(FlowRecord {
            at_unix_ms: unix_ms(),
            node: self.me.get(),
            direction: Direction::Local,
            peer: None,
            kind: Cow::Borrowed(kind),
            lock: lock.to_string(),
            algorithm: algorithm.as_str().into(),
            lamport_ts: Some(clock.get()),
            trace_id: Some(acquire.to_string()),
            detail,
        });
    }

    /// Records a peer message (sent or received) in the flow log.
    fn message(&self, direction: Direction, peer: NodeId, msg: &PeerMsg, acquire: Option<&str>) {
        self.shared.push_flow(FlowRecord {
            at_unix_ms: unix_ms(),
            node: self.me.get(),
            direction,
            peer: Some(peer.get()),
            kind: msg.kind().into(),
            lock: msg.lock().to_string(),
            algorithm: msg.algorithm().as_str().into(),
            lamport_ts: msg.timestamp().map(|t| t.get()),
            trace_id: acquire.map(str::to_string),
            detail: msg.flow_detail(),
        });
    }
}
