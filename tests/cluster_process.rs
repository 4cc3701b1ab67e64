//! Black-box tests of real `dmutex node` processes, each node on its own 127.a.b.(i+1) address (a subnet per
//! test, so the tests run in parallel), talking to them only through HTTP, the peer port, signals and the
//! `dmutex lock` command — what a user or an operator sees.
//!
//! Holding intervals are measured on the client side and conservatively: a hold starts after the grant
//! arrived and ends before the release is sent, so an overlap of two such intervals is a real violation.
//! The algorithms' lock spaces are independent, so intervals are keyed `algorithm/lock`.

mod common;

use common::{ALGORITHMS, Api, Attempt, Cluster, Proxy, check_intervals, hold_once, poll};
use dmutex::algo::{Algorithm, Incarnation, LamportTs, NodeId};
use dmutex::net::wire::{self, Frame, PROTOCOL_VERSION, RefuseReason};
use dmutex::node::PeerMsg;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------------------
// 1. Concurrent clients over all nodes, every algorithm.

fn concurrent_clients(test: &str, n: usize) {
    const PER_ALGORITHM: usize = 10;
    const ITERATIONS: usize = 20;
    let c = Cluster::start(test, n, &[]);
    let api = c.api();
    let intervals = Mutex::new(Vec::new());
    let started = Instant::now();
    let attempts: Vec<Attempt> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for algorithm in ALGORITHMS {
            for j in 0..PER_ALGORITHM {
                let (api, intervals) = (&api, &intervals);
                handles.push(s.spawn(move || {
                    // Half the clients share one lock, the others spread over two more.
                    let lock = if j % 2 == 0 { "shared" } else { ["a", "b"][(j / 2) % 2] };
                    let node = j % n;
                    (0..ITERATIONS)
                        .map(|_| {
                            hold_once(api, node, lock, algorithm, 60_000, Duration::from_millis(2), intervals)
                        })
                        .collect::<Vec<_>>()
                }));
            }
        }
        handles.into_iter().flat_map(|h| h.join().expect("client thread")).collect()
    });
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| a.status != 200).collect();
    assert!(failed.is_empty(), "acquires failed: {failed:?}\n{}", c.logs());
    let iv = intervals.into_inner().unwrap();
    assert_eq!(iv.len(), 3 * PER_ALGORITHM * ITERATIONS);
    check_intervals(iv).unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    eprintln!(
        "{test}: {} entries by {} clients in {:?}",
        attempts.len(),
        3 * PER_ALGORITHM,
        started.elapsed()
    );
}

#[test]
fn concurrent_clients_3_nodes_every_algorithm() {
    concurrent_clients("clients3", 3);
}

#[test]
fn concurrent_clients_5_nodes_every_algorithm() {
    concurrent_clients("clients5", 5);
}

// ---------------------------------------------------------------------------------------------------------
// 2. Messages per entry.

fn sent_by_all(api: &Api, n: usize, algorithm: &str) -> u64 {
    (0..n).map(|i| api.sent(i, algorithm)).sum()
}

