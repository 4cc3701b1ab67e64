//! DNS discovery of a scaled cluster: `DMUTEX_DISCOVERY=dns:<name>:<port>`.
//!
//! For `docker compose up --scale node=N`: every replica of a compose service answers to the service name in the
//! engine's embedded DNS, so resolving `node` yields one address per running replica. Discovery turns that into
//! the static membership the algorithms need:
//!
//! 1. Resolve `<name>` repeatedly (every [`DiscoveryOptions::interval`]) until the answer is *settled*: the same
//!    address set [`DiscoveryOptions::stable_polls`] times in a row and, when `expected` is given
//!    (`DMUTEX_CLUSTER_SIZE`), exactly `expected` addresses. Progress is logged whenever the count changes.
//! 2. Sort the addresses. If the answer has any IPv4 address, only IPv4 addresses are kept (a dual-stack replica
//!    must not count twice). The node id of a replica is its index in that order, so every node computes the same
//!    ids from the same answer without talking to the others: id `i` ↔ `peers[i]`.
//! 3. Find this node's own id: the one address in the list that belongs to this host. The host's addresses come
//!    from [`Resolver::local_addrs`] (the system resolver uses the addresses of its own host name and the source
//!    address the kernel picks towards each candidate, which needs no DNS at all).
//!
//! Assumptions: replicas have one address each on the shared network and keep it while they run (a restarted
//! container normally gets its address back on a user-defined network, but this is not guaranteed; a replica
//! whose address changed is a different member and needs a cluster restart, below); all replicas start within
//! the timeout of each other.
//!
//! Without `expected` the only criterion is a stable answer, which races against replicas that start late: two
//! nodes could settle on different sets. Always set `DMUTEX_CLUSTER_SIZE` in production; it is what makes every
//! node wait for the same, complete set.
//!
//! **Scaling later.** The size is set when the nodes start: a running node never re-runs discovery, ids are
//! places among the sorted addresses (a new address would shift them), and a replica added by a later
//! `--scale node=M` sees more addresses than `DMUTEX_CLUSTER_SIZE`, never settles and exits with
//! [`DiscoveryError::Timeout`]. (A replica of the same set that restarts runs discovery again, finds its id and
//! joins the running view; a removed one leaves it.) A scale change is a restart of the whole cluster with the new
//! size: stop every node first, then start them all,
//! `docker compose stop node && DMUTEX_CLUSTER_SIZE=M docker compose up -d --scale node=M --force-recreate`.
//! Stopping first matters: a new node that starts while old ones still run could settle on a mixed set. Locks
//! held at that moment are lost (clients see their leases end).
//!
//! This module never decides anything from a partial answer: it returns a membership only once the answer has
//! settled, and fails with [`DiscoveryError::Timeout`] (saying what it last saw) rather than guessing.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;
use tokio::time::Instant;

/// The environment variable that holds the discovery spec (named in error messages).
pub const DISCOVERY_ENV: &str = "DMUTEX_DISCOVERY";

/// A parsed `dns:<name>:<port>` discovery spec.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DnsSpec {
    /// The DNS name that resolves to every replica (the compose service name, e.g. `node`).
    pub name: String,
    /// The peer port every replica listens on.
    pub port: u16,
}

impl DnsSpec {
    /// Parses `dns:<name>:<port>`, e.g. `dns:node:7070`.
    pub fn parse(value: &str) -> Result<Self, DiscoveryError> {
        let invalid = |reason: &'static str| DiscoveryError::InvalidSpec { value: value.to_string(), reason };
        let rest =
            value.trim().strip_prefix("dns:").ok_or_else(|| invalid("only the `dns:` scheme exists"))?;
        let (name, port) = rest.rsplit_once(':').ok_or_else(|| invalid("the port is missing"))?;
        if name.is_empty() {
            return Err(invalid("the name is empty"));
        }
        if name.contains(|c: char| c.is_whitespace() || c == ':' || c == '/') {
            return Err(invalid("the name must be a DNS name"));
        }
        let port: u16 = port.parse().map_err(|_| invalid("the port is not a number in 1..=65535"))?;
        if port == 0 {
            return Err(invalid("the port is not a number in 1..=65535"));
        }
        Ok(DnsSpec { name: name.to_string(), port })
    }
}

