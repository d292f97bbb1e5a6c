//! The bounded queue every exporter sits behind: a capacity in items (spans,
//! samples, profiles), batches taken by one worker, and the retry policy the
//! workers share.
//!
//! An item counts against the capacity from the moment room for it is
//! reserved until the backend accepted it or it was dropped, so the queue
//! bounds memory, and a full queue is what clients see as backpressure.
//! An item may come with a [`Receipt`]: it resolves once the item is settled
//! (how the ring owner of forwarded spans acknowledges them only after
//! export).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::otlp::Refusal;

/// One exporter's counters, in its unit (spans, samples, profiles).
#[derive(Clone, Default)]
pub struct ExporterMetrics {
    pub sent: Counter,
    pub retried: Counter,
    pub dropped: Counter,
    pub held: Gauge,
    pub capacity: Gauge,
}

/// Resolves to `true` once the backend took the item or refused it for good
/// (retrying would not help), `false` when it was given up while retryable
/// (retries exhausted, drain timeout): the sender may retry.
pub type Receipt = oneshot::Receiver<bool>;

struct Entry<T> {
    weight: u64,
    item: T,
    settled: Option<oneshot::Sender<bool>>,
}

struct State<T> {
    items: VecDeque<Entry<T>>,
    /// Items of `items`.
    queued: u64,
    /// Queued, reserved or being sent: what counts against the capacity.
    held: u64,
    /// Queued entries whose sender waits for their receipt.
    waiting: usize,
    closed: bool,
}

/// What settles the items of a taken batch; dropped unsettled, their
/// receipts say "given up".
pub struct Settle(Vec<oneshot::Sender<bool>>);

impl Settle {
    pub fn settle(self, settled: bool) {
        for tx in self.0 {
            // The sender may have stopped waiting (its caller went away).
            let _ = tx.send(settled);
        }
    }
}

pub struct Queue<T> {
    state: Mutex<State<T>>,
    notify: Notify,
    capacity: u64,
    metrics: ExporterMetrics,
}

/// Room for `weight` items, taken before the caller commits to anything it
/// cannot undo; dropped unused, it gives the room back.
pub struct Reservation<'a, T> {
    queue: &'a Queue<T>,
    weight: u64,
}

impl<T> Reservation<'_, T> {
    /// The items it holds room for.
    pub fn weight(&self) -> u64 {
        self.weight
    }

    /// Queues `item`: from here on it is the exporter's responsibility.
    pub fn push(self, item: T) {
        self.queue_entry(item, None);
    }

    /// Queues `item` and returns what resolves once it is settled; the
    /// exporter sends it without waiting for a batch to fill.
    pub fn push_settled(self, item: T) -> Receipt {
        let (tx, rx) = oneshot::channel();
        self.queue_entry(item, Some(tx));
        rx
    }

    fn queue_entry(self, item: T, settled: Option<oneshot::Sender<bool>>) {
        let queue = self.queue;
        let mut state = queue.lock();
        state.queued += self.weight;
        state.waiting += usize::from(settled.is_some());
        state.items.push_back(Entry {
            weight: self.weight,
            item,
            settled,
        });
        drop(state);
        // The room is now held by the queued item, not by this reservation.
        std::mem::forget(self);
        queue.notify.notify_one();
    }
}

impl<T> Drop for Reservation<'_, T> {
    fn drop(&mut self) {
        self.queue.release(self.weight);
    }
}

