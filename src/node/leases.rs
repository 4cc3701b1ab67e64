//! The leases this node's clients hold: what a lease id names (which core's request, which lock, which
//! token) and what the answers to keepalive, release and lock-info need.
//!
//! When a lease ends is not kept here: the core owns it (the grant's lease timer, moved by keepalives, fires
//! as [`crate::algo::Action::LeaseExpired`]), so there is one clock for a lease and it is the core's.

use super::forward::LeaseOwner;
use crate::algo::{Algorithm, FencingToken, RequestId};
use rand::{Rng, TryRngCore};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A granted lock as its client sees it.
pub(crate) struct Lease {
    /// The core's request that holds the lock.
    pub(crate) req: RequestId,
    pub(crate) algorithm: Algorithm,
    pub(crate) lock: String,
    pub(crate) token: FencingToken,
    /// How long each keepalive extends it.
    pub(crate) ttl: Duration,
    pub(crate) granted: Instant,
    /// Flow id of the acquire that got the lease.
    pub(crate) acquire_id: String,
    /// The acquire's trace context: `lock.release` is its child.
    pub(crate) otel: Option<opentelemetry::Context>,
}

/// The leases held through this node, by lease id and by request.
#[derive(Default)]
pub(crate) struct Leases {
    by_id: BTreeMap<String, Lease>,
    id_of: BTreeMap<RequestId, String>,
}

impl Leases {
    /// Records a new lease under a fresh id: `owner`'s prefix ([`LeaseOwner::prefix`]) and 128 random bits
    /// from the OS's generator (unguessable: the id is the credential that releases the lock). Returns the id.
    pub(crate) fn insert(&mut self, owner: LeaseOwner, lease: Lease) -> String {
        let secret: u128 = rand::rngs::OsRng.unwrap_err().random();
        let id = format!("{}.{secret:032x}", owner.prefix());
        self.id_of.insert(lease.req, id.clone());
        self.by_id.insert(id.clone(), lease);
        id
    }

    /// The lease named `id`.
    pub(crate) fn get(&self, id: &str) -> Option<&Lease> {
        self.by_id.get(id)
    }

    /// The lease of the core's request `req`.
    pub(crate) fn of_request(&self, req: RequestId) -> Option<&Lease> {
        self.id_of.get(&req).and_then(|id| self.by_id.get(id))
    }

    /// Forgets the lease named `id`.
    pub(crate) fn remove(&mut self, id: &str) -> Option<Lease> {
        let lease = self.by_id.remove(id)?;
        self.id_of.remove(&lease.req);
        Some(lease)
    }

    /// Forgets the lease of the request `req`; returns its id too.
    pub(crate) fn remove_request(&mut self, req: RequestId) -> Option<(String, Lease)> {
        let id = self.id_of.remove(&req)?;
        let lease = self.by_id.remove(&id)?;
        Some((id, lease))
    }

    /// Every lease id, in order.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.by_id.keys().cloned().collect()
    }

    /// Every lease, in id order.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Lease> + '_ {
        self.by_id.values()
    }

    /// The leases on `lock`, by id.
    pub(crate) fn on_lock<'a>(&'a self, lock: &'a str) -> impl Iterator<Item = (&'a str, &'a Lease)> + 'a {
        self.by_id.iter().filter(move |(_, l)| l.lock == lock).map(|(id, l)| (id.as_str(), l))
    }

    /// How many leases are held.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::{Incarnation, NodeId};

    fn lease(req: u64, lock: &str) -> Lease {
        Lease {
            req: RequestId::new(req),
            algorithm: Algorithm::Lamport,
            lock: lock.into(),
            token: FencingToken::new(req),
            ttl: Duration::from_secs(1),
            granted: Instant::now(),
            acquire_id: format!("a{req}"),
            otel: None,
        }
    }

    #[test]
    fn a_lease_is_found_by_id_and_by_request_and_forgotten_by_either() {
        let mut leases = Leases::default();
        let owner = LeaseOwner { node: NodeId::new(2), incarnation: Incarnation::new(9) };
        let a = leases.insert(owner, lease(1, "x"));
        let b = leases.insert(owner, lease(2, "y"));
        assert_ne!(a, b);
        assert_eq!(LeaseOwner::of(&a), Some(owner), "{a}");
        assert_eq!(a.len(), "2.9.".len() + 32);
        assert_eq!(leases.get(&a).map(|l| l.req), Some(RequestId::new(1)));
        assert_eq!(leases.of_request(RequestId::new(2)).map(|l| l.lock.as_str()), Some("y"));
        assert_eq!(leases.on_lock("x").map(|(id, _)| id.to_string()).collect::<Vec<_>>(), vec![a.clone()]);
        assert_eq!(leases.remove_request(RequestId::new(1)).map(|(id, _)| id), Some(a.clone()));
        assert!(leases.get(&a).is_none());
        assert!(leases.remove(&b).is_some());
        assert!(leases.of_request(RequestId::new(2)).is_none());
        assert_eq!(leases.len(), 0);
    }
}
