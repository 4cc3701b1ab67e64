//! The membership core: which nodes the algorithms run over, agreed by a majority, with member leases.
//!
//! Sans-I/O, like [`crate::algo::Engine`]: [`Membership::handle`]`(now, event, &mut actions)` is the one entry
//! point; time is an argument and nothing here reads a clock, draws a random number or does I/O.
//!
//! - **Views** ([`View`]): `{epoch, members}`, each member an id with the incarnation admitted. View `e+1` is
//!   decided by single-decree Paxos among the `(id, incarnation)` members of the installed view `e`
//!   ([`paxos`](self) rules in `paxos.rs`); a restarted incarnation is never an acceptor of a view that did not
//!   list it. At most one view per epoch, and a minority can never install one.
//! - **Bootstrap** ([`Event::Bootstrap`]): every node given the same initial member list installs it as view 1
//!   without a round. This is the one step not decided by a majority, so the driver must hand every node the
//!   same list (ids *and* incarnations); [`Formation`] (`bootstrap.rs`) is how the node does it: only the
//!   lowest configured id decides the list, after every configured node answered that it has no view; a
//!   node that restarted later joins instead of bootstrapping again.
//! - **Join** ([`Event::JoinRequested`]): a node outside the view sends JOIN to seeds until a view lists it; a
//!   member proposes the next view with it (replacing an older incarnation of the same id). A JOIN not
//!   renewed for [`Config::suspect_after`] is forgotten, so a joiner that died, or was admitted and removed
//!   in views this member missed, is not admitted again from a stale request.
//! - **Renew** ([`Event::Renew`]): the same members under the next epoch, for cores whose fencing tokens
//!   carry the view epoch.
//! - **Leave** ([`Event::Leave`]): the member stops acting ([`Action::Active`]`(false)`), says so (RESIGN),
//!   proposes its own removal and reports [`Action::Left`] once a view without it is installed. It keeps
//!   heartbeating meanwhile (without a lease), so that it learns that view even if it missed it. An
//!   incarnation that resigned never becomes a member again: a late JOIN of it is ignored.
//! - **Failure detection**: members heartbeat every [`Config::heartbeat`]; a member not heard from for
//!   [`Config::suspect_after`] (S) is proposed for exclusion. The proposer is chosen deterministically: the
//!   lowest-id member a node does not suspect proposes at once, the others after `rank × retry`. A member
//!   that hears no majority of its view (itself included) proposes no change: it is the one cut off.
//! - **Member leases** (rule and proof sketch in `lease.rs`): a member is *active* until
//!   `t + ⌊L·(1−ρ)/(1+ρ)⌋` on its own clock after a majority acked its heartbeat of local time `t`, and the
//!   driver grants only while [`Action::Active`] last said `true` (and checks [`Membership::is_active`]
//!   against its clock before each grant). An acceptor accepts a view excluding X only once
//!   `now ≥ max(last_ack[X], installed_at) + L + 1` on its own clock (one tick for truncated readings); it stops acking heartbeats once it has
//!   promised a ballot for the next epoch; early ACCEPTs are deferred until the wait is over. Timing
//!   assumption: local clock rates within `1 ± ρ` of real time; message delays and pauses unbounded.
//! - **Epochs on messages**: a message of an older epoch is dropped (a heartbeat of an older epoch is answered
//!   with the current view, so a stale member learns it); a newer epoch makes the receiver ask for the view.
//!
//! Must never: panic on any message, count a non-member or a stale incarnation as a voter, let a lease be
//! longer than the rule allows, or let `HashMap` order reach its output.

mod bootstrap;
mod lease;
mod machine;
mod paxos;
#[cfg(test)]
mod tests;
mod view;

pub use bootstrap::{FormAction, FormEvent, FormMsg, Formation};
pub use lease::{PPM, exclusion_allowed_at, lease_end};
pub use machine::{Membership, MembershipStats};
pub use paxos::Ballot;
pub use view::{Epoch, Member, View};

use crate::algo::{Incarnation, Millis, NodeId};
use serde::{Deserialize, Serialize};

