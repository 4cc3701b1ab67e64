//! The end of a run: once the faults are over, the cluster must converge within the bound and stay stable
//! for a tail (heartbeat rates measured there, probes granted); the cost of a single view change; the guard
//! that keeps injected faults from costing the cluster its majority for good.
//!
//! Must never: declare convergence while a member still wants a change or an instance is under way.

use super::checks::show;
use super::driver::{Item, MemberSim, Step, note};
use super::{Liveness, Scenario, ViewChangeCost};
use crate::algo::NodeId;
use crate::algo::membership::{Epoch, View};
use std::collections::BTreeMap;

/// Where the measurement of a single view change started.
pub(super) struct ChangeStart {
    pub(super) at: u64,
    nodes_before: u64,
    epoch: Epoch,
    messages: BTreeMap<&'static str, u64>,
    ballots: u64,
    deferred: u64,
}

/// The stable tail after convergence.
pub(super) struct Tail {
    from: u64,
    epoch: Epoch,
    messages: BTreeMap<&'static str, u64>,
}

impl MemberSim {
    /// Every live process that should be a member (not leaving): in the newest view, which lists exactly
    /// them, and active; nobody paused, nobody still leaving, no member that wants a change (a suspicion or
    /// a join request from before the network settled), and no instance for the next epoch under way (no
    /// acceptor has promised a ballot).
    pub(super) fn converged(&self) -> bool {
        let Some(newest) = self.ghost.newest() else { return false };
        if newest.members.len() != self.procs.len() {
            return false;
        }
        self.procs.iter().all(|(&id, p)| {
            !p.paused
                && !p.leaving
                && newest.contains(id, p.inc)
                && p.core.view() == Some(newest)
                && p.core.promised().is_none()
                && !p.core.wants_change(p.clock.local(self.now))
                && p.core.is_active(p.clock.local(self.now))
        })
    }

    /// The newest view a live process (other than `except`) has installed: if newer ones were installed
    /// only by processes that died since, the live ones must decide the next epoch among its members.
    pub(super) fn newest_known(&self, except: Option<NodeId>) -> Option<&View> {
        self.procs
            .iter()
            .filter(|(id, _)| Some(**id) != except)
            .filter_map(|(_, p)| p.core.view())
            .max_by_key(|v| v.epoch)
    }

    /// Whether the newest view, or the newest one a live process knows, has fewer live members than a
    /// majority (no view can be decided any more).
    pub(super) fn majority_lost(&self) -> bool {
        let live = |view: &View| {
            let live = view
                .members
                .values()
                .filter(|m| self.procs.get(&m.id).is_some_and(|p| p.inc == m.incarnation))
                .count();
            live >= view.majority()
        };
        self.ghost.newest().is_some_and(|v| !live(v)) || self.newest_known(None).is_some_and(|v| !live(v))
    }

    /// Whether, with `id` down, a majority stays up of the newest view, of the newest view another live
    /// process knows, and of every value accepted for the epoch after either (any of them may be the view
    /// the others must decide on next).
    pub(super) fn keeps_majority(&self, id: NodeId) -> bool {
        let up = |view: &View| {
            let up = view
                .members
                .values()
                .filter(|m| {
                    m.id != id && self.procs.get(&m.id).is_some_and(|p| p.inc == m.incarnation && !p.leaving)
                })
                .count();
            up >= view.majority()
        };
        [self.ghost.newest(), self.newest_known(Some(id))]
            .into_iter()
            .flatten()
            .all(|v| up(v) && self.ghost.accepted_values(v.epoch.next()).all(up))
    }

    /// The plan is done and nothing is pending: no more slow messages; once those in flight have arrived
    /// (FIFO holds back what follows them), the network is stable and the cluster must converge.
    pub(super) fn faults_over(&mut self) {
        let stable = self.now.max(self.last_arrival);
        note!(self, "faults over; the network is stable from t={stable}");
        self.faults_end = Some(stable);
        self.schedule(stable, Item::Settle);
    }

    /// Starts measuring the single view change the next fault causes.
    pub(super) fn measure_change(&mut self) {
        self.change = Some(ChangeStart {
            at: self.now,
            nodes_before: self.ghost.newest().map_or(0, |v| v.members.len() as u64),
            epoch: self.ghost.newest().map_or(Epoch::NONE, |v| v.epoch),
            messages: self.report.messages.clone(),
            ballots: self.report.ballots,
            deferred: self.report.deferred_accepts,
        });
    }

    /// Ends the measurement of a single view change, if one runs (at the first step that converged).
    pub(super) fn change_done(&mut self) {
        let Some(c) = self.change.take() else { return };
        let epoch = self.ghost.newest().map_or(Epoch::NONE, |v| v.epoch);
        self.report.change = Some(ViewChangeCost {
            nodes_before: c.nodes_before,
            nodes_after: self.procs.len() as u64,
            messages: diff(&self.report.messages, &c.messages),
            ballots: self.report.ballots - c.ballots,
            epochs: epoch.get() - c.epoch.get(),
            deferred_accepts: self.report.deferred_accepts - c.deferred,
            duration_ms: self.now - c.at,
        });
    }

