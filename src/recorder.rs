//! Recorder: the hub's access units in, raw Annex-B `.h264`/`.h265` files
//! out (the extension says the codec; a codec change starts a new file).
//!
//! [`Recorder::start`] (called from a control-plane thread) creates
//! `recording_YYYYMMDD_HHMMSS.h264` with `O_EXCL`, subscribes to the hub
//! from its GOP cache (so the file opens with the cached IDR, SPS and PPS in
//! front, and the seconds before `/start` are kept), and hands file and
//! subscription to a writer thread, which owns both until the recording
//! ends. [`Recorder::stop`] asks that thread to finish and answers once the
//! file is flushed, `fsync`ed and closed and its directory entry `fsync`ed.
//!
//! Durability (the procedure in `docs/design.md`, "Recording durability"):
//! create with `O_EXCL`, `fsync` the directory so the file's name survives a
//! crash, write whole access units, `fdatasync` at least once a second, and
//! on stop `sync_all`, then `fsync` the directory. Beside each file, a
//! capture-time sidecar ([`crate::recording_times`]) gets a record after
//! each whole access unit and is synced with the file; its failure costs
//! timing only, never the recording. A power cut loses at most
//! the last second; what is on disk plays, because the file is only ever
//! extended by whole access units.
//!
//! Overflow: the writer's queue is bounded; when the disk is slower than the
//! camera the hub drops frames for the recorder alone up to the next IDR
//! (counted in `streaming_consumer_frames_dropped_total{consumer="recorder"}`
//! and in the status's `frames_dropped`); viewers and the reader never wait.
//!
//! Errors: a failed write or sync ends that recording only. The file is cut
//! back to its last whole access unit, synced as far as the disk allows, the
//! status and `/health` carry `"error"`, `streaming_recording_errors_total`
//! counts it, and the next [`Recorder::start`] works once the cause is gone.
//! A failed sync is not retried: after one, Linux may have dropped the dirty
//! pages, so a retry could report success for data that is gone.
//!
//! Segments and retention (optional, [`RecorderConfig`]): with a segment
//! length the writer closes the file (synced like a stop) at the first IDR
//! after that length and goes on in a new file, so every segment starts
//! with an IDR and SPS/PPS and the segments joined are the recording. With
//! a byte budget or a free-space floor it deletes the oldest
//! `recording_*.h264` files of the directory (never the one being written)
//! at each start, each rotation and every few seconds.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::codec::{AccessUnit, Codec};
use crate::hub::{ConsumerStats, QueueBudget, Queued, StartAt, SubscribeOptions, Subscription};
use crate::recording_times::{Header, TimesWriter};
use crate::stream::Stream;

/// Data reaches the disk at least this often while recording.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Live frames the writer may have queued while the disk is slow: about
/// 10 s at 1080p 6 Mbit/s (SD cards stall for seconds). The pre-roll from
/// the GOP cache is not charged (see `hub`), so it is never cut short.
pub const QUEUE: QueueBudget = QueueBudget { bytes: 8 << 20, frames: 600 };
/// `/stop` waits this long for the final syncs before answering 500; the
/// recording then shows `"stopping": true` and a `/start` gets 409 until
/// the disk answers.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Shutdown waits this long for them: the process must exit within
/// systemd's stop timeout even with a stalled disk, and what was written
/// before the last `fdatasync` is on disk anyway.
pub const SHUTDOWN_STOP_TIMEOUT: Duration = Duration::from_millis(1500);
/// A segment may be cut this much before its nominal length (see `write`).
const SEGMENT_SLACK: Duration = Duration::from_millis(100);
/// How often retention is checked while recording (also at every start and
/// rotation).
const RETENTION_INTERVAL: Duration = Duration::from_secs(10);
/// Same-second starts get `_1`, `_2`, ... up to this before giving up.
const MAX_NAME_SUFFIX: u32 = 999;

/// The recording status object of `../shared/API.md`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RecordingStatus {
    pub recording: bool,
    /// File name inside the recording directory; empty before the first recording.
    pub filename: String,
    pub frame_count: u64,
    pub bytes_written: u64,
    /// Wall time since `/start` (until `/stop` once stopped), milliseconds.
    pub duration_ms: u64,
    /// RFC 3339, local time with offset; empty before the first recording.
    pub start_time: String,
    /// Frames the recorder lost because the disk fell behind.
    pub frames_dropped: u64,
    /// Files this recording has used so far (more than 1 only with segments);
    /// `filename` is the newest, the counts above cover all of them.
    pub segments: u64,
    /// The codec of the recording's files (`H.264`, `H.265`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub codec: String,
    /// True from `/stop` until the file is synced and closed (a slow disk
    /// can make that take seconds; `/start` meanwhile gets 409).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stopping: bool,
    /// Why the last recording ended early, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why a start or stop was refused; the control plane maps these to statuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecorderError {
    /// 409: `/start` while recording.
    AlreadyRecording,
    /// 409: `/stop` while idle.
    NotRecording,
    /// 409: `/start` or `/stop` while the last recording is still being
    /// synced and closed.
    Stopping,
    /// 503: the server is shutting down.
    ShuttingDown,
    /// 500: the directory or file could not be created or synced.
    Io(String),
}

