//! The scenarios as plans of steps, and the faults they inject.
//!
//! A plan is a list of [`Step`]s run in order: sleep, inject a fault, or wait until the cluster has
//! converged (or a node has exited). Random faults pick their target when they happen, among the processes
//! live then. A fault's consequence (restart, resume, heal, a second crash) is a [`Followup`] scheduled with
//! it; the faults are over once the plan is done and no followup is pending.
//!
//! Must never: inject a crash or a leave that leaves fewer than a majority of the newest view up (that
//! cluster could never decide a view again: an expected, documented loss, not a finding).

use super::Scenario;
use super::driver::{Item, MemberSim, Step as Outcome, note};
use crate::algo::NodeId;
use crate::algo::membership::Event;
use std::collections::BTreeSet;

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Wait this long.
    Sleep(u64),
    /// Inject a fault.
    Inject(Inject),
    /// Wait until every live process is an active member of one view.
    Converged,
    /// Wait until this node's process has exited.
    Exited(NodeId),
}

/// A fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Inject {
    /// A random live process crashes (amnesia) and restarts later, sometimes crashing again soon after.
    Crash,
    /// A random live process pauses, shorter or longer than `S + L`.
    Pause,
    /// A random partition (split, one-way, bridge) that heals later.
    Partition,
    /// A new id joins.
    Join,
    /// A random member leaves; sometimes it comes back later as a new incarnation.
    Leave,
    /// This member crashes and stays down.
    CrashNode(NodeId),
    /// This member leaves and does not come back by itself.
    LeaveNode(NodeId),
    /// A process of this id starts and asks to be admitted.
    Start(NodeId),
}

/// A fault's consequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Followup {
    /// Restart `id` as a new incarnation; `again`: crash it once more soon after.
    Restart { id: NodeId, again: bool },
    /// The second crash of a node shortly after its restart.
    CrashAgain { id: NodeId },
    /// Resume process `serial` of `id`.
    Resume { id: NodeId, serial: u64 },
    /// The partition heals.
    Heal,
}

impl MemberSim {
    /// The plan of the configured scenario.
    pub(super) fn build_plan(&mut self) -> Vec<Step> {
        let beat = self.cfg.membership.heartbeat.get();
        let n = self.cfg.nodes as u16;
        let id = NodeId::new;
        let warmup = 3 * beat + self.rng.below(3 * beat);
        let mut plan = vec![Step::Sleep(warmup)];
        match self.cfg.scenario {
            Scenario::Chaos => {
                for _ in 0..self.cfg.faults {
                    let fault = match self.rng.below(100) {
                        0..=29 => Inject::Crash,
                        30..=52 => Inject::Pause,
                        53..=77 => Inject::Partition,
                        78..=88 => Inject::Join,
                        _ => Inject::Leave,
                    };
                    plan.push(Step::Inject(fault));
                    plan.push(Step::Sleep(self.rng.below(8 * beat)));
                }
            }
            Scenario::Scale => {
                plan.extend([Step::Inject(Inject::Start(id(n))), Step::Converged]);
                plan.extend([Step::Inject(Inject::Start(id(n + 1))), Step::Converged]);
                let mut ids: Vec<u16> = (0..n + 2).collect();
                self.rng.shuffle(&mut ids);
                for &leaver in &ids[..2] {
                    plan.extend([Step::Inject(Inject::LeaveNode(id(leaver))), Step::Exited(id(leaver))]);
                    plan.push(Step::Converged);
                }
            }
            Scenario::Rolling => {
                for i in 0..n {
                    plan.extend([Step::Inject(Inject::LeaveNode(id(i))), Step::Exited(id(i))]);
                    plan.push(Step::Sleep(self.rng.below(2 * beat)));
                    plan.extend([Step::Inject(Inject::Start(id(i))), Step::Converged]);
                }
            }
            Scenario::OneCrash => {
                let victim = id(self.rng.below(u64::from(n)) as u16);
                plan.push(Step::Inject(Inject::CrashNode(victim)));
            }
            Scenario::OneJoin => plan.push(Step::Inject(Inject::Start(id(n)))),
            Scenario::OneLeave => {
                let leaver = id(self.rng.below(u64::from(n)) as u16);
                plan.push(Step::Inject(Inject::LeaveNode(leaver)));
            }
            Scenario::Quiet => {}
        }
        plan
    }

