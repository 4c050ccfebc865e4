//! Fan-out hub: one access unit in, a shared `Arc` to every consumer out.
//!
//! The media thread calls [`Hub::publish`] for each access unit and
//! [`Hub::gap`] when frames were lost. Consumers (WebRTC viewers, the
//! recorder) [`Hub::subscribe`] from any thread and receive
//! [`Queued`] access units through their own queue, from sync code
//! (`recv_timeout`, a `flume::Selector`) or async code (`recv_async`).
//!
//! Rules the hub enforces, so consumers never decode garbage:
//! - a consumer's stream always starts at an IDR, either the cached one
//!   ([`StartAt::GopCache`]: the last IDR and everything after it, queued
//!   at once as the consumer's backlog) or the next one from the camera;
//! - a consumer's queue has a budget in bytes and frames ([`QueueBudget`])
//!   for live frames; the backlog is not charged, since the GOP cache holds
//!   those frames anyway, so a GOP-cache start never overflows however long
//!   the camera's GOP is;
//! - a frame over the budget is never waited for: it is dropped for that
//!   consumer alone, which then skips everything up to the next IDR
//!   (counted);
//! - after a gap from the reader, every consumer and the GOP cache wait for
//!   the next IDR.
//!
//! Memory: the GOP cache is bounded in bytes ([`GOP_CACHE_MAX_BYTES`], the
//! access units' buffers and their NAL bookkeeping) and frames. A queued
//! frame is charged to its consumer until the consumer drops it (the
//! charge is released by [`Queued`]'s `Drop`), so what a consumer pins is at
//! most its budget; since access units are shared, all consumers together
//! pin at most the largest budget plus the GOP cache.
//!
//! The one lock is held only for in-memory queue pushes (no I/O, no
//! allocation beyond the GOP cache's `Vec`), by the media thread and briefly
//! by `subscribe`.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::IntCounter;

use crate::codec::{AccessUnit, ParameterSets};

/// Frames kept for a new consumer at most: a camera with a very long GOP
/// must not make the cache grow without bound.
pub const GOP_CACHE_MAX_FRAMES: usize = 600;
/// Bytes kept for a new consumer at most (buffers and NAL bookkeeping).
pub const GOP_CACHE_MAX_BYTES: usize = 24 << 20;

/// Where a new consumer's stream begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// The cached IDR and the frames after it (pre-roll), then live.
    GopCache,
    /// The next IDR the camera sends.
    NextIdr,
}

/// How much a consumer may have queued (live frames, not its backlog).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueBudget {
    /// Bytes of access units ([`AccessUnit::memory_bytes`]).
    pub bytes: usize,
    pub frames: usize,
}

/// Counters a consumer and the control plane can read.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Frames queued for this consumer.
    pub delivered: AtomicU64,
    /// Frames this consumer lost: queue full, then skipped to the next IDR.
    pub dropped: AtomicU64,
}

/// What a consumer has queued now, charged against its budget.
#[derive(Debug, Default)]
pub struct QueueLevel {
    bytes: AtomicUsize,
    frames: AtomicUsize,
}

impl QueueLevel {
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn frames(&self) -> usize {
        self.frames.load(Ordering::Relaxed)
    }
}

/// An access unit in a consumer's queue. Dereferences to the shared
/// `Arc<AccessUnit>`; dropping it releases its charge on the budget.
#[derive(Debug)]
pub struct Queued {
    au: Arc<AccessUnit>,
    /// `None` for backlog frames, which are not charged.
    charge: Option<(Arc<QueueLevel>, usize)>,
}

impl Queued {
    /// The shared access unit (a reference-count bump).
    pub fn access_unit(&self) -> Arc<AccessUnit> {
        self.au.clone()
    }
}

impl Deref for Queued {
    type Target = Arc<AccessUnit>;

