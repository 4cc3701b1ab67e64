//! Recovery rounds at a lock's home: OWNER_QUERY / OWNER_REPORT, regeneration above every epoch seen, and
//! what a peer's restart means for the rounds.

use super::*;

impl LockState {
    pub(super) fn own_report(&self, synced: OwnershipEpoch) -> Report {
        Report {
            owned: self.owned.as_ref().map(|o| o.epoch),
            last_out: self.last_out,
            max_epoch: self.max_epoch.max(synced),
        }
    }

    /// Starts (or restarts) a recovery round holding `waiters`.
    pub(super) fn start_round(
        &mut self,
        cx: &Ctx<'_>,
        out: &mut Vec<Output<PoMsg>>,
        mut waiters: VecDeque<Waiter>,
    ) {
        if let Some(old) = self.round.take() {
            for old_waiter in old.waiters.into_iter().rev() {
                if !waiters.iter().any(|w| w.node == old_waiter.node) {
                    waiters.push_front(old_waiter);
                }
            }
        }
        self.rounds = self.rounds.wrapping_add(1);
        // Mixing in the incarnation keeps a report meant for a previous life of this home out of this round.
        let my_inc = cx.peers.incarnation(cx.me).unwrap_or_default().get();
        let id = (my_inc << 32) | u64::from(self.rounds);
        let floor = self.max_epoch.max(cx.synced).next_in(cx.view());
        let mut reports = BTreeMap::new();
        reports.insert(cx.me, self.own_report(cx.synced));
        self.max_epoch = floor;
        self.round = Some(Round { id, floor, reports, waiters });
        let incarnations: Vec<(NodeId, Incarnation)> =
            cx.peers.all().filter_map(|p| cx.peers.incarnation(p).map(|i| (p, i))).collect();
        for p in cx.peers.others() {
            let msg = PoMsg::Query {
                lock: cx.lock.to_owned(),
                round: id,
                floor,
                incarnations: incarnations.clone(),
            };
            cx.send(out, p, msg);
        }
        self.maybe_decide(cx, out);
    }

    pub(super) fn on_report(
        &mut self,
        cx: &Ctx<'_>,
        out: &mut Vec<Output<PoMsg>>,
        from: NodeId,
        round: u64,
        report: Report,
    ) {
        let Some(r) = &mut self.round else { return };
        if r.id != round {
            return; // A report for a round that was restarted or decided.
        }
        r.reports.insert(from, report);
        self.maybe_decide(cx, out);
    }

    pub(super) fn maybe_decide(&mut self, cx: &Ctx<'_>, out: &mut Vec<Output<PoMsg>>) {
        // Every member's report (this node's included): a node outside the member set is never waited for.
        if self
            .round
            .as_ref()
            .is_none_or(|r| r.reports.keys().filter(|&&p| cx.peers.contains(p)).count() < cx.n)
        {
            return;
        }
        let Some(round) = self.round.take() else { return };
        let owner = round.reports.iter().filter_map(|(node, rep)| rep.owned.map(|e| (e, *node))).max();
        let mut via = None;
        let found = match (&self.owned, owner) {
            // The token reached the home during the round.
            (Some(o), _) => Some(OwnerClaim { owner: cx.me, epoch: o.epoch }),
            // (1) Somebody owns it.
            (None, Some((epoch, node))) => Some(OwnerClaim { owner: node, epoch }),
            // (2) The newest transfer is in flight to a live incarnation.
            (None, None) => round
                .reports
                .iter()
                .filter_map(|(sender, rep)| rep.last_out.map(|l| (*sender, l)))
                .max_by_key(|&(_, transfer)| transfer.epoch)
                .filter(|&(_, transfer)| cx.peers.incarnation(transfer.to) == Some(transfer.incarnation))
                .map(|(sender, transfer)| {
                    via = Some(sender);
                    OwnerClaim { owner: transfer.to, epoch: transfer.epoch }
                }),
        };
        if let Some(claim) = found {
            // Reports are older than the home's own knowledge: a transfer it saw during the round is fresher.
            let (claim, via) = if self.hint.owner != cx.me && self.hint.epoch > claim.epoch {
                (self.hint, None)
            } else {
                (claim, via)
            };
            self.record = Some(claim);
            self.record_via = via;
            self.learn(cx, claim.owner, claim.epoch);
            self.redispatch(cx, out, round.waiters);
            return;
        }
        let seen = round.reports.values().map(|rep| rep.max_epoch).max().unwrap_or_default();
        if seen >= round.floor {
            // Some node has seen an epoch at or above the floor: regenerating there could repeat a token.
            self.max_epoch = self.max_epoch.max(seen);
            self.start_round(cx, out, round.waiters);
            return;
        }
        // (3) Lost or never created: regenerate above everything any live node has seen.
        let pending = self.pending.take();
        let mut queue = VecDeque::new();
        let buffered = pending.as_ref().map(|p| p.buffered.clone()).unwrap_or_default();
        for w in round.waiters.into_iter().chain(buffered) {
            if w.node != cx.me {
                add_waiter(&mut queue, w);
            }
        }
        tracing::info!(lock = cx.lock, epoch = round.floor.get(), "ownership regenerated at the home");
        self.owned = Some(Owned { epoch: round.floor, seq: 0, queue, held: false });
        self.hint = OwnerClaim { owner: cx.me, epoch: round.floor };
        self.record = Some(self.hint);
        self.record_via = None;
        self.max_epoch = self.max_epoch.max(round.floor);
        let entering = pending.as_ref().is_some_and(|p| p.wants);
        self.settle_tries(cx, out, entering);
        if entering {
            self.enter(cx, out);
        } else {
            self.transfer(cx, out);
        }
    }