fn message_counts(test: &str, n: usize) {
    const ENTRIES: u64 = 12;
    let c = Cluster::start(test, n, &[]);
    let api = c.api();
    let per_entry = [("lamport", 3 * (n as u64 - 1)), ("ricart-agrawala", 2 * (n as u64 - 1))];
    for (algorithm, expected) in per_entry {
        let before = sent_by_all(&api, n, algorithm);
        for k in 0..ENTRIES {
            api.lock_once(k as usize % n, "counted", algorithm);
        }
        let sent = sent_by_all(&api, n, algorithm) - before;
        assert_eq!(
            sent,
            expected * ENTRIES,
            "{algorithm}: {sent} messages for {ENTRIES} entries on {n} nodes"
        );
    }
    // Nothing is lost: once delivered, every message sent was received exactly once (per type).
    let ok = poll(Duration::from_secs(10), || {
        let stats: Vec<Value> = (0..n).map(|i| api.stats(i)).collect();
        let total = |key: &str| {
            let mut m = std::collections::BTreeMap::<String, u64>::new();
            for s in &stats {
                for (alg, types) in s[key].as_object().into_iter().flatten() {
                    for (t, v) in types.as_object().into_iter().flatten() {
                        *m.entry(format!("{alg}/{t}")).or_default() += v.as_u64().unwrap_or(0);
                    }
                }
            }
            m
        };
        total("messages_sent") == total("messages_received")
    });
    assert!(ok, "messages sent and received differ");
    // /metrics agrees with /v1/stats, in total and per algorithm.
    for i in 0..n {
        let stats = api.stats(i);
        let (status, text) = api.get_text(i, "/metrics");
        assert_eq!(status, 200);
        let total = common::metric_sum(&text, "dmutex_messages_sent_total", &[]);
        assert_eq!(
            total as u64,
            stats["messages_sent_total"].as_u64().unwrap(),
            "node {i}: /metrics vs /v1/stats"
        );
        for algorithm in ALGORITHMS {
            let m = common::metric_sum(&text, "dmutex_messages_sent_total", &[("algorithm", algorithm)]);
            let s: u64 = stats["messages_sent"][algorithm]
                .as_object()
                .map_or(0, |t| t.values().filter_map(Value::as_u64).sum());
            assert_eq!(m as u64, s, "node {i} {algorithm}: /metrics vs /v1/stats");
        }
    }
}

#[test]
fn messages_per_entry_3_nodes() {
    message_counts("msgs3", 3);
}

#[test]
fn messages_per_entry_5_nodes() {
    message_counts("msgs5", 5);
}

// ---------------------------------------------------------------------------------------------------------
// 3. kill -9 one node mid-run, restart it.

/// Sets the flag when dropped, also while unwinding.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn incarnation_of(api: &Api, i: usize) -> u64 {
    let (s, v) = api.get(i, "/v1/cluster");
    assert_eq!(s, 200, "{v}");
    v["incarnation"].as_u64().expect("incarnation")
}

fn peer_incarnation(api: &Api, i: usize, peer: usize) -> Option<u64> {
    let (s, v) = api.get(i, "/v1/cluster");
    if s != 200 {
        return None;
    }
    v["peers"][peer]["incarnation"].as_u64()
}