impl std::fmt::Display for RecorderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecorderError::AlreadyRecording => write!(f, "already recording"),
            RecorderError::NotRecording => write!(f, "not recording"),
            RecorderError::Stopping => {
                write!(f, "the last recording is still being written to disk (slow or stalled disk); try again later")
            }
            RecorderError::ShuttingDown => write!(f, "shutting down"),
            RecorderError::Io(why) => write!(f, "{why}"),
        }
    }
}

/// Where and how recordings are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecorderConfig {
    /// Directory for the files (created on the first start).
    pub dir: PathBuf,
    /// Start a new file at the first IDR after this long (`-record-segment`).
    pub segment: Option<Duration>,
    /// Delete the oldest recordings while the directory's recordings exceed
    /// this many bytes (`-record-max-bytes`).
    pub max_bytes: Option<u64>,
    /// Delete the oldest recordings while the file system has less free
    /// space than this (`-record-min-free`).
    pub min_free: Option<u64>,
}

impl RecorderConfig {
    /// One file per recording, nothing ever deleted.
    pub fn new(dir: PathBuf) -> RecorderConfig {
        RecorderConfig { dir, segment: None, max_bytes: None, min_free: None }
    }
}

/// Splits a flag like `10m` into its leading digits and the unit after them;
/// None for an empty flag (the feature is off).
fn number_and_unit(text: &str) -> Option<(&str, &str)> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len())))
}

/// Parses a duration flag: `600`, `600s`, `10m`, `1h` (0 means off).
pub fn parse_duration(text: &str) -> Result<Option<Duration>, String> {
    let Some((number, unit)) = number_and_unit(text) else { return Ok(None) };
    let text = text.trim();
    let value: u64 = number.parse().map_err(|_| format!("bad duration {text:?}: expected e.g. 600s, 10m, 1h"))?;
    let seconds = match unit {
        "" | "s" => value,
        "m" => value.saturating_mul(60),
        "h" => value.saturating_mul(3600),
        _ => return Err(format!("bad duration {text:?}: units are s, m, h")),
    };
    Ok((seconds > 0).then(|| Duration::from_secs(seconds)))
}

/// Parses a size flag: `500000`, `500K`, `200M`, `2G` (powers of 1024; 0 means off).
pub fn parse_size(text: &str) -> Result<Option<u64>, String> {
    let Some((number, unit)) = number_and_unit(text) else { return Ok(None) };
    let text = text.trim();
    let value: u64 = number.parse().map_err(|_| format!("bad size {text:?}: expected e.g. 500M, 2G"))?;
    let shift = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("bad size {text:?}: units are K, M, G, T")),
    };
    let bytes = value.checked_mul(1 << shift).ok_or_else(|| format!("size {text:?} is too large"))?;
    Ok((bytes > 0).then_some(bytes))
}

/// One recording's status, owned by that recording: only its writer
/// thread updates it, so a writer that outlives its `/stop` can never touch
/// the next recording's figures.
#[derive(Debug, Default)]
struct Recording {
    id: u64,
    state: Mutex<StatusState>,
    /// The hub's counters for this recording's queue: `frames_dropped` is
    /// read live, so `/status` shows it even while the writer waits for a
    /// stalled disk.
    queue: Arc<ConsumerStats>,
}

#[derive(Debug, Default)]
struct StatusState {
    status: RecordingStatus,
    started: Option<Instant>,
}

impl Recording {
    fn status(&self) -> RecordingStatus {
        let state = lock(&self.state);
        let mut status = state.status.clone();
        if let (true, Some(started)) = (status.recording, state.started) {
            status.duration_ms = started.elapsed().as_millis() as u64;
        }
        status.frames_dropped = status.frames_dropped.max(self.queue.dropped.load(Ordering::Relaxed));
        status
    }

    fn update(&self, f: impl FnOnce(&mut StatusState)) {
        f(&mut lock(&self.state));
    }
}

#[derive(Debug)]
enum Command {
    /// Finish the file; the reply comes after the final syncs.
    Stop(flume::Sender<Result<(), String>>),
}

/// A writer thread and how to reach it.
#[derive(Debug)]
struct Writing {
    recording: Arc<Recording>,
    commands: flume::Sender<Command>,
    thread: JoinHandle<()>,
}

/// Where the recorder is: the states `/start` and `/stop` move between.
#[derive(Debug, Default)]
enum Phase {
    #[default]
    Idle,
    Recording(Writing),
    /// `/stop` was asked for; the writer is syncing and closing.
    Stopping {
        writing: Writing,
    },
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    config: RecorderConfig,
    stream: Stream,
    /// Serialises start and stop. Held while a file is created, never while
    /// waiting for a writer's syncs, never by the writer thread.
    phase: Mutex<Phase>,
    /// The newest recording, what `/status` reads; held only for a clone.
    current: Mutex<Arc<Recording>>,
    next_id: std::sync::atomic::AtomicU64,
    shutting_down: std::sync::atomic::AtomicBool,
}

impl Inner {
    fn current(&self) -> Arc<Recording> {
        lock(&self.current).clone()
    }

    fn is_current(&self, recording: &Recording) -> bool {
        lock(&self.current).id == recording.id
    }
}

/// The raw H.264 recorder; cheap to clone.
#[derive(Clone, Debug)]
pub struct Recorder {
    inner: Arc<Inner>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent at every await-free step, so a
    // panic elsewhere must not take the recorder down with it.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Recorder {
    /// A recorder writing one file per recording into `dir`.
    pub fn new(dir: PathBuf, stream: Stream) -> Recorder {
        Recorder::with_config(RecorderConfig::new(dir), stream)
    }

