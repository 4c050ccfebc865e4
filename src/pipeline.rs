//! The media thread: shm reader -> H.264 processor -> hub, in one thread.
//!
//! Reading, checking and fanning out a frame happen back to back on one
//! thread with no queue in between, so a frame is available to consumers
//! microseconds after the daemon's post. The thread owns the reader and the
//! processor; it stops when the shutdown signal fires (within the reader's
//! longest semaphore wait, 100 ms).
//!
//! If the thread dies (a panic: a bug, since no input may cause one), it
//! records why in [`Media::fatal`]: `/health` answers 503 with the reason
//! at once and `main` exits non-zero within a second, so systemd restarts
//! the service (a restart is the only safe fix: the reader's state is gone).

use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::clock::{millis_between, monotonic_now};
use crate::h264::Processor;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::shm::{self, CameraStatus, ReaderConfig, ReaderEvent};
use crate::shutdown::Shutdown;
use crate::warn_limited;

/// Handles the rest of the program keeps to the media path.
#[derive(Clone, Debug)]
pub struct Media {
    pub hub: Arc<Hub>,
    pub camera: Arc<CameraStatus>,
    pub metrics: Arc<Metrics>,
    /// Set once if the media thread died: why.
    pub fatal: Arc<OnceLock<String>>,
}

impl Media {
    pub fn new(metrics: Arc<Metrics>) -> Media {
        Media {
            hub: Arc::new(Hub::new()),
            camera: Arc::new(CameraStatus::default()),
            metrics,
            fatal: Arc::new(OnceLock::new()),
        }
    }

    /// Why the media thread died, if it did.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.get().map(String::as_str)
    }
}

/// Starts the media thread. A panic in it is caught and recorded in
/// [`Media::fatal`] (the thread then ends).
pub fn spawn(config: ReaderConfig, media: Media, shutdown: Shutdown) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("media".into()).spawn(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&config, &media, &shutdown)));
        if let Err(payload) = result {
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            log::error!("media thread died: {why}");
            let _ = media.fatal.set(format!("media thread died: {why}"));
        }
    })
}

/// Fault injection for the tests of a dying media thread, in debug builds
/// only: `STREAMING_SERVER_FAULT=media_panic_after_frames:N`.
fn panic_after_frames() -> Option<u64> {
    if !cfg!(debug_assertions) {
        return None;
    }
    std::env::var("STREAMING_SERVER_FAULT").ok()?.strip_prefix("media_panic_after_frames:")?.parse().ok()
}

/// The media thread's body; returns on shutdown.
pub fn run(config: &ReaderConfig, media: &Media, shutdown: &Shutdown) {
    let mut processor = Processor::new();
    let mut error_log = RateLimiter::new(Duration::from_secs(5));
    let metrics = &media.metrics;
    let fault = panic_after_frames();
    let mut frames = 0u64;
    shm::run(config, shutdown, metrics, &media.camera, |event| match event {
        ReaderEvent::Frame(frame) => {
            frames += 1;
            if fault.is_some_and(|n| frames > n) {
                panic!("injected fault after {} frames (STREAMING_SERVER_FAULT)", frames - 1);
            }
            let started = Instant::now();
            match processor.process(frame) {
                Ok(au) => {
                    metrics.frames_processed.inc();
                    let capture = au.capture_time;
                    media.hub.publish(Arc::new(au));
                    metrics.frame_latency_ms.observe(millis_between(capture, monotonic_now()));
                    metrics.process_latency_ms.observe(started.elapsed().as_secs_f64() * 1e3);
                }
                Err(error) => {
                    warn_limited!(error_log, "H.264: dropped {error}");
                    metrics.process_errors.inc();
                    metrics.frame_errors.with_label_values(&["process", error.label()]).inc();
                    processor.note_gap();
                    media.hub.gap();
                }
            }
        }
        ReaderEvent::Gap(_) => {
            processor.note_gap();
            media.hub.gap();
        }
        ReaderEvent::Attached | ReaderEvent::Detached => {}
    });
    log::debug!("media thread stopped");
}
