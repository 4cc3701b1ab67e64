//! Mutual TLS on peer links with real `dmutex node` processes on 127.x addresses and a CA generated in the
//! test: a 3-node cluster grants with every algorithm; processes that claim to be node 1 with a certificate
//! from another CA, with a cluster certificate naming another node's host, or without TLS at all, are refused
//! (counted on the cluster's /metrics, logged with the reason) while the cluster keeps serving; a peer
//! certificate replaced on disk is reloaded without a restart.

mod common;

use common::{ALGORITHMS, Cluster, PEER_PORT, poll};
use dmutex::net::peer_tls::ThrowawayCa;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// Env for a node with peer TLS from the files `name`.crt/.key and `ca.pem` in `dir`.
fn tls_env(dir: &Path, name: &str) -> Vec<(String, String)> {
    let p = |f: String| dir.join(f).display().to_string();
    vec![
        ("DMUTEX_PEER_TLS_CERT".into(), p(format!("{name}.crt"))),
        ("DMUTEX_PEER_TLS_KEY".into(), p(format!("{name}.key"))),
        ("DMUTEX_PEER_TLS_CA".into(), p("ca.pem".into())),
        ("DMUTEX_CREDENTIALS_RELOAD_MS".into(), "200".into()),
    ]
}

/// The value of a counter series on node `i`'s /metrics (0 when absent, or while the node does not answer).
fn counter(c: &Cluster, i: usize, series: &str) -> f64 {
    let (status, text) = c.get_text(i, "/metrics");
    if status != 200 {
        return 0.0;
    }
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse::<f64>().ok()))
        .unwrap_or(0.0)
}

fn refused(c: &Cluster, i: usize, reason: &str) -> f64 {
    counter(c, i, &format!("dmutex_refused_connections_total{{reason=\"{reason}\"}}"))
}

/// Acquires and releases one lock with each algorithm through each of the first three nodes.
fn grants_everywhere(c: &Cluster, lock: &str) {
    for algorithm in ALGORITHMS {
        for i in 0..3 {
            let body = json!({"algorithm": algorithm, "ttl_ms": 10000, "timeout_ms": 15000});
            let (s, g) = c.acquire(i, lock, body);
            assert_eq!(s, 200, "{algorithm} through node {i}: {g}\n{}", c.logs());
            let lease = g["lease"].as_str().unwrap_or_default().to_string();
            let (s, r) = c.release(i, lock, &lease);
            assert_eq!(s, 200, "{algorithm} release through node {i}: {r}");
        }
    }
}

