//! A node's local clock in global simulated time: an arbitrary origin and a rate near real time.
//!
//! `local(T) = base + ⌊(T − t0)·rate / 10⁶⌋` (rate in parts per million of real time), integer arithmetic
//! only. A timer the core sets for local time `l` fires at the first global time whose local reading is
//! `≥ l`, [`LocalClock::fires_at`] (rounded up). A restarted process gets a fresh clock.
//!
//! Must never: use floating point (a seed must replay identically everywhere), or run backwards.

use crate::algo::Millis;
use crate::algo::membership::PPM;

/// One process's clock.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) struct LocalClock {
    /// The local reading at `t0`.
    base: u64,
    /// The global time the clock was started.
    t0: u64,
    /// Local milliseconds per 10⁶ global ones.
    rate_ppm: u64,
}

impl LocalClock {
    /// A clock started at global time `t0` reading `base`, running at `rate_ppm` (must be above 0).
    pub(super) fn new(t0: u64, base: u64, rate_ppm: u64) -> Self {
        LocalClock { base, t0, rate_ppm: rate_ppm.max(1) }
    }

    /// The local reading at global time `t` (`t ≥ t0`; earlier reads as `base`).
    pub(super) fn local(&self, t: u64) -> Millis {
        let elapsed = u128::from(t.saturating_sub(self.t0));
        let ticks = elapsed * u128::from(self.rate_ppm) / u128::from(PPM);
        Millis::new(self.base.saturating_add(u64::try_from(ticks).unwrap_or(u64::MAX)))
    }

    /// The first global time `≥ now` at which the local reading is at least `at`.
    pub(super) fn fires_at(&self, at: Millis, now: u64) -> u64 {
        let Some(ahead) = at.get().checked_sub(self.base).filter(|&a| a > 0) else {
            return now.max(self.t0);
        };
        let global = (u128::from(ahead) * u128::from(PPM)).div_ceil(u128::from(self.rate_ppm));
        self.t0.saturating_add(u64::try_from(global).unwrap_or(u64::MAX)).max(now)
    }

    /// The rate in parts per million of real time.
    pub(super) fn rate_ppm(&self) -> u64 {
        self.rate_ppm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_fires_at_the_first_global_ms_whose_reading_reaches_it() {
        for rate in [900_000, 950_000, 1_000_000, 1_030_000, 1_100_000] {
            let c = LocalClock::new(1000, 77, rate);
            for at in 77..400 {
                let t = c.fires_at(Millis::new(at), 0);
                assert!(c.local(t) >= Millis::new(at), "rate {rate} at {at}: fires at {t}");
                assert!(t == 1000 || c.local(t - 1) < Millis::new(at), "rate {rate} at {at}: {t} is late");
            }
        }
    }

    #[test]
    fn the_reading_advances_at_its_rate_and_never_backwards() {
        let slow = LocalClock::new(0, 5, 950_000);
        assert_eq!(slow.local(0), Millis::new(5));
        assert_eq!(slow.local(1000), Millis::new(955));
        assert!((0..5000).all(|t| slow.local(t) <= slow.local(t + 1)));
        assert_eq!(slow.fires_at(Millis::new(3), 40), 40, "a past time fires now");
    }
}