/// `kill -9` one node of three while nine clients (every algorithm, every node) contend: the survivors are a
/// majority, so they keep granting every algorithm (requests wait for the view that excludes the dead node,
/// never a 503), stay ready, and the restarted node (a new incarnation) is admitted again and serves.
#[test]
fn kill_9_and_restart() {
    const N: usize = 3;
    // Well above the longest view change an acquire may wait for (S + L + 2 retry = 3.1 s by default).
    const TIMEOUT_MS: u64 = 8000;
    let mut c = Cluster::start("kill9", N, &[]);
    let api = c.api();
    let old_inc = incarnation_of(&api, 2);
    let intervals = Mutex::new(Vec::new());
    let attempts = Mutex::new(Vec::<(Instant, Attempt)>::new());
    let grants = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let killed_at = Mutex::new(None::<Instant>);
    let mut stall = Duration::ZERO;
    std::thread::scope(|s| {
        // A failed assertion below must not leave the clients running (the scope would wait for ever).
        let _stop_clients = StopOnDrop(&stop);
        for t in 0..9 {
            let (api, intervals, attempts, grants, stop) = (&api, &intervals, &attempts, &grants, &stop);
            s.spawn(move || {
                let node = t % N;
                let algorithm = ALGORITHMS[t / N];
                let lock = if t % 2 == 0 { "k" } else { "k3" };
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let a = hold_once(
                        api,
                        node,
                        lock,
                        algorithm,
                        TIMEOUT_MS,
                        Duration::from_millis(3),
                        intervals,
                    );
                    let ok = a.status == 200;
                    attempts.lock().unwrap().push((sent, a));
                    if ok {
                        grants.fetch_add(1, Ordering::Relaxed);
                    } else {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            });
        }
        assert!(
            poll(Duration::from_secs(30), || grants.load(Ordering::Relaxed) >= 30),
            "no progress before kill"
        );
        let at = Instant::now();
        *killed_at.lock().unwrap() = Some(at);
        c.kill9(2);
        // The survivors' view excludes node 2 within S + L and a round or two ...
        let view_of = |i: usize| -> Vec<u64> {
            let (_, cluster) = api.get(i, "/v1/cluster");
            cluster["view"]["members"]
                .as_array()
                .map(|m| m.iter().filter_map(|m| m["node_id"].as_u64()).collect())
                .unwrap_or_default()
        };
        assert!(
            poll(Duration::from_secs(10), || view_of(0) == [0, 1] && view_of(1) == [0, 1]),
            "the survivors' view does not exclude node 2: {:?} {:?}\n{}",
            view_of(0),
            view_of(1),
            c.logs()
        );
        eprintln!("kill9: node 2 excluded {:?} after the kill", at.elapsed());
        // ... and then they grant every algorithm, stay ready, and the contending clients go on.
        for algorithm in ALGORITHMS {
            for i in 0..2 {
                api.lock_once(i, "after-kill", algorithm);
            }
        }
        let (ready0, body) = api.get(0, "/readyz");
        assert_eq!(ready0, 200, "node 0 holds a majority and stays ready: {body}");
        let before = grants.load(Ordering::Relaxed);
        assert!(
            poll(Duration::from_secs(15), || grants.load(Ordering::Relaxed) >= before + 30),
            "the survivors stopped granting after the kill\n{}",
            c.logs()
        );
        c.spawn(2);
        c.wait_ready(Duration::from_secs(30));
        let new_inc = incarnation_of(&api, 2);
        assert_ne!(new_inc, old_inc, "a restart is a new incarnation");
        for i in 0..2 {
            assert!(
                poll(Duration::from_secs(10), || peer_incarnation(&api, i, 2) == Some(new_inc)),
                "node {i} does not see node 2's new incarnation"
            );
        }
        // Every algorithm serves on every node again (the client threads still contend meanwhile).
        for algorithm in ALGORITHMS {
            for i in 0..N {
                api.lock_once(i, "after-restart", algorithm);
            }
        }
        let after = grants.load(Ordering::Relaxed);
        assert!(
            poll(Duration::from_secs(30), || grants.load(Ordering::Relaxed) >= after + 20),
            "no progress"
        );
        stop.store(true, Ordering::Relaxed);
    });
    let killed_at = killed_at.into_inner().unwrap().expect("killed");
    let attempts = attempts.into_inner().unwrap();
    let limit = Duration::from_millis(TIMEOUT_MS + 1500);
    let mut slowest = Duration::ZERO;
    for (sent, a) in &attempts {
        slowest = slowest.max(a.took);
        assert!(a.took <= limit, "an acquire took {:?} (timeout {TIMEOUT_MS} ms): {a:?}", a.took);
        let answered = *sent + a.took;
        match a.status {
            200 => {
                if a.node != 2 && answered > killed_at {
                    stall = stall.max(a.took);
                }
            }
            // Node 2 itself is unreachable while it is down, and refuses until it is admitted again.
            0 | 503 if a.node == 2 && answered >= killed_at => {}
            _ => panic!("unexpected answer {a:?} (a majority node must not refuse for a dead minority)"),
        }
    }
    eprintln!(
        "kill9: {} attempts, slowest {slowest:?}, longest wait on a survivor after the kill {stall:?}",
        attempts.len()
    );
    check_intervals(intervals.into_inner().unwrap()).unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
}

// ---------------------------------------------------------------------------------------------------------
// 4. A link cut and restored through a TCP proxy, both processes alive.

#[test]
fn link_cut_through_proxy() {
    const N: usize = 3;
    let mut c = Cluster::new("proxy", N, &[]);
    // Node 0 reaches node 2 through p02, node 2 reaches node 0 through p20: both directions of the 0–2 pair
    // (data and acks) cross a proxy.
    let p02 = Proxy::start(&format!("{}.10:{}", c.subnet, common::PEER_PORT), &c.peer_addr(2));
    let p20 = Proxy::start(&format!("{}.11:{}", c.subnet, common::PEER_PORT), &c.peer_addr(0));
    let mut lists: Vec<Vec<String>> = (0..N).map(|_| (0..N).map(|i| c.peer_addr(i)).collect()).collect();
    lists[0][2] = p02.addr.to_string();
    lists[2][0] = p20.addr.to_string();
    c.peers_override = Some(lists.iter().map(|l| l.join(",")).collect());
    c.spawn_all();
    let api = c.api();
    let before: Vec<u64> = ["lamport", "ricart-agrawala"].iter().map(|a| sent_by_all(&api, N, a)).collect();
    let intervals = Mutex::new(Vec::new());
    let grants = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    const CUTS: u64 = 5;
    let attempts: Vec<Attempt> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for t in 0..8 {
            let (api, intervals, grants, stop) = (&api, &intervals, &grants, &stop);
            handles.push(s.spawn(move || {
                let algorithm = if t % 2 == 0 { "lamport" } else { "ricart-agrawala" };
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let a =
                        hold_once(api, t % N, "cut", algorithm, 60_000, Duration::from_millis(2), intervals);
                    grants.fetch_add(1, Ordering::Relaxed);
                    out.push(a);
                }
                out
            }));
        }
        // Drop every connection of the pair a few times while the workload runs: each cut comes after some
        // progress and after both links were re-established through the proxies (reconnects take tens of
        // milliseconds, well under the 1 s after which a peer counts as down).
        for cut in 1..=CUTS {
            let g = grants.load(Ordering::Relaxed);
            assert!(
                poll(Duration::from_secs(30), || grants.load(Ordering::Relaxed) >= g + 20),
                "no progress"
            );
            p02.cut();
            p20.cut();
            let relinked = poll(Duration::from_secs(10), || {
                p02.accepted.load(Ordering::Relaxed) > cut && p20.accepted.load(Ordering::Relaxed) > cut
            });
            assert!(relinked, "links not re-established after cut {cut}\n{}", c.logs());
        }
        let g = grants.load(Ordering::Relaxed);
        assert!(poll(Duration::from_secs(30), || grants.load(Ordering::Relaxed) >= g + 20), "no progress");
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().flat_map(|h| h.join().expect("client")).collect()
    });
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| a.status != 200).collect();
    assert!(failed.is_empty(), "acquires failed: {failed:?}\n{}", c.logs());
    let grants = |algorithm: &str| attempts.iter().filter(|a| a.algorithm == algorithm).count() as u64;
    let lamport = sent_by_all(&api, N, "lamport") - before[0];
    let ra = sent_by_all(&api, N, "ricart-agrawala") - before[1];
    assert_eq!(lamport, 3 * (N as u64 - 1) * grants("lamport"), "Lamport messages across cuts");
    assert_eq!(ra, 2 * (N as u64 - 1) * grants("ricart-agrawala"), "Ricart–Agrawala messages across cuts");
    check_intervals(intervals.into_inner().unwrap()).unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let (_, cl) = api.get(0, "/v1/cluster");
    eprintln!(
        "proxy: {} entries, {} + {} proxied connections, node 0 reconnects to 2: {}",
        attempts.len(),
        p02.accepted.load(Ordering::Relaxed),
        p20.accepted.load(Ordering::Relaxed),
        cl["peers"][2]["reconnects"]
    );
}

