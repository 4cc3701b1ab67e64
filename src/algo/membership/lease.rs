//! Member-lease arithmetic: when a member may act, and when an acceptor may agree to exclude it.
//!
//! Timing assumption: every node's local monotonic clock runs at a rate within `1 ± ρ` of real time
//! (ρ in parts per million, [`super::Config::drift_ppm`]); clocks are never compared across nodes, and
//! message delays and pauses are unbounded.
//!
//! The rule (integer milliseconds, rounding always towards safety):
//! - **Holder side.** A member sends a heartbeat at its local time `t`. Once acks for that heartbeat from a
//!   majority of its view (itself counted) have arrived, it is *active* until
//!   `t + ⌊L·(1−ρ)/(1+ρ)⌋` on its own clock ([`lease_end`]); it acts (grants) only while active.
//! - **Acceptor side.** An acceptor records `last_ack[X]`, its local time when it acked X's heartbeat, and
//!   accepts a view that excludes X (drops it, or replaces its incarnation) only when, on its own clock,
//!   `now ≥ last_ack[X] + L + 1` and `now ≥ installed_at + L + 1` (the tick: truncated clock readings), where `installed_at` is when it installed its
//!   current view ([`exclusion_allowed_at`]). The second term covers members that joined recently (they never
//!   saw X's acks) and acks X collected in an older epoch from members that later left the quorum.
//! - **Freezing.** An acceptor that has promised a ballot for epoch `e+1` stops acking epoch-`e` heartbeats,
//!   so its `last_ack` is final before it can accept.
//! - **Early accepts are deferred**, not refused: the acceptor keeps the ACCEPT and answers ACCEPTED when its
//!   wait is over, if it has not promised a higher ballot meanwhile (so the proposer need not retry).
//! - A member that resigned (graceful leave: it has stopped acting and said so) is excluded without a wait.
//!
//! Why it is safe: X's lease for a heartbeat sent at real time `t_r` ends by real time `t_r + L/(1+ρ)` (its
//! clock runs at least `1−ρ`). If the excluding view directly follows the epoch of the heartbeat, the
//! deciding majority shares an acker with X's ack majority; that acker acked after `t_r` and waited `L` on a
//! clock at most `1+ρ` fast, i.e. at least `L/(1+ρ)` real. If views came in between, the first of them was
//! decided after an acker's ack (acks stop at the promise), so every member of every later view installed it
//! after `t_r`, and `installed_at + L` covers the lease.
//!
//! Must never: round a lease up, or an acceptor's wait down.

use crate::algo::Millis;

/// Parts per million: the unit of ρ.
pub const PPM: u64 = 1_000_000;

/// The time `t + ⌊L·(1−ρ)/(1+ρ)⌋`: how long a member acked by a majority for a heartbeat sent at `sent`
/// (its clock) stays active, with ρ = `drift_ppm` / 10⁶ (below 1: the caller validated it).
pub fn lease_end(sent: Millis, lease: Millis, drift_ppm: u32) -> Millis {
    let rho = u128::from(drift_ppm).min(u128::from(PPM));
    let span = u128::from(lease.get()) * (u128::from(PPM) - rho) / (u128::from(PPM) + rho);
    at(sent.get().saturating_add(u64::try_from(span).unwrap_or(u64::MAX)))
}

/// The earliest local time at which an acceptor may accept a view excluding a member it last acked at
/// `last_ack` (if ever), having installed its current view at `installed_at`: `L` after it, plus one
/// millisecond. The extra tick absorbs truncated clock readings: a driver that reads whole milliseconds
/// (`elapsed().as_millis()`) records an ack up to one tick before it happened, and without the tick the
/// member's lease could outlive the wait by under a millisecond (found by `tests/model_check_lease.rs`).
pub fn exclusion_allowed_at(last_ack: Option<Millis>, installed_at: Millis, lease: Millis) -> Millis {
    let from = last_ack.map_or(installed_at, |a| a.max(installed_at));
    at(from.get().saturating_add(lease.get()).saturating_add(1))
}

/// `t` plus `d` (saturating).
pub(super) fn later(t: Millis, d: Millis) -> Millis {
    at(t.get().saturating_add(d.get()))
}

/// A time from its raw value (the one place this module builds a [`Millis`]).
pub(super) fn at(ms: u64) -> Millis {
    Millis::new(ms)
}