    /// After the faults: polls until every live process is an active member of one view, then starts the
    /// stable tail. Fails once the bound has passed without a tail that stayed stable.
    pub(super) fn settle(&mut self) -> Step {
        if self.converged() {
            self.change_done();
            let epoch = self.ghost.newest().map_or(Epoch::NONE, |v| v.epoch);
            note!(self, "converged in epoch {epoch}");
            self.tail = Some(Tail { from: self.now, epoch, messages: self.report.messages.clone() });
            if self.cfg.engines {
                self.issue_probes()?;
            }
            let tail = 5 * self.cfg.membership.heartbeat.get();
            self.schedule(self.now + tail, Item::TailEnd);
            return Ok(());
        }
        if self.majority_lost() {
            note!(self, "the newest view lost its majority for good");
            self.report.liveness = Liveness::MajorityLost;
            self.done = true;
            return Ok(());
        }
        self.within_bound("the live processes are not all active members of the newest view")?;
        let poll = (self.cfg.membership.heartbeat.get() / 2).max(1);
        self.schedule(self.now + poll, Item::Settle);
        Ok(())
    }

    /// `Err` once the liveness bound after the end of the faults has passed.
    pub(super) fn within_bound(&self, what: &str) -> Step {
        let end = self.faults_end.unwrap_or(self.now);
        let bound = self.cfg.liveness_bound();
        if self.now - end > bound {
            return Err(format!(
                "liveness: {} ms after the faults ended (bound {bound} ms) {what}: {}",
                self.now - end,
                self.state_summary()
            ));
        }
        Ok(())
    }

    /// The end of the stable tail: the view must not have changed (else settling starts over, within the
    /// bound: a suspicion or join request from before the network settled may still change it once), and
    /// the engines must have granted every probe.
    pub(super) fn tail_end(&mut self) -> Step {
        let Some((from, tail_epoch)) = self.tail.as_ref().map(|t| (t.from, t.epoch)) else { return Ok(()) };
        let epoch = self.ghost.newest().map_or(Epoch::NONE, |v| v.epoch);
        if !self.converged() || epoch != tail_epoch {
            note!(self, "the view changed after converging in epoch {tail_epoch}: settling again");
            self.report.late_view_changes += 1;
            self.tail = None;
            self.within_bound(&format!("the view did not stay stable (it converged in epoch {tail_epoch})"))?;
            self.schedule(self.now, Item::Settle);
            return Ok(());
        }
        if !self.mutex_settled(from + PROBE_BOUND)? {
            let poll = (self.cfg.membership.heartbeat.get() / 2).max(1);
            self.schedule(self.now + poll, Item::TailEnd);
            return Ok(());
        }
        if let Some(at) = self.mutex.probes_at {
            self.report.mutex.settled_after_ms = Some(self.now - at);
        }
        let Some(tail) = self.tail.take() else { return Ok(()) };
        let end = self.faults_end.unwrap_or(tail.from);
        self.report.liveness = Liveness::Converged { after_ms: tail.from - end };
        let sent = diff(&self.report.messages, &tail.messages);
        let count = |kind: &str| sent.get(kind).copied().unwrap_or(0);
        self.report.stable = super::StableRates {
            nodes: self.procs.len() as u64,
            window_ms: self.now - tail.from,
            heartbeats: count("HEARTBEAT"),
            acks: count("ACK"),
            other: sent.values().sum::<u64>() - count("HEARTBEAT") - count("ACK"),
        };
        self.done = true;
        Ok(())
    }

    /// Every live process: its view, lease and state (for liveness failures).
    pub(super) fn state_summary(&self) -> String {
        let newest = self.ghost.newest().map_or_else(|| "none".into(), show);
        let procs: Vec<String> = self
            .procs
            .iter()
            .map(|(id, p)| {
                let local = p.clock.local(self.now);
                format!(
                    "{id}#{}: view {}, active {}{}{}{}{}",
                    p.inc.get(),
                    p.core.view().map_or_else(|| "none".into(), show),
                    p.core.is_active(local),
                    if p.paused { ", paused" } else { "" },
                    if p.leaving { ", leaving" } else { "" },
                    if p.core.wants_change(local) { ", wants a change" } else { "" },
                    p.core.promised().map_or(String::new(), |b| format!(", promised {b:?}")),
                )
            })
            .collect();
        format!("newest view {newest}; {}", procs.join("; "))
    }

    /// Whether the scenario is one of the single-fault cost measurements.
    pub(super) fn measuring(&self) -> bool {
        matches!(self.cfg.scenario, Scenario::OneCrash | Scenario::OneJoin | Scenario::OneLeave)
    }
}

/// How long after convergence every probe must have been granted (and every earlier request answered).
const PROBE_BOUND: u64 = 4000;

/// `now − before`, per message type (types with no new message left out).
fn diff(
    now: &BTreeMap<&'static str, u64>,
    before: &BTreeMap<&'static str, u64>,
) -> BTreeMap<&'static str, u64> {
    now.iter().map(|(&k, &n)| (k, n - before.get(k).copied().unwrap_or(0))).filter(|&(_, n)| n > 0).collect()
}
