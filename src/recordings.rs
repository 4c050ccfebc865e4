//! The recordings on disk, as the HTTP routes see them: which files there
//! are, what they hold, their bytes, their MP4 form, and deleting them.
//!
//! In: recording ids from URLs (`NAME/FILE`, or `FILE` for the legacy
//! path), untrusted. Out: [`Entry`] lists, opened files, [`Mp4`] layouts
//! (from [`crate::mp4::progressive`]), typed [`RecordingsError`]s that the
//! control plane turns into statuses. Everything here does file I/O and
//! runs on tokio's blocking pool, called by [`crate::control`].
//!
//! Names are checked before any file system call: the path name must be
//! a configured path, the file name must be one the recorder makes
//! ([`crate::recorder::is_recording_name`]), so `..`, `/`, `%` and
//! absolute paths never reach the file system. Files are opened with
//! `O_NOFOLLOW` (a symlink planted in the directory is refused) and
//! `O_NONBLOCK` (a FIFO does not hang the open), and must be regular
//! files.
//!
//! Timing: a recording's capture-time sidecar
//! ([`crate::recording_times`]) gives its start, duration and every
//! frame's duration in the MP4; without one, the start is the file name's
//! time stamp and frames last 1 / the SPS frame rate (30 fps if the SPS
//! says none). [`Entry::timing`] says which.
//!
//! Memory: an MP4 layout costs about 17 bytes a frame; layouts are cached
//! (least recently used first out) within [`CACHE_BYTES`], keyed by what
//! makes their bytes: file identity, size, modification time and the
//! sidecar's. A file being written is served as a snapshot of its first
//! `size` bytes (the `size` query parameter pins it; the page does), so
//! every range request of one playback sees the same MP4.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

use crate::codec::{Codec, VideoInfo};
use crate::mp4::progressive::{scan, Layout, ScanOptions, Timing};
use crate::mp4::TIMESCALE;
use crate::paths::{Path, Paths};
use crate::recorder::{is_recording_name, name_time, rfc3339_local};
use crate::recording_times::{self, sidecar_path};

/// Bytes of MP4 layouts kept between requests.
pub const CACHE_BYTES: usize = 16 << 20;
/// Layouts kept between requests at most.
pub const CACHE_ENTRIES: usize = 32;
/// Frame duration assumed when neither a sidecar nor the SPS says one.
const FALLBACK_FPS: u32 = 30;

/// Why a recording request failed.
#[derive(Debug)]
pub enum RecordingsError {
    /// Not a name the recorder makes, or not a path name (400).
    BadName(String),
    /// No such path, no such file, or not a regular file (404).
    NotFound(String),
    /// The file a recorder is writing (409 for DELETE).
    Writing(String),
    /// `size` beyond the file (400).
    BadSize(u64, u64),
    /// The file cannot be served as MP4 (422): no keyframe first, B-frames...
    Mp4(crate::mp4::Error),
    Io(io::Error),
}

impl std::fmt::Display for RecordingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordingsError::BadName(why) => write!(f, "bad recording name: {why}"),
            RecordingsError::NotFound(what) => write!(f, "no recording {what}"),
            RecordingsError::Writing(file) => write!(f, "{file} is being recorded; stop the recording first"),
            RecordingsError::BadSize(asked, size) => write!(f, "size {asked} is beyond the file's {size} bytes"),
            RecordingsError::Mp4(e) => write!(f, "cannot serve as MP4: {e}"),
            RecordingsError::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

impl std::error::Error for RecordingsError {}

impl From<io::Error> for RecordingsError {
    fn from(e: io::Error) -> RecordingsError {
        RecordingsError::Io(e)
    }
}

/// A checked recording id: a configured path and a recorder-made name.
#[derive(Clone)]
pub struct Target {
    pub path: Arc<Path>,
    pub name: String,
}

impl Target {
    /// `NAME/FILE` as the JSON and the URLs name it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.path.name(), self.name)
    }

    pub fn dir(&self) -> &FsPath {
        self.path.recorder.dir()
    }

    pub fn file_path(&self) -> PathBuf {
        self.dir().join(&self.name)
    }

    pub fn codec(&self) -> Codec {
        let ext = self.name.rsplit_once('.').map_or("", |(_, ext)| ext);
        Codec::from_extension(ext).unwrap_or_default()
    }
}

