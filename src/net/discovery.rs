//! DNS discovery of a scaled cluster: `DMUTEX_DISCOVERY=dns:<name>:<port>`.
//!
//! For `docker compose up --scale node=N`: every replica of a compose service answers to the service name in the
//! engine's embedded DNS, so resolving `node` yields one address per running replica. Discovery turns that into
//! the peer list the node starts with:
//!
//! 1. Resolve `<name>` repeatedly (every [`DiscoveryOptions::interval`]) until the address set is *stable*: the
//!    same set [`DiscoveryOptions::stable_polls`] times in a row. Progress is logged whenever the count changes.
//!    If the answer has any IPv4 address, only IPv4 addresses are kept (a dual-stack replica must not count
//!    twice).
//! 2. Find this node's own address: the one in the answer that belongs to this host ([`Resolver::local_addrs`]:
//!    the addresses of its own host name and the source address the kernel picks towards each candidate, which
//!    needs no DNS at all).
//! 3. **Ids from replica names** ([`IdRule::ReplicaName`]), when the own address has one. Compose names the
//!    replicas `<project>_<service>_<N>` (v1) or `<project>-<service>-<N>` (v2), N = 1, 2, …, and the embedded
//!    DNS answers a reverse (PTR) query for a replica's address with that name
//!    (`dmutex_node_3.dmutex_default`, [`super::reverse_dns`]); the node id is `N − 1` ([`replica_index`]).
//!    The host name is the fallback for the own name (compose sets it to the container id, so it rarely
//!    helps). Every other address is looked up the same way: an id is a property of the replica, not of
//!    which others happen to run, so it survives any `--scale` and every node computes the same ids. Then,
//!    with `E` = `expected` (`DMUTEX_BOOTSTRAP_EXPECT`; without it, the number of replicas resolved):
//!    - a replica with id `< E` forms the cluster: it waits until the replicas with ids `0..E` all resolve and
//!      starts with them as its peers (id `i` ↔ `peers[i]`). The formation step in the node then forms view 1
//!      with them, or joins the view that already exists (a replica that restarted, or one that a later
//!      `--scale` brought back after a scale-down);
//!    - a replica with id `≥ E` (added by a later `--scale node=M`) **joins the running view**, like a
//!      Kubernetes pod beyond the seeds: its peers are the seeds (the replicas with ids `0, 1, …` up to the first
//!      one missing, at most `E`), and it advertises its own address ([`Discovered::joins`]). The members admit
//!      it with a view change; no running replica restarts.
//!
//!    A scale-down (`--scale node=M` with M smaller) stops the highest-numbered replicas with SIGTERM: each
//!    leaves gracefully and the others install the view without it.
//! 4. **Ids by sorted place** ([`IdRule::SortedPlace`], the behaviour before replica names), when the own
//!    address has no compose name (reverse DNS answers another name or none, or does not answer at all
//!    [`DiscoveryOptions::stable_polls`] times): wait for exactly `expected` addresses and give node id `i` to
//!    the `i`-th sorted address. The size is then set at start: a replica added later sees more addresses than
//!    `expected`, never settles and exits with [`DiscoveryError::Timeout`]; changing the size is a restart of
//!    the whole cluster (stop every node first, then start them all with the new size).
//!
//! Assumptions: replicas have one address each on the shared network while they run; compose's names are not
//! renamed by hand; without `expected`, all forming replicas start within one stable answer of each other (two
//! nodes could otherwise settle on different sets: always set `DMUTEX_BOOTSTRAP_EXPECT`). A replica whose
//! address changes on restart keeps its id (its name); the others learn the new address from its join.
//!
//! This module never decides anything from a partial answer: it returns a membership only once the answer is
//! stable and every address in it has an id, and fails with [`DiscoveryError::Timeout`] (saying what it last
//! saw) rather than guessing. A malformed DNS answer is a lookup failure, never a panic.

use std::collections::{BTreeMap, BTreeSet};
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

