//! Sources: where a path's frames come from. One module per kind: [`ring`]
//! (the camera daemon's shared memory, read on a media thread of its own),
//! [`rtsp`] (an IP camera, a task on the runtime), and the demo camera
//! (the fake camera playing into a ring of its own, read like any ring).
//!
//! Every source pushes frames and gaps into its stream through a [`Feed`]:
//! the codec processor, then the hub. Frames from a ring and from RTSP are
//! indistinguishable downstream.
//!
//! [`start`] runs a path's source under a supervisor task: at once, or (on
//! demand) only while its stream's [`Demand`](crate::stream::Demand) is
//! held, stopping it after `sourceOnDemandCloseAfter` with nobody. A
//! source's own stop signal is a child of the process's shutdown, so it
//! stops alone or with everything. The supervisors live in a [`TaskSet`]
//! that shutdown waits for; a ring's media thread is joined by its
//! supervisor.

pub mod ring;
pub mod rtsp;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::abi::Layout;
use crate::clock::{millis_between, monotonic_now};
use crate::codec::{Codec, Processor, RawFrame};
use crate::config::{PathConfig, SourceConfig};
use crate::fake_camera::{self, FakeCameraOptions};
use crate::ratelimit::RateLimiter;
use crate::shutdown::Shutdown;
use crate::stream::Stream;
use crate::tasks::TaskSet;
use crate::warn_limited;

/// Turns a source's frames into checked access units in its stream's hub.
/// The processor follows the frames' codec: a change (a daemon now writing
/// `format` 4, an RTSP camera reconfigured) is a gap and a new processor,
/// like a daemon restart.
pub struct Feed {
    stream: Stream,
    processor: Processor,
    error_log: RateLimiter,
    /// The codec `streaming_path_codec_info` shows.
    codec_shown: Option<Codec>,
}

impl Feed {
    pub fn new(stream: Stream) -> Feed {
        Feed {
            stream,
            processor: Processor::new(Codec::H264),
            error_log: RateLimiter::new(Duration::from_secs(5)),
            codec_shown: None,
        }
    }

    /// One frame: processed and published, or refused (counted) with a gap.
    pub fn frame(&mut self, frame: RawFrame) {
        if frame.codec != self.processor.codec() {
            if self.stream.hub.published() > 0 {
                log::info!(
                    "{}: the camera now sends {} (was {})",
                    self.stream.name,
                    frame.codec,
                    self.processor.codec()
                );
            }
            self.processor = Processor::new(frame.codec);
            self.gap();
        }
        let started = Instant::now();
        let metrics = &self.stream.metrics;
        match self.processor.process(frame) {
            Ok(au) => {
                metrics.frames_processed.inc();
                if self.codec_shown != Some(au.codec) {
                    metrics.set_codec(au.codec);
                    self.codec_shown = Some(au.codec);
                }
                let capture = au.capture_time;
                self.stream.hub.publish(Arc::new(au));
                metrics.frame_latency_ms.observe(millis_between(capture, monotonic_now()));
                metrics.process_latency_ms.observe(started.elapsed().as_secs_f64() * 1e3);
            }
            Err(error) => {
                warn_limited!(self.error_log, "{}: dropped {error}", self.stream.name);
                metrics.process_errors.inc();
                metrics.frame_error("process", error.label());
                self.gap();
            }
        }
    }

    /// Frames were lost: consumers resume at the next keyframe.
    pub fn gap(&mut self) {
        self.processor.note_gap();
        self.stream.hub.gap();
    }
}

/// Fault injection for the tests of a dying media thread, in debug builds
/// only: `STREAMING_SERVER_FAULT=media_panic_after_frames:N`.
fn panic_after_frames() -> Option<u64> {
    if !cfg!(debug_assertions) {
        return None;
    }
    std::env::var("STREAMING_SERVER_FAULT").ok()?.strip_prefix("media_panic_after_frames:")?.parse().ok()
}

