//! The original programs' experiment as a workload that runs inside one `dmutex node` process.
//!
//! Every node of a `dmutex cluster` run executes the same loop, `iterations` times: acquire `lock` through the
//! node's own lock service (in-process, no HTTP), then run the critical section — a read-modify-write of one
//! shared counter file (read the integer, sleep `cs_ms`, write the value + 1) — then release. With mutual
//! exclusion the file ends at `nodes × iterations`; a violation shows as a lost update (two nodes read the same
//! value) and as overlapping `[enter, exit]` intervals in the report, which `dmutex cluster` checks.
//!
//! Assumptions: every node of the run shares one host clock, so the wall-clock timestamps of different
//! processes (UNIX milliseconds, µs precision) can be compared to detect overlaps. Each node opens the counter
//! once and the section is one positioned read and one positioned write over the text, without fsync (see
//! `CounterFile`): a section costs two system calls, so a zero-length section measures the lock service.
//!
//! A common start: with a start file ([`WorkloadConfig::start_file`]), every node waits, once ready, until the
//! file holds a start time, and then until that time, so all nodes compete from the first entry. `dmutex cluster`
//! writes it once every node is ready. Without one a node starts as soon as it is ready, tens of milliseconds
//! apart from the others, and with short critical sections the first node makes many entries alone.
//!
//! A node's next acquire is issued together with its release (see `one_entry`), as a client that asks again
//! at once would: the node handles the two in order and its RELEASE and next REQUEST share one write per peer.
//!
//! Must never: hold the lock across an error path (release is attempted after every entered critical section),
//! or panic on the counter file's content (it is parsed and a bad value is reported as an error).

use crate::algo::Algorithm;
use crate::api::types::{AcquireRequest, Grant, LeaseId};
use crate::node::NodeHandle;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// How often [`run_workload`] asks [`LockService::ready`] while it waits for the node to join.
const READY_POLL: Duration = Duration::from_millis(50);
/// How often [`run_workload`] looks for the start file: much shorter than the lead the runner gives.
const START_POLL: Duration = Duration::from_millis(5);
/// The latest start time a start file may name, from when it is read: a larger one is a mistake, not a plan.
const MAX_START_DELAY_MS: f64 = 60_000.0;

/// What one node's workload does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadConfig {
    /// Critical-section entries to make.
    pub iterations: u32,
    /// Time spent inside the critical section, between reading and writing the counter (ms).
    pub cs_ms: u64,
    /// The lock every node of the run contends for.
    pub lock: String,
    /// The shared counter file (one for the whole run).
    pub counter_file: PathBuf,
    /// The algorithm that serves the acquires.
    pub algorithm: Algorithm,
    /// How long one acquire may wait before the workload gives up.
    pub acquire_timeout: Duration,
    /// The common start: once ready, wait until this file holds a start time (UNIX ms, as text), then until
    /// that time. `None`: start as soon as the node is ready.
    pub start_file: Option<PathBuf>,
}

/// The node's lock service as the workload sees it: a running node's [`NodeHandle`] in-process, or a fake in
/// tests.
pub trait LockService: Clone + Send + Sync + 'static {
    /// Waits for `lock` under `algorithm`, at most `timeout`.
    fn acquire(
        &self,
        lock: &str,
        algorithm: Algorithm,
        timeout: Duration,
    ) -> impl Future<Output = Result<Grant, String>> + Send;
    /// Leaves the critical section of the grant `lease` of `lock`.
    fn release(&self, lock: &str, lease: &LeaseId) -> impl Future<Output = Result<(), String>> + Send;
    /// Whether the node has joined its cluster and can serve acquires.
    fn ready(&self) -> impl Future<Output = bool> + Send;
    /// The node's Lamport clock now (for the algorithm the workload uses).
    fn lamport_clock(&self) -> u64;
}

/// The workload inside a `dmutex node` process: straight to the node loop, no HTTP.
impl LockService for NodeHandle {
    async fn acquire(&self, lock: &str, algorithm: Algorithm, timeout: Duration) -> Result<Grant, String> {
        let req = AcquireRequest {
            lock: lock.to_string(),
            algorithm: Some(algorithm),
            timeout: Some(timeout.into()),
            ttl: None,
            lease: None,
            parent: None,
            wait: true,
        };
        NodeHandle::acquire(self, req).await.map_err(|e| e.to_string())
    }

