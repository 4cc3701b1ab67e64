//! The client library (`dmutex-client`) against real `dmutex node` processes: failover past a dead endpoint,
//! a guard that keeps its lease alive past several TTLs while another client waits, and the lost signal when
//! the granting node is killed.

mod common;

use common::Cluster;
use dmutex_client::{Algorithm, Client, Error, LeaseLoss};
use std::time::{Duration, Instant};

/// Nothing listens there: connections are refused.
const DEAD: &str = "http://127.0.0.1:1";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

#[test]
fn a_guard_holds_past_several_ttls_while_another_client_waits() {
    let c = Cluster::start("clientguard", 3, &[]);
    runtime().block_on(async {
        let client = Client::new([DEAD.to_string(), c.url(0), c.url(1), c.url(2)]).unwrap();
        let guard = client.lock("cl").ttl(Duration::from_millis(400)).timeout(Duration::from_secs(10)).await;
        let guard = guard.unwrap_or_else(|e| panic!("acquire: {e}\n{}", c.logs()));
        assert_eq!(client.current_endpoint(), format!("{}/", c.url(0)), "the dead endpoint was skipped");
        assert_eq!(guard.grant().node_id, Some(0));
        let first = guard.fencing_token();

        // Four TTLs: only the keepalives keep the lease.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert_eq!(guard.is_lost(), None, "{}", c.logs());
        let other = Client::new([c.url(1)]).unwrap();
        let e = other.lock("cl").timeout(Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "the lock is still held: {e:?}");

        guard.release().await.unwrap();
        let next = other.lock("cl").timeout(Duration::from_secs(10)).await.unwrap();
        assert!(next.fencing_token() > first, "{} after {first}", next.fencing_token());
        next.release().await.unwrap();
    });
}

#[test]
fn lost_fires_promptly_when_the_granting_node_is_killed() {
    let mut c = Cluster::start("clientlost", 3, &[]);
    let rt = runtime();
    let client = Client::new([c.url(0), c.url(1), c.url(2)]).unwrap();
    let guard =
        rt.block_on(client.lock("cl").ttl(Duration::from_secs(2)).timeout(Duration::from_secs(10)).acquire());
    let guard = guard.unwrap_or_else(|e| panic!("acquire: {e}\n{}", c.logs()));
    assert_eq!(guard.grant().node_id, Some(0));
    c.kill9(0);
    let killed = Instant::now();
    let loss = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), guard.lost()).await })
        .unwrap_or_else(|_| panic!("lost() did not fire\n{}", c.logs()));
    // The next keepalive (at most TTL/3 later) goes to another node, which knows the lease names node 0 and
    // answers that it is lost.
    assert!(matches!(loss, LeaseLoss::Lost { .. }), "{loss:?}");
    assert!(killed.elapsed() < Duration::from_secs(2), "not promptly: {:?} ({loss})", killed.elapsed());
    drop(guard);
}