    /// A recorder as `config` says.
    pub fn with_config(config: RecorderConfig, stream: Stream) -> Recorder {
        Recorder {
            inner: Arc::new(Inner {
                dir: config.dir.clone(),
                config,
                stream,
                phase: Mutex::new(Phase::Idle),
                current: Mutex::new(Arc::new(Recording::default())),
                next_id: std::sync::atomic::AtomicU64::new(1),
                shutting_down: Default::default(),
            }),
        }
    }

    /// The recording directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// A snapshot of the newest recording's status; never waits for I/O.
    pub fn status(&self) -> RecordingStatus {
        self.inner.current().status()
    }

    /// Starts a recording; the status of the new recording.
    pub fn start(&self) -> Result<RecordingStatus, RecorderError> {
        let inner = &self.inner;
        let mut phase = lock(&inner.phase);
        if inner.shutting_down.load(Ordering::SeqCst) {
            return Err(RecorderError::ShuttingDown);
        }
        match std::mem::take(&mut *phase) {
            Phase::Idle => {}
            Phase::Recording(writing) if writing.thread.is_finished() => {
                // The last recording ended on an error; its thread is done.
                let _ = writing.thread.join();
            }
            Phase::Stopping { writing, .. } if writing.thread.is_finished() => {
                let _ = writing.thread.join();
            }
            Phase::Recording(writing) => {
                *phase = Phase::Recording(writing);
                return Err(RecorderError::AlreadyRecording);
            }
            stopping @ Phase::Stopping { .. } => {
                *phase = stopping;
                return Err(RecorderError::Stopping);
            }
        }
        std::fs::create_dir_all(&inner.dir)
            .map_err(|e| RecorderError::Io(format!("cannot create {}: {e}", inner.dir.display())))?;
        let wall = SystemTime::now();
        // The stream's codec when known; an idle on-demand source tells at
        // its first frame (the writer renames the still empty file then).
        let codec = inner.stream.hub.parameter_sets().map_or(Codec::H264, |ps| ps.codec());
        let (file, name) = create_unique(&inner.dir, &local_stamp(wall), codec)?;
        let times = open_times(&inner.dir, &name, Header::now(1, &name));
        // Make the new name durable before any data: a crash then leaves a
        // (possibly empty) file rather than data with no name.
        sync_dir(&inner.dir).map_err(|e| RecorderError::Io(format!("fsync {}: {e}", inner.dir.display())))?;
        let subscription = inner.stream.hub.subscribe(SubscribeOptions {
            name: "recorder".into(),
            budget: QUEUE,
            start: StartAt::GopCache,
            dropped_metric: Some(inner.stream.metrics.consumer_dropped("recorder")),
        });
        let recording = Arc::new(Recording {
            id: inner.next_id.fetch_add(1, Ordering::Relaxed),
            queue: subscription.stats.clone(),
            state: Mutex::new(StatusState {
                status: RecordingStatus {
                    recording: true,
                    codec: codec.name().to_string(),
                    filename: name.clone(),
                    start_time: rfc3339_local(wall),
                    segments: 1,
                    ..RecordingStatus::default()
                },
                started: Some(Instant::now()),
            }),
        });
        let (commands, command_rx) = flume::bounded(1);
        let writer_path = inner.dir.join(&name);
        let mut writer = Writer {
            inner: inner.clone(),
            _demand: inner.stream.demand.hold(),
            recording: recording.clone(),
            codec,
            file,
            path: writer_path.clone(),
            subscription,
            commands: command_rx,
            recording_name: name.clone(),
            name,
            times,
            segment_bytes: 0,
            segment_first_capture: None,
            segments: 1,
            bytes: 0,
            frames: 0,
            dirty: false,
            last_sync: Instant::now(),
            last_retention: Instant::now(),
        };
        writer.enforce_retention();
        let thread = match std::thread::Builder::new().name("recorder".into()).spawn(move || writer.run()) {
            Ok(thread) => thread,
            Err(e) => {
                let why = format!("cannot start the recorder thread: {e}");
                recording.update(|state| {
                    state.status.recording = false;
                    state.status.error = Some(why.clone());
                });
                *lock(&inner.current) = recording;
                return Err(RecorderError::Io(why));
            }
        };
        *lock(&inner.current) = recording.clone();
        *phase = Phase::Recording(Writing { recording: recording.clone(), commands, thread });
        inner.stream.metrics.recordings.inc();
        inner.stream.metrics.recording_active.set(1);
        inner.stream.metrics.recording_bytes.set(0);
        inner.stream.metrics.recording_frames.set(0);
        log::info!("recording: started {}", writer_path.display());
        drop(phase);
        Ok(recording.status())
    }

    /// Stops the recording; returns once the file is synced and closed (or
    /// after [`STOP_TIMEOUT`], with the recording left "stopping").
    pub fn stop(&self) -> Result<RecordingStatus, RecorderError> {
        self.stop_within(STOP_TIMEOUT)
    }

