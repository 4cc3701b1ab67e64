//! The owner side and the chase: requests, the FIFO queue at the owner, hand-off, grants, redirects.

use super::*;

impl LockState {
    pub(super) fn new(home: NodeId) -> Self {
        LockState {
            hint: OwnerClaim { owner: home, epoch: OwnershipEpoch::ZERO },
            owned: None,
            pending: None,
            last_out: None,
            max_epoch: OwnershipEpoch::ZERO,
            record: None,
            record_via: None,
            round: None,
            rounds: 0,
            req_seq: 0,
            last_token: None,
        }
    }

    /// Takes in a claim "`owner` owned at `epoch`" if it is not older than what is known.
    pub(super) fn learn(&mut self, cx: &Ctx<'_>, owner: NodeId, epoch: OwnershipEpoch) {
        self.max_epoch = self.max_epoch.max(epoch);
        // Only ownership itself may make a node point at itself.
        if owner == cx.me && self.owned.is_none() {
            return;
        }
        let claim = OwnerClaim { owner, epoch };
        if epoch >= self.hint.epoch {
            self.hint = claim;
        }
        if let Some(rec) = &mut self.record
            && epoch >= rec.epoch
        {
            if *rec != claim {
                self.record_via = None;
            }
            *rec = claim;
        }
    }

    /// This node's request (`attempt`: a try, never queued behind another request).
    pub(super) fn request(&mut self, cx: &Ctx<'_>, out: &mut Vec<Output<PoMsg>>, attempt: bool) {
        if let Some(o) = &self.owned {
            if o.held {
                return; // The engine never requests while entered.
            }
            if o.queue.is_empty() {
                self.enter(cx, out);
                return;
            }
            // FIFO fairness: remote waiters came first.
            let head = o.queue.front().map(|w| w.node);
            self.transfer(cx, out);
            if attempt {
                // The try would wait behind them.
                out.push(Output::Busy { lock: cx.lock.to_owned(), holder: head });
                return;
            }
        }
        if let Some(p) = &mut self.pending {
            // A withdrawn request may still be out there, or may have been lost with a dead node's queue while
            // nobody wanted it: want it again and ask again (a duplicate is harmless). A try gets a new number
            // so that a `Busy` for an earlier try cannot end it.
            if attempt {
                self.req_seq += 1;
                p.seq = self.req_seq;
            }
            p.wants = true;
            p.attempt = attempt;
            p.hops = 0;
            self.send_own_acq(cx, out, self.hint, false);
            return;
        }
        self.req_seq += 1;
        self.pending =
            Some(Pending { seq: self.req_seq, wants: true, buffered: VecDeque::new(), hops: 0, attempt });
        self.send_own_acq(cx, out, self.hint, false);
    }

    /// Answers every try in the owner's queue that cannot be granted without waiting: all of them if the
    /// owner holds the lock or is about to enter it (`entering`), else all but the head, which the caller
    /// serves next. Called wherever requests join an owner's queue, so a queue never keeps a try.
    pub(super) fn settle_tries(&mut self, cx: &Ctx<'_>, out: &mut Vec<Output<PoMsg>>, entering: bool) {
        let Some(o) = &mut self.owned else { return };
        if !o.queue.iter().any(|w| w.attempt) {
            return;
        }
        let served_first = !(o.held || entering);
        let holder = if served_first { o.queue.front().map(|w| w.node) } else { Some(cx.me) };
        let mut kept = VecDeque::with_capacity(o.queue.len());
        for (i, w) in o.queue.drain(..).enumerate() {
            if w.attempt && !(served_first && i == 0) {
                let outcome = RepOutcome::Busy { holder };
                out.push(Output::Send {
                    to: w.node,
                    msg: PoMsg::Rep { lock: cx.lock.to_owned(), seq: w.seq, outcome },
                });
            } else {
                kept.push_back(w);
            }
        }
        o.queue = kept;
    }

