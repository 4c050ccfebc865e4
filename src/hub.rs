//! Fan-out hub: one access unit in, a shared `Arc` to every consumer out.
//!
//! The media thread calls [`Hub::publish`] for each access unit and
//! [`Hub::gap`] when frames were lost. Consumers (WebRTC viewers, the
//! recorder) [`Hub::subscribe`] from any thread and receive
//! `Arc<AccessUnit>`s through their own bounded queue, from sync code
//! (`recv_timeout`) or async code (`recv_async`).
//!
//! Rules the hub enforces, so consumers never decode garbage:
//! - a consumer's stream always starts at an IDR, either the cached one
//!   ([`StartAt::GopCache`]: the last IDR and everything after it, delivered
//!   at once) or the next one from the camera;
//! - a full queue never blocks: the frame is dropped for that consumer
//!   alone, which then skips everything up to the next IDR (counted);
//! - after a gap from the reader, every consumer and the GOP cache wait for
//!   the next IDR.
//!
//! The one lock is held only for in-memory queue pushes (no I/O, no
//! allocation beyond the GOP cache's `Vec`), by the media thread and briefly
//! by `subscribe`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::IntCounter;

use crate::h264::{AccessUnit, ParameterSets};

/// Frames kept for a new consumer at most: a camera with a very long GOP
/// must not make the cache grow without bound.
pub const GOP_CACHE_MAX_FRAMES: usize = 600;
/// Bytes kept for a new consumer at most.
pub const GOP_CACHE_MAX_BYTES: usize = 24 << 20;

/// Where a new consumer's stream begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// The cached IDR and the frames after it (pre-roll), then live.
    GopCache,
    /// The next IDR the camera sends.
    NextIdr,
}

/// Counters a consumer and the control plane can read.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Frames queued for this consumer.
    pub delivered: AtomicU64,
    /// Frames this consumer lost: queue full, then skipped to the next IDR.
    pub dropped: AtomicU64,
}

/// A consumer's end of the fan-out. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    pub id: u64,
    pub frames: flume::Receiver<Arc<AccessUnit>>,
    pub stats: Arc<ConsumerStats>,
    pub capacity: usize,
}

impl Subscription {
    /// Queue fill in percent, for the buffer-usage gauges.
    pub fn usage_percent(&self) -> i64 {
        (self.frames.len() * 100 / self.capacity.max(1)) as i64
    }
}

#[derive(Debug)]
struct Consumer {
    id: u64,
    name: String,
    queue: flume::Sender<Arc<AccessUnit>>,
    stats: Arc<ConsumerStats>,
    dropped_metric: Option<IntCounter>,
    /// True until the consumer has been handed an IDR, and again after its
    /// queue overflowed.
    waiting_for_idr: bool,
    /// True when the wait was caused by an overflow: skipped frames count
    /// as dropped.
    overflowed: bool,
}

#[derive(Debug, Default)]
struct State {
    consumers: Vec<Consumer>,
    /// The last IDR and the frames after it; empty while no complete GOP
    /// start is known (start-up, after a gap, after the bound was hit).
    gop: Vec<Arc<AccessUnit>>,
    gop_bytes: usize,
    next_id: u64,
    published: u64,
    /// The parameter sets of the newest access unit: what a new consumer
    /// will receive (codec negotiation reads it).
    parameter_sets: Option<Arc<ParameterSets>>,
}

/// The fan-out point between the media thread and every consumer.
#[derive(Debug, Default)]
pub struct Hub {
    state: Mutex<State>,
}

/// What [`Hub::subscribe`] needs to know about a consumer.
#[derive(Clone, Debug)]
pub struct SubscribeOptions {
    /// For logs: `viewer 3`, `recorder`.
    pub name: String,
    /// Queue length in frames; must hold a GOP for a GOP-cache start.
    pub capacity: usize,
    pub start: StartAt,
    /// Counted once per frame this consumer loses.
    pub dropped_metric: Option<IntCounter>,
}

