//! The export queue: bounded, never blocks the producer, and when full it evicts its OLDEST span
//! (counted) to make room. After a collector outage the queue then holds the newest spans, which
//! are the ones an operator looks for, instead of refusing everything that happens after recovery.
//! The consumer is woken only once `wake_at` items are queued (a full export batch) or the queue
//! closes; between those it comes by on its own schedule (the batch delay), so a producer that
//! hands over a few spans every few milliseconds does not wake it every time.
//!
//! Items travel in the producer's batches: a batch handed over is queued as the vector it is (the
//! producer gets an emptied vector back in exchange, one the consumer returned), and the consumer
//! takes whole batches, so an item is never copied through the queue (a span record is most of a
//! kilobyte; copying each in and out was ~4 % of the agent's CPU). The vectors the queue holds
//! (queued batches and spares) stay within a budget of item slots (the queue's capacity plus an
//! export batch); a batch that would pass it is appended to the newest queued batch instead
//! (copied, as every batch used to be).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// A bounded multi-producer, single-consumer queue with drop-oldest overflow.
#[derive(Debug)]
pub struct DropOldestQueue<T> {
    state: Mutex<Batches<T>>,
    capacity: usize,
    /// Queued items at which a push wakes the consumer.
    wake_at: usize,
    /// Item slots (vector capacities) the queued batches and spare vectors may hold together.
    slot_budget: usize,
    ready: Notify,
    closed: AtomicBool,
}

/// The queued items, in the batches they were handed over in.
#[derive(Debug)]
struct Batches<T> {
    /// Oldest first; none is empty.
    queued: VecDeque<VecDeque<T>>,
    /// Items in `queued`.
    len: usize,
    /// Emptied vectors, given to producers in exchange for their batches.
    spares: Vec<Vec<T>>,
    /// Capacity of every vector in `queued` and `spares`.
    slots: usize,
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

impl<T> Batches<T> {
    /// Drops up to `n` of the oldest queued items; returns how many it dropped.
    fn evict(&mut self, mut n: usize) -> usize {
        let mut dropped = 0;
        while n > 0 {
            let Some(front) = self.queued.front_mut() else {
                break;
            };
            if front.len() > n {
                front.drain(..n);
                self.len -= n;
                dropped += n;
                break;
            }
            n -= front.len();
            dropped += front.len();
            self.len -= front.len();
            if let Some(batch) = self.queued.pop_front() {
                self.slots = self.slots.saturating_sub(batch.capacity());
                let mut vector = Vec::from(batch);
                vector.clear();
                self.spares.push(vector);
                self.slots += self.spares.last().map_or(0, Vec::capacity);
            }
        }
        dropped
    }

