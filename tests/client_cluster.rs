//! The client library (`dmutex-client`) against real `dmutex node` processes: failover past a dead endpoint,
//! a guard that keeps its lease alive past several TTLs while another client waits, and the lost signal when
//! the granting node is killed.

mod common;

use common::Cluster;
use dmutex_client::{Client, Error, LeaseLoss};
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