    async fn release(&self, lock: &str, lease: &LeaseId) -> Result<(), String> {
        NodeHandle::release(self, lock, &lease.to_string()).await.map_err(|e| e.to_string())
    }

    async fn ready(&self) -> bool {
        self.shared.readiness().ready
    }

    fn lamport_clock(&self) -> u64 {
        self.shared.clock().get()
    }
}

/// One critical-section entry, as the node that made it saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CsEntry {
    /// The node that entered.
    pub node: u16,
    /// The lock it entered.
    pub lock: String,
    /// Which of the node's iterations (0-based).
    pub iteration: u32,
    /// The grant's fencing token.
    pub fencing_token: u64,
    /// The node's Lamport clock right after the grant.
    pub lamport_clock_at_enter: u64,
    /// When the acquire was sent (UNIX ms, µs precision).
    pub request_ms: f64,
    /// When the grant arrived: the critical section starts (UNIX ms).
    pub enter_ms: f64,
    /// When the counter was written: the critical section ends, just before the release (UNIX ms).
    pub exit_ms: f64,
    /// The counter value read on entry.
    pub counter_read: u64,
    /// The counter value written on exit.
    pub counter_written: u64,
}

/// Where a workload is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadState {
    /// Waiting for the node to join its cluster.
    Waiting,
    /// Making entries.
    Running,
    /// Every iteration done.
    Done,
    /// Stopped early on an error (see [`WorkloadReport::errors`]).
    Failed,
}

/// A workload's progress, published while it runs.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadStatus {
    /// Where it is.
    pub state: WorkloadState,
    /// Entries completed.
    pub done: u32,
    /// Entries to make.
    pub total: u32,
}

impl WorkloadStatus {
    /// The status before anything ran.
    pub fn waiting(total: u32) -> Self {
        WorkloadStatus { state: WorkloadState::Waiting, done: 0, total }
    }

    /// Whether the workload has stopped (done or failed).
    pub(crate) fn finished(&self) -> bool {
        matches!(self.state, WorkloadState::Done | WorkloadState::Failed)
    }
}

/// What one node's workload did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadReport {
    /// The node whose workload this is.
    pub node: u16,
    /// The algorithm used.
    pub algorithm: Algorithm,
    /// Entries it was asked to make.
    pub iterations: u32,
    /// Entries made, in order.
    pub entries: Vec<CsEntry>,
    /// What went wrong (empty on success). The workload stops at the first error.
    pub errors: Vec<String>,
    /// When the first iteration started, after the node became ready and the common start (UNIX ms).
    pub started_ms: f64,
    /// When the workload stopped (UNIX ms).
    pub finished_ms: f64,
}

/// Wall-clock now in UNIX milliseconds with microsecond precision.
pub(crate) fn unix_ms() -> f64 {
    // A clock before 1970 is a broken host, not a reason to panic: report 0.
    let micros = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
    micros as f64 / 1000.0
}