    /// [`Recorder::stop`], giving up waiting after `limit`.
    fn stop_within(&self, limit: Duration) -> Result<RecordingStatus, RecorderError> {
        let (recording, reply) = {
            let mut phase = lock(&self.inner.phase);
            match std::mem::take(&mut *phase) {
                Phase::Idle => return Err(RecorderError::NotRecording),
                stopping @ Phase::Stopping { .. } => {
                    *phase = stopping;
                    return Err(RecorderError::Stopping);
                }
                Phase::Recording(writing) => {
                    let (reply_tx, reply) = flume::bounded(1);
                    if writing.commands.send(Command::Stop(reply_tx)).is_err() {
                        // The writer ended by itself (a write error, already reported).
                        let _ = writing.thread.join();
                        return Err(RecorderError::NotRecording);
                    }
                    writing.recording.update(|state| state.status.stopping = true);
                    let recording = writing.recording.clone();
                    *phase = Phase::Stopping { writing };
                    (recording, reply)
                }
            }
        };
        // Waited for without the lock: `/status` and `/start` (409) answer meanwhile.
        let result = match reply.recv_timeout(limit) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(RecorderError::Io(why)),
            Err(flume::RecvTimeoutError::Timeout) => {
                let why = format!(
                    "{}: not synced within {:.1} s (the disk is slow or stalled); still stopping",
                    recording.status().filename,
                    limit.as_secs_f64()
                );
                log::error!("recording: {why}");
                return Err(RecorderError::Io(why));
            }
            Err(flume::RecvTimeoutError::Disconnected) => Err(RecorderError::Io("the recorder thread died".into())),
        };
        let mut phase = lock(&self.inner.phase);
        if let Phase::Stopping { writing, .. } = std::mem::take(&mut *phase) {
            if writing.recording.id == recording.id {
                let _ = writing.thread.join();
            } else {
                *phase = Phase::Stopping { writing };
            }
        }
        drop(phase);
        result.map(|()| recording.status())
    }

    /// Ends any recording for shutdown and refuses new ones; returns within
    /// about [`SHUTDOWN_STOP_TIMEOUT`] whatever the disk does.
    pub fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + SHUTDOWN_STOP_TIMEOUT;
        match self.stop_within(SHUTDOWN_STOP_TIMEOUT) {
            Ok(status) => log::info!("recording: {} closed at shutdown", status.filename),
            Err(RecorderError::NotRecording) => {}
            Err(RecorderError::Stopping) => {
                // An earlier /stop is still waiting for the disk: give it the rest.
                let writing = match std::mem::take(&mut *lock(&self.inner.phase)) {
                    Phase::Stopping { writing, .. } => Some(writing),
                    _ => None,
                };
                if let Some(writing) = writing {
                    while !writing.thread.is_finished() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    if writing.thread.is_finished() {
                        log::info!("recording: {} closed at shutdown", writing.recording.status().filename);
                    } else {
                        log_abandoned(&writing.recording);
                    }
                }
            }
            Err(error) => {
                log::error!("recording: at shutdown: {error}");
                log_abandoned(&self.inner.current());
            }
        }
    }
}

/// Shutdown could not wait for the disk any longer.
fn log_abandoned(recording: &Recording) {
    let status = recording.status();
    log::error!(
        "recording: {} not closed within {:.1} s at shutdown (the disk is stalled): exiting anyway; the file \
         keeps what was written ({} bytes handed to the kernel, which still writes them out)",
        status.filename,
        SHUTDOWN_STOP_TIMEOUT.as_secs_f64(),
        status.bytes_written
    );
}

/// The writer thread's state: owns the file and the subscription.
struct Writer {
    inner: Arc<Inner>,
    /// Keeps an on-demand source running while this recording lasts.
    _demand: crate::stream::DemandGuard,
    /// This recording's status, which only this writer updates.
    recording: Arc<Recording>,
    /// What the current file holds (its extension).
    codec: Codec,
    file: File,
    path: PathBuf,
    name: String,
    /// The first file's name: the recording these segments belong to.
    recording_name: String,
    /// The current file's capture-time sidecar.
    times: TimesWriter,
    subscription: Subscription,
    commands: flume::Receiver<Command>,
    /// Bytes of whole access units in the current file: its length.
    segment_bytes: u64,
    /// Capture time of the current file's first frame.
    segment_first_capture: Option<Duration>,
    segments: u64,
    /// Bytes written to all of this recording's files.
    bytes: u64,
    frames: u64,
    /// Written since the last sync.
    dirty: bool,
    last_sync: Instant,
    last_retention: Instant,
}

enum Event {
    Frame(Queued),
    Stop(flume::Sender<Result<(), String>>),
    /// The hub or the control side went away.
    Gone,
}

impl Writer {
    fn run(mut self) {
        let frames = self.subscription.frames.clone();
        loop {
            let wait = SYNC_INTERVAL.saturating_sub(self.last_sync.elapsed()).max(Duration::from_millis(1));
            let event = flume::Selector::new()
                .recv(&frames, |r| r.map_or(Event::Gone, Event::Frame))
                .recv(&self.commands, |r| r.map_or(Event::Gone, |Command::Stop(reply)| Event::Stop(reply)))
                .wait_timeout(wait);
            let outcome = match event {
                Ok(Event::Frame(au)) => self.write(&au),
                Ok(Event::Stop(reply)) => {
                    let result = self.finish();
                    let _ = reply.send(result);
                    return;
                }
                Ok(Event::Gone) => {
                    let _ = self.finish();
                    return;
                }
                Err(_timeout) => Ok(()),
            };
            let outcome = outcome.and_then(|()| self.sync_if_due());
            if self.last_retention.elapsed() >= RETENTION_INTERVAL {
                self.enforce_retention();
            }
            if let Err((op, error)) = outcome {
                self.fail(op, &error);
                return;
            }
        }
    }