/// Waits (bounded) until the cluster-wide queue of `lock` in `algorithm` holds `n` nodes' waiters, through
/// node `node`'s `GET /v1/locks/{name}`.
async fn queued(c: &Cluster, node: usize, lock: &str, algorithm: Algorithm, n: usize) {
    let url = format!("{}/v1/locks/{lock}", c.url(node));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        let len = state["algorithms"][algorithm.as_str()]["queue"].as_array().map_or(0, Vec::len);
        if len == n {
            // Let the request's messages reach every node, so the next one is ordered after it.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return;
        }
        assert!(Instant::now() < deadline, "{algorithm}: queue never reached {n}: {state}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ports of etcd's lock tests (`tests/integration/v3_lock_test.go`), every algorithm, through the client
/// library on real processes: waiters on different nodes are each granted once, in the order they asked,
/// with rising fencing tokens; a waiter that times out leaves the order of the others intact; a try-lock on the
/// held lock fails at once naming the holder, and on the free lock succeeds.
#[test]
fn waiters_are_granted_once_each_in_order_and_a_timed_out_one_keeps_the_order() {
    let c = Cluster::start("clientorder", 4, &[]);
    let rt = runtime();
    rt.block_on(async {
        let clients: Vec<Client> = (0..4).map(|i| Client::new([c.url(i)]).unwrap()).collect();
        for algorithm in Algorithm::ALL {
            let lock = format!("order-{algorithm}");
            let held =
                clients[0].lock(&lock).algorithm(algorithm).ttl(Duration::from_secs(30)).await.unwrap();
            let e = clients[1].try_lock(&lock).algorithm(algorithm).await.unwrap_err();
            assert!(matches!(e, Error::Locked { holder: Some(0) }), "{algorithm}: {e:?}");
            // Waiters on nodes 1, 2 and 3, one per node, in that order; the one on node 2 gives up.
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let mut tasks = Vec::new();
            for (k, (node, timeout)) in [(1, 20_000), (2, 700), (3, 20_000)].into_iter().enumerate() {
                let (client, name, tx) = (clients[node].clone(), lock.clone(), tx.clone());
                tasks.push(tokio::spawn(async move {
                    let lock = name;
                    let r =
                        client.lock(&lock).algorithm(algorithm).timeout(Duration::from_millis(timeout)).await;
                    match r {
                        Ok(g) => {
                            let _ = tx.send((k, Some(g.fencing_token())));
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            g.release().await.unwrap();
                        }
                        Err(Error::Timeout { .. }) => {
                            let _ = tx.send((k, None));
                        }
                        Err(e) => panic!("{algorithm}: waiter {k}: {e}"),
                    }
                }));
                queued(&c, 0, &lock, algorithm, k + 1).await;
            }
            // Waiter 1 (node 2) times out while the lock is still held.
            let (k, t) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
            assert_eq!((k, t), (1, None), "{algorithm}: the impatient waiter times out first");
            let first = held.fencing_token();
            held.release().await.unwrap();
            let mut order = Vec::new();
            while order.len() < 2 {
                let (k, t) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
                order.push((k, t.expect("granted")));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let ks: Vec<usize> = order.iter().map(|(k, _)| *k).collect();
            assert_eq!(ks, vec![0, 2], "{algorithm}: granted in the order asked");
            assert!(order.windows(2).all(|w| w[0].1 < w[1].1), "{algorithm}: rising tokens {order:?}");
            assert!(order[0].1 > first, "{algorithm}");
            let free = clients[3].try_lock(&lock).algorithm(algorithm).await.unwrap();
            free.release().await.unwrap();
        }
    });
}

/// The client contract on real processes with plain HTTP calls: a lease granted by node 0 is kept alive through
/// nodes 1 and 2 and released through node 2; concurrent try-locks on a free lock, one per node, give exactly
/// one grant; `GET /v1/locks/{name}` is the same from every node and shows no lease id; after `kill -9` of the
/// granting node a keepalive through another node answers `lease_lost` promptly.
#[test]
fn leases_work_through_any_node_and_die_with_the_granting_one() {
    use serde_json::json;
    let mut c = Cluster::start("clientanynode", 3, &[]);
    let (s, g) = c.acquire(0, "any", json!({"ttl_ms": 10000}));
    assert_eq!(s, 200, "{g}");
    let lease = g["lease"].as_str().unwrap_or_default().to_string();
    for i in [1, 2] {
        let (s, b) = c.post(i, &format!("/v1/leases/{lease}/keepalive"), json!({}));
        assert_eq!(s, 200, "keepalive through node {i}: {b}");
    }
    let states: Vec<serde_json::Value> = (0..3).map(|i| c.get(i, "/v1/locks/any").1).collect();
    assert_eq!(states[0]["algorithms"]["lamport"]["holder"]["node_id"], 0, "{}", states[0]);
    assert!(states.iter().all(|s| *s == states[0]), "the same answer from every node: {states:?}");
    assert!(states.iter().all(|s| !s.to_string().contains(&lease)), "no lease id in a GET: {states:?}");
    assert_eq!(c.release(2, "any", &lease).0, 200, "release through node 2");

    let tries: Vec<std::thread::JoinHandle<(u16, serde_json::Value)>> = (0..3)
        .map(|i| {
            let api = c.api();
            std::thread::spawn(move || api.acquire(i, "race", json!({"wait": false, "ttl_ms": 10000})))
        })
        .collect();
    let answers: Vec<(u16, serde_json::Value)> = tries.into_iter().map(|t| t.join().unwrap()).collect();
    let won: Vec<&(u16, serde_json::Value)> = answers.iter().filter(|(s, _)| *s == 200).collect();
    assert_eq!(won.len(), 1, "exactly one try wins: {answers:?}");
    assert!(answers.iter().all(|(s, b)| *s == 200 || b["error"]["code"] == "locked"), "{answers:?}");

    let (s, g) = c.acquire(0, "dies", json!({"ttl_ms": 30000}));
    assert_eq!(s, 200, "{g}");
    let lease = g["lease"].as_str().unwrap_or_default().to_string();
    c.kill9(0);
    let killed = Instant::now();
    let (s, b) = c.post(1, &format!("/v1/leases/{lease}/keepalive"), json!({}));
    assert_eq!((s, &b["error"]["code"]), (409, &json!("lease_lost")), "{b}");
    assert!(killed.elapsed() < Duration::from_secs(6), "promptly: {:?}", killed.elapsed());
}