/// Creates the counter file holding `0` unless it exists. Safe when several processes race to create it.
pub(crate) async fn ensure_counter_file(path: &Path) -> std::io::Result<()> {
    let created = tokio::fs::OpenOptions::new().write(true).create_new(true).open(path).await;
    match created {
        Ok(mut file) => {
            use tokio::io::AsyncWriteExt;
            file.write_all(b"0").await?;
            file.flush().await
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads the counter. An empty file reads as 0 (a creator that has not written yet).
pub(crate) async fn read_counter(path: &Path) -> Result<u64, String> {
    // Plain blocking calls: microseconds on a local file, where tokio::fs would add a thread hand-off per call
    // to every critical section.
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading counter file {}: {e}", path.display()))?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    text.parse().map_err(|e| format!("counter file {} holds {text:?}: {e}", path.display()))
}

/// The shared counter, opened once per run: the critical section is one positioned read and one positioned
/// write of the same file (two system calls, no path lookups), so the section costs microseconds.
///
/// The value only grows, so each write covers the previous text completely (the file is truncated only when
/// a shorter text is written). With mutual exclusion nobody reads while another node writes; without it, a
/// reader may see a mix of two values, which parses as a wrong number and shows as a lost update.
#[derive(Debug)]
pub(crate) struct CounterFile {
    file: std::fs::File,
    path: PathBuf,
    /// Length of the text last read.
    len: usize,
}

impl CounterFile {
    /// Opens an existing counter file for reading and writing.
    pub(crate) fn open(path: &Path) -> Result<Self, String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| format!("opening counter file {}: {e}", path.display()))?;
        Ok(CounterFile { file, path: path.to_owned(), len: 0 })
    }

    /// Reads the value. An empty file reads as 0.
    pub(crate) fn read(&mut self) -> Result<u64, String> {
        use std::os::unix::fs::FileExt;
        // u64::MAX has 20 digits; anything longer is not a counter.
        let mut buf = [0u8; 32];
        let n =
            self.file.read_at(&mut buf, 0).map_err(|e| format!("reading {}: {e}", self.path.display()))?;
        self.len = n;
        let text = String::from_utf8_lossy(&buf[..n]);
        let text = text.trim();
        if text.is_empty() {
            return Ok(0);
        }
        text.parse().map_err(|e| format!("counter file {} holds {text:?}: {e}", self.path.display()))
    }

    /// Writes `value` over the file's text.
    pub(crate) fn write(&mut self, value: u64) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        let text = value.to_string();
        let err = |e: std::io::Error| format!("writing {}: {e}", self.path.display());
        self.file.write_all_at(text.as_bytes(), 0).map_err(err)?;
        if text.len() < self.len {
            self.file.set_len(text.len() as u64).map_err(err)?;
        }
        self.len = text.len();
        Ok(())
    }
}

/// Runs the workload on `svc` as node `node_id`, publishing progress on `progress`, and returns its report.
///
/// Waits until the service is ready, then makes `cfg.iterations` entries. Stops at the first error (the
/// report's `errors` says which); the lock is released after every entered critical section, even when the
/// counter file could not be read or written.
pub async fn run_workload<S: LockService>(
    svc: S,
    node_id: u16,
    cfg: WorkloadConfig,
    progress: watch::Sender<WorkloadStatus>,
) -> WorkloadReport {
    let total = cfg.iterations;
    progress.send_replace(WorkloadStatus::waiting(total));
    while !svc.ready().await {
        tokio::time::sleep(READY_POLL).await;
    }
    let start = match &cfg.start_file {
        Some(path) => wait_for_start(path).await,
        None => Ok(()),
    };

    let mut report = WorkloadReport {
        node: node_id,
        algorithm: cfg.algorithm,
        iterations: total,
        entries: Vec::with_capacity(total as usize),
        errors: Vec::new(),
        started_ms: unix_ms(),
        finished_ms: 0.0,
    };
    if let Err(e) = start {
        report.errors.push(e);
        report.finished_ms = report.started_ms;
        progress.send_replace(WorkloadStatus { state: WorkloadState::Failed, done: 0, total });
        return report;
    }
    progress.send_replace(WorkloadStatus { state: WorkloadState::Running, done: 0, total });

    let mut counter = match ensure_counter_file(&cfg.counter_file).await {
        Ok(()) => CounterFile::open(&cfg.counter_file).map_err(|e| report.errors.push(e)).ok(),
        Err(e) => {
            report.errors.push(format!("creating counter file {}: {e}", cfg.counter_file.display()));
            None
        }
    };
    // The next iteration's acquire travels with this iteration's release (see `one_entry`).
    let mut next: Option<Acquired> = None;
    for iteration in 0..total {
        let Some(counter) = counter.as_mut().filter(|_| report.errors.is_empty()) else { break };
        let more = iteration + 1 < total;
        match one_entry(&svc, node_id, iteration, &cfg, counter, next.take(), more).await {
            Ok((entry, acquired)) => {
                report.entries.push(entry);
                next = acquired;
            }
            Err(e) => report.errors.push(format!("iteration {iteration}: {e}")),
        }
        let done = report.entries.len() as u32;
        progress.send_replace(WorkloadStatus { state: WorkloadState::Running, done, total });
    }

    report.finished_ms = unix_ms();
    let state = if report.errors.is_empty() { WorkloadState::Done } else { WorkloadState::Failed };
    progress.send_replace(WorkloadStatus { state, done: report.entries.len() as u32, total });
    report
}

