//! The node's waiting requests: a bounded in-process map from correlation id to
//! the requests (a synchronous call, long-polls) waiting for that reply.
//!
//! The node's one Redis subscription delivers replies into this map; a request
//! holds a [`Waiter`] and is removed from the map when the waiter is dropped —
//! answered, timed out or disconnected alike.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::record::Reply;

type Slot = (watch::Sender<Option<Arc<Reply>>>, usize);

/// The bounded map of waiting requests.
#[derive(Debug)]
pub struct Waiters {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Inner {
    slots: HashMap<String, Slot>,
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

    /// Registers a request waiting for `id`.
    ///
    /// # Errors
    /// [`Full`] when `capacity` requests already wait.
    pub fn register(self: &Arc<Self>, id: &str) -> Result<Waiter, Full> {
        let mut inner = self.lock();
        if inner.total >= self.capacity {
            return Err(Full);
        }
        inner.total += 1;
        let rx = match inner.slots.get_mut(id) {
            Some((tx, count)) => {
                *count += 1;
                tx.subscribe()
            }
            None => {
                let (tx, rx) = watch::channel(None);
                inner.slots.insert(id.to_owned(), (tx, 1));
                rx
            }
        };
        Ok(Waiter {
            waiters: Arc::clone(self),
            id: id.to_owned(),
            rx,
        })
    }

    /// Hands a reply to the requests waiting for `id`; returns whether any waits.
    pub fn deliver(&self, id: &str, reply: Arc<Reply>) -> bool {
        let inner = self.lock();
        match inner.slots.get(id) {
            Some((tx, _)) => {
                tx.send_replace(Some(reply));
                true
            }
            None => false,
        }
    }

    /// The ids that requests wait for (to re-read after a lost subscription).
    pub fn ids(&self) -> Vec<String> {
        self.lock().slots.keys().cloned().collect()
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

/// One request's place in the map; leaves it when dropped.
#[derive(Debug)]
pub struct Waiter {
    waiters: Arc<Waiters>,
    id: String,
    rx: watch::Receiver<Option<Arc<Reply>>>,
}

impl Waiter {
    /// Waits until the reply is delivered.
    pub async fn reply(&mut self) -> Arc<Reply> {
        loop {
            if let Some(reply) = self.rx.borrow_and_update().clone() {
                return reply;
            }
            if self.rx.changed().await.is_err() {
                // The sender lives in the map while this waiter exists.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut inner = self.waiters.lock();
        inner.total -= 1;
        if let Some((_, count)) = inner.slots.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
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