impl FromStr for DnsSpec {
    type Err = DiscoveryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DnsSpec::parse(s)
    }
}

impl fmt::Display for DnsSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dns:{}:{}", self.name, self.port)
    }
}

/// The membership discovery settled on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Discovered {
    /// This node's id: its index in `peers`.
    pub me: u16,
    /// Every replica's peer address, `ip:port`, in node-id order (this node included, at index `me`).
    pub peers: Vec<String>,
}

/// Why discovery failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The spec is not `dns:<name>:<port>`.
    #[error(
        "{DISCOVERY_ENV}={value:?} is invalid: {reason} (expected dns:<name>:<port>, e.g. dns:node:7070)"
    )]
    InvalidSpec {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The expected cluster size is impossible (zero, or more nodes than ids).
    #[error("invalid expected cluster size {0} (DMUTEX_CLUSTER_SIZE must be 1..=65536)")]
    InvalidSize(usize),
    /// The answer did not settle on a membership that includes this host before the timeout.
    #[error("{DISCOVERY_ENV}={spec}: no settled membership after {}: {last}", seconds(*waited))]
    Timeout {
        /// The spec being resolved.
        spec: DnsSpec,
        /// How long discovery waited.
        waited: Duration,
        /// What the last attempt saw (count, addresses, lookup error or missing own address).
        last: String,
    },
}

/// Where discovery gets its answers: DNS and this host's own addresses. Injectable so tests need no DNS.
pub trait Resolver {
    /// Every address `name` resolves to (the port is only carried along).
    fn resolve(&self, name: &str, port: u16) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send;

    /// This host's addresses; `candidates` are the replicas' addresses, which lets an implementation ask the
    /// kernel which source address it would use towards them.
    fn local_addrs(&self, candidates: &[IpAddr]) -> impl Future<Output = Vec<IpAddr>> + Send;
}

/// The real resolver: the system's `getaddrinfo` (through tokio) and the kernel's routing table.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    async fn resolve(&self, name: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((name, port)).await?.collect())
    }

    async fn local_addrs(&self, candidates: &[IpAddr]) -> Vec<IpAddr> {
        let mut local = BTreeSet::new();
        // The own host name resolves to the container's address (Docker writes it into /etc/hosts).
        if let Some(host) = hostname::get().ok().and_then(|h| h.into_string().ok())
            && let Ok(addrs) = tokio::net::lookup_host((host.as_str(), 0)).await
        {
            local.extend(addrs.map(|a| a.ip()));
        }
        // The source address the kernel picks towards each candidate is one of ours on that network; towards
        // our own address it is that address itself. Connecting a UDP socket sends nothing.
        for &ip in candidates {
            let bind: SocketAddr =
                if ip.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
            if let Ok(socket) = tokio::net::UdpSocket::bind(bind).await
                && socket.connect((ip, 9)).await.is_ok()
                && let Ok(addr) = socket.local_addr()
            {
                local.insert(addr.ip());
            }
        }
        local.into_iter().collect()
    }
}

/// Tuning of the resolve loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscoveryOptions {
    /// Pause between two lookups.
    pub interval: Duration,
    /// How many identical answers in a row count as settled (at least 1).
    pub stable_polls: u32,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        DiscoveryOptions { interval: Duration::from_millis(500), stable_polls: 3 }
    }
}

/// Discovers the cluster through the system resolver with default options.
///
/// Resolves `spec.name` until the answer settles (and has `expected` addresses when given), then returns the
/// sorted membership and this node's id. Fails after `timeout`. See the module doc for the rules.
pub async fn discover(
    spec: &DnsSpec,
    expected: Option<usize>,
    timeout: Duration,
) -> Result<Discovered, DiscoveryError> {
    discover_with(&SystemResolver, spec, expected, timeout, DiscoveryOptions::default()).await
}

/// [`discover`] with an explicit resolver and options.
pub async fn discover_with<R: Resolver>(
    resolver: &R,
    spec: &DnsSpec,
    expected: Option<usize>,
    timeout: Duration,
    options: DiscoveryOptions,
) -> Result<Discovered, DiscoveryError> {
    discover_reporting(resolver, spec, expected, timeout, options, |_| {}).await
}