    fn write(&mut self, au: &AccessUnit) -> Result<(), (&'static str, io::Error)> {
        // Media time (the daemon's capture stamps), not wall time: the
        // pre-roll arrives all at once. The slack lets a GOP exactly as long
        // as the segment give one GOP per segment despite frame jitter.
        let due = self.inner.config.segment.is_some_and(|length| {
            self.segment_first_capture
                .is_some_and(|first| au.capture_time.saturating_sub(first) + SEGMENT_SLACK >= length)
        });
        if au.codec != self.codec {
            self.switch_codec(au.codec)?;
        } else if au.is_keyframe && due && self.segment_bytes > 0 {
            self.rotate()?;
        }
        if self.segment_first_capture.is_none() {
            self.segment_first_capture = Some(au.capture_time);
        }
        for chunk in au.annexb_chunks() {
            self.file.write_all(chunk).map_err(|e| ("write", e))?;
        }
        self.times.record(self.segment_bytes, au.capture_time);
        let len = au.annexb_len() as u64;
        self.segment_bytes += len;
        self.bytes += len;
        self.frames += 1;
        self.dirty = true;
        self.publish();
        Ok(())
    }

    fn sync_if_due(&mut self) -> Result<(), (&'static str, io::Error)> {
        if self.dirty && self.last_sync.elapsed() >= SYNC_INTERVAL {
            self.file.sync_data().map_err(|e| ("fdatasync", e))?;
            self.times.sync();
            self.dirty = false;
            self.last_sync = Instant::now();
        }
        Ok(())
    }

    /// The stream's codec changed (or is first known): an empty file is
    /// renamed to the new extension, a file with data is closed and the
    /// recording goes on in a new one.
    fn switch_codec(&mut self, codec: Codec) -> Result<(), (&'static str, io::Error)> {
        log::info!("recording: the stream is {codec} now (was {})", self.codec);
        self.codec = codec;
        if self.segment_bytes > 0 {
            return self.rotate();
        }
        let dir = self.inner.dir.clone();
        let stem = self.name.rsplit_once('.').map_or(self.name.as_str(), |(stem, _)| stem).to_string();
        let name = format!("{stem}.{}", codec.extension());
        let target = dir.join(&name);
        if target.exists() {
            // Taken (a same-second name): a fresh unique one instead.
            return self.rotate();
        }
        std::fs::rename(&self.path, &target).map_err(|e| ("create", e))?;
        if self.segments == 1 {
            self.recording_name = name.clone();
        }
        // Still empty: a fresh sidecar under the new name, naming the
        // recording as it is now called.
        let header = Header::now(self.segments as u32, &self.recording_name);
        std::mem::replace(&mut self.times, open_times(&dir, &name, header)).remove();
        sync_dir(&dir).map_err(|e| ("fsync directory", e))?;
        self.path = target;
        self.name = name.clone();
        self.recording.update(|state| {
            state.status.filename = name;
            state.status.codec = codec.name().to_string();
        });
        Ok(())
    }

    /// Closes the current file like a stop and continues in a new one.
    fn rotate(&mut self) -> Result<(), (&'static str, io::Error)> {
        self.file.sync_all().map_err(|e| ("fsync", e))?;
        self.times.sync();
        let dir = self.inner.dir.clone();
        let (file, name) = create_unique(&dir, &local_stamp(SystemTime::now()), self.codec)
            .map_err(|e| ("create", io::Error::other(e.to_string())))?;
        self.times = open_times(&dir, &name, Header::now(self.segments as u32 + 1, &self.recording_name));
        sync_dir(&dir).map_err(|e| ("fsync directory", e))?;
        log::info!("recording: segment {} done ({} bytes); next {name}", self.path.display(), self.segment_bytes);
        self.file = file;
        self.path = dir.join(&name);
        self.name = name.clone();
        self.segment_bytes = 0;
        self.segment_first_capture = None;
        self.segments += 1;
        self.dirty = false;
        self.last_sync = Instant::now();
        let segments = self.segments;
        let codec = self.codec.name().to_string();
        self.recording.update(|state| {
            state.status.filename = name;
            state.status.segments = segments;
            state.status.codec = codec;
        });
        self.enforce_retention();
        Ok(())
    }

