//! `dmutex lock NAME -- CMD…`: run a command while holding a cluster-wide lock.
//!
//! A lease holder in the shape of `flock(1)`:
//!
//! 1. `POST /v1/locks/{name}/acquire` `{timeout_ms?, ttl_ms?, algorithm?}` → 200 `{name, lease, fencing_token,
//!    algorithm, node_id, waited_ms}`; 408 when the wait timed out; errors are `{"error":{"code","message"}}`.
//! 2. Spawn `CMD` with `DMUTEX_LOCK`, `DMUTEX_FENCING_TOKEN` and `DMUTEX_LEASE` in its environment.
//! 3. While it runs, `POST /v1/leases/{lease}/keepalive` → 200 `{ttl_ms}` every TTL/3 (409 or 404: the lease is
//!    gone). When the TTL is not known (no `--ttl` and no `ttl_ms` in the grant), the first keepalive is sent at
//!    once to learn it.
//! 4. `POST /v1/locks/{name}/release` `{lease}` once the command has ended (409: unknown or expired lease).
//!
//! Lease loss: the node answers 409/404 to a keepalive, or no keepalive has succeeded for a whole TTL. The
//! TTL is counted from when the last successful keepalive was *sent* (the node cannot have started its new TTL
//! earlier), and for the grant from when its answer arrived. Then the command gets SIGTERM, SIGKILL after
//! `--grace`, and `dmutex lock` exits with [`EXIT_LEASE_LOST`]. The command may thus outlive its lease by up to
//! the grace period plus one network delay: a lease only *bounds* overlap, the fencing token is what makes a
//! late writer harmless.
//!
//! Signals: SIGINT and SIGTERM received by `dmutex lock` are forwarded to the command (only to its pid, not to
//! its process group), and the lease is released once it has exited. A terminal's Ctrl-C reaches the command
//! directly too (same process group), so an interactive command sees SIGINT twice.

use crate::cmd::DEFAULT_ENDPOINT;
use clap::Args;
use dmutex::algo::Algorithm;
use dmutex::api::client::Client;
use dmutex::api::types::{AcquireBody, LeaseId};
use rustix::process::{Pid, Signal};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep_until, timeout};

/// `dmutex lock`: the lock could not be acquired (node unreachable or unavailable, request refused).
pub(crate) const EXIT_ACQUIRE_FAILED: i32 = 1;
/// `dmutex lock`: the acquire timed out (the node answered 408).
pub(crate) const EXIT_TIMEOUT: i32 = 3;
/// `dmutex lock`: the lease was lost while the command ran (BSD `EX_TEMPFAIL`).
pub(crate) const EXIT_LEASE_LOST: i32 = 75;
/// `dmutex lock`: the command exists but could not be started (as in a shell).
pub(crate) const EXIT_CANNOT_EXECUTE: i32 = 126;
/// `dmutex lock`: the command was not found (as in a shell).
pub(crate) const EXIT_NOT_FOUND: i32 = 127;

/// How long the final release may take before `dmutex lock` gives up on it (the lease then simply expires).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// The TTL assumed until the node tells: shorter than any sane server default would make keepalives wasteful,
/// and the first keepalive is sent at once anyway when the TTL is unknown.
const ASSUMED_TTL: Duration = Duration::from_secs(15);
/// Slack added to `--timeout` for the acquire request itself, so the node's 408 arrives before ours.
const ACQUIRE_SLACK: Duration = Duration::from_secs(10);

/// `dmutex lock`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
The command runs with DMUTEX_LOCK=<name>, DMUTEX_FENCING_TOKEN=<token> and DMUTEX_LEASE=<lease> in its
environment. Pass the fencing token to whatever the lock protects: it is the only defence against a holder that
was paused past its lease.

While the command runs, the lease is kept alive every TTL/3. If the lease is lost (the node answers that it
expired, or keepalives fail until a whole TTL has passed since the last success), the command gets SIGTERM,
then SIGKILL after --grace. SIGINT and SIGTERM sent to `dmutex lock` are forwarded to the command; the lock is
released when the command ends.

Exit status:
  the command's own status, or 128+N if it was killed by signal N
  1    the lock could not be acquired (node unreachable, unavailable, or the request was refused)
  2    usage error
  3    the acquire timed out (--timeout)
  75   the lease was lost while the command ran; the command was terminated
  126  the command could not be started
  127  the command was not found