/// [`discover_with`], telling `progress` after every lookup what it is waiting for, in words
/// (`waiting for 5 replicas, 3 resolved: 10.0.0.1, 10.0.0.2, 10.0.0.3`): what `/readyz` shows meanwhile.
pub async fn discover_reporting<R: Resolver, P: Fn(&str) + Sync>(
    resolver: &R,
    spec: &DnsSpec,
    expected: Option<usize>,
    timeout: Duration,
    options: DiscoveryOptions,
    progress: P,
) -> Result<Discovered, DiscoveryError> {
    if let Some(n) = expected
        && (n == 0 || n > usize::from(u16::MAX) + 1)
    {
        return Err(DiscoveryError::InvalidSize(n));
    }
    let start = Instant::now();
    let deadline = start + timeout;
    let want = options.stable_polls.max(1);
    let mut previous: Option<Vec<IpAddr>> = None;
    let mut streak = 0u32;
    let mut logged_count: Option<usize> = None;
    let mut last: String;
    loop {
        match resolver.resolve(&spec.name, spec.port).await {
            Err(e) => {
                // Usual while the service's first replica is not registered yet: keep trying.
                last = format!("lookup of {} failed: {e}", spec.name);
                progress(&format!("{DISCOVERY_ENV}={spec}: waiting for DNS: {last}"));
                tracing::debug!(name = %spec.name, error = %e, "discovery: lookup failed, retrying");
                previous = None;
                streak = 0;
            }
            Ok(addrs) => {
                let ips = normalize(&addrs);
                if previous.as_ref() == Some(&ips) {
                    streak += 1;
                } else {
                    streak = 1;
                    previous = Some(ips.clone());
                }
                if logged_count != Some(ips.len()) {
                    logged_count = Some(ips.len());
                    match expected {
                        Some(n) if ips.len() != n => tracing::info!(
                            name = %spec.name, seen = ips.len(), expected = n,
                            "discovery: waiting for {n} replicas, {} resolved", ips.len()
                        ),
                        _ => {
                            tracing::info!(name = %spec.name, seen = ips.len(), "discovery: {} replicas resolved", ips.len())
                        }
                    }
                }
                last = describe(&ips, expected);
                let size_ok = expected.is_none_or(|n| ips.len() == n);
                progress(&match expected {
                    Some(n) if !size_ok => {
                        format!("waiting for {n} replicas, {} resolved: {}", ips.len(), ip_list(&ips))
                    }
                    _ => format!(
                        "{} replicas resolved: {}; waiting for a stable answer",
                        ips.len(),
                        ip_list(&ips)
                    ),
                });
                if size_ok && streak >= want && !ips.is_empty() {
                    let local = resolver.local_addrs(&ips).await;
                    match ips.iter().position(|ip| local.contains(ip)).and_then(|i| u16::try_from(i).ok()) {
                        Some(me) => {
                            let peers: Vec<String> =
                                ips.iter().map(|&ip| SocketAddr::new(ip, spec.port).to_string()).collect();
                            tracing::info!(name = %spec.name, me, peers = ?peers, "discovery: membership settled");
                            return Ok(Discovered { me, peers });
                        }
                        None => {
                            // Our own replica is not in the answer (yet): not a membership we can join.
                            last = format!(
                                "{last}; none of this host's addresses ({}) is among them",
                                ip_list(&local)
                            );
                            progress(&last);
                            tracing::info!(name = %spec.name, local = ?local, "discovery: own address not resolved yet");
                        }
                    }
                }
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(DiscoveryError::Timeout { spec: spec.clone(), waited: now - start, last });
        }
        tokio::time::sleep(options.interval.min(deadline - now)).await;
    }
}

/// Sorted, deduplicated addresses; IPv4 only when there is any IPv4 address.
fn normalize(addrs: &[SocketAddr]) -> Vec<IpAddr> {
    let all: BTreeSet<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
    if all.iter().any(IpAddr::is_ipv4) {
        all.into_iter().filter(IpAddr::is_ipv4).collect()
    } else {
        all.into_iter().collect()
    }
}

fn describe(ips: &[IpAddr], expected: Option<usize>) -> String {
    match expected {
        Some(n) => format!("resolved {} of {n} expected replicas: {}", ips.len(), ip_list(ips)),
        None => format!("resolved {} replicas: {}", ips.len(), ip_list(ips)),
    }
}

/// `10.0.0.1, 10.0.0.2`, or `none`.
fn ip_list(ips: &[IpAddr]) -> String {
    if ips.is_empty() {
        return "none".into();
    }
    ips.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ")
}

/// A duration as people read it: `30 s`, `1.5 s`.
fn seconds(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 { format!("{} s", ms / 1000) } else { format!("{:.1} s", d.as_secs_f64()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers from a script; the last answer repeats forever.
    struct Scripted {
        answers: Mutex<VecDeque<Result<Vec<SocketAddr>, String>>>,
        local: Vec<IpAddr>,
        lookups: AtomicUsize,
    }

    impl Scripted {
        fn new(answers: Vec<io::Result<Vec<&str>>>, local: &[&str]) -> Self {
            let answers = answers
                .into_iter()
                .map(|a| {
                    a.map(|ips| ips.iter().map(|ip| SocketAddr::new(ip.parse().unwrap(), 7070)).collect())
                        .map_err(|e| e.to_string())
                })
                .collect();
            Scripted {
                answers: Mutex::new(answers),
                local: local.iter().map(|ip| ip.parse().unwrap()).collect(),
                lookups: AtomicUsize::new(0),
            }
        }
    }

    impl Resolver for Scripted {
        async fn resolve(&self, name: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
            assert_eq!((name, port), ("node", 7070));
            self.lookups.fetch_add(1, Ordering::SeqCst);
            let mut answers = self.answers.lock().unwrap();
            let answer = if answers.len() > 1 {
                answers.pop_front().unwrap()
            } else {
                answers.front().unwrap().clone()
            };
            answer.map_err(io::Error::other)
        }

        async fn local_addrs(&self, _candidates: &[IpAddr]) -> Vec<IpAddr> {
            self.local.clone()
        }
    }

    fn spec() -> DnsSpec {
        DnsSpec { name: "node".into(), port: 7070 }
    }

    fn fast(stable_polls: u32) -> DiscoveryOptions {
        DiscoveryOptions { interval: Duration::from_millis(1), stable_polls }
    }

    fn nxdomain() -> io::Result<Vec<&'static str>> {
        Err(io::Error::other("Name or service not known"))
    }

    #[test]
    fn parses_the_spec() {
        assert_eq!(DnsSpec::parse("dns:node:7070").unwrap(), spec());
        assert_eq!(
            DnsSpec::parse("dns:dmutex-peers.default.svc.cluster.local:1").unwrap(),
            DnsSpec { name: "dmutex-peers.default.svc.cluster.local".into(), port: 1 }
        );
        assert_eq!(spec().to_string(), "dns:node:7070");
        assert_eq!("dns:node:7070".parse::<DnsSpec>().unwrap(), spec());
    }

    #[test]
    fn rejects_bad_specs_naming_the_variable() {
        for bad in [
            "",
            "node:7070",
            "dns:node",
            "dns::7070",
            "dns:node:0",
            "dns:node:70000",
            "dns:node:x",
            "srv:node:1",
        ] {
            let err = DnsSpec::parse(bad).unwrap_err();
            assert!(matches!(err, DiscoveryError::InvalidSpec { .. }), "{bad}");
            assert!(err.to_string().contains("DMUTEX_DISCOVERY"), "{err}");
        }
    }

    #[tokio::test]
    async fn sorted_addresses_give_ids_and_own_address_gives_me() {
        // DNS order is random; ids follow the sorted IPv4 order (172.18.0.10 sorts after 172.18.0.9).
        let r = Scripted::new(
            vec![Ok(vec!["172.18.0.10", "172.18.0.2", "172.18.0.9"])],
            &["127.0.0.1", "172.18.0.9"],
        );
        let d = discover_with(&r, &spec(), Some(3), Duration::from_secs(5), fast(2)).await.unwrap();
        assert_eq!(
            d,
            Discovered {
                me: 1,
                peers: vec!["172.18.0.2:7070".into(), "172.18.0.9:7070".into(), "172.18.0.10:7070".into()]
            }
        );
    }

    #[tokio::test]
    async fn every_node_computes_the_same_ids() {
        let answer = vec!["10.0.0.3", "10.0.0.1", "10.0.0.2"];
        let mut seen = Vec::new();
        for (i, me) in ["10.0.0.1", "10.0.0.2", "10.0.0.3"].iter().enumerate() {
            let mut shuffled = answer.clone();
            shuffled.rotate_left(i);
            let r = Scripted::new(vec![Ok(shuffled)], &[me]);
            let d = discover_with(&r, &spec(), Some(3), Duration::from_secs(5), fast(1)).await.unwrap();
            assert_eq!(usize::from(d.me), i);
            seen.push(d.peers);
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]));
    }

    #[tokio::test]
    async fn waits_for_the_expected_count_through_lookup_failures() {
        let r = Scripted::new(
            vec![
                nxdomain(),
                Ok(vec!["10.0.0.2"]),
                Ok(vec!["10.0.0.2", "10.0.0.1"]),
                Ok(vec!["10.0.0.1", "10.0.0.3", "10.0.0.2"]),
            ],
            &["10.0.0.3"],
        );
        let d = discover_with(&r, &spec(), Some(3), Duration::from_secs(5), fast(2)).await.unwrap();
        assert_eq!(d.me, 2);
        assert_eq!(d.peers.len(), 3);
        // Three partial answers, then the full one twice (stable_polls = 2).
        assert_eq!(r.lookups.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn needs_a_stable_answer_without_expected_size() {
        let r = Scripted::new(
            vec![
                Ok(vec!["10.0.0.1"]),
                Ok(vec!["10.0.0.1", "10.0.0.2"]),
                Ok(vec!["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
            ],
            &["10.0.0.1"],
        );
        let d = discover_with(&r, &spec(), None, Duration::from_secs(5), fast(3)).await.unwrap();
        assert_eq!((d.me, d.peers.len()), (0, 3));
        assert_eq!(r.lookups.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_flapping_answer_restarts_the_streak() {
        let r = Scripted::new(
            vec![
                Ok(vec!["10.0.0.1", "10.0.0.2"]),
                Ok(vec!["10.0.0.1", "10.0.0.3"]),
                Ok(vec!["10.0.0.1", "10.0.0.2"]),
                Ok(vec!["10.0.0.1", "10.0.0.2"]),
            ],
            &["10.0.0.1"],
        );
        let d = discover_with(&r, &spec(), Some(2), Duration::from_secs(5), fast(2)).await.unwrap();
        assert_eq!(d.peers, vec!["10.0.0.1:7070", "10.0.0.2:7070"]);
        assert_eq!(r.lookups.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn ipv6_duplicates_are_dropped_when_ipv4_exists() {
        let r = Scripted::new(
            vec![Ok(vec!["fd00::2", "10.0.0.2", "10.0.0.1", "fd00::1", "10.0.0.1"])],
            &["fd00::2", "10.0.0.2"],
        );
        let d = discover_with(&r, &spec(), Some(2), Duration::from_secs(5), fast(1)).await.unwrap();
        assert_eq!(d, Discovered { me: 1, peers: vec!["10.0.0.1:7070".into(), "10.0.0.2:7070".into()] });
    }

    #[tokio::test]
    async fn ipv6_only_addresses_are_bracketed() {
        let r = Scripted::new(vec![Ok(vec!["fd00::2", "fd00::1"])], &["fd00::1"]);
        let d = discover_with(&r, &spec(), Some(2), Duration::from_secs(5), fast(1)).await.unwrap();
        assert_eq!(d, Discovered { me: 0, peers: vec!["[fd00::1]:7070".into(), "[fd00::2]:7070".into()] });
    }

    #[tokio::test]
    async fn times_out_saying_what_it_saw() {
        let r = Scripted::new(vec![Ok(vec!["10.0.0.1", "10.0.0.2"])], &["10.0.0.1"]);
        let err = discover_with(&r, &spec(), Some(5), Duration::from_millis(30), fast(1)).await.unwrap_err();
        let DiscoveryError::Timeout { last, .. } = &err else { panic!("{err}") };
        assert!(last.contains("2 of 5"), "{last}");
        assert!(err.to_string().contains("DMUTEX_DISCOVERY=dns:node:7070"), "{err}");
    }

    #[tokio::test]
    async fn errors_list_addresses_as_text_not_debug_output() {
        let r = Scripted::new(vec![Ok(vec!["10.0.0.2", "10.0.0.1"])], &["10.0.0.9"]);
        let err = discover_with(&r, &spec(), Some(2), Duration::from_millis(30), fast(1)).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("resolved 2 of 2 expected replicas: 10.0.0.1, 10.0.0.2"), "{text}");
        assert!(text.contains("none of this host's addresses (10.0.0.9) is among them"), "{text}");
        assert!(!text.contains('[') && !text.contains("Some(") && !text.contains("ms:"), "{text}");
        let DiscoveryError::Timeout { waited, .. } = &err else { panic!("{err}") };
        assert!(text.contains(&format!("after {}", seconds(*waited))), "{text}");
        assert_eq!(seconds(Duration::from_secs(120)), "120 s");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5 s");
        let r = Scripted::new(vec![nxdomain()], &["10.0.0.1"]);
        let err = discover_with(&r, &spec(), None, Duration::from_millis(20), fast(1)).await.unwrap_err();
        assert!(err.to_string().contains("lookup of node failed"), "{err}");
    }

    #[tokio::test]
    async fn progress_says_what_discovery_waits_for() {
        let r = Scripted::new(
            vec![nxdomain(), Ok(vec!["10.0.0.2"]), Ok(vec!["10.0.0.2", "10.0.0.1"])],
            &["10.0.0.1"],
        );
        let seen = Mutex::new(Vec::new());
        let d = discover_reporting(&r, &spec(), Some(2), Duration::from_secs(5), fast(2), |p: &str| {
            seen.lock().unwrap().push(p.to_string())
        })
        .await
        .unwrap();
        assert_eq!(d.me, 0);
        let seen = seen.into_inner().unwrap();
        assert!(seen[0].contains("waiting for DNS: lookup of node failed"), "{seen:?}");
        assert_eq!(seen[1], "waiting for 2 replicas, 1 resolved: 10.0.0.2");
        assert_eq!(seen[2], "2 replicas resolved: 10.0.0.1, 10.0.0.2; waiting for a stable answer");
    }

    #[tokio::test]
    async fn too_many_replicas_is_not_a_membership() {
        // Scaled past DMUTEX_CLUSTER_SIZE: never settle on a set other nodes might see differently.
        let r = Scripted::new(vec![Ok(vec!["10.0.0.1", "10.0.0.2", "10.0.0.3"])], &["10.0.0.1"]);
        let err = discover_with(&r, &spec(), Some(2), Duration::from_millis(30), fast(1)).await.unwrap_err();
        assert!(err.to_string().contains("3 of 2"), "{err}");
    }

    #[tokio::test]
    async fn not_a_member_times_out() {
        let r = Scripted::new(vec![Ok(vec!["10.0.0.1", "10.0.0.2"])], &["10.0.0.9"]);
        let err = discover_with(&r, &spec(), Some(2), Duration::from_millis(30), fast(1)).await.unwrap_err();
        assert!(err.to_string().contains("none of this host's addresses"), "{err}");
    }

    #[tokio::test]
    async fn lookup_failure_until_timeout_is_reported() {
        let r = Scripted::new(vec![nxdomain()], &["10.0.0.1"]);
        let err = discover_with(&r, &spec(), None, Duration::from_millis(20), fast(1)).await.unwrap_err();
        assert!(err.to_string().contains("Name or service not known"), "{err}");
    }

    #[tokio::test]
    async fn rejects_impossible_sizes() {
        let r = Scripted::new(vec![Ok(vec!["10.0.0.1"])], &["10.0.0.1"]);
        let opts = fast(1);
        assert_eq!(
            discover_with(&r, &spec(), Some(0), Duration::from_secs(1), opts).await,
            Err(DiscoveryError::InvalidSize(0))
        );
    }

    #[tokio::test]
    async fn system_resolver_finds_loopback_as_local() {
        // No DNS: an IP literal resolves locally, and the kernel's source address towards 127.0.0.1 is itself.
        let r = SystemResolver;
        let addrs = r.resolve("127.0.0.1", 7070).await.unwrap();
        assert_eq!(addrs, vec![SocketAddr::from(([127, 0, 0, 1], 7070))]);
        let local = r.local_addrs(&[IpAddr::from([127, 0, 0, 1])]).await;
        assert!(local.contains(&IpAddr::from([127, 0, 0, 1])), "{local:?}");
    }
}