// ---------------------------------------------------------------------------------------------------------
// 5. Bad input on the peer port and on the HTTP API.

/// Connects to a peer port, reads the Challenge, lets `make` produce the bytes to send from the challenge
/// nonce, sends them and returns the refusal the node answers with (None if it just closed).
fn peer_probe(addr: &str, make: impl FnOnce(&wire::Nonce) -> Vec<u8>) -> Option<RefuseReason> {
    let mut s = TcpStream::connect(addr).expect("connect to peer port");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let challenge = loop {
        if let Ok(Some((frame, used))) = wire::decode_frame::<PeerMsg>(&buf, wire::DEFAULT_MAX_FRAME) {
            buf.drain(..used);
            match frame {
                Frame::Challenge { nonce } => break nonce,
                other => panic!("expected a challenge, got {}", other.kind()),
            }
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).expect("read challenge");
        assert!(n > 0, "closed before the challenge");
        buf.extend_from_slice(&chunk[..n]);
    };
    let _ = s.write_all(&make(&challenge));
    let _ = s.flush();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    match wire::decode_frame::<PeerMsg>(&rest, wire::DEFAULT_MAX_FRAME) {
        Ok(Some((Frame::Refuse { reason }, _))) => Some(reason),
        _ => None,
    }
}

fn hello(cluster: &str, version: u16, node: u16, secret: &str, challenge: &wire::Nonce) -> Vec<u8> {
    let nonce = wire::fresh_nonce();
    let (incarnation, clock) = (Incarnation::new(1), LamportTs::new(0));
    let (algorithm, algorithms) = (Algorithm::Lamport, Algorithm::ALL.to_vec());
    let transcript = wire::hello_transcript(
        version,
        cluster,
        algorithm,
        &algorithms,
        NodeId::new(node),
        incarnation,
        clock,
        challenge,
        &nonce,
    );
    let frame: Frame<PeerMsg> = Frame::Hello {
        version,
        cluster: cluster.to_string(),
        algorithm,
        algorithms,
        node: NodeId::new(node),
        incarnation,
        clock,
        nonce,
        mac: wire::mac(Some(secret.as_bytes()), &transcript),
    };
    wire::encode_frame(&frame, wire::DEFAULT_MAX_FRAME).expect("encode hello")
}