    /// `LOCK_REP` `Busy` for this node's try `seq`: the try is over (unless it was withdrawn, it is answered
    /// busy); the requests buffered behind it are redirected to the hint.
    pub(super) fn on_busy(
        &mut self,
        cx: &Ctx<'_>,
        out: &mut Vec<Output<PoMsg>>,
        seq: u64,
        holder: Option<NodeId>,
    ) {
        let Some(p) = self.pending.take_if(|p| p.attempt && p.seq == seq) else {
            return; // For an earlier request, or one already decided: stale.
        };
        for w in p.buffered {
            self.redirect(cx, out, w);
        }
        if p.wants {
            out.push(Output::Busy { lock: cx.lock.to_owned(), holder });
        }
    }

    /// Points `waiter` at this node's hint (at the home when the hint names the waiter or this node).
    fn redirect(&self, cx: &Ctx<'_>, out: &mut Vec<Output<PoMsg>>, waiter: Waiter) {
        let OwnerClaim { owner: hint, epoch } = self.hint;
        let owner = if hint == waiter.node || hint == cx.me { cx.home } else { hint };
        let outcome = RepOutcome::Redirect { owner, epoch };
        cx.send(out, waiter.node, PoMsg::Rep { lock: cx.lock.to_owned(), seq: waiter.seq, outcome });
    }

    /// A try that reached a pending node that wants the lock itself: it would wait behind that request.
    fn busy_behind_own(cx: &Ctx<'_>, out: &mut Vec<Output<PoMsg>>, waiter: Waiter) {
        let outcome = RepOutcome::Busy { holder: None };
        cx.send(out, waiter.node, PoMsg::Rep { lock: cx.lock.to_owned(), seq: waiter.seq, outcome });
    }

    /// Grants to this node itself (it owns the token and it is free).
    pub(super) fn enter(&mut self, cx: &Ctx<'_>, out: &mut Vec<Output<PoMsg>>) {
        let Some(o) = &mut self.owned else { return };
        if o.seq == u16::MAX {
            // The grant counter would wrap: the owner opens a new epoch of its own (only it can).
            o.epoch = o.epoch.next_in(cx.view());
            o.seq = 0;
        }
        o.seq += 1;
        o.held = true;
        let token = FencingToken::from_epoch(o.epoch, o.seq);
        self.max_epoch = self.max_epoch.max(o.epoch);
        self.hint = OwnerClaim { owner: cx.me, epoch: o.epoch };
        self.last_token = Some(token);
        out.push(Output::Entered { lock: cx.lock.to_owned(), token });
    }

    /// Sends this node's pending request towards the owner `claim` names (the home when it names this node).
    pub(super) fn send_own_acq(
        &mut self,
        cx: &Ctx<'_>,
        out: &mut Vec<Output<PoMsg>>,
        claim: OwnerClaim,
        suspect: bool,
    ) {
        let Some(p) = &self.pending else { return };
        let own = Waiter { node: cx.me, seq: p.seq, attempt: p.attempt };
        let (target, epoch) = if claim.owner == cx.me || suspect {
            (cx.home, OwnershipEpoch::ZERO)
        } else {
            (claim.owner, claim.epoch)
        };
        if target == cx.me {
            self.at_home(cx, out, own, suspect);
        } else {
            let (seq, attempt) = (own.seq, own.attempt);
            let msg = PoMsg::Acq { lock: cx.lock.to_owned(), requester: cx.me, seq, epoch, suspect, attempt };
            cx.send(out, target, msg);
        }
    }

    /// The home's answer to a request it cannot serve as owner (`requester` may be the home itself).
    pub(super) fn at_home(
        &mut self,
        cx: &Ctx<'_>,
        out: &mut Vec<Output<PoMsg>>,
        waiter: Waiter,
        suspect: bool,
    ) {
        if let Some(r) = &mut self.round {
            add_waiter(&mut r.waiters, waiter);
            return;
        }
        let Waiter { node: requester, seq, attempt } = waiter;
        match self.record {
            Some(OwnerClaim { owner, epoch }) if !suspect && owner != requester && owner != cx.me => {
                if requester == cx.me {
                    self.learn(cx, owner, epoch);
                    let lock = cx.lock.to_owned();
                    let msg = PoMsg::Acq { lock, requester, seq, epoch, suspect: false, attempt };
                    cx.send(out, owner, msg);
                } else {
                    let outcome = RepOutcome::Redirect { owner, epoch };
                    cx.send(out, requester, PoMsg::Rep { lock: cx.lock.to_owned(), seq, outcome });
                }
            }
            // Unknown, suspected or pointing back at the requester or at this (non-owning) home: find out.
            _ => self.start_round(cx, out, VecDeque::from([waiter])),
        }
    }

