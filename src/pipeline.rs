//! The media thread: shm reader -> H.264 processor -> hub, in one thread.
//!
//! Reading, checking and fanning out a frame happen back to back on one
//! thread with no queue in between, so a frame is available to consumers
//! microseconds after the daemon's post. The thread owns the reader and the
//! processor; it stops when the shutdown signal fires (within the reader's
//! longest semaphore wait, 100 ms).

use std::sync::Arc;
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
}

impl Media {
    pub fn new(metrics: Arc<Metrics>) -> Media {
        Media { hub: Arc::new(Hub::new()), camera: Arc::new(CameraStatus::default()), metrics }
    }
}

/// Starts the media thread.
pub fn spawn(config: ReaderConfig, media: Media, shutdown: Shutdown) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("media".into()).spawn(move || run(&config, &media, &shutdown))
}

/// The media thread's body; returns on shutdown.
pub fn run(config: &ReaderConfig, media: &Media, shutdown: &Shutdown) {
    let mut processor = Processor::new();
    let mut error_log = RateLimiter::new(Duration::from_secs(5));
    let metrics = &media.metrics;
    shm::run(config, shutdown, metrics, &media.camera, |event| match event {
        ReaderEvent::Frame(frame) => {
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