    /// Deletes the oldest recordings while over the byte budget or under
    /// the free-space floor. Never the current file; best effort (a file
    /// that cannot be deleted is logged and skipped).
    fn enforce_retention(&mut self) {
        self.last_retention = Instant::now();
        let config = &self.inner.config;
        if config.max_bytes.is_none() && config.min_free.is_none() {
            return;
        }
        let mut old = old_recordings(&self.inner.dir, &self.name);
        let mut total: u64 = old.iter().map(|(_, _, size)| size).sum::<u64>() + self.segment_bytes;
        for (path, _, size) in old.drain(..) {
            let over_budget = config.max_bytes.is_some_and(|max| total > max);
            let short_of_space =
                config.min_free.is_some_and(|min| free_space(&self.inner.dir).is_some_and(|free| free < min));
            if !over_budget && !short_of_space {
                break;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    remove_sidecar(&path);
                    log::info!("recording: retention deleted {} ({size} bytes)", path.display());
                    self.inner.stream.metrics.recording_files_deleted.inc();
                    total = total.saturating_sub(size);
                }
                Err(e) => log::warn!("recording: retention cannot delete {}: {e}", path.display()),
            }
        }
    }

    /// Copies the counters to the status and the metrics.
    fn publish(&self) {
        let dropped = self.subscription.stats.dropped.load(Ordering::Relaxed);
        let (frames, bytes) = (self.frames, self.bytes);
        self.recording.update(|state| {
            state.status.frame_count = frames;
            state.status.bytes_written = bytes;
            state.status.frames_dropped = dropped;
        });
        if !self.inner.is_current(&self.recording) {
            // A writer that outlived its /stop: the gauges belong to the
            // newer recording now.
            return;
        }
        let metrics = &self.inner.stream.metrics;
        metrics.recording_bytes.set(self.bytes as i64);
        metrics.recording_frames.set(self.frames as i64);
        metrics.recorder_buffer_usage_percent.set(self.subscription.usage_percent());
    }

    /// Writes what is already queued, then syncs and closes.
    fn finish(&mut self) -> Result<(), String> {
        // Frames queued before the stop was asked for belong to the
        // recording; the queue is bounded, so this ends.
        let queued: Vec<_> = self.subscription.frames.try_iter().collect();
        for au in queued {
            if let Err((op, error)) = self.write(&au) {
                let message = self.fail(op, &error);
                return Err(message);
            }
        }
        let result = self.file.sync_all().map_err(|e| ("fsync", e));
        self.times.sync();
        let result = result.and_then(|()| sync_dir(&self.inner.dir).map_err(|e| ("fsync directory", e)));
        if let Err((op, error)) = result {
            return Err(self.fail(op, &error));
        }
        self.end(None);
        log::info!(
            "recording: stopped {} ({} frames, {} bytes, {} dropped)",
            self.path.display(),
            self.frames,
            self.bytes,
            self.subscription.stats.dropped.load(Ordering::Relaxed)
        );
        Ok(())
    }

    /// Ends the recording on an I/O error: cut the file back to whole access
    /// units, sync what the disk takes, report. Returns the message.
    fn fail(&mut self, op: &'static str, error: &io::Error) -> String {
        let message = format!("{op} {}: {error}", self.path.display());
        log::error!("recording: {message}; recording stopped");
        // Shrinking needs no space, so this works on a full disk; the file
        // then ends with a whole access unit and still plays.
        if let Err(e) = self.file.set_len(self.segment_bytes) {
            log::warn!("recording: cannot truncate {} after the error: {e}", self.path.display());
        }
        let _ = self.file.sync_all();
        // Its records name whole access units only, all still in the file.
        self.times.sync();
        let _ = sync_dir(&self.inner.dir);
        self.inner.stream.metrics.recording_error(op);
        self.end(Some(message.clone()));
        message
    }

    fn end(&mut self, error: Option<String>) {
        self.publish();
        self.recording.update(|state| {
            state.status.recording = false;
            state.status.stopping = false;
            state.status.error = error;
            if let Some(started) = state.started.take() {
                state.status.duration_ms = started.elapsed().as_millis() as u64;
            }
        });
        if !self.inner.is_current(&self.recording) {
            return;
        }
        let metrics = &self.inner.stream.metrics;
        metrics.recording_active.set(0);
        metrics.recorder_buffer_usage_percent.set(0);
    }
}

/// The capture-time sidecar of a new file; a recording whose sidecar
/// cannot be created goes on without one (its frames get estimated times).
fn open_times(dir: &Path, name: &str, header: Header) -> TimesWriter {
    TimesWriter::create(dir, name, &header).unwrap_or_else(|e| {
        log::warn!("recording: cannot create the capture-time sidecar of {name}: {e}");
        TimesWriter::none(dir, name)
    })
}

/// Deletes a deleted recording's sidecar, if it has one.
pub(crate) fn remove_sidecar(recording: &Path) {
    let sidecar = crate::recording_times::sidecar_path(recording);
    if let Err(e) = std::fs::remove_file(&sidecar) {
        if e.kind() != io::ErrorKind::NotFound {
            log::warn!("recording: cannot delete {}: {e}", sidecar.display());
        }
    }
}

/// Creates `<stem>.h264` (or `.h265`), or `<stem>_1.h264`, ... with
/// `O_EXCL`, so two starts in one second never share (or overwrite) a file.
fn create_unique(dir: &Path, stem: &str, codec: Codec) -> Result<(File, String), RecorderError> {
    let ext = codec.extension();
    for n in 0..=MAX_NAME_SUFFIX {
        let name = if n == 0 { format!("{stem}.{ext}") } else { format!("{stem}_{n}.{ext}") };
        match OpenOptions::new().write(true).create_new(true).mode(0o644).open(dir.join(&name)) {
            Ok(file) => return Ok((file, name)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(RecorderError::Io(format!("cannot create {}: {e}", dir.join(&name).display()))),
        }
    }
    Err(RecorderError::Io(format!("{stem}_*.{ext}: more than {MAX_NAME_SUFFIX} files this second")))
}

/// The directory's `recording_*.h264` and `recording_*.h265` files other
/// than `current`, oldest
/// first: (path, modified, size).
fn old_recordings(dir: &Path, current: &str) -> Vec<(PathBuf, SystemTime, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("recording_") && (name.ends_with(".h264") || name.ends_with(".h265")) && name != current
        })
        .filter_map(|e| {
            let meta = e.metadata().ok().filter(|m| m.is_file())?;
            Some((e.path(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len()))
        })
        .collect();
    files.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    files
}