/// A ring's media thread body: reader, processor and hub back to back, no
/// queue in between (a frame is available to consumers microseconds after
/// the daemon's post); returns when `stop` fires (within the reader's
/// longest semaphore wait, 100 ms).
pub fn run_ring(config: &ring::ReaderConfig, stream: &Stream, stop: &Shutdown) {
    let mut feed = Feed::new(stream.clone());
    let fault = panic_after_frames();
    let mut frames = 0u64;
    ring::run(config, stop, &stream.metrics, &stream.source, |event| match event {
        ring::ReaderEvent::Frame(frame) => {
            frames += 1;
            if fault.is_some_and(|n| frames > n) {
                panic!("injected fault after {} frames (STREAMING_SERVER_FAULT)", frames - 1);
            }
            feed.frame(frame);
        }
        ring::ReaderEvent::Gap(_) => feed.gap(),
        ring::ReaderEvent::Attached | ring::ReaderEvent::Detached => {}
    });
    log::debug!("{}: media thread stopped", stream.name);
}

/// Starts a ring's media thread. A panic in it is caught and recorded in
/// [`Stream::fatal`]: `/health` then answers 503 with the reason and `main`
/// exits non-zero so that systemd restarts the service (the reader's state
/// is gone; a restart is the only safe fix).
pub fn spawn_ring(
    config: ring::ReaderConfig,
    stream: Stream,
    stop: Shutdown,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(format!("media-{}", stream.name)).spawn(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_ring(&config, &stream, &stop)));
        if let Err(payload) = result {
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            log::error!("{}: media thread died: {why}", stream.name);
            let _ = stream.fatal.set(format!("media thread died: {why}"));
        }
    })
}

/// The shared-memory segment the demo camera of `path` writes (the legacy
/// `cam` keeps the single-camera name).
pub fn demo_segment(path: &str) -> String {
    if path == crate::config::LEGACY_PATH {
        format!("/streaming_server_demo_{}", std::process::id())
    } else {
        format!("/streaming_server_demo_{}_{path}", std::process::id())
    }
}

/// Removes demo segments that processes no longer running left in
/// /dev/shm: a server killed with SIGKILL (or by the OOM killer) cannot
/// unlink its own, and each is ~90 MB of RAM until the next reboot. Runs
/// once per process, before the first demo camera starts; a segment whose
/// process still runs (another server's) is left alone.
fn remove_stale_demo_segments() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = std::fs::read_dir("/dev/shm") else { return };
        let own = std::process::id();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(demo_segment_owner) else { continue };
            if pid == own || std::path::Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    log::info!("removed /dev/shm/{name:?}, a demo ring left by process {pid} (no longer running)")
                }
                Err(error) => log::warn!("cannot remove /dev/shm/{name:?} left by process {pid}: {error}"),
            }
        }
    });
}

/// The process id in a [`demo_segment`] name (`streaming_server_demo_PID`
/// or `streaming_server_demo_PID_PATH`, without the leading slash).
fn demo_segment_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("streaming_server_demo_")?;
    let digits = rest.split('_').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What a path's source reads, for the watchdog: the ring config of a ring
/// or demo source.
pub fn ring_config(config: &PathConfig) -> Option<ring::ReaderConfig> {
    match &config.source {
        SourceConfig::Ring { segment, time_bits, codec } => {
            Some(ring::ReaderConfig { name: segment.clone(), layout: Layout::new(*time_bits), format3: *codec })
        }
        SourceConfig::Demo { .. } => Some(ring::ReaderConfig {
            name: demo_segment(&config.name),
            layout: Layout::new(crate::abi::TimeBits::Native),
            format3: Codec::H264,
        }),
        SourceConfig::Rtsp(_) => None,
    }
}