fn assert_error(status: u16, body: &Value, want_status: u16, what: &str) {
    assert_eq!(status, want_status, "{what}: {body}");
    assert!(
        body["error"]["code"].is_string() && body["error"]["message"].is_string(),
        "{what}: error body must be {{\"error\":{{\"code\",\"message\"}}}}, got {body}"
    );
}

#[test]
fn bad_peer_and_http_input_is_refused() {
    const SECRET: &str = "e2e-secret";
    let c = Cluster::start("badinput", 3, &[("DMUTEX_CLUSTER_SECRET", SECRET)]);
    let api = c.api();
    let addr = c.peer_addr(0);
    let cluster = c.cluster_name();

    // Peer port.
    let garbage = peer_probe(&addr, |_| {
        let mut b = vec![0, 0, 0, 8];
        b.extend_from_slice(&[0xee; 8]);
        b
    });
    assert_eq!(garbage, Some(RefuseReason::Malformed));
    let oversized = peer_probe(&addr, |_| vec![0x7f, 0xff, 0xff, 0xff, 1, 2, 3]);
    assert_eq!(oversized, Some(RefuseReason::Oversized));
    let http_on_peer_port = peer_probe(&addr, |_| b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
    assert_eq!(http_on_peer_port, Some(RefuseReason::Oversized), "text is an absurd length prefix");
    let version = peer_probe(&addr, |ch| hello(&cluster, PROTOCOL_VERSION + 41, 1, SECRET, ch));
    assert_eq!(version, Some(RefuseReason::BadVersion));
    let secret = peer_probe(&addr, |ch| hello(&cluster, PROTOCOL_VERSION, 1, "not-the-secret", ch));
    assert_eq!(secret, Some(RefuseReason::BadSecret));
    // An id outside the peer list that knows the secret may be a joiner: its handshake is taken (the
    // membership layer decides whether it is admitted), not refused; a flood of them is bounded (transport).
    let unknown = peer_probe(&addr, |ch| hello(&cluster, PROTOCOL_VERSION, 9, SECRET, ch));
    assert_eq!(unknown, None, "a possible joiner is not refused");
    for (reason, at_least) in
        [("malformed", 1.0), ("oversized", 2.0), ("bad_version", 1.0), ("bad_secret", 1.0)]
    {
        let counted = poll(Duration::from_secs(5), || {
            api.metric(0, "dmutex_refused_connections_total", &[("reason", reason)]) >= at_least
        });
        assert!(counted, "dmutex_refused_connections_total{{reason=\"{reason}\"}} < {at_least}");
    }
    assert!(c.log(0).contains("refused peer connection"), "refusals are logged");

    // The node stays healthy and serving.
    assert_eq!(api.get(0, "/healthz").0, 200);
    assert!(poll(Duration::from_secs(5), || api.get(0, "/readyz").0 == 200), "node 0 no longer ready");
    for algorithm in ALGORITHMS {
        api.lock_once(0, "after-garbage", algorithm);
    }

    // HTTP.
    let acquire = "/v1/locks/h/acquire";
    let (s, b) = api.post_raw(0, acquire, b"{\"timeout_ms\": ".to_vec());
    assert_error(s, &b, 400, "malformed JSON");
    let (s, b) = api.post_raw(0, acquire, b"\"just a string\"".to_vec());
    assert_error(s, &b, 400, "JSON of the wrong shape");
    let (s, b) = api.post(0, acquire, json!({"timeout_ms": 100, "colour": "red"}));
    assert_error(s, &b, 400, "unknown field");
    let (s, b) =
        api.post_raw(0, acquire, format!("{{\"algorithm\": \"{}\"}}", "x".repeat(64 * 1024)).into_bytes());
    assert_error(s, &b, 413, "oversized body");
    let (s, b) = api.post(0, "/v1/locks/bad%01name/acquire", json!({}));
    assert_error(s, &b, 400, "control character in the lock name");
    let (s, b) = api.post(0, &format!("/v1/locks/{}/acquire", "n".repeat(300)), json!({}));
    assert_error(s, &b, 400, "lock name too long");
    let (s, b) = api.post(0, acquire, json!({"algorithm": "paxos"}));
    assert_error(s, &b, 400, "unknown algorithm");
    let (s, b) = api.post(0, acquire, json!({"timeout_ms": "soon"}));
    assert_error(s, &b, 400, "wrong field type");
    let (s, b) = api.release(0, "h", "0123456789abcdef0123456789abcdef");
    assert_error(s, &b, 409, "unknown lease");
    let (s, b) = api.keepalive(0, "0123456789abcdef0123456789abcdef");
    assert_error(s, &b, 409, "keepalive of an unknown lease");
    let (s, b) = api.post(0, "/v1/locks/h/release", json!({}));
    assert_error(s, &b, 400, "release without a lease");
    // A lease does not release another lock.
    let (s, g) = api.acquire(0, "h", json!({"timeout_ms": 10000}));
    assert_eq!(s, 200, "{g}");
    let lease = g["lease"].as_str().unwrap();
    let (s, b) = api.release(0, "other", lease);
    assert_error(s, &b, 409, "release of another lock's lease");
    assert_eq!(api.release(0, "h", lease).0, 200);
    assert!(poll(Duration::from_secs(5), || api.get(0, "/readyz").0 == 200));
}

// ---------------------------------------------------------------------------------------------------------
// 6. Lease expiry.

#[test]
fn lease_expiry_hands_over_with_a_larger_token() {
    let c = Cluster::start("lease", 3, &[]);
    let api = c.api();
    for algorithm in ALGORITHMS {
        let lock = format!("expiring-{algorithm}");
        let (s, a) =
            api.acquire(0, &lock, json!({"algorithm": algorithm, "ttl_ms": 500, "timeout_ms": 10000}));
        assert_eq!(s, 200, "{a}");
        let a_at = Instant::now();
        let a_lease = a["lease"].as_str().unwrap().to_string();
        let a_token = a["fencing_token"].as_u64().unwrap();
        let (s, b) =
            api.acquire(1, &lock, json!({"algorithm": algorithm, "ttl_ms": 10000, "timeout_ms": 10000}));
        let waited = a_at.elapsed();
        assert_eq!(s, 200, "{algorithm}: B must be granted after A's lease expires: {b}");
        assert!(
            waited >= Duration::from_millis(400),
            "{algorithm}: B granted after {waited:?}, before A expired"
        );
        assert!(waited < Duration::from_secs(5), "{algorithm}: B waited {waited:?}");
        let b_token = b["fencing_token"].as_u64().unwrap();
        assert!(b_token > a_token, "{algorithm}: token {b_token} after expired {a_token}");
        let (s, body) = api.release(0, &lock, &a_lease);
        assert_error(s, &body, 409, "release of an expired lease");
        assert_eq!(body["error"]["code"], "lease_not_found");
        let (s, body) = api.keepalive(0, &a_lease);
        assert_error(s, &body, 409, "keepalive of an expired lease");
        assert_eq!(api.release(1, &lock, b["lease"].as_str().unwrap()).0, 200);
    }
    assert!(api.stats(0)["lease_expiries"].as_u64().unwrap() >= 3);
    // A lease kept alive outlives its TTL.
    let (s, g) = api.acquire(2, "kept", json!({"ttl_ms": 300}));
    assert_eq!(s, 200, "{g}");
    let lease = g["lease"].as_str().unwrap();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(120));
        let (s, k) = api.keepalive(2, lease);
        assert_eq!(s, 200, "{k}");
        assert_eq!(k["ttl_ms"], 300);
    }
    assert_eq!(api.release(2, "kept", lease).0, 200);
}

