//! `dmutex lock NAME -- CMD…`: run a command while holding a cluster-wide lock.
//!
//! A lease holder in the shape of `flock(1)`, built on the client library ([`dmutex_client`]):
//!
//! 1. Acquire through the first endpoint that can serve (the next one on a connection error or 503, never
//!    on 409): `POST /v1/locks/{name}/acquire` `{timeout_ms?, wait?, ttl_ms?, algorithm?}` → 200 `{name, lease,
//!    fencing_token, ...}`; 409 `timeout` when the wait timed out, 409 `locked` when `--try` found it held.
//! 2. Spawn `CMD` with `DMUTEX_LOCK`, `DMUTEX_FENCING_TOKEN` and `DMUTEX_LEASE` in its environment.
//! 3. While it runs, the guard keeps the lease alive every TTL/3 through any endpoint.
//! 4. Release once the command has ended.
//!
//! Lease loss ([`dmutex_client::LeaseLoss`]): a keepalive is answered `lease_lost` or `lease_not_found`, or none
//! has succeeded for a whole TTL. Then the command gets SIGTERM, SIGKILL after `--grace`, and `dmutex lock` exits
//! with [`EXIT_LEASE_LOST`]. The command may thus outlive its lease by up to the grace period plus one network
//! delay: a lease only *bounds* overlap, the fencing token is what makes a late writer harmless.
//!
//! Signals: SIGINT and SIGTERM received by `dmutex lock` are forwarded to the command (only to its pid, not to
//! its process group), and the lease is released once it has exited. A terminal's Ctrl-C reaches the command
//! directly too (same process group), so an interactive command sees SIGINT twice.

use crate::cmd::{ClientSecurityArgs, DEFAULT_ENDPOINT};
use clap::Args;
use dmutex_client::{Algorithm, Client, Error, LockGuard, Timeout};
use rustix::process::{Pid, Signal};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::timeout;

/// `dmutex lock`: the lock could not be acquired (the request was refused, or the answer was not understood).
pub(crate) const EXIT_ACQUIRE_FAILED: i32 = 1;
/// `dmutex lock`: the acquire timed out (`--timeout`; the node answered `timeout`).
pub(crate) const EXIT_TIMEOUT: i32 = 3;
/// `dmutex lock --try`: the lock is held or waited for (the node answered `locked`).
pub(crate) const EXIT_LOCKED: i32 = 4;
/// `dmutex lock`: no endpoint could serve (unreachable, or 503 from each; BSD `EX_UNAVAILABLE`).
pub(crate) const EXIT_UNAVAILABLE: i32 = 69;
/// `dmutex lock`: the node refused the token: none, unknown, or without the `lock` scope (BSD `EX_NOPERM`).
pub(crate) const EXIT_NO_PERMISSION: i32 = 77;
/// `dmutex lock`: the lease was lost while the command ran (BSD `EX_TEMPFAIL`).
pub(crate) const EXIT_LEASE_LOST: i32 = 75;
/// `dmutex lock`: the command exists but could not be started (as in a shell).
pub(crate) const EXIT_CANNOT_EXECUTE: i32 = 126;
/// `dmutex lock`: the command was not found (as in a shell).
pub(crate) const EXIT_NOT_FOUND: i32 = 127;

/// `dmutex lock`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
The command runs with DMUTEX_LOCK=<name>, DMUTEX_FENCING_TOKEN=<token> and DMUTEX_LEASE=<lease> in its
environment. Pass the fencing token to whatever the lock protects: it is the only defence against a holder that
was paused past its lease.

Endpoints are tried in turn: the next one when an endpoint cannot be reached or answers 503, never when the
cluster answered (locked, timeout, bad request). While the command runs, the lease is kept alive every TTL/3
through any endpoint. If the lease is lost (a node answers that it was lost or is unknown, or keepalives fail
until a whole TTL has passed since the last success), the command gets SIGTERM, then SIGKILL after --grace.
SIGINT and SIGTERM sent to `dmutex lock` are forwarded to the command; the lock is released when the command
ends.

With API tokens on the nodes (DMUTEX_API_TOKENS_FILE), set DMUTEX_TOKEN (or --token-file) to a token with the
lock scope; it is never taken from the command line. For https:// endpoints signed by a private CA, give the
CA bundle with --cacert (DMUTEX_CACERT).