    pub(super) fn on_acq(
        &mut self,
        cx: &Ctx<'_>,
        out: &mut Vec<Output<PoMsg>>,
        waiter: Waiter,
        claim: OwnershipEpoch,
        suspect: bool,
    ) {
        if let Some(o) = &mut self.owned {
            add_waiter(&mut o.queue, waiter);
            self.settle_tries(cx, out, false);
            if self.owned.as_ref().is_some_and(|o| !o.held) {
                self.transfer(cx, out);
            }
            return;
        }
        if cx.is_home() {
            // The home buffers only when its record says the token is on its way to it. Otherwise it routes:
            // a request re-sent to the home after a restart must not wait behind the home's own request,
            // which may itself be buffered at that requester (a wait-for cycle nobody would break).
            match &mut self.pending {
                // A try would wait behind our own request for the token on its way here.
                Some(p)
                    if !suspect
                        && p.wants
                        && waiter.attempt
                        && self.record.is_some_and(|r| r.owner == cx.me) =>
                {
                    Self::busy_behind_own(cx, out, waiter);
                }
                Some(p) if !suspect && self.record.is_some_and(|r| r.owner == cx.me) => {
                    add_waiter(&mut p.buffered, waiter);
                }
                _ => self.at_home(cx, out, waiter, suspect),
            }
            return;
        }
        if let Some(p) = &mut self.pending
            && self.hint.epoch < claim
        {
            // The requester knows of an epoch at which we own that we have not seen: ownership may be on its
            // way here. Wait for it rather than answer from stale state. (With a hint at least that new we
            // owned that epoch and moved on: waiting here could close a cycle of pending nodes.) A try would
            // wait behind our own request: busy at once.
            if p.wants && waiter.attempt {
                Self::busy_behind_own(cx, out, waiter);
            } else {
                add_waiter(&mut p.buffered, waiter);
            }
            return;
        }
        self.redirect(cx, out, waiter);
    }

    /// Hands the token to the queue head (the caller ensures the lock is not held).
    pub(super) fn transfer(&mut self, cx: &Ctx<'_>, out: &mut Vec<Output<PoMsg>>) {
        let Some(mut o) = self.owned.take() else { return };
        let Some(Waiter { node: to, seq, .. }) = o.queue.pop_front() else {
            self.owned = Some(o);
            return;
        };
        let epoch = o.epoch.next_in(cx.view());
        let to_incarnation = cx.peers.incarnation(to).unwrap_or_default();
        let outcome = RepOutcome::Granted { epoch, queue: o.queue.into_iter().collect(), to_incarnation };
        cx.send(out, to, PoMsg::Rep { lock: cx.lock.to_owned(), seq, outcome });
        self.hint = OwnerClaim { owner: to, epoch };
        self.last_out = Some(Transfer { to, incarnation: to_incarnation, epoch });
        self.max_epoch = self.max_epoch.max(epoch);
        if cx.is_home() {
            self.record = Some(self.hint);
            self.record_via = None;
        }
    }