// ---------------------------------------------------------------------------------------------------------
// 7. `dmutex lock`.

#[test]
fn dmutex_lock_serialises_and_passes_the_exit_status() {
    let c = Cluster::start("lockcli", 3, &[]);
    let dir = c.dir.clone();
    for algorithm in ALGORITHMS {
        let out = dir.join(format!("cs-{algorithm}.txt"));
        let script = r#"echo "start $$ $DMUTEX_FENCING_TOKEN" >> "$1"; sleep 0.2; echo "end $$" >> "$1""#;
        let children: Vec<_> = (0..4)
            .map(|k| {
                std::process::Command::new(env!("CARGO_BIN_EXE_dmutex"))
                    .args(["lock", "--endpoint", &c.url(k % 3), "--timeout", "30s", "--algorithm", algorithm])
                    .args(["cli-lock", "--", "sh", "-c", script, "sh"])
                    .arg(&out)
                    .spawn()
                    .expect("spawn dmutex lock")
            })
            .collect();
        for mut ch in children {
            let status = ch.wait().expect("wait");
            assert_eq!(status.code(), Some(0), "{algorithm}: dmutex lock failed");
        }
        let text = std::fs::read_to_string(&out).expect("output");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8, "{algorithm}: {text}");
        let mut last_token = 0;
        for pair in lines.chunks(2) {
            let start: Vec<&str> = pair[0].split(' ').collect();
            let end: Vec<&str> = pair[1].split(' ').collect();
            assert!(
                start[0] == "start" && end[0] == "end" && start[1] == end[1],
                "{algorithm}: interleaved:\n{text}"
            );
            let token: u64 = start[2].parse().expect("DMUTEX_FENCING_TOKEN");
            assert!(token > last_token, "{algorithm}: tokens not increasing:\n{text}");
            last_token = token;
        }
    }
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_dmutex"))
        .args(["lock", "--endpoint", &c.url(1), "--timeout", "30s", "exit-code", "--", "sh", "-c", "exit 7"])
        .status()
        .expect("dmutex lock");
    assert_eq!(status.code(), Some(7), "the command's exit status is passed through");
    // The lock was released after the command: it can be taken at once.
    c.api().lock_once(2, "exit-code", "lamport");
}