impl Hub {
    pub fn new() -> Hub {
        Hub::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated
        // in a way that matters (queues and a Vec), so keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a consumer. With [`StartAt::GopCache`] and a cached IDR, the
    /// cached frames are queued before this returns (as many as fit).
    pub fn subscribe(&self, options: SubscribeOptions) -> Subscription {
        let capacity = options.capacity.max(1);
        let (tx, rx) = flume::bounded(capacity);
        let stats = Arc::new(ConsumerStats::default());
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        let mut consumer = Consumer {
            id,
            name: options.name,
            queue: tx,
            stats: stats.clone(),
            dropped_metric: options.dropped_metric,
            waiting_for_idr: true,
            overflowed: false,
        };
        if options.start == StartAt::GopCache && !state.gop.is_empty() {
            consumer.waiting_for_idr = false;
            for au in &state.gop {
                deliver(&mut consumer, au);
            }
        }
        log::debug!("hub: {} subscribed (id {id}, queue {capacity}, {:?})", consumer.name, options.start);
        state.consumers.push(consumer);
        Subscription { id, frames: rx, stats, capacity }
    }

    /// Hands one access unit to every consumer; never blocks.
    pub fn publish(&self, au: Arc<AccessUnit>) {
        let mut state = self.lock();
        state.published += 1;
        if au.after_gap {
            // Belt and braces: the media thread reports gaps through `gap`,
            // but a marked frame alone must also restart everyone at an IDR.
            reset_to_next_idr(&mut state);
        }
        if au.parameter_sets.is_some() {
            state.parameter_sets.clone_from(&au.parameter_sets);
        }
        update_gop_cache(&mut state, &au);
        state.consumers.retain_mut(|consumer| deliver(consumer, &au));
    }

    /// Frames were lost upstream: everyone resumes at the next IDR.
    pub fn gap(&self) {
        reset_to_next_idr(&mut self.lock());
    }

    /// Consumers subscribed now (disconnected ones are removed lazily).
    pub fn consumer_count(&self) -> usize {
        self.lock().consumers.iter().filter(|c| !c.queue.is_disconnected()).count()
    }

    /// Frames in the GOP cache now.
    pub fn gop_cache_len(&self) -> usize {
        self.lock().gop.len()
    }

    /// The SPS/PPS the stream uses now, once the camera has sent them.
    pub fn parameter_sets(&self) -> Option<Arc<ParameterSets>> {
        self.lock().parameter_sets.clone()
    }

    /// Access units published since start.
    pub fn published(&self) -> u64 {
        self.lock().published
    }
}

fn reset_to_next_idr(state: &mut State) {
    state.gop.clear();
    state.gop_bytes = 0;
    for consumer in &mut state.consumers {
        consumer.waiting_for_idr = true;
    }
}

fn update_gop_cache(state: &mut State, au: &Arc<AccessUnit>) {
    if au.is_idr {
        state.gop.clear();
        state.gop_bytes = 0;
    } else if state.gop.is_empty() {
        return;
    }
    if state.gop.len() >= GOP_CACHE_MAX_FRAMES || state.gop_bytes + au.data.len() > GOP_CACHE_MAX_BYTES {
        // Too long a GOP to cache whole: a cache missing its middle would be
        // undecodable, so drop it and start again at the next IDR.
        state.gop.clear();
        state.gop_bytes = 0;
        return;
    }
    state.gop_bytes += au.data.len();
    state.gop.push(au.clone());
}

/// Queues `au` for one consumer, applying the IDR rules. Returns false if
/// the consumer has gone away and should be removed.
fn deliver(consumer: &mut Consumer, au: &Arc<AccessUnit>) -> bool {
    if consumer.waiting_for_idr {
        if !au.is_idr {
            if consumer.overflowed {
                count_drop(consumer);
            }
            return !consumer.queue.is_disconnected();
        }
        consumer.waiting_for_idr = false;
        consumer.overflowed = false;
    }
    match consumer.queue.try_send(au.clone()) {
        Ok(()) => {
            consumer.stats.delivered.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(flume::TrySendError::Full(_)) => {
            if !consumer.overflowed {
                log::debug!("hub: {} fell behind; skipping to the next IDR", consumer.name);
            }
            consumer.waiting_for_idr = true;
            consumer.overflowed = true;
            count_drop(consumer);
            true
        }
        Err(flume::TrySendError::Disconnected(_)) => {
            log::debug!("hub: {} (id {}) unsubscribed", consumer.name, consumer.id);
            false
        }
    }
}

fn count_drop(consumer: &Consumer) {
    consumer.stats.dropped.fetch_add(1, Ordering::Relaxed);
    if let Some(metric) = &consumer.dropped_metric {
        metric.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    fn au(seq: u64, is_idr: bool) -> Arc<AccessUnit> {
        Arc::new(AccessUnit {
            seq,
            data: Bytes::from(vec![0, 0, 0, 1, if is_idr { 0x65 } else { 0x41 }, seq as u8]),
            nals: Vec::new(),
            is_idr,
            parameter_sets: None,
            prepend_parameter_sets: false,
            after_gap: false,
            frame_number: seq,
            capture_time: Duration::ZERO,
            read_time: Duration::ZERO,
            camera_id: 0,
        })
    }

    fn options(capacity: usize, start: StartAt) -> SubscribeOptions {
        SubscribeOptions { name: "test".into(), capacity, start, dropped_metric: None }
    }

    fn drain(sub: &Subscription) -> Vec<u64> {
        sub.frames.try_iter().map(|au| au.seq).collect()
    }

    #[test]
    fn new_consumer_starts_from_the_cached_gop_then_live() {
        let hub = Hub::new();
        hub.publish(au(0, false)); // before any IDR: not cached
        hub.publish(au(1, true));
        hub.publish(au(2, false));
        let sub = hub.subscribe(options(10, StartAt::GopCache));
        hub.publish(au(3, false));
        assert_eq!(drain(&sub), vec![1, 2, 3]);
    }

    #[test]
    fn next_idr_start_waits_for_the_camera() {
        let hub = Hub::new();
        hub.publish(au(0, true));
        let sub = hub.subscribe(options(10, StartAt::NextIdr));
        hub.publish(au(1, false));
        hub.publish(au(2, true));
        assert_eq!(drain(&sub), vec![2]);
        assert_eq!(sub.stats.dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_full_queue_drops_up_to_the_next_idr_for_that_consumer_only() {
        let hub = Hub::new();
        let slow = hub.subscribe(options(2, StartAt::NextIdr));
        let fast = hub.subscribe(options(100, StartAt::NextIdr));
        hub.publish(au(0, true));
        for seq in 1..5 {
            hub.publish(au(seq, false));
        }
        // Slow got 0 and 1, then lost 2 (queue full) and 3, 4 (waiting for
        // the next IDR, since 3 would not decode without 2).
        assert_eq!(drain(&slow), vec![0, 1]);
        assert_eq!(slow.stats.dropped.load(Ordering::Relaxed), 3);
        hub.publish(au(5, false));
        hub.publish(au(6, true));
        hub.publish(au(7, false));
        assert_eq!(drain(&fast), (0..8).collect::<Vec<_>>());
        assert_eq!(drain(&slow), vec![6, 7]);
        assert_eq!(slow.stats.dropped.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_gap_restarts_everyone_and_the_cache_at_the_next_idr() {
        let hub = Hub::new();
        let sub = hub.subscribe(options(10, StartAt::NextIdr));
        hub.publish(au(0, true));
        hub.gap();
        assert_eq!(hub.gop_cache_len(), 0);
        hub.publish(au(5, false));
        hub.publish(au(6, true));
        assert_eq!(drain(&sub), vec![0, 6]);
        assert_eq!(hub.gop_cache_len(), 1);
    }

    #[test]
    fn dropped_subscriptions_are_removed() {
        let hub = Hub::new();
        let sub = hub.subscribe(options(10, StartAt::NextIdr));
        assert_eq!(hub.consumer_count(), 1);
        drop(sub);
        assert_eq!(hub.consumer_count(), 0);
        hub.publish(au(0, true));
        assert_eq!(hub.lock().consumers.len(), 0);
    }

    #[test]
    fn the_gop_cache_is_bounded() {
        let hub = Hub::new();
        hub.publish(au(0, true));
        for seq in 1..GOP_CACHE_MAX_FRAMES as u64 + 5 {
            hub.publish(au(seq, false));
        }
        assert_eq!(hub.gop_cache_len(), 0);
        let sub = hub.subscribe(options(10, StartAt::GopCache));
        hub.publish(au(9999, false));
        assert!(drain(&sub).is_empty(), "a consumer must never start on a P-frame");
    }
}