    /// An emptied vector for a producer: a spare, else a new one sized for `hint` items.
    fn spare(&mut self, hint: usize) -> Vec<T> {
        match self.spares.pop() {
            Some(spare) => {
                self.slots = self.slots.saturating_sub(spare.capacity());
                spare
            }
            None => Vec::with_capacity(hint.next_power_of_two()),
        }
    }
}

impl<T> DropOldestQueue<T> {
    /// A queue of at most `capacity` items whose consumer is woken once `wake_at` are queued
    /// (at most `capacity`, at least 1).
    pub fn new(capacity: usize, wake_at: usize) -> Self {
        let capacity = capacity.max(1);
        DropOldestQueue {
            state: Mutex::new(Batches {
                queued: VecDeque::new(),
                len: 0,
                spares: Vec::new(),
                slots: 0,
            }),
            capacity,
            wake_at: wake_at.clamp(1, capacity),
            // Room for a full queue plus an export batch's worth of spares.
            slot_budget: capacity
                .saturating_add(wake_at.clamp(1, capacity))
                .max(1024),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Batches<T>> {
        // A panic while holding the lock cannot leave the batches half-updated in a way that
        // matters (at worst a count is off until the queue drains): keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn push(&self, item: T) -> Pushed {
        if self.closed.load(Ordering::Acquire) {
            return Pushed::Closed;
        }
        let (evicted, queued) = {
            let mut state = self.lock();
            let evicted = state.len >= self.capacity && state.evict(1) == 1;
            match state.queued.back_mut() {
                Some(tail) => {
                    let before = tail.capacity();
                    tail.push_back(item);
                    let grown = tail.capacity() - before;
                    state.slots += grown;
                }
                None => {
                    let mut batch = VecDeque::from(state.spare(1));
                    batch.push_back(item);
                    state.slots += batch.capacity();
                    state.queued.push_back(batch);
                }
            }
            state.len += 1;
            (evicted, state.len)
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

    /// Queues every item of `items` under one lock and with at most one wake-up of the consumer,
    /// leaving `items` empty: the vector itself is queued and `items` becomes a spare one (or,
    /// past the queue's budget of vectors, the items are appended to the newest batch and
    /// `items` keeps its capacity). Evictions are counted exactly as `push` would count them one
    /// by one. Returns how many were queued and how many older items were evicted, or `None`
    /// when the queue is closed (nothing queued; `items` is still emptied).
    pub fn push_many(&self, items: &mut Vec<T>) -> Option<PushedMany> {
        if items.is_empty() {
            return Some(PushedMany::default());
        }
        if self.closed.load(Ordering::Acquire) {
            items.clear();
            return None;
        }
        let n = items.len();
        let mut result = PushedMany {
            queued: n as u64,
            evicted: 0,
        };
        let queued = {
            let mut state = self.lock();
            // Pushed one by one, each item past the capacity evicts the oldest: first what was
            // queued before, then this batch's own first items.
            let overflow = (state.len + n).saturating_sub(self.capacity);
            let from_queue = state.evict(overflow);
            let from_batch = overflow - from_queue;
            if from_batch > 0 {
                items.drain(..from_batch);
            }
            result.evicted = overflow as u64;
            let incoming = items.len();
            let fits = state.slots + items.capacity() <= self.slot_budget;
            match state.queued.back_mut() {
                Some(tail) if !fits => {
                    let before = tail.capacity();
                    tail.extend(items.drain(..));
                    let grown = tail.capacity() - before;
                    state.slots += grown;
                }
                _ => {
                    let spare = state.spare(incoming);
                    let batch = VecDeque::from(std::mem::replace(items, spare));
                    state.slots += batch.capacity();
                    state.queued.push_back(batch);
                }
            }
            state.len += incoming;
            state.len
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
        self.lock().len
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Moves up to `max` of the oldest items into `out` without waiting, in the batches they
    /// were queued in (oldest first; a batch larger than what is left of `max` is split);
    /// returns how many items. Give the emptied vectors back with [`Self::give_back`].
    pub fn take_batches(&self, out: &mut Vec<Vec<T>>, max: usize) -> usize {
        let mut state = self.lock();
        let mut taken = 0;
        while taken < max {
            let Some(front) = state.queued.front_mut() else {
                break;
            };
            let room = max - taken;
            if front.len() > room {
                let mut part = state.spare(room);
                if let Some(front) = state.queued.front_mut() {
                    part.extend(front.drain(..room));
                }
                state.len -= room;
                taken += room;
                out.push(part);
                break;
            }
            if let Some(batch) = state.queued.pop_front() {
                state.slots = state.slots.saturating_sub(batch.capacity());
                state.len -= batch.len();
                taken += batch.len();
                out.push(Vec::from(batch));
            }
        }
        taken
    }

    /// Takes back vectors emptied by the consumer (clear them first, outside the lock: dropping
    /// their items may take a while) as spares for producers, as many as the budget allows;
    /// leaves `vectors` empty.
    pub fn give_back(&self, vectors: &mut Vec<Vec<T>>) {
        let mut state = self.lock();
        for mut vector in vectors.drain(..) {
            if state.slots + vector.capacity() <= self.slot_budget && vector.capacity() > 0 {
                vector.clear();
                state.slots += vector.capacity();
                state.spares.push(vector);
            }
        }
    }

    /// Moves up to `max` of the oldest items into `out` without waiting; returns how many.
    #[cfg(test)]
    pub fn take(&self, out: &mut Vec<T>, max: usize) -> usize {
        let mut batches = Vec::new();
        let n = self.take_batches(&mut batches, max);
        for mut batch in batches.drain(..) {
            out.append(&mut batch);
        }
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

    #[test]
    fn batches_move_through_the_queue_without_copying_their_items() {
        let q = DropOldestQueue::new(64, 8);
        let mut first = Vec::with_capacity(16);
        first.extend([1, 2, 3]);
        let first_buffer = first.as_ptr();
        assert!(q.push_many(&mut first).is_some());
        assert!(first.is_empty());
        assert_ne!(
            first.as_ptr(),
            first_buffer,
            "the producer got another vector"
        );
        let mut second = vec![4, 5];
        let second_buffer = second.as_ptr();
        q.push_many(&mut second);
        let mut taken = Vec::new();
        assert_eq!(q.take_batches(&mut taken, 10), 5);
        assert_eq!(taken, vec![vec![1, 2, 3], vec![4, 5]]);
        assert_eq!(
            taken[0].as_ptr(),
            first_buffer,
            "the batch is the vector handed over"
        );
        assert_eq!(taken[1].as_ptr(), second_buffer);
        // Emptied vectors come back to producers.
        q.give_back(&mut taken);
        assert!(taken.is_empty());
        let mut third = vec![6];
        q.push_many(&mut third);
        assert!(
            [first_buffer, second_buffer].contains(&third.as_ptr()),
            "a returned vector is reused"
        );
        assert!(third.capacity() >= 2 && third.is_empty());
    }

    #[test]
    fn take_batches_splits_a_batch_at_the_limit_and_keeps_order() {
        let q = DropOldestQueue::new(64, 8);
        q.push_many(&mut vec![1, 2, 3, 4]);
        q.push_many(&mut vec![5, 6]);
        q.push(7);
        let mut taken = Vec::new();
        assert_eq!(q.take_batches(&mut taken, 3), 3);
        assert_eq!(taken, vec![vec![1, 2, 3]]);
        assert_eq!(q.len(), 4);
        taken.clear();
        assert_eq!(q.take_batches(&mut taken, 10), 4);
        assert_eq!(taken, vec![vec![4], vec![5, 6, 7]]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn eviction_crosses_batches_oldest_first() {
        let q = DropOldestQueue::new(5, 1);
        q.push_many(&mut vec![1, 2]);
        q.push_many(&mut vec![3, 4]);
        assert_eq!(
            q.push_many(&mut vec![5, 6, 7, 8]),
            Some(PushedMany {
                queued: 4,
                evicted: 3
            })
        );
        assert_eq!(q.push(9), Pushed::EvictedOldest);
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out, 10), 5);
        assert_eq!(out, vec![5, 6, 7, 8, 9]);
    }

    #[test]
    fn the_vectors_held_stay_within_the_slot_budget() {
        // Many small batches in large vectors: past the budget they are appended to the newest
        // batch (copied) and the producer keeps its vector.
        let q = DropOldestQueue::new(600, 600);
        let mut moved = 0;
        for i in 0..200 {
            let mut batch = Vec::with_capacity(512);
            batch.push(i);
            let buffer = batch.as_ptr();
            q.push_many(&mut batch);
            if batch.as_ptr() != buffer {
                moved += 1;
            } else {
                assert_eq!(batch.capacity(), 512, "kept by the producer");
            }
            assert!(q.lock().slots <= q.slot_budget + 512, "{}", q.lock().slots);
        }
        assert!((2..10).contains(&moved), "{moved} batches moved");
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out, 1000), 200);
        assert_eq!(out, (0..200).collect::<Vec<_>>());
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