// ---------------------------------------------------------------------------------------------------------
// 8. SIGTERM.

#[test]
fn sigterm_exits_promptly_and_answers_waiters() {
    let mut c = Cluster::start("sigterm", 3, &[]);
    let api = c.api();
    // Node 0's client holds the lock; a client of node 2 waits for it.
    let (s, held) = api.acquire(0, "t", json!({"timeout_ms": 10000, "ttl_ms": 60000}));
    assert_eq!(s, 200, "{held}");
    let waiter = {
        let api = api.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let r = api.acquire(2, "t", json!({"timeout_ms": 30000}));
            (r, t0.elapsed())
        })
    };
    let waiting = poll(Duration::from_secs(10), || {
        let (s, v) = api.get(2, "/v1/locks/t?scope=local");
        s == 200 && v["algorithms"]["lamport"]["local_waiters"] == 1
    });
    assert!(waiting, "the client of node 2 never started waiting");
    // Node 2 also holds a lease of its own, which shutdown must release.
    let (s, own) = api.acquire(2, "t-own", json!({"timeout_ms": 10000}));
    assert_eq!(s, 200, "{own}");
    let (code, took) = c.sigterm(2);
    assert_eq!(code, Some(0), "exit status after SIGTERM\n{}", c.log(2));
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
    let ((status, body), waited) = waiter.join().expect("waiter");
    assert_eq!(status, 503, "the waiting client gets 503: {body}");
    assert!(waited < Duration::from_secs(10), "waiter answered after {waited:?}");
    // Node 2 released its own lease on the way out and told the peers: their queues for it are empty.
    let informed = poll(Duration::from_secs(5), || {
        let (s, v) = api.get(0, "/v1/locks/t-own?scope=local");
        s == 200 && v["algorithms"]["lamport"]["queue"].as_array().is_some_and(Vec::is_empty)
    });
    assert!(
        informed,
        "node 0 still queues node 2's released request: {}",
        api.get(0, "/v1/locks/t-own?scope=local").1
    );
    // The others stay alive; node 0's lease is still valid.
    assert_eq!(api.get(0, "/healthz").0, 200);
    assert_eq!(api.release(0, "t", held["lease"].as_str().unwrap()).0, 200);
    // A node that left gracefully rejoins with a new incarnation, and every algorithm serves again.
    c.spawn(2);
    c.wait_ready(Duration::from_secs(30));
    for algorithm in ALGORITHMS {
        for i in 0..3 {
            api.lock_once(i, "t", algorithm);
            api.lock_once(i, "t-own", algorithm);
        }
    }
    eprintln!("sigterm: exit in {took:?}, waiter answered after {waited:?}");
}