/// Bytes available to this user on `dir`'s file system.
fn free_space(dir: &Path) -> Option<u64> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills a plain-data struct from a NUL-terminated path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// fsync on the directory, so a created file's name is durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Local broken-down time and UTC offset in seconds.
fn local_tm(wall: SystemTime) -> (libc::tm, i64) {
    let secs = wall.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as libc::time_t;
    // SAFETY: localtime_r writes only into `tm`, which is plain data for
    // which all-zero bytes are a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if !ok {
        // SAFETY: as above; gmtime_r of a valid time_t does not fail in practice.
        unsafe { libc::gmtime_r(&secs, &mut tm) };
        return (tm, 0);
    }
    #[allow(clippy::useless_conversion)] // c_long is i32 on 32-bit ARM
    let offset = i64::from(tm.tm_gmtoff);
    (tm, offset)
}

/// `recording_YYYYMMDD_HHMMSS` in local time, like the Go server.
fn local_stamp(wall: SystemTime) -> String {
    let (tm, _) = local_tm(wall);
    format!(
        "recording_{:04}{:02}{:02}_{:02}{:02}{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Whether `name` is one the recorder makes:
/// `recording_YYYYMMDD_HHMMSS`, optionally `_1` to `_999`, then `.h264` or
/// `.h265`. Nothing else is a recording to the HTTP routes.
pub fn is_recording_name(name: &str) -> bool {
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let Some(rest) = name.strip_prefix("recording_") else { return false };
    let Some((stem, ext)) = rest.rsplit_once('.') else { return false };
    if !Codec::ALL.iter().any(|c| c.extension() == ext) {
        return false;
    }
    let parts: Vec<&str> = stem.split('_').collect();
    match parts[..] {
        [date, time] => digits(date, 8) && digits(time, 6),
        [date, time, n] => {
            digits(date, 8)
                && digits(time, 6)
                && (1..=3).contains(&n.len())
                && n.bytes().all(|b| b.is_ascii_digit())
                && !n.starts_with('0')
        }
        _ => false,
    }
}

/// The local time a recording's name stamps (its `/start` or rotation),
/// for files without a capture-time sidecar.
pub fn name_time(name: &str) -> Option<SystemTime> {
    if !is_recording_name(name) {
        return None;
    }
    let field = |range: std::ops::Range<usize>| name.get(range)?.parse::<i32>().ok();
    // SAFETY: all-zero bytes are a valid libc::tm (plain data).
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = field(10..14)? - 1900;
    tm.tm_mon = field(14..16)? - 1;
    tm.tm_mday = field(16..18)?;
    tm.tm_hour = field(19..21)?;
    tm.tm_min = field(21..23)?;
    tm.tm_sec = field(23..25)?;
    tm.tm_isdst = -1; // let mktime find out
                      // SAFETY: mktime reads and normalizes the struct it is given.
    let secs = unsafe { libc::mktime(&mut tm) };
    (secs >= 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64))
}

/// RFC 3339 in local time with its offset, milliseconds included.
pub(crate) fn rfc3339_local(wall: SystemTime) -> String {
    let (tm, offset) = local_tm(wall);
    let millis = wall.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.subsec_millis());
    let zone = if offset == 0 {
        "Z".to_string()
    } else {
        let sign = if offset < 0 { '-' } else { '+' };
        let abs = offset.unsigned_abs();
        format!("{sign}{:02}:{:02}", abs / 3600, abs % 3600 / 60)
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{millis:03}{zone}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn same_second_names_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let (_a, first) = create_unique(dir.path(), "recording_20250101_000000", Codec::H264).unwrap();
        let (_b, second) = create_unique(dir.path(), "recording_20250101_000000", Codec::H264).unwrap();
        let (_c, third) = create_unique(dir.path(), "recording_20250101_000000", Codec::H264).unwrap();
        let (_d, hevc) = create_unique(dir.path(), "recording_20250101_000000", Codec::H265).unwrap();
        assert_eq!(hevc, "recording_20250101_000000.h265");
        assert_eq!(first, "recording_20250101_000000.h264");
        assert_eq!(second, "recording_20250101_000000_1.h264");
        assert_eq!(third, "recording_20250101_000000_2.h264");
    }

    #[test]
    fn only_the_recorders_own_names_are_recordings() {
        for good in
            ["recording_20251226_223031.h264", "recording_20251226_223031_1.h265", "recording_20251226_223031_999.h264"]
        {
            assert!(is_recording_name(good), "{good}");
        }
        for bad in [
            "recording_20251226_223031.mp4",
            "recording_20251226_223031_0.h264",
            "recording_20251226_223031_1000.h264",
            "recording_2025122_223031.h264",
            ".recording_20251226_223031.h264.times",
            "recording_20251226_223031.h264/x",
            "../recording_20251226_223031.h264",
            "recording_20251226_22303a.h264",
            "recording_20251226_223031_.h264",
            "recording_b.h264",
        ] {
            assert!(!is_recording_name(bad), "{bad}");
        }
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_766_788_231);
        let name = format!("{}.h264", local_stamp(wall));
        assert_eq!(name_time(&name), Some(wall), "{name}");
        assert_eq!(name_time("recording_b.h264"), None);
    }

    #[test]
    fn timestamps_have_the_documented_shapes() {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_millis(1_766_788_231_042);
        let stamp = local_stamp(wall);
        assert_eq!(stamp.len(), "recording_20251226_223031".len(), "{stamp}");
        assert!(stamp.starts_with("recording_20251"), "{stamp}");
        let rfc = rfc3339_local(wall);
        assert_eq!(&rfc[10..11], "T", "{rfc}");
        assert_eq!(&rfc[19..23], ".042", "{rfc}");
        assert!(rfc.ends_with('Z') || rfc[23..].len() == 6, "{rfc}");
    }

    #[test]
    fn duration_and_size_flags() {
        assert_eq!(parse_duration("").unwrap(), None);
        assert_eq!(parse_duration("0").unwrap(), None);
        assert_eq!(parse_duration("90").unwrap(), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s").unwrap(), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m").unwrap(), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h").unwrap(), Some(Duration::from_secs(7200)));
        for bad in ["m", "1.5m", "10x", "-1"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_size("").unwrap(), None);
        assert_eq!(parse_size("1000").unwrap(), Some(1000));
        assert_eq!(parse_size("500K").unwrap(), Some(500 << 10));
        assert_eq!(parse_size("200M").unwrap(), Some(200 << 20));
        assert_eq!(parse_size("2GiB").unwrap(), Some(2 << 30));
        assert_eq!(parse_size("2g").unwrap(), Some(2 << 30));
        for bad in ["M", "1.5G", "3Q", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn retention_lists_old_recordings_oldest_first_and_skips_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        for (name, age_s) in [("recording_b.h264", 30), ("recording_a.h264", 10), ("notes.txt", 99), ("cur.h264", 50)] {
            let path = dir.path().join(name);
            std::fs::write(&path, b"x").unwrap();
            let when = SystemTime::now() - Duration::from_secs(age_s);
            File::options().write(true).open(&path).unwrap().set_modified(when).unwrap();
        }
        std::fs::write(dir.path().join("recording_c.h264"), b"xyz").unwrap();
        let names: Vec<String> = old_recordings(dir.path(), "recording_c.h264")
            .into_iter()
            .map(|(p, _, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["recording_b.h264", "recording_a.h264"]);
        assert!(free_space(dir.path()).unwrap() > 0);
    }

    #[test]
    fn a_recording_started_before_the_codec_is_known_renames_its_file_and_sidecar() {
        use crate::codec::{Processor, RawFrame};
        let dir = tempfile::tempdir().unwrap();
        let stream = Stream::new("cam", &Arc::new(Metrics::new()));
        let recorder = Recorder::new(dir.path().to_path_buf(), stream.clone());
        let started = recorder.start().unwrap();
        assert!(started.filename.ends_with(".h264"), "no codec known yet: {}", started.filename);
        // An H.265 stream arrives: the still empty file becomes .h265.
        let clip = include_bytes!("../assets/demo.h265");
        let mut processor = Processor::new(Codec::H265);
        for (n, au) in Codec::H265.split_access_units(clip).into_iter().take(45).enumerate() {
            let frame = RawFrame {
                codec: Codec::H265,
                data: bytes::Bytes::copy_from_slice(&clip[au]),
                frame_number: n as u64,
                index: n as u32,
                capture_time: Duration::from_micros(7_000_000 + n as u64 * 33_333),
                read_time: Duration::ZERO,
                camera_id: 0,
                width: 0,
                height: 0,
            };
            stream.hub.publish(Arc::new(processor.process(frame).unwrap()));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while recorder.status().frame_count < 45 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let stopped = recorder.stop().unwrap();
        let name = stopped.filename.clone();
        assert_eq!(name, started.filename.replace(".h264", ".h265"));
        assert_eq!(stopped.frame_count, 45);
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names.len(), 2, "the file and its sidecar only: {names:?}");
        let sidecar = dir.path().join(format!(".{name}.times"));
        let summary = crate::recording_times::read_summary(&mut File::open(sidecar).unwrap()).unwrap().unwrap();
        assert_eq!((summary.header.recording.as_str(), summary.header.segment), (name.as_str(), 1));
        assert_eq!(summary.records, 45);
        assert_eq!(summary.first.map(|r| (r.offset, r.capture_us)), Some((0, 7_000_000)));
        assert_eq!(summary.last.map(|r| r.capture_us), Some(7_000_000 + 44 * 33_333));
        recorder.shutdown();
    }

    #[test]
    fn stop_while_idle_and_start_twice_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let stream = Stream::new("cam", &Arc::new(Metrics::new()));
        let recorder = Recorder::new(dir.path().join("rec"), stream.clone());
        assert_eq!(recorder.stop(), Err(RecorderError::NotRecording));
        let status = recorder.start().unwrap();
        assert!(status.recording);
        assert_eq!(recorder.start(), Err(RecorderError::AlreadyRecording));
        assert_eq!(stream.metrics.recording_active.get(), 1);
        let stopped = recorder.stop().unwrap();
        assert!(!stopped.recording);
        assert_eq!(stopped.bytes_written, 0);
        assert_eq!(std::fs::metadata(dir.path().join("rec").join(&stopped.filename)).unwrap().len(), 0);
        assert_eq!(stream.metrics.recording_active.get(), 0);
        recorder.shutdown();
        assert_eq!(recorder.start(), Err(RecorderError::ShuttingDown));
    }
}