/// One recording file, as `GET /recordings` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    /// `NAME/FILE`: the id in `/recordings/{file}`.
    pub file: String,
    /// The path (camera) that recorded it.
    pub path: String,
    pub codec: &'static str,
    pub size: u64,
    /// When its first frame was captured (RFC 3339, local time), or the
    /// file name's time stamp without a sidecar.
    pub start: String,
    /// Seconds from the first frame's capture to the end of the last;
    /// null when unknown (no sidecar, and not indexed yet).
    pub duration: Option<f64>,
    pub frames: Option<u64>,
    /// A recorder is writing it now (it grows; DELETE gets 409).
    pub writing: bool,
    /// The id of the recording's first file: the segments of one
    /// recording share it (`-record-segment`).
    pub recording: String,
    /// This file's place in its recording (1 for the first), null without
    /// a sidecar.
    pub segment: Option<u32>,
    /// `capture`: times from the capture-time sidecar; `estimated`: from
    /// the file name and the frame rate.
    pub timing: &'static str,
    #[serde(skip)]
    sort_micros: i64,
}

/// What makes an MP4 layout's bytes; equal keys, equal bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Key {
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    /// None for a snapshot of a growing file (its first `size` bytes never
    /// change, while its modification time does).
    mtime_ns: Option<i128>,
    sidecar: Option<(u64, i128)>,
}

impl Key {
    fn etag(&self) -> String {
        // FNV-1a over the key: short, stable, and different for any change.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let text = format!("{:?}", self);
        for byte in text.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        format!("\"mp4-{:x}-{hash:016x}\"", self.size)
    }
}

/// A recording as an MP4: its layout, and what timed it.
#[derive(Debug)]
pub struct Mp4 {
    pub layout: Arc<Layout>,
    pub etag: String,
    pub timing: &'static str,
}

/// The recordings of every path, and the MP4 layouts in use.
pub struct Recordings {
    paths: Arc<Paths>,
    cache: Mutex<Vec<(Key, Arc<Mp4>)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A cache: any state a panic left is still a valid list.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn mtime_ns(meta: &Metadata) -> i128 {
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

/// The ETag of a raw recording as it is now: inode, size and modification
/// time, so a file still being written gets a new one as it grows.
pub fn raw_etag(meta: &Metadata) -> String {
    format!("\"{:x}-{:x}-{:x}\"", meta.ino(), meta.len(), mtime_ns(meta))
}

/// Opens a regular file, and nothing else: `lstat` first, so a symlink, a
/// FIFO or a device is never opened at all; then `O_NOFOLLOW |
/// O_NONBLOCK` and `fstat`, so one swapped in meanwhile is refused too
/// (without hanging on a FIFO).
fn open_regular(path: &FsPath) -> Result<(File, Metadata), RecordingsError> {
    let not_found =
        || RecordingsError::NotFound(path.file_name().map_or(String::new(), |n| n.to_string_lossy().into()));
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Err(not_found()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found()),
        Err(e) => return Err(e.into()),
    }
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).map_err(
        |e| match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ELOOP) | Some(libc::ENOTDIR) | Some(libc::ENXIO) => not_found(),
            _ => RecordingsError::Io(e),
        },
    )?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_found());
    }
    Ok((file, meta))
}

/// A recording's sidecar, if it has a regular one.
fn open_sidecar(recording: &FsPath) -> Option<(File, Metadata)> {
    open_regular(&sidecar_path(recording)).ok()
}

/// The first `len` bytes of a file, as `Read + Seek`, read with `pread`.
struct Prefix<'a> {
    file: &'a File,
    len: u64,
    pos: u64,
}

impl Read for Prefix<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Prefix<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(n) => n,
            SeekFrom::End(d) => self.len.saturating_add_signed(d),
            SeekFrom::Current(d) => self.pos.saturating_add_signed(d),
        };
        Ok(self.pos)
    }
}

impl Recordings {
    pub fn new(paths: Arc<Paths>) -> Recordings {
        Recordings { paths, cache: Mutex::new(Vec::new()) }
    }

    /// Checks an id from a URL (not percent-decoded: a `%` is refused)
    /// without touching the file system.
    pub fn resolve(&self, id: &str) -> Result<Target, RecordingsError> {
        let (path, name) = match id.split_once('/') {
            Some((path, name)) => {
                if !crate::config::valid_name(path) {
                    return Err(RecordingsError::BadName(format!("{path:?} is not a path name")));
                }
                let found = self.paths.get(path).ok_or_else(|| RecordingsError::NotFound(format!("path {path:?}")))?;
                (found.clone(), name)
            }
            None => (self.paths.legacy().clone(), id),
        };
        if !is_recording_name(name) {
            return Err(RecordingsError::BadName(format!(
                "{name:?}: recordings are named recording_YYYYMMDD_HHMMSS[_N].h264 or .h265"
            )));
        }
        Ok(Target { path, name: name.to_string() })
    }