/// How discovery gave out node ids (see the module doc).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum IdRule {
    /// From each replica's compose name through reverse DNS (`<project>_<service>_<N>` → `N − 1`): stable
    /// across `--scale`.
    ReplicaName,
    /// The place among the sorted addresses: no replica names, so the size is fixed at start.
    SortedPlace,
}

/// The membership discovery settled on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Discovered {
    /// This node's id.
    pub me: u16,
    /// Peer addresses, `ip:port`, index = node id: the forming replicas `0..E` (this node included) or, for a
    /// joiner, its seeds (ids `0..k`, this node beyond them).
    pub peers: Vec<String>,
    /// This node's own peer address, `ip:port` (what a joiner advertises).
    pub advertise: String,
    /// How the ids were given.
    pub rule: IdRule,
    /// Whether this node joins a running cluster (its id is beyond the forming set): `peers` are its seeds.
    pub joins: bool,
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

    /// The name reverse DNS gives `ip`: `Ok(None)` when the server says it has none, `Err` when no usable
    /// answer came.
    fn name_of(&self, ip: IpAddr) -> impl Future<Output = io::Result<Option<String>>> + Send;

    /// This host's name, if known.
    fn host_name(&self) -> Option<String>;
}

/// The real resolver: the system's `getaddrinfo` (through tokio), the kernel's routing table, and PTR queries
/// to the name server of `/etc/resolv.conf` ([`super::reverse_dns`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

/// How long one reverse lookup may take (two tries): the embedded DNS answers in well under a millisecond.
const REVERSE_TIMEOUT: Duration = Duration::from_millis(400);

impl Resolver for SystemResolver {
    async fn resolve(&self, name: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((name, port)).await?.collect())
    }

    async fn local_addrs(&self, candidates: &[IpAddr]) -> Vec<IpAddr> {
        let mut local = BTreeSet::new();
        // The own host name resolves to the container's address (Docker writes it into /etc/hosts).
        if let Some(host) = self.host_name()
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

    async fn name_of(&self, ip: IpAddr) -> io::Result<Option<String>> {
        Ok(match super::reverse_dns::lookup(ip, REVERSE_TIMEOUT).await? {
            super::reverse_dns::PtrAnswer::Name(name) => Some(name),
            super::reverse_dns::PtrAnswer::NoName => None,
        })
    }

    fn host_name(&self) -> Option<String> {
        hostname::get().ok().and_then(|h| h.into_string().ok())
    }
}

/// The compose replica number in `name`, as a node id: `<project>_<service>_<N>` (compose v1) or
/// `<project>-<service>-<N>` (v2) in the first DNS label, N ≥ 1, gives `N − 1`. `service` is the discovery
/// name (its first label). Anything else (another service, no project, N = 0 or with a leading zero, an id
/// beyond `u16`) is `None`: a Kubernetes pod name (`dmutex-2`, no project) never matches, since its ordinal
/// would mean another id.
pub fn replica_index(name: &str, service: &str) -> Option<u16> {
    let label = name.split('.').next()?.to_ascii_lowercase();
    let service = service.split('.').next()?.to_ascii_lowercase();
    if service.is_empty() {
        return None;
    }
    ['_', '-'].into_iter().find_map(|sep| {
        let (head, number) = label.rsplit_once(sep)?;
        if number.is_empty() || number.starts_with('0') || !number.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let project = head.strip_suffix(service.as_str())?.strip_suffix(sep)?;
        if project.is_empty() {
            return None;
        }
        let n: u32 = number.parse().ok()?;
        u16::try_from(n - 1).ok()
    })
}

/// Tuning of the resolve loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscoveryOptions {
    /// Pause between two lookups.
    pub interval: Duration,
    /// How many identical answers in a row count as settled (at least 1); also how many reverse lookups of the
    /// own address may fail before ids fall back to the sorted place.
    pub stable_polls: u32,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        DiscoveryOptions { interval: Duration::from_millis(500), stable_polls: 3 }
    }
}