    /// Serves the requests a decided round held, now that the record is known.
    pub(super) fn redispatch(
        &mut self,
        cx: &Ctx<'_>,
        out: &mut Vec<Output<PoMsg>>,
        waiters: VecDeque<Waiter>,
    ) {
        for waiter @ Waiter { node, seq, .. } in waiters {
            if node == cx.me {
                match &self.pending {
                    Some(p) if p.wants || !p.buffered.is_empty() => {
                        self.send_own_acq(cx, out, self.hint, false);
                    }
                    Some(_) => self.pending = None,
                    None => {}
                }
            } else if self.owned.is_none() && self.record.is_some_and(|r| r.owner == node) {
                // The record names the requester itself (a transfer to it is in flight, or its request is
                // stale): tell it; a new round right away would find the same answer.
                let epoch = self.record.map_or(OwnershipEpoch::ZERO, |r| r.epoch);
                let outcome = RepOutcome::Redirect { owner: node, epoch };
                cx.send(out, node, PoMsg::Rep { lock: cx.lock.to_owned(), seq, outcome });
            } else {
                self.on_acq(cx, out, waiter, OwnershipEpoch::ZERO, false);
            }
        }
    }

    /// Forgets what `peer`'s previous incarnation asked for or held; re-sends what it may have lost.
    pub(super) fn peer_restarted(&mut self, cx: &Ctx<'_>, out: &mut Vec<Output<PoMsg>>, peer: NodeId) {
        // Queue, buffer and round entries of `peer` are kept: an entry carries no incarnation, and one that
        // reached us inside a transferred queue may be the *new* incarnation's request. A grant to a node that
        // no longer wants the lock costs one hop (it passes the token on); a dropped request would wait forever.
        if self.hint.owner == peer {
            self.hint.owner = cx.home;
        }
        // A round in progress restarts (its reports may predate the restart); a record that names the dead
        // incarnation, or relies on a transfer it sent, must be found again.
        let record_stale = self.owned.is_none()
            && (self.record.is_some_and(|r| r.owner == peer) || self.record_via == Some(peer));
        if cx.is_home() && (self.round.is_some() || record_stale) {
            self.start_round(cx, out, VecDeque::new());
        }
        // The token we handed to the dead incarnation (and the queue riding with it) may have died with it.
        let lost = self.owned.is_none()
            && self
                .last_out
                .is_some_and(|t| t.to == peer && cx.peers.incarnation(peer) != Some(t.incarnation));
        match &mut self.pending {
            // Our request may have been in the dead incarnation's queue: ask again (duplicates are harmless).
            Some(p) if p.wants || !p.buffered.is_empty() => {
                p.hops = 0;
                self.send_own_acq(cx, out, cx.home_claim(), lost);
                return;
            }
            Some(_) => self.pending = None,
            None => {}
        }
        if lost {
            if cx.is_home() {
                if self.round.is_none() {
                    self.start_round(cx, out, VecDeque::new());
                }
            } else {
                // Request number 0 matches no request of ours: a grant it earns is simply passed on.
                let msg = PoMsg::Acq {
                    lock: cx.lock.to_owned(),
                    requester: cx.me,
                    seq: 0,
                    epoch: OwnershipEpoch::ZERO,
                    suspect: true,
                    attempt: false,
                };
                cx.send(out, cx.home, msg);
            }
        }
    }