/// Waits until `path` holds a start time (UNIX ms), then until that time (at once if it has passed). The
/// writer replaces the file in one rename, so a file that exists holds the whole number; an empty one counts as
/// not written yet.
pub(crate) async fn wait_for_start(path: &Path) -> Result<(), String> {
    loop {
        match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => {
                let text = text.trim();
                let at: f64 = text.parse().ok().filter(|t: &f64| t.is_finite()).ok_or_else(|| {
                    format!("start file {} holds \"{text}\", not a UNIX time in milliseconds", path.display())
                })?;
                let wait_ms = at - unix_ms();
                if wait_ms > MAX_START_DELAY_MS {
                    return Err(format!(
                        "start file {} names a start {:.0} s from now (at most {:.0} s)",
                        path.display(),
                        wait_ms / 1000.0,
                        MAX_START_DELAY_MS / 1000.0
                    ));
                }
                if wait_ms > 0.0 {
                    tokio::time::sleep(Duration::from_secs_f64(wait_ms / 1000.0)).await;
                }
                return Ok(());
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(format!("reading start file {}: {e}", path.display())),
        }
        tokio::time::sleep(START_POLL).await;
    }
}

/// Writes the start time `at_ms` (UNIX ms) into `path` for [`wait_for_start`]: into a file beside it first,
/// then renamed over it, so a reader never sees half a number.
pub(crate) fn write_start_file(path: &Path, at_ms: f64) -> std::io::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    std::fs::write(&partial, format!("{at_ms:.3}"))?;
    std::fs::rename(&partial, path)
}

/// The outcome of an acquire issued ahead of its iteration, and when it was issued (UNIX ms).
type Acquired = (Result<Grant, String>, f64);