    /// Whether a recorder writes (or is closing) this file. A newer file
    /// than the recorder's current one in its directory counts too: a
    /// segment is created before the status names it.
    pub fn is_writing(&self, target: &Target) -> bool {
        self.paths.iter().filter(|p| p.recorder.dir() == target.dir()).any(|p| {
            let status = p.recorder.status();
            (status.recording || status.stopping) && target.name.as_str() >= status.filename.as_str()
        })
    }

    /// Every path's recordings, newest first. Blocking.
    pub fn list(&self) -> Vec<Entry> {
        let mut seen: Vec<&FsPath> = Vec::new();
        let mut entries = Vec::new();
        for path in self.paths.iter() {
            let dir = path.recorder.dir();
            if seen.contains(&dir) {
                continue; // two paths configured with one directory: listed once
            }
            seen.push(dir);
            let Ok(read) = std::fs::read_dir(dir) else { continue };
            for item in read.filter_map(Result::ok) {
                let name = item.file_name().to_string_lossy().into_owned();
                if !is_recording_name(&name) {
                    continue;
                }
                // lstat: a symlink is not a recording, whatever it names.
                let Ok(meta) = std::fs::symlink_metadata(item.path()) else { continue };
                if !meta.is_file() {
                    continue;
                }
                entries.push(self.entry(Target { path: path.clone(), name }, &meta));
            }
        }
        entries.sort_by(|a, b| b.sort_micros.cmp(&a.sort_micros).then_with(|| b.file.cmp(&a.file)));
        entries
    }

    fn entry(&self, target: Target, meta: &Metadata) -> Entry {
        let file_path = target.file_path();
        let summary =
            open_sidecar(&file_path).and_then(|(mut file, _)| recording_times::read_summary(&mut file).ok().flatten());
        let writing = self.is_writing(&target);
        let (start, duration, frames, recording, segment, timing) = match &summary {
            Some(s) if s.first.is_some() => {
                let first = s.first.map(|r| s.header.wall_time(r.capture_us)).unwrap_or(SystemTime::UNIX_EPOCH);
                let recording = if is_recording_name(&s.header.recording) {
                    format!("{}/{}", target.path.name(), s.header.recording)
                } else {
                    target.id()
                };
                let duration = s.duration().map(|d| d.as_secs_f64()).or(Some(0.0));
                (first, duration, Some(s.records), recording, Some(s.header.segment), "capture")
            }
            _ => {
                let start = name_time(&target.name).unwrap_or(SystemTime::UNIX_EPOCH);
                // Known only once its MP4 was made (and still cached).
                let cached = self.cached_for(&file_path, meta);
                let duration = cached.as_ref().map(|m| m.layout.duration() as f64 / f64::from(m.layout.timescale()));
                let frames = cached.map(|m| m.layout.index().len() as u64);
                (start, duration, frames, target.id(), None, "estimated")
            }
        };
        let sort_micros = start.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
        Entry {
            file: target.id(),
            path: target.path.name().to_string(),
            codec: target.codec().name(),
            size: meta.len(),
            start: rfc3339_local(start),
            duration: duration.map(|d| (d * 1000.0).round() / 1000.0),
            frames,
            writing,
            recording,
            segment,
            timing,
            sort_micros,
        }
    }

    /// Opens a recording for reading its bytes: the file and its metadata.
    /// Blocking.
    pub fn open(&self, target: &Target) -> Result<(File, Metadata), RecordingsError> {
        open_regular(&target.file_path())
    }

