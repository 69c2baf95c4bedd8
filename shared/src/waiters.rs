//! The node's waiting requests: a bounded in-process map from correlation id to
//! the requests (a synchronous call, long-polls) waiting for that reply.
//!
//! The node's one Redis subscription delivers replies into this map; a request
//! holds a [`Waiter`] and is removed from the map when the waiter is dropped —
//! answered, timed out or disconnected alike.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::Notify;

use crate::record::Reply;

/// The requests of this node waiting for one id. Kept small: a node holds one
/// per waiting request (a `watch` channel costs about four times as much).
#[derive(Debug)]
struct Slot {
    shared: Arc<Shared>,
    /// Waiters of this id.
    count: usize,
}

/// What the waiters of one id share: the reply, once delivered.
#[derive(Debug, Default)]
struct Shared {
    reply: OnceLock<Arc<Reply>>,
    delivered: Notify,
    /// Deliveries so far: each part of a streamed reply is one.
    deliveries: AtomicU64,
}

/// The bounded map of waiting requests.
#[derive(Debug)]
pub struct Waiters {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Inner {
    /// The id is shared with the waiters (one allocation per id).
    slots: HashMap<Arc<str>, Slot>,
    total: usize,
}

/// The map is at its bound.
#[derive(Debug, thiserror::Error)]
#[error("waiter bound reached")]
pub struct Full;

impl Waiters {
    /// A map that holds at most `capacity` waiting requests.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::default(),
            capacity,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves the map consistent (every
        // mutation is a single step), so a poisoned lock can be used.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a place in the bound for a request that will wait, before any of
    /// its work is done (reading its body, asking Redis): at the bound, the
    /// request is refused while it still costs nothing.
    ///
    /// # Errors
    /// [`Full`] when `capacity` places are taken.
    pub fn admit(self: &Arc<Self>) -> Result<Ticket, Full> {
        let mut inner = self.lock();
        if inner.total >= self.capacity {
            return Err(Full);
        }
        inner.total += 1;
        Ok(Ticket {
            waiters: Some(Arc::clone(self)),
        })
    }

    /// Registers a request waiting for `id`.
    ///
    /// # Errors
    /// [`Full`] when `capacity` requests already wait.
    pub fn register(self: &Arc<Self>, id: &str) -> Result<Waiter, Full> {
        Ok(self.admit()?.register(id))
    }

    /// Adds a waiter for `id` whose place in the bound is already counted.
    fn insert(self: Arc<Self>, id: &str) -> Waiter {
        let mut inner = self.lock();
        let existing = inner
            .slots
            .get_key_value(id)
            .map(|(id, slot)| (Arc::clone(id), Arc::clone(&slot.shared)));
        let (id, shared) = match existing {
            Some((id, shared)) => {
                if let Some(slot) = inner.slots.get_mut(&*id) {
                    slot.count += 1;
                }
                (id, shared)
            }
            None => {
                let (id, shared) = (Arc::<str>::from(id), Arc::<Shared>::default());
                let slot = Slot {
                    shared: Arc::clone(&shared),
                    count: 1,
                };
                inner.slots.insert(Arc::clone(&id), slot);
                (id, shared)
            }
        };
        drop(inner);
        Waiter {
            waiters: self,
            id,
            shared,
        }
    }

    /// Hands a reply to the requests waiting for `id`; returns whether any waits.
    /// The first reply delivered for an id is the one its waiters get (as in
    /// Redis, where the first reply stored wins).
    pub fn deliver(&self, id: &str, reply: Arc<Reply>) -> bool {
        let inner = self.lock();
        match inner.slots.get(id) {
            Some(slot) => {
                let _ = slot.shared.reply.set(reply);
                slot.shared.deliveries.fetch_add(1, Ordering::SeqCst);
                slot.shared.delivered.notify_waiters();
                true
            }
            None => false,
        }
    }

    /// Wakes every waiter as if something had been delivered: after a lost
    /// subscription, readers of streamed replies read Redis again for the
    /// parts they may not have heard of.
    pub fn touch_all(&self) {
        let inner = self.lock();
        for slot in inner.slots.values() {
            slot.shared.deliveries.fetch_add(1, Ordering::SeqCst);
            slot.shared.delivered.notify_waiters();
        }
    }

    /// The ids that requests wait for (to re-read after a lost subscription).
    pub fn ids(&self) -> Vec<String> {
        self.lock().slots.keys().map(|id| id.to_string()).collect()
    }

    /// How many requests wait.
    pub fn len(&self) -> usize {
        self.lock().total
    }

    /// Whether no request waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A place in the bound taken by [`Waiters::admit`], before the request
/// knows the id it will wait for; given back when dropped unused.
#[derive(Debug)]
pub struct Ticket {
    /// `None` once the place has become a [`Waiter`].
    waiters: Option<Arc<Waiters>>,
}

impl Ticket {
    /// Turns the place into a waiter for `id`.
    pub fn register(mut self, id: &str) -> Waiter {
        match self.waiters.take() {
            Some(waiters) => waiters.insert(id),
            None => unreachable!("a ticket is used once: register takes it by value"),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(waiters) = self.waiters.take() {
            waiters.lock().total -= 1;
        }
    }
}

/// One request's place in the map; leaves it when dropped.
#[derive(Debug)]
pub struct Waiter {
    waiters: Arc<Waiters>,
    id: Arc<str>,
    shared: Arc<Shared>,
}

impl Waiter {
    /// Waits until the reply is delivered.
    pub async fn reply(&mut self) -> Arc<Reply> {
        loop {
            let delivered = self.shared.delivered.notified();
            let mut delivered = std::pin::pin!(delivered);
            // Listening before looking: a delivery in between is not missed.
            delivered.as_mut().enable();
            if let Some(reply) = self.shared.reply.get() {
                return Arc::clone(reply);
            }
            delivered.await;
        }
    }
}

impl Waiter {
    /// How many deliveries (replies, or parts of a streamed reply) reached
    /// this id so far: read before reading Redis, then [`Waiter::changed`]
    /// misses none.
    pub fn deliveries(&self) -> u64 {
        self.shared.deliveries.load(Ordering::SeqCst)
    }

    /// Waits until more than `seen` deliveries reached this id; returns how
    /// many did.
    pub async fn changed(&mut self, seen: u64) -> u64 {
        loop {
            let delivered = self.shared.delivered.notified();
            let mut delivered = std::pin::pin!(delivered);
            // Listening before looking, as in `reply`.
            delivered.as_mut().enable();
            let now = self.deliveries();
            if now > seen {
                return now;
            }
            delivered.await;
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut inner = self.waiters.lock();
        inner.total -= 1;
        if let Some(slot) = inner.slots.get_mut(&*self.id) {
            slot.count -= 1;
            if slot.count == 0 {
                inner.slots.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_to_every_waiter_of_an_id() {
        let waiters = Waiters::new(10);
        let mut a = waiters.register("x").unwrap();
        let mut b = waiters.register("x").unwrap();
        let _other = waiters.register("y").unwrap();
        assert_eq!(waiters.len(), 3);
        assert!(waiters.deliver("x", Arc::new(Reply::new(201))));
        assert_eq!(a.reply().await.status, 201);
        assert_eq!(b.reply().await.status, 201);
        assert!(!waiters.deliver("unknown", Arc::new(Reply::new(200))));
        // A waiter registered after the delivery gets the same reply.
        let mut late = waiters.register("x").unwrap();
        assert_eq!(late.reply().await.status, 201);
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_its_reply_arrives() {
        let waiters = Waiters::new(10);
        let mut waiter = waiters.register("x").unwrap();
        let waiting = tokio::spawn(async move { waiter.reply().await.status });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert!(waiters.deliver("x", Arc::new(Reply::new(202))));
        let status = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(status, 202);
        assert!(waiters.is_empty());
    }

    /// Deliveries racing with waiters that are just starting to wait, on
    /// several threads: every waiter gets its reply.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_reply_is_missed_when_delivery_races_the_wait() {
        let waiters = Waiters::new(100_000);
        for round in 0..20u16 {
            let tasks: Vec<_> = (0..1000u16)
                .map(|i| {
                    let id = format!("{round}-{i}");
                    let mut waiter = waiters.register(&id).unwrap();
                    let (waiters, status) = (Arc::clone(&waiters), 200 + i % 300);
                    let deliver = tokio::spawn(async move {
                        for _ in 0..(i % 3) {
                            tokio::task::yield_now().await;
                        }
                        assert!(waiters.deliver(&id, Arc::new(Reply::new(status))));
                    });
                    let wait = tokio::spawn(async move { waiter.reply().await.status });
                    (deliver, wait, status)
                })
                .collect();
            for (deliver, wait, status) in tasks {
                deliver.await.unwrap();
                let got = tokio::time::timeout(std::time::Duration::from_secs(10), wait)
                    .await
                    .expect("a waiter missed its reply")
                    .unwrap();
                assert_eq!(got, status);
            }
        }
        assert!(waiters.is_empty());
    }

    #[test]
    fn an_admitted_ticket_holds_its_place_until_used_or_dropped() {
        let waiters = Waiters::new(2);
        let ticket = waiters.admit().unwrap();
        let _other = waiters.register("a").unwrap();
        assert!(
            waiters.admit().is_err(),
            "the ticket counts against the bound"
        );
        assert_eq!(waiters.len(), 2);
        assert!(waiters.ids().len() == 1, "a ticket waits for no id yet");
        drop(ticket);
        assert_eq!(waiters.len(), 1);
        let ticket = waiters.admit().unwrap();
        let waiter = ticket.register("b");
        assert_eq!(waiters.len(), 2);
        assert!(waiters.deliver("b", Arc::new(Reply::new(200))));
        drop(waiter);
        assert_eq!(waiters.len(), 1);
    }

    #[test]
    fn bound_is_enforced_and_released_on_drop() {
        let waiters = Waiters::new(2);
        let a = waiters.register("a").unwrap();
        let _b = waiters.register("a").unwrap();
        assert!(waiters.register("c").is_err());
        drop(a);
        assert_eq!(waiters.len(), 1);
        let c = waiters.register("c").unwrap();
        assert_eq!(waiters.ids().len(), 2);
        drop(c);
        drop(_b);
        assert!(waiters.is_empty());
        assert!(waiters.ids().is_empty());
    }
}