/// One acquire – read, sleep, write – release.
///
/// `acquired` is this iteration's acquire when the previous iteration already issued it. With `more`, the
/// next iteration's acquire is issued together with this release (the node handles them in that order), so
/// a node's RELEASE and its next REQUEST leave in one write per peer, as they would from any client that
/// releases and immediately asks again; its outcome is returned for the next iteration.
async fn one_entry<S: LockService>(
    svc: &S,
    node: u16,
    iteration: u32,
    cfg: &WorkloadConfig,
    counter: &mut CounterFile,
    acquired: Option<Acquired>,
    more: bool,
) -> Result<(CsEntry, Option<Acquired>), String> {
    let (grant, request_ms) = match acquired {
        Some(a) => a,
        None => {
            let request_ms = unix_ms();
            (svc.acquire(&cfg.lock, cfg.algorithm, cfg.acquire_timeout).await, request_ms)
        }
    };
    let grant = grant.map_err(|e| format!("acquire {:?}: {e}", cfg.lock))?;
    let enter_ms = unix_ms();
    let lamport_clock_at_enter = svc.lamport_clock();

    let section = async {
        let read = counter.read()?;
        if cfg.cs_ms > 0 {
            tokio::time::sleep(Duration::from_millis(cfg.cs_ms)).await;
        }
        let written = read.saturating_add(1);
        counter.write(written)?;
        Ok::<_, String>((read, written))
    }
    .await;
    let exit_ms = unix_ms();

    // Release even when the section failed: a workload must not leave the lock held.
    let release = svc.release(&cfg.lock, &grant.lease);
    let (released, next) = if more && section.is_ok() {
        let next_ms = unix_ms();
        // `join` polls the release first, so its command reaches the node before the acquire's.
        let (released, next) =
            tokio::join!(release, svc.acquire(&cfg.lock, cfg.algorithm, cfg.acquire_timeout));
        (released, Some((next, next_ms)))
    } else {
        (release.await, None)
    };
    let released = released.map_err(|e| format!("release {:?}: {e}", cfg.lock));
    if released.is_err()
        && let Some((Ok(g), _)) = &next
    {
        // The run stops here: do not leave the acquire issued with the failed release holding the lock.
        let _ = svc.release(&cfg.lock, &g.lease).await;
    }
    let (counter_read, counter_written) = section?;
    released?;
    let entry = CsEntry {
        node,
        lock: cfg.lock.clone(),
        iteration,
        fencing_token: grant.fencing_token,
        lamport_clock_at_enter,
        request_ms,
        enter_ms,
        exit_ms,
        counter_read,
        counter_written,
    };
    Ok((entry, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::sync::{Mutex, OwnedMutexGuard};

    /// A lock service that is one tokio mutex: exclusive by construction, tokens counted up.
    #[derive(Clone, Default)]
    struct FakeLocks {
        lock: Arc<Mutex<()>>,
        held: Arc<std::sync::Mutex<BTreeMap<LeaseId, OwnedMutexGuard<()>>>>,
        tokens: Arc<AtomicU64>,
        fail_release: bool,
    }

    impl LockService for FakeLocks {
        async fn acquire(
            &self,
            lock: &str,
            algorithm: Algorithm,
            timeout: Duration,
        ) -> Result<Grant, String> {
            let guard = tokio::time::timeout(timeout, self.lock.clone().lock_owned())
                .await
                .map_err(|_| "timed out".to_string())?;
            let token = self.tokens.fetch_add(1, Ordering::SeqCst) + 1;
            let lease = LeaseId::Str(format!("lease-{token}"));
            self.held.lock().map_err(|e| e.to_string())?.insert(lease.clone(), guard);
            Ok(Grant {
                name: lock.to_string(),
                lease,
                fencing_token: token,
                algorithm: Some(algorithm),
                node_id: Some(0),
                waited_ms: Some(0),
                ttl_ms: None,
            })
        }

        async fn release(&self, _lock: &str, lease: &LeaseId) -> Result<(), String> {
            let guard = self.held.lock().map_err(|e| e.to_string())?.remove(lease);
            match guard {
                Some(_) if self.fail_release => Err("refused".into()),
                Some(_) => Ok(()),
                None => Err(format!("unknown lease {lease}")),
            }
        }

        async fn ready(&self) -> bool {
            true
        }

        fn lamport_clock(&self) -> u64 {
            self.tokens.load(Ordering::SeqCst) * 3
        }
    }

    fn config(dir: &Path, iterations: u32) -> WorkloadConfig {
        WorkloadConfig {
            iterations,
            cs_ms: 1,
            lock: "counter".into(),
            counter_file: dir.join("counter"),
            algorithm: Algorithm::Lamport,
            acquire_timeout: Duration::from_secs(5),
            start_file: None,
        }
    }

    #[tokio::test]
    async fn a_start_file_holds_every_workload_until_its_start_time() {
        let dir = tempfile::tempdir().unwrap();
        let start = dir.path().join("start");
        let svc = FakeLocks::default();
        let mut tasks = Vec::new();
        for node in 0..3u16 {
            let (tx, _rx) = watch::channel(WorkloadStatus::waiting(0));
            let cfg = WorkloadConfig { start_file: Some(start.clone()), ..config(dir.path(), 2) };
            tasks.push(tokio::spawn(run_workload(svc.clone(), node, cfg, tx)));
        }
        // Nothing starts while the file is missing or empty.
        tokio::time::sleep(Duration::from_millis(60)).await;
        std::fs::write(&start, "").unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(svc.tokens.load(Ordering::SeqCst), 0, "a workload started before the start file");
        let at = unix_ms() + 150.0;
        write_start_file(&start, at).unwrap();
        assert!(!dir.path().join("start.partial").exists());
        for task in tasks {
            let report = task.await.unwrap();
            assert!(report.errors.is_empty(), "{:?}", report.errors);
            assert_eq!(report.entries.len(), 2);
            // Not before the start time (the clock's µs rounding aside).
            assert!(report.started_ms >= at - 1.0, "started {} ms early", at - report.started_ms);
            assert!(report.entries[0].request_ms >= at - 1.0);
        }
    }

    #[tokio::test]
    async fn a_bad_start_file_fails_the_workload_without_an_entry() {
        let dir = tempfile::tempdir().unwrap();
        let start = dir.path().join("start");
        for (text, expected) in [("soon", "not a UNIX time"), ("99999999999999", "s from now")] {
            std::fs::write(&start, text).unwrap();
            let (tx, rx) = watch::channel(WorkloadStatus::waiting(0));
            let cfg = WorkloadConfig { start_file: Some(start.clone()), ..config(dir.path(), 2) };
            let report = run_workload(FakeLocks::default(), 0, cfg, tx).await;
            assert!(report.entries.is_empty());
            assert_eq!(report.errors.len(), 1);
            assert!(report.errors[0].contains(expected), "{:?}", report.errors);
            assert_eq!(rx.borrow().state, WorkloadState::Failed);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_nodes_increment_the_counter_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let svc = FakeLocks::default();
        let mut tasks = Vec::new();
        let mut watchers = Vec::new();
        for node in 0..3u16 {
            let (tx, rx) = watch::channel(WorkloadStatus::waiting(0));
            watchers.push(rx);
            tasks.push(tokio::spawn(run_workload(svc.clone(), node, config(dir.path(), 4), tx)));
        }
        let mut entries = Vec::new();
        for (node, task) in tasks.into_iter().enumerate() {
            let report = task.await.unwrap();
            assert_eq!(report.node, node as u16);
            assert_eq!(report.algorithm, Algorithm::Lamport);
            assert!(report.errors.is_empty(), "{:?}", report.errors);
            assert_eq!(report.entries.len(), 4);
            assert!(report.started_ms <= report.finished_ms);
            for (i, e) in report.entries.iter().enumerate() {
                assert_eq!(e.iteration, i as u32);
                assert_eq!(e.node, node as u16);
                assert_eq!(e.counter_written, e.counter_read + 1);
                assert!(e.request_ms <= e.enter_ms && e.enter_ms <= e.exit_ms);
                assert!(e.exit_ms - e.enter_ms >= 1.0, "the section sleeps cs_ms");
                assert!(e.lamport_clock_at_enter > 0);
            }
            entries.extend(report.entries);
        }
        for rx in &watchers {
            assert_eq!(*rx.borrow(), WorkloadStatus { state: WorkloadState::Done, done: 4, total: 4 });
        }
        assert_eq!(read_counter(&dir.path().join("counter")).await.unwrap(), 12);
        // The fake is exclusive: in entry order, each entry read what the previous one wrote.
        entries.sort_by(|a, b| a.enter_ms.total_cmp(&b.enter_ms));
        let reads: Vec<u64> = entries.iter().map(|e| e.counter_read).collect();
        assert_eq!(reads, (0..12).collect::<Vec<_>>());
        let tokens: Vec<u64> = entries.iter().map(|e| e.fencing_token).collect();
        assert_eq!(tokens, (1..=12).collect::<Vec<_>>());
        let json = serde_json::to_value(*watchers[0].borrow()).unwrap();
        assert_eq!(json, serde_json::json!({"state": "done", "done": 4, "total": 4}));
    }

    #[tokio::test]
    async fn a_failed_release_stops_the_workload() {
        let dir = tempfile::tempdir().unwrap();
        let svc = FakeLocks { fail_release: true, ..FakeLocks::default() };
        let (tx, rx) = watch::channel(WorkloadStatus::waiting(0));
        let report = run_workload(svc.clone(), 2, config(dir.path(), 3), tx).await;
        assert!(report.entries.is_empty());
        assert_eq!(report.errors.len(), 1);
        assert!(report.errors[0].contains("release"), "{:?}", report.errors);
        assert_eq!(rx.borrow().state, WorkloadState::Failed);
        // The acquire issued together with the failed release was granted, and given back before stopping.
        assert_eq!(svc.tokens.load(Ordering::SeqCst), 2);
        assert!(svc.held.lock().unwrap().is_empty(), "a grant was left held");
    }

    #[tokio::test]
    async fn counter_file_reads_and_overwrites_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        assert!(CounterFile::open(&path).is_err(), "the file must exist");
        ensure_counter_file(&path).await.unwrap();
        let mut c = CounterFile::open(&path).unwrap();
        assert_eq!(c.read().unwrap(), 0);
        c.write(1234).unwrap();
        assert_eq!(read_counter(&path).await.unwrap(), 1234);
        assert_eq!(c.read().unwrap(), 1234);
        // A shorter value (only an outside reset makes one) leaves no digits of the longer one behind.
        c.write(7).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "7");
        // A second handle (another node) sees every write.
        let mut other = CounterFile::open(&path).unwrap();
        assert_eq!(other.read().unwrap(), 7);
        other.write(8).unwrap();
        assert_eq!(c.read().unwrap(), 8);
        std::fs::write(&path, "x").unwrap();
        assert!(c.read().is_err());
    }

    #[tokio::test]
    async fn counter_file_creation_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        ensure_counter_file(&path).await.unwrap();
        tokio::fs::write(&path, "41\n").await.unwrap();
        ensure_counter_file(&path).await.unwrap();
        assert_eq!(read_counter(&path).await.unwrap(), 41);
        tokio::fs::write(&path, "x").await.unwrap();
        assert!(read_counter(&path).await.is_err());
    }
}