    /// Runs the plan's next step.
    pub(super) fn plan_step(&mut self) -> Outcome {
        let poll = (self.cfg.membership.heartbeat.get() / 2).max(1);
        let Some(step) = self.plan.front().cloned() else {
            if self.pending == 0 {
                self.faults_over();
            } else {
                self.await_step("the faults' consequences (restarts, resumes, heals, rejoins)", poll)?;
            }
            return Ok(());
        };
        match step {
            Step::Sleep(ms) => {
                self.plan.pop_front();
                self.schedule(self.now + ms, Item::Plan);
            }
            Step::Inject(fault) => {
                if self.measuring() {
                    self.measure_change();
                }
                if let Inject::LeaveNode(id) = fault {
                    // A scripted leave that cannot happen now (a majority would be lost, or the node is
                    // paused) waits its turn.
                    if !self.leave(id)? && self.procs.get(&id).is_some_and(|p| !p.leaving) {
                        return self.await_step("a scripted leave to become possible", poll);
                    }
                } else {
                    self.inject(fault)?;
                }
                self.plan.pop_front();
                self.waiting_since = None;
                self.schedule(self.now, Item::Plan);
            }
            Step::Converged => {
                if self.converged() {
                    self.plan.pop_front();
                    self.waiting_since = None;
                    self.schedule(self.now, Item::Plan);
                } else {
                    self.await_step("convergence (every live process an active member of one view)", poll)?;
                }
            }
            Step::Exited(id) => {
                if self.procs.contains_key(&id) {
                    self.await_step("a leaving node's exit", poll)?;
                } else {
                    self.plan.pop_front();
                    self.waiting_since = None;
                    self.schedule(self.now, Item::Plan);
                }
            }
        }
        Ok(())
    }

    /// Waits (polls) for the plan's current step, failing once it took longer than the liveness bound.
    fn await_step(&mut self, what: &str, poll: u64) -> Outcome {
        let since = *self.waiting_since.get_or_insert(self.now);
        let bound = self.cfg.liveness_bound() + self.cfg.membership.suspect_after.get();
        if self.now - since > bound {
            return Err(format!(
                "liveness: the scenario waited {} ms (bound {bound} ms) for {what}: {}",
                self.now - since,
                self.state_summary()
            ));
        }
        self.schedule(self.now + poll, Item::Plan);
        Ok(())
    }

    fn follow(&mut self, after: u64, f: Followup) {
        self.pending += 1;
        self.schedule(self.now + after, Item::Followup(f));
    }

    /// A random live process (any, or only members of the newest view at their incarnation).
    fn pick(&mut self, members_only: bool) -> Option<NodeId> {
        let newest = self.ghost.newest();
        let ids: Vec<NodeId> = self
            .procs
            .iter()
            .filter(|(id, p)| !members_only || newest.is_some_and(|v| v.contains(**id, p.inc)))
            .filter(|(_, p)| !p.leaving && !p.paused)
            .map(|(&id, _)| id)
            .collect();
        if ids.is_empty() {
            return None;
        }
        Some(ids[self.rng.below(ids.len() as u64) as usize])
    }

    fn inject(&mut self, fault: Inject) -> Outcome {
        let beat = self.cfg.membership.heartbeat.get();
        let (s, l) = (self.cfg.membership.suspect_after.get(), self.cfg.membership.lease.get());
        match fault {
            Inject::Crash => {
                let Some(id) = self.pick(false) else { return Ok(()) };
                let again = self.rng.chance(0.3);
                let down = self.rng.below(2 * (s + l));
                if self.crash(id) {
                    self.follow(down, Followup::Restart { id, again });
                }
            }
            Inject::CrashNode(id) => {
                self.crash(id);
            }
            Inject::Pause => {
                let Some(id) = self.pick(false) else { return Ok(()) };
                let long = self.rng.chance(0.5);
                let span = if long { s + l + self.rng.below(2 * (s + l)) } else { 1 + self.rng.below(s) };
                let Some(p) = self.procs.get_mut(&id) else { return Ok(()) };
                p.paused = true;
                let serial = p.serial;
                self.report.faults.pauses += 1;
                if long {
                    self.report.faults.long_pauses += 1;
                }
                note!(self, "{id} pauses for {span} ms");
                self.follow(span, Followup::Resume { id, serial });
            }
            Inject::Partition => {
                if !self.blocked.is_empty() {
                    return Ok(());
                }
                let (kind, cut) = self.partition();
                if cut.is_empty() {
                    return Ok(());
                }
                note!(self, "partition {kind}: {cut:?}");
                *self.report.faults.partitions.entry(kind).or_default() += 1;
                self.blocked = cut;
                let span = beat + self.rng.below(20 * beat);
                self.heal_at = self.now + span;
                self.follow(span, Followup::Heal);
            }
            Inject::Join => {
                if self.procs.len() >= 6 {
                    return Ok(());
                }
                let id = NodeId::new(self.known_ids.iter().next_back().map_or(0, |m| m.get() + 1));
                self.report.faults.joins += 1;
                self.spawn_joiner(id)?;
            }
            Inject::Start(id) => {
                if self.procs.contains_key(&id) {
                    return Ok(());
                }
                if self.known_ids.contains(&id) {
                    self.report.faults.restarts += 1;
                } else {
                    self.report.faults.joins += 1;
                }
                self.spawn_joiner(id)?;
            }
            Inject::Leave => {
                let Some(id) = self.pick(true) else { return Ok(()) };
                let rejoin = self.rng.chance(0.5).then(|| self.rng.below(4 * beat));
                if self.leave(id)? && rejoin.is_some() {
                    self.pending += 1;
                    if let Some(p) = self.procs.get_mut(&id) {
                        p.rejoin_after = rejoin;
                    }
                }
            }
            Inject::LeaveNode(id) => {
                self.leave(id)?;
            }
        }
        Ok(())
    }