    fn deref(&self) -> &Arc<AccessUnit> {
        &self.au
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if let Some((level, bytes)) = self.charge.take() {
            level.bytes.fetch_sub(bytes, Ordering::Relaxed);
            level.frames.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A consumer's end of the fan-out. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    pub id: u64,
    pub frames: flume::Receiver<Queued>,
    pub stats: Arc<ConsumerStats>,
    pub budget: QueueBudget,
    pub level: Arc<QueueLevel>,
    /// Frames queued from the GOP cache at subscribe time (before any live one).
    pub backlog: usize,
}

impl Subscription {
    /// Fill of the live budget in percent (the fuller of bytes and frames),
    /// for the buffer-usage gauges.
    pub fn usage_percent(&self) -> i64 {
        let bytes = self.level.bytes() * 100 / self.budget.bytes.max(1);
        let frames = self.level.frames() * 100 / self.budget.frames.max(1);
        bytes.max(frames) as i64
    }
}

#[derive(Debug)]
struct Consumer {
    id: u64,
    name: String,
    queue: flume::Sender<Queued>,
    stats: Arc<ConsumerStats>,
    budget: QueueBudget,
    level: Arc<QueueLevel>,
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
    pub budget: QueueBudget,
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
    /// cached frames are queued (uncharged) before this returns.
    pub fn subscribe(&self, options: SubscribeOptions) -> Subscription {
        let (tx, rx) = flume::unbounded();
        let stats = Arc::new(ConsumerStats::default());
        let level = Arc::new(QueueLevel::default());
        let budget = QueueBudget { bytes: options.budget.bytes.max(1), frames: options.budget.frames.max(1) };
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        let mut consumer = Consumer {
            id,
            name: options.name,
            queue: tx,
            stats: stats.clone(),
            budget,
            level: level.clone(),
            dropped_metric: options.dropped_metric,
            waiting_for_idr: true,
            overflowed: false,
        };
        let mut backlog = 0;
        if options.start == StartAt::GopCache && !state.gop.is_empty() {
            consumer.waiting_for_idr = false;
            for au in &state.gop {
                if consumer.queue.send(Queued { au: au.clone(), charge: None }).is_ok() {
                    consumer.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    backlog += 1;
                }
            }
        }
        log::debug!(
            "hub: {} subscribed (id {id}, budget {} bytes / {} frames, {:?}, backlog {backlog})",
            consumer.name,
            budget.bytes,
            budget.frames,
            options.start
        );
        state.consumers.push(consumer);
        Subscription { id, frames: rx, stats, budget, level, backlog }
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

    /// Bytes the GOP cache holds now.
    pub fn gop_cache_bytes(&self) -> usize {
        self.lock().gop_bytes
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
    if au.is_keyframe {
        state.gop.clear();
        state.gop_bytes = 0;
    } else if state.gop.is_empty() {
        return;
    }
    let size = au.memory_bytes();
    if state.gop.len() >= GOP_CACHE_MAX_FRAMES || state.gop_bytes + size > GOP_CACHE_MAX_BYTES {
        // Too long a GOP to cache whole: a cache missing its middle would be
        // undecodable, so drop it and start again at the next IDR.
        state.gop.clear();
        state.gop_bytes = 0;
        return;
    }
    state.gop_bytes += size;
    state.gop.push(au.clone());
}

/// Queues `au` for one consumer, applying the IDR rules and its budget.
/// Returns false if the consumer has gone away and should be removed.
fn deliver(consumer: &mut Consumer, au: &Arc<AccessUnit>) -> bool {
    if consumer.queue.is_disconnected() {
        log::debug!("hub: {} (id {}) unsubscribed", consumer.name, consumer.id);
        return false;
    }
    if consumer.waiting_for_idr {
        if !au.is_keyframe {
            if consumer.overflowed {
                count_drop(consumer);
            }
            return true;
        }
        consumer.waiting_for_idr = false;
        consumer.overflowed = false;
    }
    let size = au.memory_bytes();
    let level = &consumer.level;
    let over = level.frames() + 1 > consumer.budget.frames || level.bytes() + size > consumer.budget.bytes;
    if over {
        if !consumer.overflowed {
            log::debug!("hub: {} fell behind; skipping to the next IDR", consumer.name);
        }
        consumer.waiting_for_idr = true;
        consumer.overflowed = true;
        count_drop(consumer);
        return true;
    }
    level.bytes.fetch_add(size, Ordering::Relaxed);
    level.frames.fetch_add(1, Ordering::Relaxed);
    let queued = Queued { au: au.clone(), charge: Some((level.clone(), size)) };
    match consumer.queue.send(queued) {
        Ok(()) => {
            consumer.stats.delivered.fetch_add(1, Ordering::Relaxed);
            true
        }
        // Dropping the returned frame released its charge.
        Err(_) => false,
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

    fn au(seq: u64, is_keyframe: bool) -> Arc<AccessUnit> {
        Arc::new(AccessUnit {
            codec: crate::codec::Codec::H264,
            seq,
            data: Bytes::from(vec![0, 0, 0, 1, if is_keyframe { 0x65 } else { 0x41 }, seq as u8]),
            nals: Vec::new(),
            is_keyframe,
            parameter_sets: None,
            prepend_parameter_sets: false,
            after_gap: false,
            frame_number: seq,
            capture_time: Duration::ZERO,
            read_time: Duration::ZERO,
            camera_id: 0,
        })
    }

    fn options(frames: usize, start: StartAt) -> SubscribeOptions {
        SubscribeOptions {
            name: "test".into(),
            budget: QueueBudget { bytes: 1 << 20, frames },
            start,
            dropped_metric: None,
        }
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

    #[test]
    fn a_long_gop_backlog_is_not_charged_so_a_new_consumer_never_freezes() {
        let hub = Hub::new();
        hub.publish(au(0, true));
        for seq in 1..200 {
            hub.publish(au(seq, false));
        }
        // A budget far below the cached GOP (a 6.7 s GOP at 30 fps here).
        let sub = hub.subscribe(options(10, StartAt::GopCache));
        assert_eq!(sub.backlog, 200);
        hub.publish(au(200, false));
        assert_eq!(drain(&sub), (0..=200).collect::<Vec<_>>());
        assert_eq!(sub.stats.dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_budget_counts_bytes_and_frees_them_when_a_frame_is_dropped_by_the_consumer() {
        let hub = Hub::new();
        let size = au(0, true).memory_bytes();
        let budget = QueueBudget { bytes: size * 3, frames: 100 };
        let sub =
            hub.subscribe(SubscribeOptions { name: "t".into(), budget, start: StartAt::NextIdr, dropped_metric: None });
        for seq in 0..5 {
            hub.publish(au(seq, seq == 0));
        }
        // Three fit the bytes; the fourth overflowed, the fifth waits for an IDR.
        assert_eq!(sub.level.bytes(), size * 3);
        assert_eq!(sub.usage_percent(), 100);
        assert_eq!(sub.stats.dropped.load(Ordering::Relaxed), 2);
        let first = sub.frames.try_recv().unwrap();
        assert_eq!(sub.level.bytes(), size * 3, "charged until the consumer is done with it");
        drop(first);
        assert_eq!(sub.level.bytes(), size * 2);
        drop(drain(&sub));
        assert_eq!((sub.level.bytes(), sub.level.frames()), (0, 0));
        hub.publish(au(5, true));
        assert_eq!(drain(&sub), vec![5]);
    }

    #[test]
    fn the_gop_cache_counts_bookkeeping_bytes() {
        let hub = Hub::new();
        hub.publish(au(0, true));
        assert_eq!(hub.gop_cache_bytes(), au(0, true).memory_bytes());
        assert!(au(0, true).memory_bytes() > au(0, true).data.len());
    }
}