    /// The MP4 of a recording: of its first `pin` bytes if given (a
    /// snapshot of a file being written), else of the whole file (a
    /// snapshot too while it is written). Blocking: scans the file unless
    /// the layout is cached.
    pub fn mp4(&self, target: &Target, pin: Option<u64>) -> Result<(Arc<Mp4>, File), RecordingsError> {
        let file_path = target.file_path();
        let (file, meta) = open_regular(&file_path)?;
        if let Some(pin) = pin.filter(|&p| p > meta.len()) {
            return Err(RecordingsError::BadSize(pin, meta.len()));
        }
        let size = pin.unwrap_or(meta.len());
        let growing = self.is_writing(target) || size < meta.len();
        let sidecar = open_sidecar(&file_path);
        let key = Key {
            path: file_path.clone(),
            dev: meta.dev(),
            ino: meta.ino(),
            size,
            mtime_ns: (!growing).then(|| mtime_ns(&meta)),
            sidecar: sidecar.as_ref().filter(|_| !growing).map(|(_, m)| (m.len(), mtime_ns(m))),
        };
        if let Some(found) = self.cached(&key) {
            return Ok((found, file));
        }
        let codec = target.codec();
        let options = ScanOptions { growing, ..ScanOptions::new(codec) };
        let index = scan(Prefix { file: &file, len: size, pos: 0 }, &options).map_err(RecordingsError::Mp4)?;
        let captures = match sidecar {
            Some((mut times, _)) => recording_times::read_captures(&mut times, index.source_offsets())?,
            None => None,
        };
        let (num, den) = nominal_rate(codec, &index.parameter_sets.sps);
        let (timing, label) = match captures {
            Some((_, captures)) if captures.iter().any(Option::is_some) => {
                let nominal_us = u64::from(den) * 1_000_000 / u64::from(num);
                (Timing::Durations(recording_times::durations(&captures, nominal_us, TIMESCALE)), "capture")
            }
            _ => (Timing::Fps { num, den }, "estimated"),
        };
        let layout = Layout::new(index, timing).map_err(RecordingsError::Mp4)?;
        let mp4 = Arc::new(Mp4 { layout: Arc::new(layout), etag: key.etag(), timing: label });
        self.insert(key, mp4.clone());
        Ok((mp4, file))
    }

    fn cached(&self, key: &Key) -> Option<Arc<Mp4>> {
        let mut cache = lock(&self.cache);
        let at = cache.iter().position(|(k, _)| k == key)?;
        let hit = cache.remove(at);
        let mp4 = hit.1.clone();
        cache.push(hit); // most recently used last
        Some(mp4)
    }

    /// A cached layout of this whole, finished file (for the listing).
    fn cached_for(&self, path: &FsPath, meta: &Metadata) -> Option<Arc<Mp4>> {
        let cache = lock(&self.cache);
        cache
            .iter()
            .rev()
            .find(|(k, _)| {
                k.path == path && k.ino == meta.ino() && k.size == meta.len() && k.mtime_ns == Some(mtime_ns(meta))
            })
            .map(|(_, mp4)| mp4.clone())
    }

    fn insert(&self, key: Key, mp4: Arc<Mp4>) {
        let cost = |m: &Arc<Mp4>| m.layout.heap_bytes();
        if cost(&mp4) > CACHE_BYTES {
            return; // served once, not kept
        }
        let mut cache = lock(&self.cache);
        cache.retain(|(k, _)| k != &key);
        cache.push((key, mp4));
        while cache.len() > CACHE_ENTRIES || cache.iter().map(|(_, m)| cost(m)).sum::<usize>() > CACHE_BYTES {
            cache.remove(0);
        }
    }

    /// Deletes a recording and its sidecar; 409 for the file being
    /// written. Blocking.
    pub fn delete(&self, target: &Target) -> Result<(), RecordingsError> {
        if self.is_writing(target) {
            return Err(RecordingsError::Writing(target.id()));
        }
        let file_path = target.file_path();
        // lstat: never unlink a symlink planted under a recording's name
        // (it would be gone, but so would the 404 an attacker learns from).
        match std::fs::symlink_metadata(&file_path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return Err(RecordingsError::NotFound(target.id())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(RecordingsError::NotFound(target.id())),
            Err(e) => return Err(e.into()),
        }
        std::fs::remove_file(&file_path)?;
        crate::recorder::remove_sidecar(&file_path);
        File::open(target.dir()).and_then(|dir| dir.sync_all())?;
        lock(&self.cache).retain(|(k, _)| k.path != file_path);
        log::info!("recordings: deleted {}", file_path.display());
        Ok(())
    }
}

/// Frames per second as `num / den` by the SPS's VUI timing info, else
/// [`FALLBACK_FPS`].
fn nominal_rate(codec: Codec, sps: &[bytes::Bytes]) -> (u32, u32) {
    let rate = sps.first().and_then(|sps| match crate::mp4::sample_entry::parse_sps(codec, sps).ok()? {
        VideoInfo::H264(info) => info.frame_rate,
        VideoInfo::H265(info) => info.frame_rate,
    });
    // A rate outside 1..=1000 fps is a broken VUI, not a camera.
    rate.filter(|&(num, den)| den > 0 && num >= den && num / den <= 1000).unwrap_or((FALLBACK_FPS, 1))
}
