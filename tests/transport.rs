//! Black-box tests of the peer transport over real loopback TCP.
//!
//! Each test binds its own 127.0.0.x addresses (port 0), so tests run in parallel without colliding. What is
//! checked is what Lamport 1978 assumes of the network: every message arrives exactly once and in order per
//! pair, across dropped connections; plus restart detection (Hello before data) and handshake refusals.

use dmutex::algo::{Algorithm, Incarnation, LamportTs, NodeId};
use dmutex::net::transport::{ClockFn, Inbound, Transport, TransportConfig, TransportHandle};
use dmutex::net::wire::{self, Envelope, Frame, FrameReader, Nonce, PROTOCOL_VERSION, RefuseReason};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, copy_bidirectional};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

type Rx = mpsc::UnboundedReceiver<Inbound<u64>>;
type Handle = TransportHandle<u64>;

const WAIT: Duration = Duration::from_secs(10);
/// Node ids and incarnations the tests match on (a `const` can stand in a pattern, a call cannot).
const NODE_1: NodeId = NodeId::new(1);
const NODE_2: NodeId = NodeId::new(2);
const FIRST_RUN: Incarnation = Incarnation::new(1);
const SECOND_RUN: Incarnation = Incarnation::new(2);

async fn bind(ip: &str) -> TcpListener {
    // `RUST_LOG=dmutex=debug cargo test --test transport -- --nocapture` shows the transport's logs.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    TcpListener::bind((ip, 0)).await.expect("bind loopback address")
}

fn clock() -> ClockFn {
    Arc::new(|| LamportTs::new(1))
}

fn config(me: u16, incarnation: u64, peers: &[SocketAddr]) -> TransportConfig {
    let mut cfg = TransportConfig::new(
        NodeId::new(me),
        Incarnation::new(incarnation),
        "test",
        peers.iter().map(|a| a.to_string()).collect(),
    );
    cfg.backoff_min = Duration::from_millis(10);
    cfg.backoff_max = Duration::from_millis(200);
    cfg.handshake_timeout = Duration::from_secs(2);
    cfg
}

fn env(n: u64) -> Envelope<u64> {
    Envelope::new(LamportTs::new(n), n)
}

/// Everything one transport emitted, in order, so tests can wait on conditions over the whole history.
struct Log {
    rx: Rx,
    seen: Vec<Inbound<u64>>,
}

impl Log {
    fn new(rx: Rx) -> Self {
        Log { rx, seen: Vec::new() }
    }

    /// Waits until `done(history)` holds.
    async fn until(&mut self, what: &str, done: impl Fn(&[Inbound<u64>]) -> bool) {
        let r = timeout(WAIT, async {
            while !done(&self.seen) {
                let ev = self.rx.recv().await.expect("transport stopped");
                self.seen.push(ev);
            }
        })
        .await;
        if r.is_err() {
            panic!(
                "timed out waiting for {what}; saw {} events, last {:?}",
                self.seen.len(),
                self.seen.last()
            );
        }
    }

    /// Waits for `count` messages from `from` (any incarnation) and returns all of them.
    async fn messages(&mut self, from: u16, count: usize) -> Vec<u64> {
        self.until(&format!("{count} messages from {from}"), |s| messages_from(s, from).len() >= count).await;
        messages_from(&self.seen, from)
    }

    /// Drains what is already queued.
    fn drain(&mut self) {
        while let Ok(ev) = self.rx.try_recv() {
            self.seen.push(ev);
        }
    }

    /// Every message was preceded by a Hello from its sender's incarnation.
    fn assert_hello_first(&self) {
        for (i, ev) in self.seen.iter().enumerate() {
            if let Inbound::Message { from, incarnation, .. } = ev {
                let hello = self.seen[..i].iter().any(|e| {
                    matches!(e, Inbound::Hello { peer, incarnation: inc, .. } if peer == from && inc == incarnation)
                });
                assert!(hello, "message {i} from {from} ({incarnation:?}) before its Hello");
            }
        }
    }
}

fn messages_from(seen: &[Inbound<u64>], node: u16) -> Vec<u64> {
    seen.iter()
        .filter_map(|e| match e {
            Inbound::Message { from, env, .. } if *from == NodeId::new(node) => Some(env.body),
            _ => None,
        })
        .collect()
}

fn has(seen: &[Inbound<u64>], f: impl Fn(&Inbound<u64>) -> bool) -> bool {
    seen.iter().any(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_everything_in_order_exactly_once() {
    let listeners = [bind("127.0.0.11").await, bind("127.0.0.12").await, bind("127.0.0.13").await];
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let mut nodes: Vec<(Handle, Log)> = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let (h, rx) = Transport::start(config(i as u16, 1, &addrs), l, clock());
        nodes.push((h, Log::new(rx)));
    }
    const N: u64 = 500;
    for n in 0..N {
        for (i, (h, _)) in nodes.iter().enumerate() {
            for j in 0..3u16 {
                if usize::from(j) != i {
                    h.send(NodeId::new(j), env(n)).unwrap();
                }
            }
        }
    }
    for (i, (_, log)) in nodes.iter_mut().enumerate() {
        for j in (0..3u16).filter(|j| usize::from(*j) != i) {
            let got = log.messages(j, N as usize).await;
            assert_eq!(got, (0..N).collect::<Vec<_>>(), "node {i} from node {j}");
        }
    }
    // Nothing extra arrives.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (i, (h, log)) in nodes.iter_mut().enumerate() {
        log.drain();
        for j in (0..3u16).filter(|j| usize::from(*j) != i) {
            assert_eq!(messages_from(&log.seen, j).len(), N as usize);
            let hellos =
                log.seen.iter().filter(|e| matches!(e, Inbound::Hello { peer, .. } if peer.get() == j));
            assert_eq!(hellos.count(), 1, "one Hello per peer incarnation");
        }
        log.assert_hello_first();
        let status = h.status();
        assert_eq!(status.len(), 2);
        assert!(
            status.iter().all(|p| p.connected && p.incarnation == Some(Incarnation::new(1))),
            "{status:?}"
        );
        assert_eq!(h.counters().duplicates_dropped, 0);
        assert!(h.send(NodeId::new(9), env(0)).is_err());
        assert!(h.send(NodeId::new(i as u16), env(0)).is_err());
    }
    for (h, _) in &nodes {
        h.shutdown().await;
    }
}