    /// Crashes `id`'s process (if a majority of the newest view stays up). Whether it did.
    fn crash(&mut self, id: NodeId) -> bool {
        if !self.procs.contains_key(&id) {
            return false;
        }
        if !self.keeps_majority(id) {
            self.report.faults.skipped += 1;
            note!(self, "crash of {id} skipped: the newest view would lose its majority");
            return false;
        }
        self.forget_requests(id, true);
        let Some(p) = self.procs.remove(&id) else { return false };
        if p.rejoin_after.is_some() {
            // It was leaving and would have come back: the crash's own restart takes that over.
            self.pending -= 1;
        }
        self.report.faults.crashes += 1;
        note!(self, "{id}#{} crashes", p.inc.get());
        true
    }

    /// Tells `id` to leave (if a majority of the newest view stays up). Whether the core took it.
    fn leave(&mut self, id: NodeId) -> Result<bool, String> {
        let Some(p) = self.procs.get(&id) else { return Ok(false) };
        if p.leaving || p.paused {
            return Ok(false);
        }
        if !self.keeps_majority(id) {
            self.report.faults.skipped += 1;
            note!(self, "leave of {id} skipped: the newest view would lose its majority");
            return Ok(false);
        }
        let refused_before = self.report.refused;
        self.feed(id, Event::Leave)?;
        if self.report.refused > refused_before {
            return Ok(false);
        }
        self.report.faults.leaves += 1;
        note!(self, "{id} leaves");
        if let Some(p) = self.procs.get_mut(&id) {
            p.leaving = true;
        }
        Ok(true)
    }

    /// A random cut of the live ids: a minority (or half) split off, one node's outgoing or incoming traffic,
    /// or two sides joined only through a bridge node.
    fn partition(&mut self) -> (&'static str, BTreeSet<(NodeId, NodeId)>) {
        let mut ids: Vec<NodeId> = self.procs.keys().copied().collect();
        let mut cut = BTreeSet::new();
        if ids.len() < 2 {
            return ("none", cut);
        }
        self.rng.shuffle(&mut ids);
        let both = |cut: &mut BTreeSet<(NodeId, NodeId)>, a: &[NodeId], b: &[NodeId]| {
            for &x in a {
                for &y in b {
                    cut.insert((x, y));
                    cut.insert((y, x));
                }
            }
        };
        let kind = self.rng.below(4);
        match kind {
            1 => {
                for &y in &ids[1..] {
                    cut.insert((ids[0], y));
                }
                ("one-way-out", cut)
            }
            2 => {
                for &y in &ids[1..] {
                    cut.insert((y, ids[0]));
                }
                ("one-way-in", cut)
            }
            3 if ids.len() >= 3 => {
                let rest = &ids[1..];
                let k = 1 + self.rng.below(rest.len() as u64 - 1) as usize;
                both(&mut cut, &rest[..k], &rest[k..]);
                ("bridge", cut)
            }
            _ => {
                let k = 1 + self.rng.below(ids.len() as u64 / 2) as usize;
                both(&mut cut, &ids[..k], &ids[k..]);
                ("split", cut)
            }
        }
    }

    pub(super) fn followup(&mut self, f: Followup) -> Outcome {
        self.pending -= 1;
        match f {
            Followup::Restart { id, again } => {
                if self.procs.contains_key(&id) {
                    return Ok(());
                }
                self.report.faults.restarts += 1;
                self.spawn_joiner(id)?;
                if again {
                    let (s, l) = (self.cfg.membership.suspect_after.get(), self.cfg.membership.lease.get());
                    let after = self.rng.below(s + 2 * l);
                    self.follow(after, Followup::CrashAgain { id });
                }
            }
            Followup::CrashAgain { id } => {
                let down = self.rng.below(2 * self.cfg.membership.suspect_after.get());
                if self.crash(id) {
                    self.report.faults.double_crashes += 1;
                    self.follow(down, Followup::Restart { id, again: false });
                }
            }
            Followup::Resume { id, serial } => {
                let Some(p) = self.procs.get_mut(&id).filter(|p| p.serial == serial) else { return Ok(()) };
                p.paused = false;
                let backlog: Vec<Item> = p.backlog.drain(..).collect();
                note!(self, "{id} resumes ({} queued)", backlog.len());
                for item in backlog {
                    self.schedule(self.now, item);
                }
            }
            Followup::Heal => {
                note!(self, "partition heals");
                self.blocked.clear();
            }
        }
        Ok(())
    }
}
