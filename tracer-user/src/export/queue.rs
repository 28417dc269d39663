//! The export queue: bounded, never blocks the producer, and when full it evicts its OLDEST span
//! (counted) to make room. After a collector outage the queue then holds the newest spans, which
//! are the ones an operator looks for, instead of refusing everything that happens after recovery.
//! The consumer is woken only once `wake_at` items are queued (a full export batch) or the queue
//! closes; between those it comes by on its own schedule (the batch delay), so a producer that
//! hands over a few spans every few milliseconds does not wake it every time.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// A bounded multi-producer, single-consumer queue with drop-oldest overflow.
#[derive(Debug)]
pub struct DropOldestQueue<T> {
    items: Mutex<VecDeque<T>>,
    capacity: usize,
    /// Queued items at which a push wakes the consumer.
    wake_at: usize,
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
    /// A queue of at most `capacity` items whose consumer is woken once `wake_at` are queued
    /// (at most `capacity`, at least 1).
    pub fn new(capacity: usize, wake_at: usize) -> Self {
        let capacity = capacity.max(1);
        DropOldestQueue {
            items: Mutex::new(VecDeque::new()),
            capacity,
            wake_at: wake_at.clamp(1, capacity),
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
        let (evicted, queued) = {
            let mut queue = self.lock();
            (self.enqueue(&mut queue, item), queue.len())
        };
        if queued >= self.wake_at {
            self.ready.notify_one();
        }
        if evicted {
            Pushed::EvictedOldest
        } else {
            Pushed::Queued
        }
    }

    /// Pushes every item of `items` (leaving it empty, its capacity kept for reuse) under one
    /// lock and with at most one wake-up of the consumer. Evictions are counted exactly as `push` would
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
        let queued = {
            let mut queue = self.lock();
            for item in items.drain(..) {
                if self.enqueue(&mut queue, item) {
                    result.evicted += 1;
                }
                result.queued += 1;
            }
            queue.len()
        };
        if queued >= self.wake_at {
            self.ready.notify_one();
        }
        Some(result)
    }

    /// Waits until `wake_at` items are queued or the queue is closed.
    pub async fn filled(&self) {
        loop {
            if self.is_closed() || self.len() >= self.wake_at {
                return;
            }
            // notify_one leaves a permit when nobody waits, so a push between the check above
            // and this await is not lost.
            self.ready.notified().await;
        }
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Moves up to `max` of the oldest items into `out` without waiting; returns how many.
    pub fn take(&self, out: &mut Vec<T>, max: usize) -> usize {
        let mut items = self.lock();
        let n = items.len().min(max);
        out.extend(items.drain(..n));
        n
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
        let q = DropOldestQueue::new(3, 1);
        for i in 0..3 {
            assert_eq!(q.push(i), Pushed::Queued);
        }
        assert_eq!(q.push(3), Pushed::EvictedOldest);
        assert_eq!(q.push(4), Pushed::EvictedOldest);
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out, 2), 2);
        assert_eq!(out, vec![2, 3], "the newest survive, oldest first");
        q.close();
        assert_eq!(q.push(9), Pushed::Closed);
        q.filled().await;
        assert_eq!(q.take(&mut out, 10), 1);
        assert_eq!(out, vec![2, 3, 4]);
        assert_eq!(q.take(&mut out, 10), 0);
    }

    #[tokio::test]
    async fn push_many_counts_evictions_like_push_and_keeps_the_newest() {
        let q = DropOldestQueue::new(3, 1);
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
        assert_eq!(q.take(&mut out, 10), 3);
        assert_eq!(out, vec![12, 13, 14]);
        q.close();
        let mut batch = vec![1];
        assert_eq!(q.push_many(&mut batch), None);
        assert!(batch.is_empty());
    }

    /// Whether a consumer already waiting in `filled` on a queue woken at 3 items wakes after
    /// `push` (what it then takes), or not within a short wait (None).
    async fn woken_consumer_takes(push: impl FnOnce(&DropOldestQueue<i32>)) -> Option<Vec<i32>> {
        let q = std::sync::Arc::new(DropOldestQueue::new(8, 3));
        let consumer = {
            let q = q.clone();
            tokio::spawn(async move {
                q.filled().await;
                let mut out = Vec::new();
                q.take(&mut out, 8);
                out
            })
        };
        tokio::task::yield_now().await;
        push(&q);
        // Time is paused: the timeout fires only once every task is idle, so a woken consumer has
        // always run by then.
        let got = tokio::time::timeout(std::time::Duration::from_millis(200), consumer).await;
        got.ok().and_then(|r| r.ok())
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_consumer_wakes_once_a_push_many_fills_the_wake_mark() {
        let got = woken_consumer_takes(|q| {
            q.push_many(&mut vec![7, 8, 9]);
        })
        .await;
        assert_eq!(got, Some(vec![7, 8, 9]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_consumer_wakes_once_pushes_fill_the_wake_mark() {
        let got = woken_consumer_takes(|q| {
            q.push(7);
            q.push(8);
            q.push(9);
        })
        .await;
        assert_eq!(got, Some(vec![7, 8, 9]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_consumer_sleeps_below_the_wake_mark_and_wakes_at_close() {
        let got = woken_consumer_takes(|q| {
            q.push_many(&mut vec![7, 8]);
        })
        .await;
        assert_eq!(got, None, "two of three items must not wake the consumer");
        let got = woken_consumer_takes(|q| {
            q.push(7);
            q.close();
        })
        .await;
        assert_eq!(got, Some(vec![7]));
    }
}