#[test]
fn an_mtls_cluster_grants_and_refuses_impostors_while_serving() {
    // Nodes 0..2 are the cluster; 3, 4 and 5 are impostors that claim to be node 1 from their own address.
    let mut c = Cluster::new("peermtls", 6, &[]);
    let cluster_peers: Vec<String> = (0..3).map(|i| c.peer_addr(i)).collect();
    c.peers_override = Some(vec![cluster_peers.join(","); 6]);
    let dir = c.dir.join("pki");
    std::fs::create_dir_all(&dir).unwrap();
    let ca = ThrowawayCa::new("dmutex test cluster").unwrap();
    for i in 0..3 {
        ca.write(&dir, &format!("node-{i}"), &[c.host(i).as_str()]).unwrap();
        c.node_env.insert(i, tls_env(&dir, &format!("node-{i}")));
    }
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_ready(Duration::from_secs(30));
    grants_everywhere(&c, "tls");

    // Another CA: the certificate even names node 1's host.
    let other_dir = c.dir.join("other-pki");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = ThrowawayCa::new("another cluster").unwrap();
    other.write(&other_dir, "impostor", &[c.host(1).as_str(), c.host(3).as_str()]).unwrap();
    // The cluster's CA, but a certificate for node 2's host, while claiming node 1.
    ca.write(&dir, "node-2-cert", &[c.host(2).as_str(), c.host(4).as_str()]).unwrap();
    let impostor = |c: &Cluster, i: usize| {
        vec![
            ("DMUTEX_NODE_ID".to_string(), "1".to_string()),
            ("DMUTEX_PEER_ADDR".to_string(), format!("{}:{PEER_PORT}", c.host(i))),
        ]
    };
    let mut env3 = impostor(&c, 3);
    env3.extend(tls_env(&other_dir, "impostor"));
    // The CA file of the impostor is its own CA.
    c.node_env.insert(3, env3);
    let mut env4 = impostor(&c, 4);
    env4.extend(tls_env(&dir, "node-2-cert"));
    c.node_env.insert(4, env4);
    // No TLS at all.
    c.node_env.insert(5, impostor(&c, 5));
    for i in 3..6 {
        c.spawn(i);
    }

    let wait = |reason: &str| {
        let seen = poll(Duration::from_secs(30), || (0..3).any(|i| refused(&c, i, reason) > 0.0));
        assert!(seen, "no refusal counted as {reason}\n{}", c.logs());
    };
    wait("tls_bad_certificate");
    wait("tls_wrong_identity");
    wait("tls_required");
    let logs: String = (0..3).map(|i| c.log(i)).collect();
    for reason in ["tls_bad_certificate", "tls_wrong_identity", "tls_required"] {
        let line = logs.lines().find(|l| l.contains("refused peer connection") && l.contains(reason));
        assert!(line.is_some(), "no log line for {reason}\n{logs}");
    }
    assert!(logs.contains(&format!("claims to be node 1 (at {}", c.peer_addr(1))), "{logs}");
    // The impostor with another CA sees the cluster's certificate refused on its side too.
    assert!(c.log(3).contains("peer TLS handshake failed"), "{}", c.log(3));

    // The cluster kept serving, and node 1's own links are intact.
    grants_everywhere(&c, "tls-after");
    for i in 0..3 {
        let (s, _) = c.get(i, "/readyz");
        assert_eq!(s, 200, "node {i} not ready\n{}", c.log(i));
    }

    // Rotation: node 0 gets a new certificate on disk; it is loaded without a restart (counted), and new
    // connections use it.
    let reloads = "dmutex_credential_reloads_total{what=\"peer_certificate\",result=\"ok\"}";
    assert_eq!(counter(&c, 0, reloads), 0.0);
    ca.write(&dir, "node-0", &[c.host(0).as_str()]).unwrap();
    assert!(poll(Duration::from_secs(10), || counter(&c, 0, reloads) >= 1.0), "no reload\n{}", c.log(0));
    assert!(c.log(0).contains("credentials reloaded"), "{}", c.log(0));
    grants_everywhere(&c, "tls-rotated");
}

#[test]
fn a_tls_peer_dialling_a_plaintext_node_is_refused_and_counted() {
    // Node 0 speaks plain TCP; node 1 is configured with peer TLS: neither link comes up, and node 0 counts
    // the TLS ClientHello it was sent.
    let mut c = Cluster::new("peermtlsplain", 2, &[]);
    let dir = c.dir.join("pki");
    std::fs::create_dir_all(&dir).unwrap();
    let ca = ThrowawayCa::new("dmutex test cluster").unwrap();
    ca.write(&dir, "node-1", &[c.host(1).as_str()]).unwrap();
    c.node_env.insert(1, tls_env(&dir, "node-1"));
    c.spawn(0);
    c.spawn(1);
    let counted = poll(Duration::from_secs(30), || refused(&c, 0, "tls_unexpected") > 0.0);
    assert!(counted, "no tls_unexpected refusal\n{}", c.logs());
    assert!(c.log(0).contains("the dialer speaks TLS"), "{}", c.log(0));
    // Node 1 counts node 0's plaintext handshake (after its handshake timeout).
    let counted = poll(Duration::from_secs(30), || refused(&c, 1, "tls_required") > 0.0);
    assert!(counted, "no tls_required refusal\n{}", c.logs());
    // Both still serve their API.
    for i in 0..2 {
        assert_eq!(c.get(i, "/healthz").0, 200);
    }
}