/// A TCP proxy that can drop every connection at once and refuse new ones for a while.
struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<u64>,
    blocked: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(ip: &str, upstream: SocketAddr) -> Proxy {
        let listener = bind(ip).await;
        let addr = listener.local_addr().unwrap();
        let (cut, _) = watch::channel(0u64);
        let blocked = Arc::new(AtomicBool::new(false));
        let (cut2, blocked2) = (cut.clone(), blocked.clone());
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if blocked2.load(Ordering::SeqCst) {
                    continue; // dropped: the dialer sees a closed connection
                }
                let mut cut_rx = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        _ = copy_bidirectional(&mut down, &mut up) => {}
                        _ = cut_rx.changed() => {} // both sockets dropped mid-stream
                    }
                });
            }
        });
        Proxy { addr, cut, blocked }
    }

    fn cut(&self, block: bool) {
        self.blocked.store(block, Ordering::SeqCst);
        self.cut.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.blocked.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_loses_and_duplicates_nothing() {
    let (la, lb) = (bind("127.0.0.21").await, bind("127.0.0.22").await);
    let (a_addr, b_addr) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let proxy = Proxy::start("127.0.0.23", b_addr).await;
    // A reaches B only through the proxy; B dials A directly.
    let (a, _a_rx) = Transport::start::<u64>(config(0, 1, &[a_addr, proxy.addr]), la, clock());
    let (b, mut b_rx) = Transport::start::<u64>(config(1, 1, &[a_addr, b_addr]), lb, clock());

    const N: u64 = 6000;
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            for n in 0..N {
                a.send(NodeId::new(1), env(n)).unwrap();
                if n % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    let mut got = Vec::new();
    let mut cuts = 0;
    timeout(WAIT, async {
        while got.len() < N as usize {
            if let Inbound::Message { from, env, .. } = b_rx.recv().await.unwrap() {
                assert_eq!(from, NodeId::new(0));
                got.push(env.body);
                if (got.len() == 1500 || got.len() == 3500) && cuts < 2 {
                    cuts += 1;
                    proxy.cut(cuts == 1);
                    if cuts == 1 {
                        let p = proxy.blocked.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(150)).await;
                            p.store(false, Ordering::SeqCst);
                        });
                    }
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out after {} messages", got.len()));
    proxy.restore();
    sender.await.unwrap();
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "every message exactly once, in order");
    // The last cut may have landed after everything was through; the link still comes back.
    let relinked = timeout(WAIT, async {
        while !a.status().first().is_some_and(|p| p.connected && p.reconnects >= 2) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    assert!(relinked.await.is_ok(), "the link reconnected after each cut: {:?}", a.status());
    eprintln!("after cuts: {:?}", a.counters());
    tokio::time::sleep(Duration::from_millis(50)).await;
    while let Ok(ev) = b_rx.try_recv() {
        assert!(!matches!(ev, Inbound::Message { .. }), "unexpected extra {ev:?}");
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_says_hello_with_its_new_incarnation_first() {
    let (la, lb) = (bind("127.0.0.31").await, bind("127.0.0.32").await);
    let addrs = [la.local_addr().unwrap(), lb.local_addr().unwrap()];
    let (a, a_rx) = Transport::start::<u64>(config(0, 1, &addrs), la, clock());
    let (b, b_rx) = Transport::start::<u64>(config(1, 1, &addrs), lb, clock());
    let (mut a_log, mut b_log) = (Log::new(a_rx), Log::new(b_rx));
    b.send(NodeId::new(0), env(1)).unwrap();
    assert_eq!(a_log.messages(1, 1).await, vec![1]);
    a.send(NodeId::new(1), env(2)).unwrap();
    assert_eq!(b_log.messages(0, 1).await, vec![2]);
    a_log.until("connected", |s| has(s, |e| matches!(e, Inbound::Connected { peer: NODE_1 }))).await;

    // Graceful stop: A hears Bye and marks B disconnected promptly.
    let t0 = tokio::time::Instant::now();
    b.shutdown().await;
    a_log.until("disconnected", |s| has(s, |e| matches!(e, Inbound::Disconnected { peer: NODE_1 }))).await;
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert!(!a.status()[0].connected);

    // Sent to the old incarnation while it is down: must not reach the new one.
    a.send(NodeId::new(1), env(99)).unwrap();

    let lb2 = TcpListener::bind(addrs[1]).await.expect("rebind the same address");
    let (b2, b2_rx) = Transport::start::<u64>(config(1, 2, &addrs), lb2, clock());
    let mut b2_log = Log::new(b2_rx);
    b2.send(NodeId::new(0), env(10)).unwrap();
    b2.send(NodeId::new(0), env(11)).unwrap();
    assert_eq!(a_log.messages(1, 3).await, vec![1, 10, 11]);
    a_log.assert_hello_first();
    let hellos: Vec<_> = a_log.seen.iter().filter(|e| matches!(e, Inbound::Hello { .. })).collect();
    assert!(
        matches!(
            hellos[..],
            [
                Inbound::Hello { peer: NODE_1, incarnation: FIRST_RUN, .. },
                Inbound::Hello { peer: NODE_1, incarnation: SECOND_RUN, .. }
            ]
        ),
        "{hellos:?}"
    );

    // After seeing the new incarnation, A's messages go to it, numbered afresh.
    a.send(NodeId::new(1), env(3)).unwrap();
    assert_eq!(b2_log.messages(0, 1).await, vec![3], "the message for the old incarnation was discarded");
    tokio::time::sleep(Duration::from_millis(100)).await;
    b2_log.drain();
    assert_eq!(messages_from(&b2_log.seen, 0), vec![3]);
    assert!(a.counters().discarded_on_restart >= 1);
    assert_eq!(a.status()[0].incarnation, Some(Incarnation::new(2)));
    a.shutdown().await;
    b2.shutdown().await;
}

/// Connects, reads the Challenge, sends what `make` builds from its nonce, and returns the answer.
async fn raw_exchange(addr: SocketAddr, make: impl FnOnce(Nonce) -> Vec<u8>) -> Option<Frame<u64>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut reader = FrameReader::new(r, wire::DEFAULT_MAX_FRAME);
    let Some(Frame::Challenge { nonce }) = reader.read_frame::<u64>().await.unwrap() else {
        panic!("the acceptor must speak first with a Challenge");
    };
    let bytes = make(nonce);
    if !bytes.is_empty() {
        w.write_all(&bytes).await.unwrap();
    }
    timeout(WAIT, reader.read_frame::<u64>()).await.expect("no answer").ok().flatten()
}

struct HelloSpec<'a> {
    version: u16,
    cluster: &'a str,
    algorithm: Algorithm,
    node: u16,
    secret: Option<&'a str>,
}

fn hello(spec: HelloSpec<'_>) -> impl FnOnce(Nonce) -> Vec<u8> + '_ {
    move |challenge| {
        let nonce = wire::fresh_nonce();
        let (node, inc, clock) = (NodeId::new(spec.node), Incarnation::new(5), LamportTs::new(1));
        let all = Algorithm::ALL.to_vec();
        let t = wire::hello_transcript(
            spec.version,
            spec.cluster,
            spec.algorithm,
            &all,
            node,
            inc,
            clock,
            &challenge,
            &nonce,
        );
        let frame: Frame<u64> = Frame::Hello {
            version: spec.version,
            cluster: spec.cluster.to_string(),
            algorithm: spec.algorithm,
            algorithms: all,
            node,
            incarnation: inc,
            clock,
            nonce,
            mac: wire::mac(spec.secret.map(str::as_bytes), &t),
        };
        wire::encode_frame(&frame, wire::DEFAULT_MAX_FRAME).unwrap()
    }
}

fn refused(reason: RefuseReason) -> Option<Frame<u64>> {
    Some(Frame::Refuse { reason })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_handshakes_are_refused_and_counted_and_a_good_peer_still_works() {
    let (la, lb) = (bind("127.0.0.41").await, bind("127.0.0.42").await);
    let addrs = [la.local_addr().unwrap(), lb.local_addr().unwrap()];
    let mut cfg = config(0, 1, &addrs);
    cfg.handshake_timeout = Duration::from_millis(300);
    let (a, a_rx) = Transport::start::<u64>(cfg, la, clock());
    let mut a_log = Log::new(a_rx);
    let at = addrs[0];
    let ok = |node| HelloSpec {
        version: PROTOCOL_VERSION,
        cluster: "test",
        algorithm: Algorithm::Lamport,
        node,
        secret: None,
    };

    // Garbage with a plausible length prefix.
    let garbage =
        raw_exchange(at, |_| vec![0, 0, 0, 8, 0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff, 0xff]).await;
    assert_eq!(garbage, refused(RefuseReason::Malformed));
    // HTTP on the peer port: its first four bytes read as a 1.2 GB length.
    assert_eq!(
        raw_exchange(at, |_| b"GET / HTTP/1.1\r\n\r\n".to_vec()).await,
        refused(RefuseReason::Oversized)
    );
    assert_eq!(
        raw_exchange(at, hello(HelloSpec { version: 99, ..ok(1) })).await,
        refused(RefuseReason::BadVersion)
    );
    assert_eq!(
        raw_exchange(at, hello(HelloSpec { cluster: "other", ..ok(1) })).await,
        refused(RefuseReason::WrongCluster)
    );
    assert_eq!(raw_exchange(at, hello(ok(7))).await, refused(RefuseReason::UnknownNode));
    assert_eq!(raw_exchange(at, hello(ok(0))).await, refused(RefuseReason::SelfId));
    // Another frame instead of Hello.
    let ack = |_| wire::encode_frame(&Frame::<u64>::Ack { seq: 1 }, 1024).unwrap();
    assert_eq!(raw_exchange(at, ack).await, refused(RefuseReason::Malformed));
    // Silence.
    assert_eq!(raw_exchange(at, |_| Vec::new()).await, refused(RefuseReason::Timeout));

    let c = a.counters();
    let expect: BTreeMap<&str, u64> = [
        ("malformed", 2),
        ("oversized", 1),
        ("bad_version", 1),
        ("wrong_cluster", 1),
        ("unknown_node", 1),
        ("self_id", 1),
        ("timeout", 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(c.refused, expect);
    a_log.drain();
    let first = a_log.seen.iter().find(|e| matches!(e, Inbound::Refused { .. }));
    assert!(matches!(first, Some(Inbound::Refused { reason: RefuseReason::Malformed, .. })), "{first:?}");

    // A good peer still works, both ways.
    let (b, b_rx) = Transport::start::<u64>(config(1, 1, &addrs), lb, clock());
    let mut b_log = Log::new(b_rx);
    b.send(NodeId::new(0), env(7)).unwrap();
    a.send(NodeId::new(1), env(8)).unwrap();
    assert_eq!(a_log.messages(1, 1).await, vec![7]);
    assert_eq!(b_log.messages(0, 1).await, vec![8]);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_must_match() {
    let (la, lb, lc) = (bind("127.0.0.51").await, bind("127.0.0.52").await, bind("127.0.0.53").await);
    let addrs = [la.local_addr().unwrap(), lb.local_addr().unwrap(), lc.local_addr().unwrap()];
    let with_secret = |me, s: &str| {
        let mut cfg = config(me, 1, &addrs);
        cfg.secret = Some(s.to_string());
        cfg
    };
    let (a, a_rx) = Transport::start::<u64>(with_secret(0, "right"), la, clock());
    let mut a_log = Log::new(a_rx);
    let at = addrs[0];
    let spec = |secret| HelloSpec {
        version: PROTOCOL_VERSION,
        cluster: "test",
        algorithm: Algorithm::Lamport,
        node: 1,
        secret,
    };
    assert_eq!(raw_exchange(at, hello(spec(None))).await, refused(RefuseReason::BadSecret));
    assert_eq!(raw_exchange(at, hello(spec(Some("wrong")))).await, refused(RefuseReason::BadSecret));
    assert_eq!(a.counters().refused.get("bad_secret"), Some(&2));

    // A node with the right secret links up; one with a wrong secret never does.
    let (b, b_rx) = Transport::start::<u64>(with_secret(1, "right"), lb, clock());
    let mut b_log = Log::new(b_rx);
    let (c, _c_rx) = Transport::start::<u64>(with_secret(2, "wrong"), lc, clock());
    b.send(NodeId::new(0), env(1)).unwrap();
    a.send(NodeId::new(1), env(2)).unwrap();
    c.send(NodeId::new(0), env(3)).unwrap();
    assert_eq!(a_log.messages(1, 1).await, vec![1]);
    assert_eq!(b_log.messages(0, 1).await, vec![2]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    a_log.drain();
    assert!(!has(&a_log.seen, |e| matches!(
        e,
        Inbound::Message { from: NODE_2, .. } | Inbound::Hello { peer: NODE_2, .. }
    )));
    assert!(a.counters().refused.get("bad_secret").copied().unwrap_or(0) >= 3);
    assert!(!c.status()[0].connected);
    assert!(c.counters().refused_by_peer.get("bad_secret").copied().unwrap_or(0) >= 1);
    for h in [&a, &b, &c] {
        h.shutdown().await;
    }
}

/// A message addressed to a peer's *new* incarnation before this transport has seen that incarnation's
/// handshake (a core can learn of a restart from a third node) reaches it; one addressed to the old
/// incarnation, queued at the same time, does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_addressed_to_the_new_incarnation_survives_the_restart_handshake() {
    let (la, lb) = (bind("127.0.0.61").await, bind("127.0.0.62").await);
    let addrs = [la.local_addr().unwrap(), lb.local_addr().unwrap()];
    let (a, a_rx) = Transport::start::<u64>(config(0, 1, &addrs), la, clock());
    let (b, b_rx) = Transport::start::<u64>(config(1, 1, &addrs), lb, clock());
    let (mut a_log, mut b_log) = (Log::new(a_rx), Log::new(b_rx));
    a.send(NodeId::new(1), env(1)).unwrap();
    assert_eq!(b_log.messages(0, 1).await, vec![1]);
    b.shutdown().await;
    a_log.until("disconnected", |s| has(s, |e| matches!(e, Inbound::Disconnected { peer: NODE_1 }))).await;

    let addressed = |n, inc| Envelope { to_incarnation: Some(Incarnation::new(inc)), ..env(n) };
    a.send(NodeId::new(1), addressed(20, 1)).unwrap();
    a.send(NodeId::new(1), addressed(21, 2)).unwrap();
    let lb2 = TcpListener::bind(addrs[1]).await.expect("rebind the same address");
    let (b2, b2_rx) = Transport::start::<u64>(config(1, 2, &addrs), lb2, clock());
    let mut b2_log = Log::new(b2_rx);
    assert_eq!(b2_log.messages(0, 1).await, vec![21]);
    a.send(NodeId::new(1), addressed(22, 2)).unwrap();
    assert_eq!(b2_log.messages(0, 2).await, vec![21, 22]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    b2_log.drain();
    assert_eq!(
        messages_from(&b2_log.seen, 0),
        vec![21, 22],
        "the frame for the old incarnation was discarded"
    );
    b2_log.assert_hello_first();
    assert!(a.counters().discarded_on_restart >= 1);
    a.shutdown().await;
    b2.shutdown().await;
}

/// Two nodes whose default algorithms differ never connect: each refuses the other's Hello (a configuration
/// mismatch like another cluster name), counts it under `algorithm_mismatch`, and reports it as `Refused`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_different_default_algorithms_refuse_each_other() {
    let (la, lb) = (bind("127.0.0.61").await, bind("127.0.0.62").await);
    let addrs = [la.local_addr().unwrap(), lb.local_addr().unwrap()];
    let mut cfg_b = config(1, 1, &addrs);
    cfg_b.algorithm = Algorithm::ProbableOwner;
    let (a, a_rx) = Transport::start::<u64>(config(0, 1, &addrs), la, clock());
    let (b, b_rx) = Transport::start::<u64>(cfg_b, lb, clock());
    let (mut a_log, mut b_log) = (Log::new(a_rx), Log::new(b_rx));
    let refused = |seen: &[Inbound<u64>]| {
        seen.iter().any(|e| matches!(e, Inbound::Refused { reason: RefuseReason::AlgorithmMismatch, .. }))
    };
    a_log.until("a refuses b", refused).await;
    b_log.until("b refuses a", refused).await;
    // Give the links time for a few more attempts: still nothing gets through.
    tokio::time::sleep(Duration::from_millis(500)).await;
    a_log.drain();
    b_log.drain();
    for (name, t, log) in [("a", &a, &a_log), ("b", &b, &b_log)] {
        let connected = |e: &Inbound<u64>| matches!(e, Inbound::Connected { .. } | Inbound::Hello { .. });
        assert!(!log.seen.iter().any(connected), "{name} connected: {:?}", log.seen);
        assert!(t.status().iter().all(|p| !p.connected), "{name}: {:?}", t.status());
        let c = t.counters();
        assert!(c.refused.get("algorithm_mismatch").is_some_and(|&n| n >= 1), "{name}: {:?}", c.refused);
        assert!(c.refused_by_peer.get("algorithm_mismatch").is_some_and(|&n| n >= 1), "{name}: {c:?}");
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// A TCP proxy that can go silent: it keeps every connection open but forwards nothing (a peer that hangs,
/// or a network that drops everything without a reset).
struct SilentProxy {
    addr: SocketAddr,
    silent: Arc<AtomicBool>,
}

impl SilentProxy {
    async fn start(ip: &str, upstream: SocketAddr) -> SilentProxy {
        let listener = bind(ip).await;
        let addr = listener.local_addr().unwrap();
        let silent = Arc::new(AtomicBool::new(false));
        let flag = silent.clone();
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = TcpStream::connect(upstream).await else { continue };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(dr, uw, flag.clone()));
                tokio::spawn(pump(ur, dw, flag.clone()));
            }
        });
        SilentProxy { addr, silent }
    }
}

/// Copies `from` to `to`, discarding what arrives while `silent` is set.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || (!silent.load(Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err()) {
            break;
        }
    }
}

/// An idle link carries keepalives (counted apart, never delivered), so `last_seen` stays fresh; when the
/// connection goes silent, the dialer notices within `dead_after` and reconnects once it works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_links_keep_alive_and_a_silent_connection_is_noticed() {
    let (la, lb) = (bind("127.0.0.71").await, bind("127.0.0.72").await);
    let (a_addr, b_addr) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let proxy = SilentProxy::start("127.0.0.73", b_addr).await;
    let fast = |mut cfg: TransportConfig| {
        cfg.keepalive = Duration::from_millis(100);
        cfg.handshake_timeout = Duration::from_millis(200);
        cfg
    };
    let a_cfg = fast(config(0, 1, &[a_addr, proxy.addr]));
    assert_eq!(a_cfg.dead_after(), Duration::from_millis(400));
    let (a, a_rx) = Transport::start::<u64>(a_cfg, la, clock());
    let (b, b_rx) = Transport::start::<u64>(fast(config(1, 1, &[a_addr, b_addr])), lb, clock());
    let (mut a_log, mut b_log) = (Log::new(a_rx), Log::new(b_rx));
    let connected = |s: &[Inbound<u64>]| has(s, |e| matches!(e, Inbound::Connected { .. }));
    a_log.until("a connected", connected).await;
    b_log.until("b connected", connected).await;

    // Idle for ten keepalive intervals: keepalives both ways, a fresh last_seen, nothing delivered.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for (name, t, log) in [("a", &a, &mut a_log), ("b", &b, &mut b_log)] {
        log.drain();
        assert!(!has(&log.seen, |e| matches!(e, Inbound::Message { .. })), "{name}: {:?}", log.seen);
        let c = t.counters();
        assert!(c.keepalives_sent >= 5 && c.keepalives_received >= 5, "{name}: {c:?}");
        let peer = &t.status()[0];
        assert!(peer.connected, "{name}: {peer:?}");
        let ago = peer.last_seen.and_then(|t| t.elapsed().ok()).expect("a last_seen");
        assert!(ago < Duration::from_millis(300), "{name}: last frame {ago:?} ago on an idle link");
    }

    // The connection A dialled goes silent (no FIN, no RST): A notices and drops its link.
    proxy.silent.store(true, Ordering::SeqCst);
    let down = timeout(Duration::from_secs(3), async {
        while a.status()[0].connected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(down.await.is_ok(), "a silent connection was not noticed: {:?}", a.status());
    a_log.until("a disconnected", |s| has(s, |e| matches!(e, Inbound::Disconnected { .. }))).await;
    proxy.silent.store(false, Ordering::SeqCst);
    let up = timeout(WAIT, async {
        while !a.status()[0].connected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(up.await.is_ok(), "the link did not come back: {:?}", a.status());
    a.shutdown().await;
    b.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------
// The dynamic peer table: add_peer, remove_peer, unknown ids, start_shared.

/// Polls `cond` every 10 ms until it holds or [`WAIT`] passes.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let r = timeout(WAIT, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    assert!(r.await.is_ok(), "timed out waiting for {what}");
}

fn refused_count(h: &Handle, key: &str) -> u64 {
    h.counters().refused.get(key).copied().unwrap_or(0)
}

/// Whether an event is about `peer` (Refused and BadFrame name no peer id).
fn about(e: &Inbound<u64>, node: NodeId) -> bool {
    match e {
        Inbound::Hello { peer, .. } | Inbound::Connected { peer } | Inbound::Disconnected { peer } => {
            *peer == node
        }
        Inbound::Message { from, .. } => *from == node,
        Inbound::Refused { .. } | Inbound::BadFrame { .. } => false,
    }
}

/// Two nodes whose ids were never configured (7 and 9, no peers at start) find each other through add_peer,
/// and messages flow both ways; adding again or adding self changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_added_at_runtime_with_unconfigured_ids_talk_both_ways() {
    let (la, lb) = (bind("127.0.0.81").await, bind("127.0.0.82").await);
    let (a_addr, b_addr) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let (n7, n9) = (NodeId::new(7), NodeId::new(9));
    let (a, a_rx) = Transport::start::<u64>(config(7, 1, &[]), la, clock());
    let (b, b_rx) = Transport::start::<u64>(config(9, 1, &[]), lb, clock());
    let (mut a_log, mut b_log) = (Log::new(a_rx), Log::new(b_rx));
    assert!(a.status().is_empty());
    assert!(
        matches!(a.send(n9, env(0)), Err(dmutex::net::transport::TransportError::UnknownPeer(p)) if p == n9)
    );

    a.add_peer(n9, b_addr.to_string());
    a.add_peer(n9, b_addr.to_string());
    a.add_peer(n7, a_addr.to_string());
    assert_eq!(a.link_tasks(), 1, "one link task per added peer, none for self");
    // Queued before B knows A: it waits (B refuses A's handshake as unknown until its own add_peer).
    a.send(n9, env(1)).unwrap();
    eventually("b refuses the unknown node 7", || refused_count(&b, "unknown_node") >= 1).await;
    b.add_peer(n7, a_addr.to_string());
    b.send(n7, env(2)).unwrap();
    assert_eq!(b_log.messages(7, 1).await, vec![1]);
    assert_eq!(a_log.messages(9, 1).await, vec![2]);
    for n in 3..50 {
        a.send(n9, env(n)).unwrap();
        b.send(n7, env(n)).unwrap();
    }
    let rest: Vec<u64> = std::iter::once(1).chain(3..50).collect();
    assert_eq!(b_log.messages(7, rest.len()).await, rest);
    let rest: Vec<u64> = std::iter::once(2).chain(3..50).collect();
    assert_eq!(a_log.messages(9, rest.len()).await, rest);
    a_log.assert_hello_first();
    b_log.assert_hello_first();
    let status = a.status();
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!((status[0].node, status[0].addr.as_str()), (n9, b_addr.to_string().as_str()));
    assert_eq!(status[0].incarnation, Some(FIRST_RUN));
    a.shutdown().await;
    b.shutdown().await;
    eventually("every link task ended", || a.link_tasks() == 0 && b.link_tasks() == 0).await;
}

/// After remove_peer: the other side sees Disconnected, sends to the removed id are UnknownPeer, its link task
/// ends, and the transport emits nothing more about it. Re-added, the same incarnation stays shut out (a
/// removed member comes back only as a new incarnation); a new incarnation of it is met as first contact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_peer_is_disconnected_forgotten_and_returns_only_as_a_new_incarnation() {
    let (la, lb) = (bind("127.0.0.91").await, bind("127.0.0.92").await);
    let addrs = [la.local_addr().unwrap(), lb.local_addr().unwrap()];
    let lb = Arc::new(lb);
    let (a, a_rx) = Transport::start::<u64>(config(0, 1, &addrs), la, clock());
    let (b, b_rx) = Transport::start_shared::<u64>(config(1, 1, &addrs), lb.clone(), clock());
    let (mut a_log, mut b_log) = (Log::new(a_rx), Log::new(b_rx));
    a.send(NODE_1, env(1)).unwrap();
    b.send(NodeId::new(0), env(2)).unwrap();
    assert_eq!(b_log.messages(0, 1).await, vec![1]);
    assert_eq!(a_log.messages(1, 1).await, vec![2]);
    b_log.until("b connected", |s| has(s, |e| matches!(e, Inbound::Connected { .. }))).await;
    assert_eq!(a.link_tasks(), 1);

    a.remove_peer(NODE_1);
    a.remove_peer(NODE_1); // idempotent
    let removed_at = {
        a_log.drain();
        a_log.seen.len()
    };
    assert!(matches!(a.send(NODE_1, env(3)), Err(dmutex::net::transport::TransportError::UnknownPeer(_))));
    assert!(a.status().is_empty());
    b_log
        .until("b sees a disconnect", |s| {
            has(s, |e| matches!(e, Inbound::Disconnected { peer } if peer.get() == 0))
        })
        .await;
    eventually("a's link task to b ends", || a.link_tasks() == 0).await;
    // B still sends to A: A refuses the id it no longer knows, and delivers nothing of it.
    b.send(NodeId::new(0), env(4)).unwrap();
    eventually("a refuses the removed node", || refused_count(&a, "unknown_node") >= 1).await;

    // Re-added while the same incarnation of B runs: refused both ways as stale.
    a.add_peer(NODE_1, addrs[1].to_string());
    a.send(NODE_1, env(5)).unwrap();
    eventually("a refuses b's old incarnation", || refused_count(&a, "stale_incarnation") >= 1).await;
    let abandoned = |h: &Handle| h.counters().refused_by_peer.values().sum::<u64>();
    eventually("a's dial to b's old incarnation fails", || abandoned(&a) >= 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    a_log.drain();
    let after: Vec<_> = a_log.seen[removed_at..].iter().filter(|e| about(e, NODE_1)).collect();
    assert!(after.is_empty(), "events about the removed incarnation: {after:?}");
    assert!(!a.status()[0].connected);

    // B restarts on the same listener: A meets the new incarnation, and what it queued for node 1 since the
    // re-add arrives there.
    b.shutdown().await;
    let (b2, b2_rx) = Transport::start_shared::<u64>(config(1, 2, &addrs), lb.clone(), clock());
    let mut b2_log = Log::new(b2_rx);
    b2.send(NodeId::new(0), env(6)).unwrap();
    assert_eq!(b2_log.messages(0, 1).await, vec![5]);
    a_log.until("b's second run", |s| messages_from(s, 1).contains(&6)).await;
    a_log.assert_hello_first();
    let hellos: Vec<_> =
        a_log.seen[removed_at..].iter().filter(|e| matches!(e, Inbound::Hello { .. })).collect();
    assert!(
        matches!(hellos[..], [Inbound::Hello { peer: NODE_1, incarnation: SECOND_RUN, .. }]),
        "{hellos:?}"
    );
    assert_eq!(messages_from(&a_log.seen, 1), vec![2, 6], "nothing B's first run sent after the removal");
    a.shutdown().await;
    b2.shutdown().await;
}

/// What was queued for a peer that never answered is dropped and counted when it is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_peer_drops_and_counts_what_was_queued_for_it() {
    let la = bind("127.0.0.95").await;
    let a_addr = la.local_addr().unwrap();
    // An address where nothing listens.
    let gone = bind("127.0.0.96").await.local_addr().unwrap();
    let (a, _a_rx) = Transport::start::<u64>(config(0, 1, &[a_addr, gone]), la, clock());
    for n in 0..3 {
        a.send(NODE_1, env(n)).unwrap();
    }
    a.remove_peer(NODE_1);
    assert_eq!(a.counters().dropped_on_remove, 3);
    eventually("the link task ends", || a.link_tasks() == 0).await;
    a.shutdown().await;
}

/// Without accept_unknown an unconfigured id is refused; with it, the id gets a slot without an address
/// (its messages are delivered, ours wait for add_peer), and at most `max_unknown` such slots exist: the
/// next unknown id is refused and counted as `unknown_node_limit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_accepted_only_when_allowed_and_within_the_bound() {
    let (l_strict, la, lb) =
        (bind("127.0.0.101").await, bind("127.0.0.102").await, bind("127.0.0.103").await);
    let (strict_addr, a_addr, b_addr) =
        (l_strict.local_addr().unwrap(), la.local_addr().unwrap(), lb.local_addr().unwrap());
    let ok = |node| HelloSpec {
        version: PROTOCOL_VERSION,
        cluster: "test",
        algorithm: Algorithm::Lamport,
        node,
        secret: None,
    };
    let (strict, _strict_rx) = Transport::start::<u64>(config(0, 1, &[strict_addr]), l_strict, clock());
    assert_eq!(raw_exchange(strict_addr, hello(ok(9))).await, refused(RefuseReason::UnknownNode));
    assert_eq!(refused_count(&strict, "unknown_node"), 1);
    assert!(strict.status().is_empty());

    let mut a_cfg = config(0, 1, &[a_addr]);
    a_cfg.accept_unknown = true;
    assert_eq!(a_cfg.max_unknown, 64);
    let (a, a_rx) = Transport::start::<u64>(a_cfg, la, clock());
    let mut a_log = Log::new(a_rx);
    // B (id 9) knows A; A has never heard of B.
    let (b, b_rx) = Transport::start::<u64>(config(9, 1, &[a_addr]), lb, clock());
    let mut b_log = Log::new(b_rx);
    b.send(NodeId::new(0), env(1)).unwrap();
    assert_eq!(a_log.messages(9, 1).await, vec![1]);
    a_log.assert_hello_first();
    let status = a.status();
    assert_eq!(status.len(), 1);
    assert_eq!((status[0].node.get(), status[0].addr.as_str()), (9, ""), "{status:?}");
    // Ours to it wait for its address.
    a.send(NodeId::new(9), env(2)).unwrap();
    assert_eq!(a.link_tasks(), 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    b_log.drain();
    assert!(messages_from(&b_log.seen, 0).is_empty());
    a.add_peer(NodeId::new(9), b_addr.to_string());
    assert_eq!(b_log.messages(0, 1).await, vec![2]);
    assert_eq!(a.status()[0].addr, b_addr.to_string());

    // B no longer counts as unknown: 64 more unknown ids fit, the 65th is refused.
    for i in 0..64 {
        let answer = raw_exchange(a_addr, hello(ok(100 + i))).await;
        assert!(matches!(answer, Some(Frame::Welcome { .. })), "unknown id {} refused: {answer:?}", 100 + i);
    }
    assert_eq!(raw_exchange(a_addr, hello(ok(164))).await, refused(RefuseReason::UnknownNode));
    assert_eq!(refused_count(&a, "unknown_node_limit"), 1);
    // A known id still gets in (a reconnect), and so does an unknown one once a place frees up.
    a.remove_peer(NodeId::new(100));
    assert!(matches!(raw_exchange(a_addr, hello(ok(164))).await, Some(Frame::Welcome { .. })));
    let ids: Vec<u16> = a.status().iter().map(|p| p.node.get()).collect();
    let expect: Vec<u16> = std::iter::once(9).chain(101..=164).collect();
    assert_eq!(ids, expect, "status lists every peer in id order");
    a_log.drain();
    assert!(has(&a_log.seen, |e| matches!(e, Inbound::Refused { reason: RefuseReason::UnknownNode, .. })));
    for h in [&strict, &a, &b] {
        h.shutdown().await;
    }
}

/// A transport shut down on a listener the caller keeps, and a new one started on it (the next incarnation
/// of this process): peers redial the same address and see a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_transport_on_the_same_shared_listener_is_seen_as_a_restart() {
    let (la, lb) = (bind("127.0.0.111").await, bind("127.0.0.112").await);
    let addrs = [la.local_addr().unwrap(), lb.local_addr().unwrap()];
    let lb = Arc::new(lb);
    let (a, a_rx) = Transport::start::<u64>(config(0, 1, &addrs), la, clock());
    let (b, b_rx) = Transport::start_shared::<u64>(config(1, 1, &addrs), lb.clone(), clock());
    let (mut a_log, mut b_log) = (Log::new(a_rx), Log::new(b_rx));
    b.send(NodeId::new(0), env(1)).unwrap();
    a.send(NODE_1, env(2)).unwrap();
    assert_eq!(a_log.messages(1, 1).await, vec![1]);
    assert_eq!(b_log.messages(0, 1).await, vec![2]);
    b.shutdown().await;
    a_log.until("disconnected", |s| has(s, |e| matches!(e, Inbound::Disconnected { peer: NODE_1 }))).await;

    let (b2, b2_rx) = Transport::start_shared::<u64>(config(1, 2, &addrs), lb, clock());
    let mut b2_log = Log::new(b2_rx);
    b2.send(NodeId::new(0), env(3)).unwrap();
    assert_eq!(a_log.messages(1, 2).await, vec![1, 3]);
    a.send(NODE_1, env(4)).unwrap();
    assert_eq!(b2_log.messages(0, 1).await, vec![4]);
    let hellos: Vec<_> = a_log.seen.iter().filter(|e| matches!(e, Inbound::Hello { .. })).collect();
    assert!(
        matches!(
            hellos[..],
            [
                Inbound::Hello { peer: NODE_1, incarnation: FIRST_RUN, .. },
                Inbound::Hello { peer: NODE_1, incarnation: SECOND_RUN, .. }
            ]
        ),
        "{hellos:?}"
    );
    eventually("a reconnected to the new incarnation", || {
        a.status()[0].connected && a.status()[0].incarnation == Some(SECOND_RUN)
    })
    .await;
    a.shutdown().await;
    b2.shutdown().await;
}

/// A peer that comes back after its outage grew our reconnect backoff gets our data as soon as it has dialed
/// us, not after the backoff: its handshake on our listener cuts the backoff short. (The nemesis suite found
/// the failure: a node restarted after a few seconds heard nothing from a member whose backoff had reached
/// seconds, suspected it and had it excluded.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_dials_us_is_redialled_at_once_whatever_the_backoff() {
    let (la, lb) = (bind("127.0.0.121").await, bind("127.0.0.122").await);
    let addrs = [la.local_addr().unwrap(), lb.local_addr().unwrap()];
    let lb = Arc::new(lb);
    let mut slow = config(0, 1, &addrs);
    // The growth a few seconds of outage give with the default 50 ms … 5 s, at once.
    slow.backoff_min = Duration::from_secs(20);
    slow.backoff_max = Duration::from_secs(20);
    let (a, a_rx) = Transport::start::<u64>(slow, la, clock());
    let (b, b_rx) = Transport::start_shared::<u64>(config(1, 1, &addrs), lb.clone(), clock());
    let (mut a_log, mut b_log) = (Log::new(a_rx), Log::new(b_rx));
    a.send(NODE_1, env(1)).unwrap();
    assert_eq!(b_log.messages(0, 1).await, vec![1]);
    b.shutdown().await;
    a_log.until("disconnected", |s| has(s, |e| matches!(e, Inbound::Disconnected { peer: NODE_1 }))).await;
    // A's link now sleeps 20 s before redialling. B comes back and dials A.
    let (b2, b2_rx) = Transport::start_shared::<u64>(config(1, 2, &addrs), lb, clock());
    let mut b2_log = Log::new(b2_rx);
    b2.send(NodeId::new(0), env(2)).unwrap();
    assert_eq!(a_log.messages(1, 1).await, vec![2]);
    let started = std::time::Instant::now();
    let mut to_new = env(3);
    to_new.to_incarnation = Some(SECOND_RUN);
    a.send(NODE_1, to_new).unwrap();
    assert_eq!(b2_log.messages(0, 1).await, vec![3]);
    assert!(started.elapsed() < Duration::from_secs(5), "A waited out its backoff: {:?}", started.elapsed());
    a.shutdown().await;
    b2.shutdown().await;
}