/// Discovers the cluster through the system resolver with default options.
///
/// Resolves `spec.name` until the answer settles, then returns the peers and this node's id. Fails after
/// `timeout`. See the module doc for the rules.
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

/// This node's own id, once known: the rule and, with replica names, the id.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Own {
    /// Not known yet (reverse DNS did not answer yet).
    Unknown {
        /// Reverse lookups of the own address that failed so far.
        failures: u32,
    },
    /// From the replica name.
    Named(u16),
    /// No replica name: ids by sorted place.
    Sorted,
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
    let mut own = Own::Unknown { failures: 0 };
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
                    tracing::info!(name = %spec.name, seen = ips.len(), expected = ?expected, "discovery: {} replicas resolved", ips.len());
                }
                // With sorted places (or before the rule is known) the size must match.
                let size_ok =
                    |own: Own| matches!(own, Own::Named(_)) || expected.is_none_or(|n| ips.len() == n);
                last = describe(&ips, expected);
                progress(&match expected {
                    Some(n) if !size_ok(own) => {
                        format!("waiting for {n} replicas, {} resolved: {}", ips.len(), ip_list(&ips))
                    }
                    _ => format!(
                        "{} replicas resolved: {}; waiting for a stable answer",
                        ips.len(),
                        ip_list(&ips)
                    ),
                });
                if streak >= want && !ips.is_empty() && (size_ok(own) || own != Own::Sorted) {
                    match settle(resolver, spec, expected, &ips, &mut own, want).await {
                        Ok(found) => {
                            tracing::info!(
                                name = %spec.name, me = found.me, peers = ?found.peers, rule = ?found.rule,
                                joins = found.joins, "discovery: membership settled"
                            );
                            return Ok(found);
                        }
                        Err(waiting) => {
                            last = waiting;
                            // Sorted places and the wrong count: "waiting for N replicas" above says it.
                            if size_ok(own) {
                                progress(&last);
                            }
                            tracing::debug!(name = %spec.name, "discovery: {last}");
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

/// Tries to settle on a stable answer `ips`: the membership, or what is still missing, in words.
async fn settle<R: Resolver>(
    resolver: &R,
    spec: &DnsSpec,
    expected: Option<usize>,
    ips: &[IpAddr],
    own: &mut Own,
    want: u32,
) -> Result<Discovered, String> {
    let local = resolver.local_addrs(ips).await;
    let Some(&my_ip) = ips.iter().find(|ip| local.contains(ip)) else {
        // Our own replica is not in the answer (yet): not a membership we can join.
        return Err(format!(
            "{}; none of this host's addresses ({}) is among them",
            describe(ips, expected),
            ip_list(&local)
        ));
    };
    let addr = |ip: IpAddr| SocketAddr::new(ip, spec.port).to_string();
    if let Own::Unknown { failures } = *own {
        let from_host = || resolver.host_name().and_then(|h| replica_index(&h, &spec.name));
        let (next, error) = match resolver.name_of(my_ip).await {
            Ok(Some(name)) => {
                (replica_index(&name, &spec.name).or_else(from_host).map_or(Own::Sorted, Own::Named), None)
            }
            Ok(None) => (from_host().map_or(Own::Sorted, Own::Named), None),
            Err(e) => match from_host() {
                Some(id) => (Own::Named(id), None),
                // No name server answers at all (no DNS but /etc/hosts): not a compose network.
                None if failures + 1 >= want => (Own::Sorted, Some(e)),
                None => (Own::Unknown { failures: failures + 1 }, Some(e)),
            },
        };
        *own = next;
        match (next, error) {
            (Own::Named(id), _) => tracing::info!(me = id, "discovery: node id from the replica name"),
            (Own::Sorted, None) => tracing::info!("discovery: no replica name: ids by sorted place"),
            (Own::Sorted, Some(e)) => {
                tracing::info!(error = %e, "discovery: reverse DNS does not answer: ids by sorted place")
            }
            (Own::Unknown { .. }, e) => {
                let e = e.map_or_else(String::new, |e| e.to_string());
                return Err(format!(
                    "{}; asking reverse DNS for this replica's name: {e}",
                    describe(ips, expected)
                ));
            }
        }
    }
    let me = match *own {
        Own::Named(me) => me,
        Own::Unknown { .. } | Own::Sorted => {
            if expected.is_some_and(|n| ips.len() != n) {
                return Err(describe(ips, expected));
            }
            let me = ips.iter().position(|&ip| ip == my_ip).and_then(|i| u16::try_from(i).ok());
            let me = me.ok_or_else(|| describe(ips, expected))?;
            let peers: Vec<String> = ips.iter().map(|&ip| addr(ip)).collect();
            return Ok(Discovered {
                me,
                peers,
                advertise: addr(my_ip),
                rule: IdRule::SortedPlace,
                joins: false,
            });
        }
    };
    // Every other replica's id from its name.
    let mut ids: BTreeMap<u16, IpAddr> = BTreeMap::new();
    ids.insert(me, my_ip);
    for &ip in ips.iter().filter(|&&ip| ip != my_ip) {
        let id = match resolver.name_of(ip).await {
            Ok(Some(name)) => replica_index(&name, &spec.name).ok_or_else(|| {
                format!("the replica at {ip} is named {name}, not <project>_{}_<N>", spec.name)
            })?,
            Ok(None) => return Err(format!("reverse DNS has no name for the replica at {ip} yet")),
            Err(e) => return Err(format!("asking reverse DNS for the name of the replica at {ip}: {e}")),
        };
        if let Some(other) = ids.insert(id, ip) {
            return Err(format!("two replicas at {other} and {ip} have id {id}: waiting for DNS to settle"));
        }
    }
    let forming = expected.unwrap_or(ids.len());
    let resolved = || ids.iter().map(|(id, ip)| format!("{id}: {ip}")).collect::<Vec<_>>().join(", ");
    if usize::from(me) < forming {
        let missing: Vec<String> = (0..forming)
            .filter_map(|i| u16::try_from(i).ok())
            .filter(|i| !ids.contains_key(i))
            .map(|i| i.to_string())
            .take(8)
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "waiting for the {forming} replicas with ids 0..{forming} that form the cluster; missing ids {}; \
                 resolved {}",
                missing.join(", "),
                resolved()
            ));
        }
        let peers = ids.values().take(forming).map(|&ip| addr(ip)).collect();
        return Ok(Discovered { me, peers, advertise: addr(my_ip), rule: IdRule::ReplicaName, joins: false });
    }
    // Beyond the forming set: join through the seeds, ids 0.. up to the first one missing.
    let seeds: Vec<String> = (0..forming)
        .map_while(|i| u16::try_from(i).ok().and_then(|i| ids.get(&i)))
        .map(|&ip| addr(ip))
        .collect();
    if seeds.is_empty() {
        return Err(format!(
            "node {me} joins the running cluster through the replicas with ids 0.., but id 0 is not resolved; \
             resolved {}",
            resolved()
        ));
    }
    Ok(Discovered { me, peers: seeds, advertise: addr(my_ip), rule: IdRule::ReplicaName, joins: true })
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

    /// Answers from a script; the last answer repeats forever. Reverse DNS: `names` (an address missing there
    /// has no name), or every reverse lookup fails (`reverse_fails`).
    struct Scripted {
        answers: Mutex<VecDeque<Result<Vec<SocketAddr>, String>>>,
        local: Vec<IpAddr>,
        lookups: AtomicUsize,
        names: BTreeMap<IpAddr, String>,
        reverse_fails: bool,
        reverse_lookups: AtomicUsize,
        host: Option<String>,
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
                names: BTreeMap::new(),
                reverse_fails: false,
                reverse_lookups: AtomicUsize::new(0),
                host: None,
            }
        }

        /// Reverse DNS names, `(address, name)`.
        fn named(mut self, names: &[(&str, &str)]) -> Self {
            self.names = names.iter().map(|(ip, name)| (ip.parse().unwrap(), name.to_string())).collect();
            self
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

        async fn name_of(&self, ip: IpAddr) -> io::Result<Option<String>> {
            self.reverse_lookups.fetch_add(1, Ordering::SeqCst);
            if self.reverse_fails {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"));
            }
            Ok(self.names.get(&ip).cloned())
        }

        fn host_name(&self) -> Option<String> {
            self.host.clone()
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
                peers: vec!["172.18.0.2:7070".into(), "172.18.0.9:7070".into(), "172.18.0.10:7070".into()],
                advertise: "172.18.0.9:7070".into(),
                rule: IdRule::SortedPlace,
                joins: false,
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
        assert_eq!((d.me, d.peers), (1, vec!["10.0.0.1:7070".into(), "10.0.0.2:7070".into()]));
    }

    #[tokio::test]
    async fn ipv6_only_addresses_are_bracketed() {
        let r = Scripted::new(vec![Ok(vec!["fd00::2", "fd00::1"])], &["fd00::1"]);
        let d = discover_with(&r, &spec(), Some(2), Duration::from_secs(5), fast(1)).await.unwrap();
        assert_eq!((d.me, d.peers), (0, vec!["[fd00::1]:7070".into(), "[fd00::2]:7070".into()]));
        assert_eq!(d.advertise, "[fd00::1]:7070");
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

    #[test]
    fn replica_index_reads_compose_names() {
        // v1 `<project>_<service>_<N>`, v2 `<project>-<service>-<N>`, with the network as a second label.
        assert_eq!(replica_index("dmutex_node_1.dmutex_default", "node"), Some(0));
        assert_eq!(replica_index("dmutex_node_3.dmutex_default.", "node"), Some(2));
        assert_eq!(replica_index("dmutex-node-12.dmutex_default", "node"), Some(11));
        assert_eq!(replica_index("dmutex-node-7", "node"), Some(6));
        // Project names may hold either separator; the case of the name does not matter.
        assert_eq!(replica_index("my-app_v2_node_4.my-app_v2_default", "node"), Some(3));
        assert_eq!(replica_index("My-App-Node-2", "NODE"), Some(1));
        assert_eq!(
            replica_index("dmutexe2e123_node_5.dmutexe2e123_default", "node.dmutexe2e123_default"),
            Some(4)
        );
        assert_eq!(replica_index("p_node_65536", "node"), Some(65535));
        for other in [
            "p_node_0",           // compose counts from 1
            "p_node_01",          // not a number compose writes
            "p_node_65537",       // beyond the ids
            "p_node_99999999999", // beyond u32
            "p_node_",            // no number
            "p_node_x",           // not a number
            "node_3",             // no project
            "dmutex-2",           // a Kubernetes pod: its ordinal is another id
            "p_otlp-sink_1",      // another service
            "p_xnode_1",          // another service that ends like it
            "p-node_1",           // mixed separators
            "10-0-0-1",           // a reverse name made of the address
            "",
        ] {
            assert_eq!(replica_index(other, "node"), None, "{other}");
        }
        assert_eq!(replica_index("p_node_1", ""), None);
    }

    /// v1 names for `addresses[i]` ↔ `p_node_<numbers[i]>`.
    fn names<'a>(addresses: &[&'a str], numbers: &[u16]) -> Vec<(&'a str, String)> {
        addresses.iter().zip(numbers).map(|(ip, n)| (*ip, format!("p_node_{n}.p_default"))).collect()
    }

    fn scripted_named(answer: &[&str], me: &str, numbers: &[u16]) -> Scripted {
        let named = names(answer, numbers);
        let pairs: Vec<(&str, &str)> = named.iter().map(|(ip, n)| (*ip, n.as_str())).collect();
        Scripted::new(vec![Ok(answer.to_vec())], &[me]).named(&pairs)
    }

    #[tokio::test]
    async fn ids_come_from_replica_names_not_from_address_order() {
        // Replica 1 has the highest address: its id is still 0, and every node agrees.
        let answer = ["10.0.0.9", "10.0.0.2", "10.0.0.5"];
        let numbers = [1, 3, 2];
        for (i, me) in answer.iter().enumerate() {
            let r = scripted_named(&answer, me, &numbers);
            let d = discover_with(&r, &spec(), Some(3), Duration::from_secs(5), fast(1)).await.unwrap();
            assert_eq!(d.me, numbers[i] - 1);
            assert_eq!(d.peers, vec!["10.0.0.9:7070", "10.0.0.5:7070", "10.0.0.2:7070"]);
            assert_eq!((d.rule, d.joins), (IdRule::ReplicaName, false));
            assert_eq!(d.advertise, format!("{me}:7070"));
        }
    }

    #[tokio::test]
    async fn a_forming_replica_waits_for_every_forming_id_and_ignores_later_ones() {
        // Expect 3; replicas 1, 2 and 4 run (3 not yet): replica 2 waits, naming the missing id.
        let r = Scripted::new(
            vec![
                Ok(vec!["10.0.0.1", "10.0.0.2", "10.0.0.4"]),
                Ok(vec!["10.0.0.1", "10.0.0.2", "10.0.0.4"]),
                Ok(vec!["10.0.0.1", "10.0.0.2", "10.0.0.4", "10.0.0.3"]),
            ],
            &["10.0.0.2"],
        )
        .named(&[
            ("10.0.0.1", "p_node_1.p_default"),
            ("10.0.0.2", "p_node_2.p_default"),
            ("10.0.0.3", "p_node_3.p_default"),
            ("10.0.0.4", "p_node_4.p_default"),
        ]);
        let seen = Mutex::new(Vec::new());
        let d = discover_reporting(&r, &spec(), Some(3), Duration::from_secs(5), fast(2), |p: &str| {
            seen.lock().unwrap().push(p.to_string())
        })
        .await
        .unwrap();
        // More replicas than expected no longer blocks: the fourth joins on its own.
        assert_eq!((d.me, d.joins), (1, false));
        assert_eq!(d.peers, vec!["10.0.0.1:7070", "10.0.0.2:7070", "10.0.0.3:7070"]);
        let seen = seen.into_inner().unwrap();
        assert!(
            seen.iter().any(|p| p.contains("that form the cluster; missing ids 2;")
                && p.contains("resolved 0: 10.0.0.1, 1: 10.0.0.2, 3: 10.0.0.4")),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn a_replica_beyond_the_forming_set_joins_through_the_seeds() {
        // Scaled from 5 to 7 and back to 3, then to 6: replicas 1-3 and the new 6 run; expect 5.
        let answer = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.16"];
        let r = scripted_named(&answer, "10.0.0.16", &[1, 2, 3, 6]);
        let d = discover_with(&r, &spec(), Some(5), Duration::from_secs(5), fast(1)).await.unwrap();
        assert_eq!(
            d,
            Discovered {
                me: 5,
                peers: vec!["10.0.0.1:7070".into(), "10.0.0.2:7070".into(), "10.0.0.3:7070".into()],
                advertise: "10.0.0.16:7070".into(),
                rule: IdRule::ReplicaName,
                joins: true,
            }
        );
        // Seeds stop at the first missing id (replica 3, id 2, is gone): ids 0 and 1 only.
        let answer = ["10.0.0.1", "10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7"];
        let r = scripted_named(&answer, "10.0.0.7", &[1, 2, 4, 5, 6, 7]);
        let d = discover_with(&r, &spec(), Some(3), Duration::from_secs(5), fast(1)).await.unwrap();
        assert_eq!((d.me, d.joins), (6, true));
        assert_eq!(d.peers, vec!["10.0.0.1:7070", "10.0.0.2:7070"]);
    }

    #[tokio::test]
    async fn a_joiner_without_the_first_seed_waits() {
        let answer = ["10.0.0.2", "10.0.0.6"];
        let r = scripted_named(&answer, "10.0.0.6", &[2, 6]);
        let err = discover_with(&r, &spec(), Some(5), Duration::from_millis(30), fast(1)).await.unwrap_err();
        assert!(err.to_string().contains("node 5 joins the running cluster"), "{err}");
        assert!(err.to_string().contains("id 0 is not resolved"), "{err}");
    }

    #[tokio::test]
    async fn a_peer_without_a_name_or_a_duplicate_id_is_waited_for() {
        // The own name is known, another replica's not yet (or it is not a replica of this service).
        let r = Scripted::new(vec![Ok(vec!["10.0.0.1", "10.0.0.2"])], &["10.0.0.1"])
            .named(&[("10.0.0.1", "p_node_1.p_default")]);
        let err = discover_with(&r, &spec(), Some(2), Duration::from_millis(30), fast(1)).await.unwrap_err();
        assert!(err.to_string().contains("no name for the replica at 10.0.0.2 yet"), "{err}");
        let r = Scripted::new(vec![Ok(vec!["10.0.0.1", "10.0.0.2"])], &["10.0.0.1"])
            .named(&[("10.0.0.1", "p_node_1.p_default"), ("10.0.0.2", "p_other_1.p_default")]);
        let err = discover_with(&r, &spec(), Some(2), Duration::from_millis(30), fast(1)).await.unwrap_err();
        assert!(err.to_string().contains("is named p_other_1.p_default, not <project>_node_<N>"), "{err}");
        // A stale record of a removed container next to its successor: two addresses, one id.
        let r = scripted_named(&["10.0.0.1", "10.0.0.2", "10.0.0.3"], "10.0.0.1", &[1, 2, 2]);
        let err = discover_with(&r, &spec(), Some(2), Duration::from_millis(30), fast(1)).await.unwrap_err();
        assert!(err.to_string().contains("have id 1"), "{err}");
    }

    #[tokio::test]
    async fn the_host_name_is_the_fallback_for_the_own_name() {
        let mut r = Scripted::new(vec![Ok(vec!["10.0.0.1", "10.0.0.2"])], &["10.0.0.2"])
            .named(&[("10.0.0.1", "p_node_1.p_default")]);
        r.host = Some("p-node-2".into());
        let d = discover_with(&r, &spec(), Some(2), Duration::from_secs(5), fast(1)).await.unwrap();
        assert_eq!((d.me, d.rule), (1, IdRule::ReplicaName));
    }

    #[tokio::test]
    async fn without_reverse_dns_ids_fall_back_to_sorted_places() {
        // Every reverse lookup fails: after stable_polls failures of the own one, ids by sorted place.
        let mut r = Scripted::new(vec![Ok(vec!["10.0.0.2", "10.0.0.1"])], &["10.0.0.2"]);
        r.reverse_fails = true;
        let d = discover_with(&r, &spec(), Some(2), Duration::from_secs(5), fast(3)).await.unwrap();
        assert_eq!((d.me, d.rule), (1, IdRule::SortedPlace));
        assert_eq!(r.reverse_lookups.load(Ordering::SeqCst), 3);
        // A name that is no compose name: sorted places at once, one reverse lookup.
        let r = Scripted::new(vec![Ok(vec!["10.0.0.2", "10.0.0.1"])], &["10.0.0.1"])
            .named(&[("10.0.0.1", "localhost")]);
        let d = discover_with(&r, &spec(), Some(2), Duration::from_secs(5), fast(1)).await.unwrap();
        assert_eq!((d.me, d.rule), (0, IdRule::SortedPlace));
        assert_eq!(r.reverse_lookups.load(Ordering::SeqCst), 1);
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