// ---------------------------------------------------------------------------------------------------------
// Configuration.

#[test]
fn invalid_configuration_exits_2_naming_the_key() {
    let c = Cluster::new("badconfig", 3, &[]);
    let out = c.command(0).env("DMUTEX_NODE_ID", "9").output().expect("run dmutex node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("DMUTEX_NODE_ID"), "the message names the key: {stderr}");
    let out = c.command(0).env("DMUTEX_ALGORITHM", "paxos").output().expect("run dmutex node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("DMUTEX_ALGORITHM"), "the message names the key: {stderr}");
    // An impossible membership timing (S not above the heartbeat).
    let out = c.command(0).env("DMUTEX_SUSPECT_TIMEOUT_MS", "100").output().expect("run dmutex node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("DMUTEX_SUSPECT_TIMEOUT_MS: must exceed the heartbeat"), "{stderr}");
    // The bootstrap size under its plain name and its old one, disagreeing: both named.
    let out = c
        .command(0)
        .env("DMUTEX_BOOTSTRAP_EXPECT", "3")
        .env("DMUTEX_CLUSTER_SIZE", "4")
        .output()
        .expect("run dmutex node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("DMUTEX_BOOTSTRAP_EXPECT: 3 differs from DMUTEX_CLUSTER_SIZE (4)"), "{stderr}");
}
