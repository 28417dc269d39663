//! The export queue: bounded, never blocks the producer, and when full it evicts its OLDEST span
//! (counted) to make room. After a collector outage the queue then holds the newest spans, which
//! are the ones an operator looks for, instead of refusing everything that happens after recovery.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// A bounded multi-producer, single-consumer queue with drop-oldest overflow.
#[derive(Debug)]
pub struct DropOldestQueue<T> {
    items: Mutex<VecDeque<T>>,
    capacity: usize,
    ready: Notify,
    closed: AtomicBool,
}

/// What `push` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued after evicting the oldest item.
    EvictedOldest,
    /// The queue is closed; the item was not queued.
    Closed,
}

/// What `push_many` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PushedMany {
    /// Items queued (all of them).
    pub queued: u64,
    /// Older items evicted to make room (possibly some of this very batch).
    pub evicted: u64,
}

impl<T> DropOldestQueue<T> {
    pub fn new(capacity: usize) -> Self {
        DropOldestQueue {
            items: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<T>> {
        // A panic while holding the lock cannot leave a VecDeque half-updated: keep going.
        self.items
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends `item` to the locked queue, evicting the oldest when full; returns whether it did.
    fn enqueue(&self, queue: &mut VecDeque<T>, item: T) -> bool {
        let evicted = queue.len() >= self.capacity;
        if evicted {
            queue.pop_front();
        }
        queue.push_back(item);
        evicted
    }

    pub fn push(&self, item: T) -> Pushed {
        if self.closed.load(Ordering::Acquire) {
            return Pushed::Closed;
        }
        let evicted = self.enqueue(&mut self.lock(), item);
        self.ready.notify_one();
        if evicted {
            Pushed::EvictedOldest
        } else {
            Pushed::Queued
        }
    }

    /// Pushes every item of `items` (leaving it empty, its capacity kept for reuse) under one
    /// lock and with one wake-up of the consumer. Evictions are counted exactly as `push` would
    /// count them one by one. Returns how many were queued and how many older items were evicted,
    /// or `None` when the queue is closed (nothing queued; `items` is still emptied).
    pub fn push_many(&self, items: &mut Vec<T>) -> Option<PushedMany> {
        if items.is_empty() {
            return Some(PushedMany::default());
        }
        if self.closed.load(Ordering::Acquire) {
            items.clear();
            return None;
        }
        let mut result = PushedMany::default();
        {
            let mut queue = self.lock();
            for item in items.drain(..) {
                if self.enqueue(&mut queue, item) {
                    result.evicted += 1;
                }
                result.queued += 1;
            }
        }
        self.ready.notify_one();
        Some(result)
    }

    /// Moves up to `max` items into `out`, waiting for at least one. Returns `false` once the
    /// queue is closed and empty.
    pub async fn recv_many(&self, out: &mut Vec<T>, max: usize) -> bool {
        loop {
            {
                let mut items = self.lock();
                if !items.is_empty() {
                    let n = items.len().min(max.max(1));
                    out.extend(items.drain(..n));
                    return true;
                }
                if self.closed.load(Ordering::Acquire) {
                    return false;
                }
            }
            // notify_one leaves a permit when nobody waits, so a push between the check above
            // and this await is not lost.
            self.ready.notified().await;
        }
    }

    /// No more pushes; the consumer drains what is left and then sees the end.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn evicts_the_oldest_when_full_and_drains_after_close() {
        let q = DropOldestQueue::new(3);
        for i in 0..3 {
            assert_eq!(q.push(i), Pushed::Queued);
        }
        assert_eq!(q.push(3), Pushed::EvictedOldest);
        assert_eq!(q.push(4), Pushed::EvictedOldest);
        let mut out = Vec::new();
        assert!(q.recv_many(&mut out, 2).await);
        assert_eq!(out, vec![2, 3], "the newest survive, oldest first");
        q.close();
        assert_eq!(q.push(9), Pushed::Closed);
        assert!(q.recv_many(&mut out, 10).await);
        assert_eq!(out, vec![2, 3, 4]);
        assert!(!q.recv_many(&mut out, 10).await);
    }

    #[tokio::test]
    async fn push_many_counts_evictions_like_push_and_keeps_the_newest() {
        let q = DropOldestQueue::new(3);
        assert_eq!(q.push(0), Pushed::Queued);
        let mut batch = vec![1, 2, 3, 4];
        assert_eq!(
            q.push_many(&mut batch),
            Some(PushedMany {
                queued: 4,
                evicted: 2
            })
        );
        assert!(batch.is_empty(), "the batch is handed over");
        // A batch larger than the queue: its own oldest items are evicted too.
        let mut batch: Vec<i32> = (10..15).collect();
        assert_eq!(
            q.push_many(&mut batch),
            Some(PushedMany {
                queued: 5,
                evicted: 5
            })
        );
        let mut out = Vec::new();
        assert!(q.recv_many(&mut out, 10).await);
        assert_eq!(out, vec![12, 13, 14]);
        q.close();
        let mut batch = vec![1];
        assert_eq!(q.push_many(&mut batch), None);
        assert!(batch.is_empty());
    }

    /// What a consumer already waiting in `recv_many` receives after `push` (None: it never woke).
    async fn received_by_a_waiting_consumer(
        push: impl FnOnce(&DropOldestQueue<i32>),
    ) -> Option<Vec<i32>> {
        let q = std::sync::Arc::new(DropOldestQueue::new(8));
        let consumer = {
            let q = q.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                q.recv_many(&mut out, 8).await;
                out
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        push(&q);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), consumer).await;
        got.ok().and_then(|r| r.ok())
    }

    #[tokio::test]
    async fn a_waiting_consumer_wakes_on_push_many() {
        let got = received_by_a_waiting_consumer(|q| {
            q.push_many(&mut vec![7, 8]);
        })
        .await;
        assert_eq!(got, Some(vec![7, 8]));
    }

    #[tokio::test]
    async fn a_waiting_consumer_wakes_on_push() {
        let got = received_by_a_waiting_consumer(|q| {
            q.push(7);
        })
        .await;
        assert_eq!(got, Some(vec![7]));
    }
}