/// The membership core's timing parameters (all on the local clock).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Config {
    /// Interval between a member's heartbeats.
    pub heartbeat: Millis,
    /// S: a member not heard from for this long is proposed for exclusion.
    pub suspect_after: Millis,
    /// L: the member lease. An acceptor waits this long after its last ack to a member before agreeing to
    /// exclude it; a member's own lease is the shorter `⌊L·(1−ρ)/(1+ρ)⌋`.
    pub lease: Millis,
    /// ρ, in parts per million: the bound on how far a local clock's rate may differ from real time.
    pub drift_ppm: u32,
    /// How long a proposer waits for a round before it retries with a higher ballot; also the step of the
    /// rank-proportional delay before a non-first proposer starts, and of JOIN retries.
    pub retry: Millis,
}

impl Config {
    /// Heartbeat 200 ms, S = 1.5 s, L = 1 s, ρ = 1 %, retry 300 ms.
    pub fn standard() -> Self {
        Config {
            heartbeat: Millis::new(200),
            suspect_after: Millis::new(1500),
            lease: Millis::new(1000),
            drift_ppm: 10_000,
            retry: Millis::new(300),
        }
    }

    /// Refuses impossible combinations, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, reason| Err(ConfigError { field, reason });
        if self.heartbeat.get() == 0 {
            return bad("heartbeat", "must be above 0");
        }
        if self.suspect_after <= self.heartbeat {
            return bad("suspect_after", "must exceed the heartbeat interval, or every member is suspected");
        }
        if u64::from(self.drift_ppm) >= PPM {
            return bad("drift_ppm", "must be below 1 000 000 (ρ < 1)");
        }
        if lease_end(Millis::new(0), self.lease, self.drift_ppm) <= self.heartbeat {
            return bad(
                "lease",
                "L·(1−ρ)/(1+ρ) must exceed the heartbeat interval, or no lease outlives a heartbeat",
            );
        }
        if self.retry.get() == 0 {
            return bad("retry", "must be above 0");
        }
        Ok(())
    }
}

/// An impossible [`Config`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("membership config: {field} {reason}")]
pub struct ConfigError {
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A membership message between nodes. `epoch` is the sender's installed epoch, except in PREPARE, PROMISE,
/// NACK, ACCEPT and ACCEPTED, where it names the epoch being decided (installed + 1).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Msg {
    /// "I am alive": sent every heartbeat interval at the sender's local time `sent`.
    Heartbeat {
        /// The sender's epoch.
        epoch: Epoch,
        /// The sender's local time at sending, echoed in the ack.
        sent: Millis,
    },
    /// Ack of a heartbeat: the acker now waits `L` before agreeing to exclude the sender.
    Ack {
        /// The epoch both are in.
        epoch: Epoch,
        /// The heartbeat's `sent`.
        sent: Millis,
    },
    /// Paxos 1a.
    Prepare {
        /// The epoch being decided.
        epoch: Epoch,
        /// The ballot.
        ballot: Ballot,
    },
    /// Paxos 1b.
    Promise {
        /// The epoch being decided.
        epoch: Epoch,
        /// The ballot promised.
        ballot: Ballot,
        /// The highest-ballot value this acceptor accepted, if any.
        accepted: Option<(Ballot, View)>,
    },
    /// A refused PREPARE or ACCEPT: the acceptor promised `promised`, higher than `ballot`.
    Nack {
        /// The epoch being decided.
        epoch: Epoch,
        /// The refused ballot.
        ballot: Ballot,
        /// The acceptor's promise.
        promised: Ballot,
    },
    /// Paxos 2a.
    Accept {
        /// The epoch being decided.
        epoch: Epoch,
        /// The ballot.
        ballot: Ballot,
        /// The proposed view.
        view: View,
        /// Members of the base view (at the incarnation it lists) the proposer knows have resigned: no lease
        /// wait for them.
        resigned: Vec<NodeId>,
    },
    /// Paxos 2b.
    Accepted {
        /// The epoch being decided.
        epoch: Epoch,
        /// The ballot accepted.
        ballot: Ballot,
    },
    /// A decided view (sent by its proposer, and to anyone who asks or lags behind).
    Install {
        /// The view.
        view: View,
    },
    /// "Which view are you in?" (the sender saw a newer epoch); answered with INSTALL.
    ViewQuery,
    /// A node asks to be admitted.
    Join {
        /// Its id, incarnation and address.
        member: Member,
    },
    /// A leaving member has stopped acting and asks to be removed.
    Resign {
        /// Its epoch.
        epoch: Epoch,
    },
}