Exit status:
  the command's own status, or 128+N if it was killed by signal N
  1    the lock could not be acquired (the request was refused or the answer not understood)
  2    usage error
  3    the acquire timed out (--timeout)
  4    --try: the lock is held (or waited for) by someone else
  69   no endpoint could serve (unreachable, or unavailable: minority, not joined, shutting down)
  75   the lease was lost while the command ran; the command was terminated
  77   the node refused the token (none, unknown, or without the lock scope)
  126  the command could not be started
  127  the command was not found

Examples:
  dmutex lock --endpoints http://db1:8080,http://db2:8080 --ttl 10s --timeout 1m backup -- ./backup.sh --full
  dmutex lock --try report -- ./report.sh        # exits 4 at once if report is held
  dmutex lock --timeout forever migrate -- ./migrate.sh")]
pub(crate) struct LockArgs {
    /// Node HTTP endpoints, tried in turn; comma-separated and/or repeated (--endpoint is the same flag)
    /// [default: DMUTEX_ENDPOINT, else http://127.0.0.1:8080].
    #[arg(
        long,
        visible_alias = "endpoint",
        env = "DMUTEX_ENDPOINTS",
        value_delimiter = ',',
        value_name = "URL,URL,..."
    )]
    pub(crate) endpoints: Vec<String>,
    /// How long to wait for the lock: a duration (10s, 500ms, 1m) or `forever` (default: the node's
    /// DMUTEX_DEFAULT_TIMEOUT_MS).
    #[arg(long, value_parser = parse_timeout, value_name = "DURATION|forever", conflicts_with = "try_lock")]
    pub(crate) timeout: Option<Timeout>,
    /// Try-lock: take the lock only if it is free (nobody holds or waits for it), else exit 4 at once.
    #[arg(long = "try")]
    pub(crate) try_lock: bool,
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
    /// The CA bundle and the token.
    #[command(flatten)]
    pub(crate) security: ClientSecurityArgs,
    /// The lock's name.
    pub(crate) name: String,
    /// The command and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub(crate) command: Vec<String>,
}

impl LockArgs {
    /// The endpoints to use: `--endpoints` (or `DMUTEX_ENDPOINTS`), else the single `DMUTEX_ENDPOINT` the other
    /// commands read, else [`DEFAULT_ENDPOINT`].
    pub(crate) fn endpoints(&self) -> Vec<String> {
        let given: Vec<String> =
            self.endpoints.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
        if !given.is_empty() {
            return given;
        }
        match std::env::var("DMUTEX_ENDPOINT") {
            Ok(e) if !e.trim().is_empty() => vec![e.trim().to_string()],
            _ => vec![DEFAULT_ENDPOINT.to_string()],
        }
    }
}