Example:
  dmutex lock --ttl 10s --timeout 1m backup -- ./backup.sh --full")]
pub(crate) struct LockArgs {
    /// Node HTTP endpoint.
    #[arg(long, env = "DMUTEX_ENDPOINT", default_value = DEFAULT_ENDPOINT, value_name = "URL")]
    pub(crate) endpoint: String,
    /// How long to wait for the lock (e.g. 10s, 500ms; default: the node's DMUTEX_DEFAULT_TIMEOUT_MS).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub(crate) timeout: Option<Duration>,
    /// The lease's time to live, renewed every TTL/3 while the command runs (default: the node's).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub(crate) ttl: Option<Duration>,
    /// Algorithm to use: lamport, ricart-agrawala or probable-owner (default: the node's).
    #[arg(long, value_name = "A")]
    pub(crate) algorithm: Option<Algorithm>,
    /// After the lease is lost, how long the command has between SIGTERM and SIGKILL.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s", value_name = "DURATION")]
    pub(crate) grace: Duration,
    /// Print acquire and release details on stderr.
    #[arg(short, long)]
    pub(crate) verbose: bool,
    /// The lock's name.
    pub(crate) name: String,
    /// The command and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub(crate) command: Vec<String>,
}

/// Runs `dmutex lock`; returns the process exit code.
pub(crate) async fn run(args: &LockArgs) -> i32 {
    match lock(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dmutex lock: {e:#}");
            1
        }
    }
}

/// The shell-style exit code of a finished process: its status, or 128+N if signal N killed it.
pub(crate) fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}