    /// A view was installed: `removed` left the member set (after their leases ran out: they hold nothing),
    /// members joined if `joined`, and the lock's home may have moved from `old_home` to `cx.home`.
    pub(super) fn members_changed(
        &mut self,
        cx: &Ctx<'_>,
        out: &mut Vec<Output<PoMsg>>,
        removed: &[NodeId],
        joined: bool,
        old_home: NodeId,
    ) {
        // An excluded node's requests died with its membership: never hand it the token.
        if let Some(o) = &mut self.owned {
            o.queue.retain(|w| cx.peers.contains(w.node));
        }
        if let Some(p) = &mut self.pending {
            p.buffered.retain(|w| cx.peers.contains(w.node));
        }
        if let Some(r) = &mut self.round {
            r.waiters.retain(|w| cx.peers.contains(w.node));
            r.reports.retain(|p, _| cx.peers.contains(*p));
        }
        if old_home != cx.home {
            // The record lives at the old home: the new one starts without (its first use runs a round), and
            // a round of the old home is void (its reports go to the new home's round instead).
            if cx.is_home() {
                self.record = None;
                self.record_via = None;
            } else {
                let waiters = self.round.take().map(|r| r.waiters).unwrap_or_default();
                self.record = None;
                self.record_via = None;
                // Requests held by the void round ask the new home (the own one is re-sent below).
                for w in waiters {
                    if w.node != cx.me {
                        let redirect = PoMsg::Rep {
                            lock: cx.lock.to_owned(),
                            seq: w.seq,
                            outcome: RepOutcome::Redirect { owner: cx.home, epoch: OwnershipEpoch::ZERO },
                        };
                        cx.send(out, w.node, redirect);
                    }
                }
            }
            if self.hint.owner == old_home && self.hint.epoch == OwnershipEpoch::ZERO {
                self.hint.owner = cx.home;
            }
        }
        for &gone in removed {
            // What an excluded node knew or held is gone as if it had restarted: hints, records and rounds
            // that rely on it are found again, and a token handed to it is lost (it is no member any more).
            self.peer_restarted(cx, out, gone);
        }
        if joined && cx.is_home() && self.round.is_some() {
            // The round now needs the joiner's report too, and the joiner never got its query: ask again.
            self.start_round(cx, out, VecDeque::new());
        }
        if old_home != cx.home
            && let Some(p) = &mut self.pending
            && (p.wants || !p.buffered.is_empty())
        {
            p.hops = 0;
            self.send_own_acq(cx, out, cx.home_claim(), false);
        }
    }

    pub(super) fn on_query(
        &mut self,
        cx: &Ctx<'_>,
        out: &mut Vec<Output<PoMsg>>,
        round: u64,
        floor: OwnershipEpoch,
    ) {
        if let Some(p) = &mut self.pending
            && (p.wants || !p.buffered.is_empty())
        {
            // Our request may have ridden in a queue that was lost with a dead incarnation. Re-sending it ahead
            // of the report (same FIFO link) puts it among the round's waiters; duplicates are harmless.
            p.hops = 0;
            self.send_own_acq(cx, out, cx.home_claim(), false);
        }
        let rep = self.own_report(cx.synced);
        self.max_epoch = self.max_epoch.max(floor);
        let msg = PoMsg::Report {
            lock: cx.lock.to_owned(),
            round,
            owned: rep.owned,
            last_out: rep.last_out,
            max_epoch: rep.max_epoch,
        };
        cx.send(out, cx.home, msg);
    }
}