impl Msg {
    /// The message type, for counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Heartbeat { .. } => "HEARTBEAT",
            Msg::Ack { .. } => "ACK",
            Msg::Prepare { .. } => "PREPARE",
            Msg::Promise { .. } => "PROMISE",
            Msg::Nack { .. } => "NACK",
            Msg::Accept { .. } => "ACCEPT",
            Msg::Accepted { .. } => "ACCEPTED",
            Msg::Install { .. } => "INSTALL",
            Msg::ViewQuery => "VIEW_QUERY",
            Msg::Join { .. } => "JOIN",
            Msg::Resign { .. } => "RESIGN",
        }
    }
}

/// The membership core's timers. Each fires as [`Event::Timer`]; one of each at a time.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Timer {
    /// Send the next heartbeat.
    Heartbeat,
    /// Look for members not heard from for S.
    SuspectCheck,
    /// The member lease may have ended.
    LeaseEnd,
    /// Start (or retry) a proposal.
    Propose,
    /// A deferred ACCEPT's lease wait is over.
    AcceptWait,
    /// Re-send JOIN.
    JoinRetry,
}

/// Input to the membership core.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// Install view 1 of `members` without a round (see the module doc for the precondition).
    Bootstrap {
        /// The initial members, this node among them.
        members: Vec<Member>,
    },
    /// Ask `seeds` (and later the members of any view learnt) to admit this node.
    JoinRequested {
        /// Nodes to ask first.
        seeds: Vec<NodeId>,
    },
    /// Leave gracefully: stop acting, resign, and wait for a view without this node.
    Leave,
    /// Propose the same members under the next epoch (a *view bump*), unless a newer view is installed
    /// first. Asked for by a mutex core whose epoch-tagged counters near their range
    /// ([`crate::algo::Engine::wants_view_bump`]); this node proposes at once.
    Renew,
    /// A message from another node.
    Message {
        /// Sender.
        from: NodeId,
        /// The sender's incarnation.
        incarnation: Incarnation,
        /// Payload.
        msg: Msg,
    },
    /// A timer set by [`Action::SetTimer`] fired.
    Timer(Timer),
}

/// Output of the membership core, executed by its driver in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Send `msg` to `to` (the address is in a view or came with JOIN).
    Send {
        /// Destination.
        to: NodeId,
        /// Payload.
        msg: Msg,
    },
    /// Deliver [`Event::Timer`] at `at` (replaces an earlier timer with the same id).
    SetTimer {
        /// Which timer.
        timer: Timer,
        /// When.
        at: Millis,
    },
    /// A newer view is installed: run the algorithms over its members from now on.
    InstallView(View),
    /// The member lease was gained (`true`) or lost (`false`). On `false` the driver stops granting at once,
    /// ends its local leases and withdraws its requests.
    Active(bool),
    /// A view without this node is installed after [`Event::Leave`]: the process may exit.
    Left,
}

/// An input the core refused. Counted; never a panic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// A message that needs a member of the current view came from a non-member (or another incarnation).
    #[error("{kind} from node {from} (incarnation {incarnation:?}), not a member of epoch {epoch}")]
    NotMember {
        /// Message type.
        kind: &'static str,
        /// Sender.
        from: NodeId,
        /// Its incarnation.
        incarnation: Incarnation,
        /// This node's epoch.
        epoch: Epoch,
    },
    /// A message whose content contradicts itself (e.g. an ACCEPT whose view is for another epoch).
    #[error("malformed {kind} from node {from}: {reason}")]
    Malformed {
        /// Message type.
        kind: &'static str,
        /// Sender.
        from: NodeId,
        /// What is wrong.
        reason: &'static str,
    },
    /// An INSTALL of a view for the epoch already installed, with other members: two decisions for one epoch.
    #[error("conflicting view for epoch {0}")]
    ConflictingView(Epoch),
    /// A local event that does not fit the state (bootstrap twice, leave while not a member, …).
    #[error("{event} refused: {reason}")]
    WrongState {
        /// The event.
        event: &'static str,
        /// Why.
        reason: &'static str,
    },
}