impl<T> Queue<T> {
    pub fn new(capacity: u64, metrics: ExporterMetrics) -> Self {
        metrics.capacity.set(capacity as i64);
        metrics.held.set(0);
        Queue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                queued: 0,
                held: 0,
                waiting: 0,
                closed: false,
            }),
            notify: Notify::new(),
            capacity,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn metrics(&self) -> &ExporterMetrics {
        &self.metrics
    }

    /// Takes room for `weight` items, or says why there is none.
    pub fn reserve(&self, weight: u64) -> Result<Reservation<'_, T>, Refusal> {
        if weight > self.capacity {
            return Err(Refusal::OverCapacity {
                spans: weight,
                capacity: self.capacity,
            });
        }
        let mut state = self.lock();
        if state.closed {
            return Err(Refusal::Draining);
        }
        if state.held + weight > self.capacity {
            return Err(Refusal::QueueFull {
                queued: state.held,
                capacity: self.capacity,
                retry_after: Duration::from_secs(1),
            });
        }
        state.held += weight;
        self.metrics.held.set(state.held as i64);
        Ok(Reservation {
            queue: self,
            weight,
        })
    }

    /// Queues `item` of `weight` items; once this returns `Ok` the exporter
    /// is responsible for it and the client may be acknowledged.
    pub fn push(&self, weight: u64, item: T) -> Result<(), Refusal> {
        self.reserve(weight)?.push(item);
        Ok(())
    }

    /// Refuses further pushes; what is queued is still sent.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    pub fn held(&self) -> u64 {
        self.lock().held
    }

    /// Takes the next batch: waits for a first item, then up to `linger` for
    /// `max` to gather (not when closed, nor when a sender waits for its
    /// receipt). An item is never split, so a batch holds at least one.
    /// `None` once closed and empty, with no reservation left to push.
    pub async fn take(&self, max: u64, linger: Duration) -> Option<(u64, Vec<T>, Settle)> {
        loop {
            {
                let state = self.lock();
                if !state.items.is_empty() {
                    break;
                }
                if state.closed && state.held == 0 {
                    return None;
                }
            }
            self.notify.notified().await;
        }
        let deadline = Instant::now() + linger;
        loop {
            {
                let state = self.lock();
                // Someone waits for a receipt (another ring member holding
                // its client): send now; batches still form while a send is
                // in flight.
                if state.closed || state.queued >= max || state.waiting > 0 {
                    break;
                }
            }
            if tokio::time::timeout_at(deadline, self.notify.notified())
                .await
                .is_err()
            {
                break;
            }
        }
        let mut state = self.lock();
        let mut weight = 0;
        let mut batch = Vec::new();
        let mut settle = Vec::new();
        while let Some(front) = state.items.front() {
            if weight > 0 && weight + front.weight > max {
                break;
            }
            let entry = state.items.pop_front().expect("front exists");
            weight += entry.weight;
            batch.push(entry.item);
            if let Some(tx) = entry.settled {
                state.waiting -= 1;
                settle.push(tx);
            }
        }
        state.queued -= weight;
        Some((weight, batch, Settle(settle)))
    }

    /// The items of a taken batch are gone: sent or dropped.
    pub fn release(&self, weight: u64) {
        let mut state = self.lock();
        state.held -= weight;
        self.metrics.held.set(state.held as i64);
        if state.closed && state.held == 0 {
            // The worker may wait for the last reservation.
            drop(state);
            self.notify.notify_one();
        }
    }

    /// Drops everything still queued (drain timed out), counts and returns it.
    pub fn discard(&self) -> u64 {
        let mut state = self.lock();
        let weight = state.queued;
        // Dropping the entries drops their receipts' senders: "given up".
        state.items.clear();
        state.waiting = 0;
        state.queued = 0;
        state.held -= weight;
        self.metrics.held.set(state.held as i64);
        self.metrics.dropped.inc_by(weight);
        weight
    }
}

/// Retry with exponential backoff, shared by the exporters.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Deadline of one attempt.
    pub timeout: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A batch still failing with retryable errors after this long is dropped.
    pub max_elapsed: Duration,
}

impl RetryPolicy {
    pub fn from_millis(timeout: u64, initial: u64, max: u64, max_elapsed: u64) -> Self {
        RetryPolicy {
            timeout: Duration::from_millis(timeout),
            initial_backoff: Duration::from_millis(initial),
            max_backoff: Duration::from_millis(max),
            max_elapsed: Duration::from_millis(max_elapsed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queue_bounds_held_items_until_released() {
        let q = Queue::new(10, ExporterMetrics::default());
        q.push(4, 'a').unwrap();
        q.push(4, 'b').unwrap();
        assert!(matches!(
            q.push(4, 'c'),
            Err(Refusal::QueueFull { queued: 8, .. })
        ));
        assert!(matches!(q.push(11, 'd'), Err(Refusal::OverCapacity { .. })));
        // A batch of at most 5 takes one item of 4 (never splits one).
        let (n, batch, _) = q.take(5, Duration::ZERO).await.unwrap();
        assert_eq!((n, batch), (4, vec!['a']));
        // Taken but not yet sent still counts.
        assert!(q.push(4, 'e').is_err());
        q.release(n);
        q.push(4, 'f').unwrap();
        let (n, batch, _) = q.take(100, Duration::ZERO).await.unwrap();
        assert_eq!((n, batch), (8, vec!['b', 'f']));
        q.release(n);
        q.close();
        assert_eq!(q.push(1, 'g'), Err(Refusal::Draining));
        assert!(q.take(100, Duration::ZERO).await.is_none());
        assert_eq!(q.held(), 0);
    }

    #[test]
    fn an_unused_reservation_gives_its_room_back() {
        let q = Queue::<()>::new(3, ExporterMetrics::default());
        let r = q.reserve(3).unwrap();
        assert!(q.reserve(1).is_err());
        drop(r);
        assert_eq!(q.held(), 0);
        q.reserve(2).unwrap().push(());
        assert_eq!(q.held(), 2);
        assert_eq!(q.discard(), 2);
        assert_eq!(q.metrics().dropped.get(), 2);
    }

    #[tokio::test]
    async fn receipts_settle_and_skip_the_linger() {
        let q = Queue::new(10, ExporterMetrics::default());
        let receipt = q.reserve(3).unwrap().push_settled('a');
        // Nobody waits an hour's linger when a sender waits for its receipt.
        let (n, batch, settle) = tokio::time::timeout(
            Duration::from_secs(10),
            q.take(100, Duration::from_secs(3600)),
        )
        .await
        .expect("no linger")
        .unwrap();
        assert_eq!((n, batch), (3, vec!['a']));
        settle.settle(true);
        q.release(n);
        assert_eq!(receipt.await, Ok(true));

        // Closed with a reservation still open: the worker waits for it.
        let r = q.reserve(2).unwrap();
        q.close();
        let late = r.push_settled('b');
        let (n, _, settle) = q.take(100, Duration::ZERO).await.unwrap();
        assert_eq!(n, 2);
        drop(settle);
        assert!(late.await.is_err(), "a dropped batch is not settled");
        q.release(n);
        assert!(q.take(100, Duration::ZERO).await.is_none());
    }
}