    pub(super) fn on_granted(
        &mut self,
        cx: &Ctx<'_>,
        out: &mut Vec<Output<PoMsg>>,
        from: NodeId,
        epoch: OwnershipEpoch,
        queue: Vec<Waiter>,
        to_incarnation: Incarnation,
    ) -> Result<(), CoreError> {
        if cx.peers.incarnation(cx.me) != Some(to_incarnation) {
            // Addressed to a previous life of this node: that token died with it.
            tracing::debug!(lock = cx.lock, %from, "grant for another incarnation dropped");
            return Ok(());
        }
        self.max_epoch = self.max_epoch.max(epoch);
        let pending = self.pending.take();
        let mut result = Ok(());
        let owned = match self.owned.take() {
            Some(mut o) => {
                // Two tokens: the recovery round should make this impossible. Keep one token, lose nobody.
                tracing::error!(lock = cx.lock, %from, epoch = epoch.get(), "grant received while owning");
                result = Err(CoreError::Unexpected { from, kind: "LOCK_REP", reason: "grant while owning" });
                o.epoch = o.epoch.max(epoch);
                o
            }
            None => Owned { epoch, seq: 0, queue: VecDeque::new(), held: false },
        };
        self.owned = Some(owned);
        let buffered = pending.as_ref().map(|p| p.buffered.iter().copied().collect()).unwrap_or_default();
        if let Some(o) = &mut self.owned {
            for w in queue.into_iter().chain::<Vec<_>>(buffered) {
                if w.node != cx.me && cx.peers.contains(w.node) {
                    add_waiter(&mut o.queue, w);
                }
            }
        }
        let epoch = self.owned.as_ref().map_or(epoch, |o| o.epoch);
        self.hint = OwnerClaim { owner: cx.me, epoch };
        if cx.is_home() {
            self.record = Some(self.hint);
            self.record_via = None;
        } else if cx.home != from {
            let msg = PoMsg::OwnerUpdate { lock: cx.lock.to_owned(), owner: cx.me, epoch };
            cx.send(out, cx.home, msg);
        }
        let held = self.owned.as_ref().is_some_and(|o| o.held);
        let entering = pending.as_ref().is_some_and(|p| p.wants) && !held;
        self.settle_tries(cx, out, entering);
        if entering {
            self.enter(cx, out);
        } else if !held {
            // Withdrawn or a stale duplicate: keep the token idle, or pass it straight on.
            self.transfer(cx, out);
        }
        result
    }

    pub(super) fn on_redirect(
        &mut self,
        cx: &Ctx<'_>,
        out: &mut Vec<Output<PoMsg>>,
        owner: NodeId,
        epoch: OwnershipEpoch,
    ) {
        self.learn(cx, owner, epoch);
        // Any redirect moves our pending request along, even one answering an older request number: entries
        // carry no incarnation and numbers restart after a restart, so a queue or round may hold our request
        // under a stale number. Following a stale redirect only makes a duplicate, which is harmless.
        let Some(p) = &mut self.pending else { return };
        if !p.wants && p.buffered.is_empty() {
            // Withdrawn and nobody waits behind it: forget it. A grant it still earns is passed on.
            self.pending = None;
            return;
        }
        let seq = p.seq;
        if owner == cx.me {
            if cx.is_home() {
                // A node whose hint names the home sent the home's own request back: nobody knows. Find out.
                let own = Waiter { node: cx.me, seq, attempt: p.attempt };
                self.at_home(cx, out, own, true);
            } else if self.hint.epoch >= epoch {
                // The home's round saw us own at `epoch`, but we have moved on since: our own hint is fresher.
                self.send_own_acq(cx, out, self.hint, false);
            }
            // Otherwise the home's round found the token in flight to us: the grant is coming. Asking again
            // would only start round after round.
            return;
        }
        p.hops += 1;
        if p.hops as usize > SUSPECT_AFTER_HOPS_PER_NODE * cx.n {
            p.hops = 0;
            self.send_own_acq(cx, out, cx.home_claim(), true);
        } else {
            self.send_own_acq(cx, out, OwnerClaim { owner, epoch }, false);
        }
    }

    pub(super) fn release(&mut self, cx: &Ctx<'_>, out: &mut Vec<Output<PoMsg>>) {
        if let Some(o) = &mut self.owned {
            o.held = false;
            if !o.queue.is_empty() {
                self.transfer(cx, out);
            }
        }
    }
}