/// Waits until the shared-memory segment `name` exists (a demo camera
/// creates it right after it starts), up to `timeout`.
async fn wait_for_segment(name: &str, timeout: Duration) {
    let path = std::path::Path::new("/dev/shm").join(name.trim_start_matches('/'));
    let deadline = tokio::time::Instant::now() + timeout;
    while !path.exists() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs one ring (or demo) source until `stop`: the demo camera's thread
/// first, then the media thread, both joined before this returns.
async fn run_ring_source(config: &PathConfig, stream: &Stream, stop: &Shutdown) {
    let Some(reader) = ring_config(config) else { return };
    let mut demo = None;
    if let SourceConfig::Demo { codec } = config.source {
        remove_stale_demo_segments();
        let options = FakeCameraOptions::new(&reader.name, reader.layout);
        let clip = match fake_camera::demo_clip(codec) {
            Ok(clip) => clip,
            Err(error) => {
                stream.source.set_error(format!("demo clip: {error}"));
                return;
            }
        };
        let camera_stop = stop.clone();
        let name = stream.name.clone();
        let spawned = std::thread::Builder::new().name(format!("demo-{}", stream.name)).spawn(move || {
            if let Err(error) = fake_camera::run(&options, &clip, &camera_stop) {
                log::error!("{name}: demo camera: {error}");
            }
        });
        match spawned {
            Ok(thread) => demo = Some(thread),
            Err(error) => {
                stream.source.set_error(format!("cannot start the demo camera: {error}"));
                return;
            }
        }
        // The reader then attaches at its first try, without a "waiting
        // for the camera" line for the normal start.
        wait_for_segment(&reader.name, Duration::from_secs(2)).await;
    }
    match spawn_ring(reader, stream.clone(), stop.clone()) {
        Ok(thread) => {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        Err(error) => stream.source.set_error(format!("cannot start the media thread: {error}")),
    }
    if let Some(thread) = demo {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// Runs one RTSP source until `stop`.
async fn run_rtsp_source(config: &crate::config::RtspSourceConfig, stream: &Stream, stop: &Shutdown) {
    let url = match url::Url::parse(&config.url) {
        Ok(url) => url,
        Err(error) => {
            stream.source.set_error(format!("invalid URL: {error}"));
            return;
        }
    };
    let mut rtsp = rtsp::RtspConfig::new(url);
    rtsp.username.clone_from(&config.user);
    rtsp.password.clone_from(&config.pass);
    rtsp.transport = config.transport;
    let mut feed = Feed::new(stream.clone());
    let status = stream.source.clone();
    let metrics = stream.metrics.clone();
    let name = stream.name.clone();
    let (mut width, mut height) = (0, 0);
    let mut codec = Codec::H264;
    let mut frame_number = 0u64;
    let mut sessions = 0u64;
    let sink = move |event: rtsp::SourceEvent| match event {
        rtsp::SourceEvent::Connected { codec: sent, width: w, height: h, fps, transport } => {
            sessions += 1;
            if sessions > 1 {
                metrics.camera_restarts.inc();
                status.restarts.fetch_add(1, Ordering::Relaxed);
            }
            (width, height) = (i32::try_from(w).unwrap_or(0), i32::try_from(h).unwrap_or(0));
            status.attached.store(true, Ordering::Relaxed);
            metrics.camera_attached.set(1);
            codec = sent;
            log::info!(
                "{name}: RTSP {codec} {w}x{h}{} over {transport}",
                fps.map(|f| format!(" at {f:.1} fps")).unwrap_or_default()
            );
        }
        rtsp::SourceEvent::Frame { data, capture_time, .. } => {
            frame_number += 1;
            metrics.frames_read.inc();
            status.frame_arrived(frame_number, width, height, 0);
            feed.frame(RawFrame {
                codec,
                data,
                frame_number,
                index: frame_number as u32,
                capture_time,
                read_time: monotonic_now(),
                camera_id: 0,
                width,
                height,
            });
        }
        rtsp::SourceEvent::Gap { reason } => {
            let label = match reason {
                rtsp::GapReason::Loss { packets } => {
                    metrics.frames_dropped.inc();
                    let _ = packets;
                    "rtp_loss"
                }
                rtsp::GapReason::SessionEnded => "session_ended",
            };
            metrics.gap(label);
            feed.gap();
        }
        rtsp::SourceEvent::Error { error, .. } => {
            status.attached.store(false, Ordering::Relaxed);
            metrics.camera_attached.set(0);
            status.set_error(error.to_string());
        }
    };
    let stop = stop.clone();
    rtsp::run(rtsp, sink, async move { stop.wait().await }).await;
    stream.source.attached.store(false, Ordering::Relaxed);
    stream.metrics.camera_attached.set(0);
}

/// Runs the source once until `stop`.
async fn run_once(config: &PathConfig, stream: &Stream, stop: &Shutdown) {
    match &config.source {
        SourceConfig::Ring { .. } | SourceConfig::Demo { .. } => run_ring_source(config, stream, stop).await,
        SourceConfig::Rtsp(rtsp) => run_rtsp_source(rtsp, stream, stop).await,
    }
}

/// Starts `config`'s source for `stream` under a supervisor task in
/// `tasks` (module doc).
pub fn start(
    config: PathConfig,
    stream: Stream,
    runtime: &tokio::runtime::Handle,
    tasks: &TaskSet,
    shutdown: Shutdown,
) {
    tasks.spawn(runtime, async move { supervise(config, stream, shutdown).await });
}

async fn supervise(config: PathConfig, stream: Stream, shutdown: Shutdown) {
    let status = stream.source.clone();
    if !config.on_demand {
        status.running.store(true, Ordering::Relaxed);
        let (_trigger, stop) = shutdown.child();
        run_once(&config, &stream, &stop).await;
        return;
    }
    let mut demand = stream.demand.watch();
    loop {
        status.running.store(false, Ordering::Relaxed);
        stream.metrics.camera_attached.set(0);
        log::debug!("{}: on demand, idle", stream.name);
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = demand.wait_for(|n| *n > 0) => {}
        }
        log::info!("{}: a viewer or recording arrived: starting the source", stream.name);
        status.running.store(true, Ordering::Relaxed);
        let (trigger, stop) = shutdown.child();
        let run = run_once(&config, &stream, &stop);
        tokio::pin!(run);
        let idle = idle_for(&mut demand, config.on_demand_close_after);
        tokio::pin!(idle);
        tokio::select! {
            () = &mut run => {}
            () = &mut idle => {
                log::info!(
                    "{}: nobody for {:?}: closing the on-demand source",
                    stream.name,
                    config.on_demand_close_after
                );
                trigger.trigger();
                run.await;
            }
        }
        // Whatever was cached is old by the time the source runs again.
        stream.hub.gap();
        if shutdown.is_triggered() {
            return;
        }
    }
}

/// Resolves once demand has been zero for `close_after` without a break.
async fn idle_for(demand: &mut tokio::sync::watch::Receiver<usize>, close_after: Duration) {
    loop {
        if demand.wait_for(|n| *n == 0).await.is_err() {
            return;
        }
        let quiet = tokio::time::sleep(close_after);
        tokio::pin!(quiet);
        tokio::select! {
            () = &mut quiet => return,
            changed = demand.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_segment_names_give_their_owner_and_nothing_else_does() {
        let own = std::process::id();
        let name = |path: &str| demo_segment(path).trim_start_matches('/').to_string();
        assert_eq!(demo_segment_owner(&name(crate::config::LEGACY_PATH)), Some(own));
        assert_eq!(demo_segment_owner(&name("front_door")), Some(own));
        for other in
            ["streaming_server_demo_", "streaming_server_demo_x1", "streaming_server_demo__1", "camera_1", "sem.x"]
        {
            assert_eq!(demo_segment_owner(other), None, "{other}");
        }
    }
}
