//! A stream: the value a path's source writes into and its outputs read.
//!
//! It holds the path's name, its [`Hub`] (fan-out, GOP cache, parameter
//! sets), the [`PacketCache`] every RTP output shares (each frame
//! packetized once for all viewers and publish targets), the source's
//! [`SourceStatus`] (atomics the source writes and the control plane
//! reads), the path's [`StreamMetrics`], and its [`Demand`] (who needs the
//! source running: viewers, recordings and publish targets hold guards; an
//! on-demand source runs only while someone does). Sources push frames and
//! gaps in through [`Feed`](crate::source::Feed); viewers, publish targets
//! and the recorder subscribe to the hub. Nothing here does I/O.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::clock::monotonic_now;
use crate::hub::Hub;
use crate::metrics::{Metrics, StreamMetrics};
use crate::rtp::PacketCache;

/// No frame for this long and the source counts as stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(3);

/// What a path's source is doing, as `/paths` and `/health` report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceState {
    /// Frames are flowing.
    Ready,
    /// Started, but no frame yet (connecting, the daemon not running, a
    /// stall), and no error to report.
    Waiting,
    /// An on-demand source with nobody watching or recording: not running.
    OnDemandIdle,
    /// The last attempt failed; the source retries by itself.
    Error(String),
}

impl SourceState {
    /// `ready`, `waiting`, `on_demand_idle` or `error`.
    pub fn label(&self) -> &'static str {
        match self {
            SourceState::Ready => "ready",
            SourceState::Waiting => "waiting",
            SourceState::OnDemandIdle => "on_demand_idle",
            SourceState::Error(_) => "error",
        }
    }
}

/// What the control plane reads about a path's source; written only by the
/// source (its thread or task).
#[derive(Debug, Default)]
pub struct SourceStatus {
    /// The segment is mapped / the RTSP session is playing.
    pub attached: AtomicBool,
    /// The source is running (false for an idle on-demand source).
    pub running: AtomicBool,
    /// CLOCK_MONOTONIC nanoseconds when the last good frame arrived; 0 if none.
    pub last_frame_read_ns: AtomicU64,
    pub last_frame_number: AtomicU64,
    pub frames_read: AtomicU64,
    pub width: AtomicI32,
    pub height: AtomicI32,
    pub camera_id: AtomicI32,
    pub restarts: AtomicU32,
    /// The source's last error, cleared when frames flow again.
    pub last_error: Mutex<Option<String>>,
}

impl SourceStatus {
    /// Age of the last good frame, if any was read.
    pub fn last_frame_age(&self) -> Option<Duration> {
        match self.last_frame_read_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(monotonic_now().saturating_sub(Duration::from_nanos(ns))),
        }
    }

    /// Records a good frame's arrival (and clears the last error).
    pub fn frame_arrived(&self, frame_number: u64, width: i32, height: i32, camera_id: i32) {
        self.frames_read.fetch_add(1, Ordering::Relaxed);
        self.last_frame_read_ns.store(monotonic_now().as_nanos() as u64, Ordering::Relaxed);
        self.last_frame_number.store(frame_number, Ordering::Relaxed);
        if width > 0 && height > 0 {
            self.width.store(width, Ordering::Relaxed);
            self.height.store(height, Ordering::Relaxed);
        }
        self.camera_id.store(camera_id, Ordering::Relaxed);
        // Frames flow again: the last error no longer holds.
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Notes why the source is not delivering (shown until frames flow).
    pub fn set_error(&self, error: impl Into<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.into());
    }

    pub fn error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The state `/paths` shows.
    pub fn state(&self) -> SourceState {
        if !self.running.load(Ordering::Relaxed) {
            return SourceState::OnDemandIdle;
        }
        if self.last_frame_age().is_some_and(|age| age <= STALL_AFTER) {
            return SourceState::Ready;
        }
        match self.error() {
            Some(error) => SourceState::Error(error),
            None => SourceState::Waiting,
        }
    }
}

/// Who needs a path's source: a count of live [`DemandGuard`]s, watched by
/// the source's supervisor.
#[derive(Clone, Debug)]
pub struct Demand {
    count: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Default for Demand {
    fn default() -> Demand {
        Demand { count: Arc::new(tokio::sync::watch::channel(0).0) }
    }
}

/// Holds demand for a source while alive (a viewer, a recording, a publish
/// target, an offer waiting for the stream).
#[derive(Debug)]
pub struct DemandGuard {
    count: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Drop for DemandGuard {
    fn drop(&mut self) {
        self.count.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Demand {
    pub fn hold(&self) -> DemandGuard {
        self.count.send_modify(|n| *n += 1);
        DemandGuard { count: self.count.clone() }
    }

    pub fn count(&self) -> usize {
        *self.count.borrow()
    }

    /// A receiver that sees every change of the count.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<usize> {
        self.count.subscribe()
    }
}

/// One path's stream; cheap to clone.
#[derive(Clone, Debug)]
pub struct Stream {
    pub name: String,
    pub hub: Arc<Hub>,
    pub source: Arc<SourceStatus>,
    pub metrics: StreamMetrics,
    pub demand: Demand,
    /// RTP packets of this stream's access units, packetized once for every
    /// receiver: WebRTC viewers, RTSP clients and publish targets alike.
    pub packets: Arc<PacketCache>,
    /// Set once if the source's media thread died: why.
    pub fatal: Arc<OnceLock<String>>,
}

impl Stream {
    pub fn new(name: &str, metrics: &Arc<Metrics>) -> Stream {
        let source = SourceStatus::default();
        // Running until a supervisor says otherwise (tests feed streams directly).
        source.running.store(true, Ordering::Relaxed);
        Stream {
            name: name.to_string(),
            hub: Arc::new(Hub::new()),
            source: Arc::new(source),
            metrics: metrics.stream(name),
            demand: Demand::default(),
            packets: Arc::new(PacketCache::new()),
            fatal: Arc::new(OnceLock::new()),
        }
    }

    /// Why the media thread died, if it did.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.get().map(String::as_str)
    }

    /// Waits (polling, off the media path) until the camera's parameter
    /// sets are known, up to `timeout`; true if they are.
    pub async fn wait_for_parameter_sets(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.hub.parameter_sets().is_some() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_follows_frames_errors_and_demand() {
        let stream = Stream::new("t", &Arc::new(Metrics::new()));
        let status = &stream.source;
        assert_eq!(status.state(), SourceState::Waiting);
        status.set_error("401 unauthorized");
        assert_eq!(status.state(), SourceState::Error("401 unauthorized".into()));
        status.frame_arrived(1, 640, 360, 0);
        assert_eq!(status.state(), SourceState::Ready);
        assert_eq!(status.error(), None, "frames clear the error");
        status.running.store(false, Ordering::Relaxed);
        assert_eq!(status.state().label(), "on_demand_idle");

        let guard = stream.demand.hold();
        let second = stream.demand.hold();
        assert_eq!(stream.demand.count(), 2);
        drop((guard, second));
        assert_eq!(stream.demand.count(), 0);
    }
}