/// A `--timeout`: `forever`, or a duration in humantime's form.
pub(crate) fn parse_timeout(text: &str) -> Result<Timeout, String> {
    if text.trim().eq_ignore_ascii_case("forever") {
        return Ok(Timeout::Forever);
    }
    humantime::parse_duration(text)
        .map(Timeout::from)
        .map_err(|e| format!("{e} (expected a duration such as 10s, 500ms, 2m, or `forever`)"))
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

/// Acquire, run the command under the lease, release. Returns the process exit code.
async fn lock(args: &LockArgs) -> anyhow::Result<i32> {
    let name = &args.name;
    let Some((program, program_args)) = args.command.split_first() else {
        anyhow::bail!("no command given");
    };
    let token = match args.security.token() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("dmutex lock: {e}");
            return Ok(EXIT_ACQUIRE_FAILED);
        }
    };
    let mut builder = Client::builder(args.endpoints());
    if let Some(token) = token {
        builder = builder.with_token(token);
    }
    if let Some(ca) = &args.security.cacert {
        builder = builder.with_ca_file(ca);
    }
    let client = match builder.build() {
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

    let mut request = if args.try_lock { client.try_lock(name.as_str()) } else { client.lock(name.as_str()) };
    if let Some(ttl) = args.ttl {
        request = request.ttl(ttl);
    }
    if let Some(a) = args.algorithm {
        request = request.algorithm(a);
    }
    request = match args.timeout {
        Some(Timeout::Forever) => request.wait_forever(),
        Some(Timeout::Ms(ms)) => request.timeout(Duration::from_millis(ms)),
        None => request,
    };
    let guard = tokio::select! {
        r = request.acquire() => r,
        _ = sigint.recv() => return Ok(128 + Signal::INT.as_raw()),
        _ = sigterm.recv() => return Ok(128 + Signal::TERM.as_raw()),
    };
    let guard = match guard {
        Ok(g) => g,
        Err(e) => {
            let (code, what) = match &e {
                Error::Timeout { .. } => (EXIT_TIMEOUT, "timed out waiting for"),
                Error::Locked { .. } => (EXIT_LOCKED, "did not get (--try)"),
                Error::Unavailable { .. } => (EXIT_UNAVAILABLE, "no endpoint could serve"),
                Error::Unauthorized { .. } | Error::Forbidden { .. } => {
                    (EXIT_NO_PERMISSION, "may not acquire")
                }
                _ => (EXIT_ACQUIRE_FAILED, "cannot acquire"),
            };
            let hint = match &e {
                Error::Unauthorized { .. }
                    if args.security.token_env.is_none() && args.security.token_file.is_none() =>
                {
                    " (set DMUTEX_TOKEN, or --token-file, to a token with the lock scope)"
                }
                Error::Unauthorized { .. } => {
                    " (the token given is not in the node's DMUTEX_API_TOKENS_FILE)"
                }
                Error::Forbidden { .. } => " (the token needs the lock scope)",
                _ => "",
            };
            eprintln!("dmutex lock: {what} lock {name:?}: {e}{hint}");
            return Ok(code);
        }
    };
    if args.verbose {
        let grant = guard.grant();
        eprintln!(
            "dmutex lock: acquired {name:?} (lease {}, fencing token {}, algorithm {}, node {}, waited {} ms, via {})",
            grant.lease,
            grant.fencing_token,
            grant.algorithm.map_or("?", Algorithm::as_str),
            grant.node_id.map_or("?".to_string(), |n| n.to_string()),
            grant.waited_ms.unwrap_or(0),
            client.current_endpoint(),
        );
    }

    let mut child = match tokio::process::Command::new(program)
        .args(program_args)
        .env("DMUTEX_LOCK", name)
        .env("DMUTEX_FENCING_TOKEN", guard.fencing_token().to_string())
        .env("DMUTEX_LEASE", guard.lease().to_string())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dmutex lock: cannot run {program:?}: {e}");
            release(guard, name, args.verbose).await;
            return Ok(if e.kind() == std::io::ErrorKind::NotFound {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_EXECUTE
            });
        }
    };
    let pid = child.id();

    enum Outcome {
        Exited(ExitStatus),
        Lost(dmutex_client::LeaseLoss),
    }
    let outcome = loop {
        tokio::select! {
            status = child.wait() => break Outcome::Exited(status?),
            loss = guard.lost() => break Outcome::Lost(loss),
            _ = sigint.recv() => send_signal(pid, Signal::INT),
            _ = sigterm.recv() => send_signal(pid, Signal::TERM),
        }
    };

    match outcome {
        Outcome::Exited(status) => {
            release(guard, name, args.verbose).await;
            Ok(exit_code(status))
        }
        Outcome::Lost(loss) => {
            eprintln!(
                "dmutex lock: LOST the lease on lock {name:?}: {loss}; terminating the command (SIGTERM, SIGKILL \
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
            // Best effort: if a node still has the lease (we only lost contact), free it now.
            release(guard, name, args.verbose).await;
            Ok(EXIT_LEASE_LOST)
        }
    }
}

/// Releases the lock, reporting (not failing on) errors: the command's status is what the caller wants.
async fn release(guard: LockGuard, name: &str, verbose: bool) {
    match guard.release().await {
        Ok(()) => {
            if verbose {
                eprintln!("dmutex lock: released {name:?}");
            }
        }
        Err(e @ (Error::LeaseNotFound { .. } | Error::LeaseLost { .. })) => {
            eprintln!("dmutex lock: warning: the lease on {name:?} had already ended at release: {e}");
        }
        Err(e) => eprintln!("dmutex lock: warning: could not release {name:?} (its lease will expire): {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_durations_or_forever() {
        assert_eq!(parse_timeout("forever"), Ok(Timeout::Forever));
        assert_eq!(parse_timeout("1m 30s"), Ok(Timeout::Ms(90_000)));
        assert_eq!(parse_timeout("0s"), Ok(Timeout::Ms(0)));
        let e = parse_timeout("soon").unwrap_err();
        assert!(e.contains("`forever`"), "{e}");
        assert!(parse_timeout("10").is_err(), "a bare number has no unit");
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(Signal::KILL.as_raw())), 128 + 9);
    }
}