/// Sends `sig` to `pid`. The pid is the child's, not yet reaped, so it cannot have been reused.
fn send_signal(pid: Option<u32>, sig: Signal) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()).and_then(Pid::from_raw) {
        // ESRCH (already exited) is the only expected failure, and harmless.
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Why the keepalive task gave up.
type LossReason = String;

/// Keeps `lease` alive until it is lost (then reports why) or the task is aborted.
async fn keep_alive(
    client: Client,
    lease: LeaseId,
    mut ttl: Duration,
    mut last_ok: Instant,
    first: Instant,
    lost: oneshot::Sender<LossReason>,
) {
    let mut next = first;
    let mut failing = false;
    loop {
        sleep_until(next).await;
        let sent = Instant::now();
        let deadline = last_ok + ttl;
        if sent >= deadline {
            let _ = lost.send(format!("no keepalive succeeded for {}", humantime::format_duration(ttl)));
            return;
        }
        let limit = (deadline - sent).min((ttl / 3).max(Duration::from_millis(100)));
        match timeout(limit, client.keepalive(&lease, limit)).await {
            Ok(Ok(granted)) => {
                last_ok = sent;
                ttl = granted.unwrap_or(ttl);
                next = sent + ttl / 3;
                if failing {
                    eprintln!("dmutex lock: keepalive succeeded again");
                    failing = false;
                }
            }
            Ok(Err(e)) if e.is_status(409) || e.is_status(404) || e.is_status(410) => {
                let _ = lost.send(format!("the node no longer knows the lease: {e}"));
                return;
            }
            other => {
                if !failing {
                    let why = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {}", humantime::format_duration(limit)),
                    };
                    eprintln!(
                        "dmutex lock: keepalive failed ({why}); retrying until the lease's TTL runs out"
                    );
                    failing = true;
                }
                let retry = (ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
                next = (Instant::now() + retry).min(last_ok + ttl);
            }
        }
    }
}

/// Acquire, run the command under the lease, release. Returns the process exit code.
async fn lock(args: &LockArgs) -> anyhow::Result<i32> {
    let name = &args.name;
    let Some((program, program_args)) = args.command.split_first() else {
        anyhow::bail!("no command given");
    };
    let client = match Client::new(&args.endpoint) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dmutex lock: {e}");
            return Ok(EXIT_ACQUIRE_FAILED);
        }
    };
    // Installed before the acquire so that a signal while waiting ends the wait instead of killing us with the
    // request half done.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    let req = AcquireBody {
        timeout_ms: args.timeout.map(millis),
        ttl_ms: args.ttl.map(millis),
        algorithm: args.algorithm,
        wait: None,
    };
    let limit = args.timeout.map(|t| t + ACQUIRE_SLACK);
    let grant = tokio::select! {
        r = client.acquire(name, &req, limit) => r,
        _ = sigint.recv() => return Ok(128 + Signal::INT.as_raw()),
        _ = sigterm.recv() => return Ok(128 + Signal::TERM.as_raw()),
    };
    let granted_at = Instant::now();
    let grant = match grant {
        Ok(g) => g,
        Err(e) if e.is_status(408) => {
            eprintln!("dmutex lock: timed out waiting for lock {name:?}: {e}");
            return Ok(EXIT_TIMEOUT);
        }
        Err(e) => {
            eprintln!("dmutex lock: cannot acquire lock {name:?}: {e}");
            return Ok(EXIT_ACQUIRE_FAILED);
        }
    };
    if args.verbose {
        eprintln!(
            "dmutex lock: acquired {name:?} (lease {}, fencing token {}, algorithm {}, node {}, waited {} ms)",
            grant.lease,
            grant.fencing_token,
            grant.algorithm.map_or("?", Algorithm::as_str),
            grant.node_id.map_or("?".to_string(), |n| n.to_string()),
            grant.waited_ms.unwrap_or(0),
        );
    }

    let mut child = match tokio::process::Command::new(program)
        .args(program_args)
        .env("DMUTEX_LOCK", name)
        .env("DMUTEX_FENCING_TOKEN", grant.fencing_token.to_string())
        .env("DMUTEX_LEASE", grant.lease.to_string())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dmutex lock: cannot run {program:?}: {e}");
            release(&client, name, &grant.lease, args.verbose).await;
            return Ok(if e.kind() == std::io::ErrorKind::NotFound {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_EXECUTE
            });
        }
    };
    let pid = child.id();

    let known_ttl = grant.ttl_ms.map(Duration::from_millis).or(args.ttl);
    let ttl = known_ttl.unwrap_or(ASSUMED_TTL);
    let first = if known_ttl.is_some() { granted_at + ttl / 3 } else { granted_at };
    let (lost_tx, mut lost_rx) = oneshot::channel();
    let keeper =
        tokio::spawn(keep_alive(client.clone(), grant.lease.clone(), ttl, granted_at, first, lost_tx));

    enum Outcome {
        Exited(ExitStatus),
        Lost(LossReason),
    }
    let outcome = loop {
        tokio::select! {
            status = child.wait() => break Outcome::Exited(status?),
            reason = &mut lost_rx => {
                break Outcome::Lost(reason.unwrap_or_else(|_| "the keepalive task failed".to_string()));
            }
            _ = sigint.recv() => send_signal(pid, Signal::INT),
            _ = sigterm.recv() => send_signal(pid, Signal::TERM),
        }
    };
    keeper.abort();

    match outcome {
        Outcome::Exited(status) => {
            release(&client, name, &grant.lease, args.verbose).await;
            Ok(exit_code(status))
        }
        Outcome::Lost(reason) => {
            eprintln!(
                "dmutex lock: LOST the lease on lock {name:?}: {reason}; terminating the command (SIGTERM, SIGKILL \
                 after {})",
                humantime::format_duration(args.grace)
            );
            send_signal(pid, Signal::TERM);
            match timeout(args.grace, child.wait()).await {
                Ok(status) => {
                    status?;
                }
                Err(_) => {
                    eprintln!("dmutex lock: the command ignored SIGTERM; sending SIGKILL");
                    child.kill().await?;
                }
            }
            // Best effort: if the node still has the lease (we only lost contact), free it now.
            release(&client, name, &grant.lease, args.verbose).await;
            Ok(EXIT_LEASE_LOST)
        }
    }
}

/// Releases the lock, reporting (not failing on) errors: the command's status is what the caller wants.
async fn release(client: &Client, name: &str, lease: &LeaseId, verbose: bool) {
    match client.release(name, lease, RELEASE_TIMEOUT).await {
        Ok(()) => {
            if verbose {
                eprintln!("dmutex lock: released {name:?}");
            }
        }
        Err(e) if e.is_status(409) || e.is_status(404) => {
            eprintln!("dmutex lock: warning: the lease on {name:?} had already expired at release: {e}");
        }
        Err(e) => eprintln!("dmutex lock: warning: could not release {name:?} (its lease will expire): {e}"),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(Signal::KILL.as_raw())), 128 + 9);
    }
}
