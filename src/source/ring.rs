//! Shared-memory reader: the camera daemon's ring in, raw frames out.
//!
//! Runs on the media thread ([`run`]). It attaches to the daemon's segment
//! (waiting for it to appear), follows `write_index`, and hands every
//! complete frame, in order, to a sink as a [`RawFrame`]: one copy of
//! `data_size` bytes into a reference-counted buffer, never the 3 MB slot.
//!
//! The writer protocol (ABI.md) is fetch_add `write_index`, copy the frame,
//! release fence, `sem_post`. So frames below `write_index - 1` are always
//! complete, and frame `write_index - 1` is complete once its post happened.
//! The reader counts the posts it receives to know that at once; because
//! other processes may take posts, it also treats that frame as complete
//! once `write_index` has stood still for [`SETTLE_TIME`], far longer than
//! the daemon's copy takes. It never depends on receiving a post.
//!
//! What it reports to the sink besides frames:
//! - [`ReaderEvent::Gap`] whenever frames were lost: it fell more than a ring
//!   behind (overrun: it skips to the newest complete frame), a slot was
//!   overwritten while it copied, a malformed frame was dropped, or the
//!   camera restarted. Consumers then resume at the next IDR.
//! - Attach/detach as the segment appears, is replaced (new inode, or
//!   `write_index` going backwards) or is unlinked.
//!
//! Malformed frames (`data_size` 0 or above `MAX_FRAME_SIZE`, `format` not
//! H.264, no Annex-B start code) are counted and skipped with a rate-limited
//! warning. No content of the segment can make this module panic: it reads
//! through raw pointers at offsets fixed by [`Layout`] and checks every value
//! the daemon wrote before using it.

use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use memmap2::MmapMut;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::Mode;

use crate::abi::{Layout, FORMAT_H264, FORMAT_H265, MAX_FRAME_SIZE, RING_BUFFER_SIZE};
use crate::clock::monotonic_now;
use crate::codec::annexb::starts_with_start_code;
use crate::codec::{Codec, RawFrame};
use crate::metrics::StreamMetrics as Metrics;
use crate::ratelimit::RateLimiter;
use crate::shutdown::Shutdown;
use crate::stream::SourceStatus;
use crate::warn_limited;

/// How long `write_index` must stand still before the newest frame counts as
/// complete without its post. The daemon copies at most 3 MB per frame
/// (about 1-2 ms on a Raspberry Pi 4); this only delays frames when other
/// processes take the posts.
pub const SETTLE_TIME: Duration = Duration::from_millis(15);
/// Longest sleep on the semaphore: bounds shutdown and catch-up latency.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How often the segment's identity (inode) is checked for a restart.
const IDENTITY_CHECK_EVERY: Duration = Duration::from_millis(500);
/// Pause between attach attempts.
const ATTACH_RETRY: Duration = Duration::from_millis(200);
/// Frames read back from the ring on attach, to fill the GOP cache at once.
/// Kept below the ring size so the writer cannot lap them during the read.
const PREROLL_ON_ATTACH: u32 = RING_BUFFER_SIZE - 4;

/// What the reader hands to its sink.
#[derive(Debug)]
pub enum ReaderEvent {
    Attached,
    Frame(RawFrame),
    Gap(GapReason),
    Detached,
}

/// Why frames were lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapReason {
    /// The reader fell more than a ring behind; `lost` frames were skipped.
    Overrun { lost: u32 },
    /// The slot was rewritten while it was being copied.
    Overwritten { index: u32 },
    /// A malformed frame was dropped.
    Malformed { index: u32 },
    /// The daemon restarted (new segment or `write_index` went backwards).
    CameraRestart,
}

impl GapReason {
    /// Label for the `streaming_stream_gaps_total` metric.
    pub fn label(&self) -> &'static str {
        match self {
            GapReason::Overrun { .. } => "overrun",
            GapReason::Overwritten { .. } => "overwritten",
            GapReason::Malformed { .. } => "malformed",
            GapReason::CameraRestart => "camera_restart",
        }
    }
}

/// A frame the daemon wrote that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadError {
    EmptyFrame { index: u32, frame_number: u64 },
    TooLarge { index: u32, frame_number: u64, data_size: u64 },
    BadFormat { index: u32, frame_number: u64, format: i32 },
    NotAnnexB { index: u32, frame_number: u64, head: [u8; 4] },
}

impl ReadError {
    /// Label for the error metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ReadError::EmptyFrame { .. } => "empty",
            ReadError::TooLarge { .. } => "too_large",
            ReadError::BadFormat { .. } => "bad_format",
            ReadError::NotAnnexB { .. } => "not_annexb",
        }
    }

    fn index(&self) -> u32 {
        match *self {
            ReadError::EmptyFrame { index, .. }
            | ReadError::TooLarge { index, .. }
            | ReadError::BadFormat { index, .. }
            | ReadError::NotAnnexB { index, .. } => index,
        }
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slot = |index: u32| index % RING_BUFFER_SIZE;
        match *self {
            ReadError::EmptyFrame { index, frame_number } => {
                write!(f, "frame {frame_number} (index {index}, slot {}): data_size is 0", slot(index))
            }
            ReadError::TooLarge { index, frame_number, data_size } => write!(
                f,
                "frame {frame_number} (index {index}, slot {}): data_size {data_size} exceeds {MAX_FRAME_SIZE}",
                slot(index)
            ),
            ReadError::BadFormat { index, frame_number, format } => {
                write!(
                    f,
                    "frame {frame_number} (index {index}, slot {}): format {format} is neither H.264 (3) nor H.265 (4)",
                    slot(index)
                )
            }
            ReadError::NotAnnexB { index, frame_number, head } => write!(
                f,
                "frame {frame_number} (index {index}, slot {}): no Annex-B start code (starts {:02x?})",
                slot(index),
                head
            ),
        }
    }
}

impl std::error::Error for ReadError {}

/// Why the segment could not be attached.
#[derive(Debug)]
pub enum AttachError {
    Missing,
    Open(Errno),
    Stat(std::io::Error),
    WrongSize { actual: u64, expected: usize },
    Map(std::io::Error),
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachError::Missing => write!(f, "segment does not exist (camera daemon not running?)"),
            AttachError::Open(e) => write!(f, "shm_open failed: {e}"),
            AttachError::Stat(e) => write!(f, "fstat failed: {e}"),
            AttachError::WrongSize { actual, expected } => write!(
                f,
                "segment is {actual} bytes, expected {expected} (daemon still starting, or a different ABI layout: see -time-bits)"
            ),
            AttachError::Map(e) => write!(f, "mmap failed: {e}"),
        }
    }
}

/// A mapped camera segment. All access goes through raw pointers at
/// [`Layout`] offsets: the daemon writes this memory concurrently, so no Rust
/// reference into it is ever formed (except the atomics the protocol uses).
pub struct Segment {
    map: MmapMut,
    layout: Layout,
    inode: u64,
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment").field("inode", &self.inode).field("len", &self.map.len()).finish()
    }
}

fn shm_name(name: &str) -> CString {
    // A name with an interior NUL cannot exist; map it to one that cannot
    // be opened rather than panicking.
    CString::new(name).unwrap_or_else(|_| CString::from(c"/invalid-shm-name"))
}

impl Segment {
    /// Opens an existing segment read-write (the semaphore needs it).
    pub fn open(name: &str, layout: Layout) -> Result<Segment, AttachError> {
        let fd = match shm_open(shm_name(name).as_c_str(), OFlag::O_RDWR, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Err(AttachError::Missing),
            Err(e) => return Err(AttachError::Open(e)),
        };
        let file = File::from(fd);
        let meta = file.metadata().map_err(AttachError::Stat)?;
        if meta.len() != layout.segment_size as u64 {
            return Err(AttachError::WrongSize { actual: meta.len(), expected: layout.segment_size });
        }
        Segment::map(file, layout, meta.ino())
    }

    /// Creates a new segment like the daemon does (`O_CREAT|O_EXCL`, 0666,
    /// `ftruncate`, process-shared semaphore), replacing a stale one.
    pub fn create(name: &str, layout: Layout) -> Result<Segment, AttachError> {
        let cname = shm_name(name);
        let _ = shm_unlink(cname.as_c_str());
        let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
        let fd = shm_open(cname.as_c_str(), flags, Mode::from_bits_truncate(0o666)).map_err(AttachError::Open)?;
        nix::unistd::ftruncate(fd.as_fd(), layout.segment_size as libc::off_t).map_err(AttachError::Open)?;
        let file = File::from(fd);
        let inode = file.metadata().map_err(AttachError::Stat)?.ino();
        let segment = Segment::map(file, layout, inode)?;
        // SAFETY: the semaphore lies inside the mapping (offset from Layout,
        // mapping exactly segment_size long) and is initialised once, before
        // any reader can have seen a non-zero write_index.
        let rc = unsafe { libc::sem_init(segment.sem(), 1, 0) };
        if rc != 0 {
            return Err(AttachError::Open(Errno::last()));
        }
        Ok(segment)
    }

    fn map(file: File, layout: Layout, inode: u64) -> Result<Segment, AttachError> {
        // SAFETY: a shared mapping of another process's memory. It is only
        // accessed through raw pointers and atomics (see the type's doc);
        // the size was checked against the layout.
        let map =
            unsafe { memmap2::MmapOptions::new().len(layout.segment_size).map_mut(&file) }.map_err(AttachError::Map)?;
        Ok(Segment { map, layout, inode })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn inode(&self) -> u64 {
        self.inode
    }

    fn ptr(&self, offset: usize, len: usize) -> *mut u8 {
        // Every offset comes from Layout with a slot index below
        // RING_BUFFER_SIZE, so this holds for any segment content.
        assert!(offset + len <= self.map.len(), "offset {offset}+{len} outside the segment");
        // SAFETY: in bounds, checked above.
        unsafe { self.map.as_ptr().cast_mut().add(offset) }
    }

    fn write_index_atomic(&self) -> &AtomicU32 {
        // SAFETY: write_index is a 4-byte aligned u32 inside the mapping that
        // the daemon only changes with atomic operations.
        unsafe { AtomicU32::from_ptr(self.ptr(self.layout.write_index, 4).cast()) }
    }

    pub fn write_index(&self) -> u32 {
        self.write_index_atomic().load(Ordering::Acquire)
    }

    fn sem(&self) -> *mut libc::sem_t {
        self.ptr(self.layout.new_frame_sem, std::mem::size_of::<libc::sem_t>()).cast()
    }

    /// Waits for a post until `timeout` passes; true if one was taken.
    pub fn wait_post(&self, timeout: Duration) -> bool {
        let deadline = monotonic_now() + timeout;
        let ts = libc::timespec { tv_sec: deadline.as_secs() as libc::time_t, tv_nsec: deadline.subsec_nanos() as _ };
        extern "C" {
            // glibc >= 2.30; not in the libc crate for Linux. Unlike
            // sem_timedwait it is immune to wall-clock jumps.
            fn sem_clockwait(sem: *mut libc::sem_t, clock: libc::clockid_t, abstime: *const libc::timespec) -> i32;
        }
        // SAFETY: the semaphore is inside our mapping and was initialised by
        // the daemon (a zeroed one, seen during its start-up, is a valid
        // empty semaphore in glibc).
        unsafe { sem_clockwait(self.sem(), libc::CLOCK_MONOTONIC, &ts) == 0 }
    }

    /// Takes every pending post; returns how many.
    pub fn drain_posts(&self) -> u32 {
        let mut taken = 0;
        // SAFETY: as in wait_post.
        while unsafe { libc::sem_trywait(self.sem()) } == 0 {
            taken += 1;
        }
        taken
    }

    fn read_u64(&self, offset: usize) -> u64 {
        // SAFETY: in bounds (ptr checks) and 8-byte aligned per the C layout.
        unsafe { std::ptr::read_volatile(self.ptr(offset, 8).cast::<u64>()) }
    }

    fn read_i32(&self, offset: usize) -> i32 {
        // SAFETY: in bounds and 4-byte aligned per the C layout.
        unsafe { std::ptr::read_volatile(self.ptr(offset, 4).cast::<i32>()) }
    }

    fn read_signed(&self, offset: usize, size: usize) -> i64 {
        if size == 8 {
            self.read_u64(offset) as i64
        } else {
            i64::from(self.read_i32(offset))
        }
    }

    /// True if slot `index`'s header is all zero: never written.
    pub fn slot_is_blank(&self, index: u32) -> bool {
        let l = &self.layout;
        let slot = l.slot_offset(index);
        self.read_u64(slot + l.frame_number) == 0
            && self.read_i32(slot + l.format) == 0
            && self.read_signed(slot + l.data_size, l.size_t_size) == 0
    }

    /// Reads and checks slot `index`'s header, then copies its data once.
    /// The caller re-checks `write_index` afterwards for an overwrite.
    pub fn read_frame(&self, index: u32, format3: Codec) -> Result<RawFrame, ReadError> {
        let l = &self.layout;
        let slot = l.slot_offset(index);
        let frame_number = self.read_u64(slot + l.frame_number);
        let format = self.read_i32(slot + l.format);
        let data_size = self.read_signed(slot + l.data_size, l.size_t_size) as u64;
        let codec = match format {
            FORMAT_H264 => format3,
            FORMAT_H265 => Codec::H265,
            _ => return Err(ReadError::BadFormat { index, frame_number, format }),
        };
        if data_size == 0 {
            return Err(ReadError::EmptyFrame { index, frame_number });
        }
        if data_size > MAX_FRAME_SIZE as u64 {
            return Err(ReadError::TooLarge { index, frame_number, data_size });
        }
        let len = data_size as usize;
        let src = self.ptr(slot + l.data, len);
        let mut data = Vec::with_capacity(len);
        // SAFETY: src..src+len is inside the mapping (ptr checked it) and
        // `data` has capacity len; u8 has no invalid values, so bytes torn by
        // a concurrent writer are merely wrong, which the caller detects.
        unsafe {
            std::ptr::copy_nonoverlapping(src, data.as_mut_ptr(), len);
            data.set_len(len);
        }
        if !starts_with_start_code(&data) {
            let mut head = [0u8; 4];
            for (dst, src) in head.iter_mut().zip(&data) {
                *dst = *src;
            }
            return Err(ReadError::NotAnnexB { index, frame_number, head });
        }
        let read_time = monotonic_now();
        let tv_sec = self.read_signed(slot + l.timestamp, l.tv_sec_size);
        let tv_nsec = self.read_signed(slot + l.timestamp + l.tv_nsec, l.tv_nsec_size);
        // A nonsense stamp must not produce nonsense latencies: use the read time.
        let capture_time = if tv_sec >= 0 && (0..1_000_000_000).contains(&tv_nsec) {
            Duration::new(tv_sec as u64, tv_nsec as u32)
        } else {
            read_time
        };
        Ok(RawFrame {
            codec,
            data: Bytes::from(data),
            frame_number,
            index,
            capture_time,
            read_time,
            camera_id: self.read_i32(slot + l.camera_id),
            width: self.read_i32(slot + l.width),
            height: self.read_i32(slot + l.height),
        })
    }

    /// Writes one frame with the daemon's protocol (fake camera and tests).
    /// `before_data` runs between the header and the data copy, to widen the
    /// torn-read window in tests.
    pub fn write_frame(&self, frame: &WriteFrame<'_>, before_data: impl FnOnce()) -> u32 {
        let l = self.layout;
        let index = self.write_index_atomic().fetch_add(1, Ordering::SeqCst);
        let slot = l.slot_offset(index);
        let data_len = frame.data.len().min(MAX_FRAME_SIZE);
        // SAFETY: every write is inside the mapping (ptr checks bounds) at the
        // C layout's aligned offsets; this process is the only writer.
        unsafe {
            std::ptr::write_volatile(self.ptr(slot + l.frame_number, 8).cast::<u64>(), frame.frame_number);
            let ts = slot + l.timestamp;
            let nsec = i64::from(frame.capture_time.subsec_nanos());
            let sec = frame.capture_time.as_secs() as i64;
            if l.tv_sec_size == 8 {
                std::ptr::write_volatile(self.ptr(ts, 8).cast::<i64>(), sec);
            } else {
                std::ptr::write_volatile(self.ptr(ts, 4).cast::<i32>(), sec as i32);
            }
            if l.tv_nsec_size == 8 {
                std::ptr::write_volatile(self.ptr(ts + l.tv_nsec, 8).cast::<i64>(), nsec);
            } else {
                std::ptr::write_volatile(self.ptr(ts + l.tv_nsec, 4).cast::<i32>(), nsec as i32);
            }
            for (offset, value) in [
                (l.camera_id, frame.camera_id),
                (l.width, frame.width),
                (l.height, frame.height),
                (l.format, frame.format),
            ] {
                std::ptr::write_volatile(self.ptr(slot + offset, 4).cast::<i32>(), value);
            }
            if l.size_t_size == 8 {
                std::ptr::write_volatile(self.ptr(slot + l.data_size, 8).cast::<u64>(), frame.data_size);
            } else {
                std::ptr::write_volatile(self.ptr(slot + l.data_size, 4).cast::<u32>(), frame.data_size as u32);
            }
            before_data();
            std::ptr::copy_nonoverlapping(frame.data.as_ptr(), self.ptr(slot + l.data, data_len), data_len);
        }
        std::sync::atomic::fence(Ordering::Release);
        if frame.post {
            // SAFETY: the semaphore was initialised by Segment::create.
            unsafe { libc::sem_post(self.sem()) };
        }
        index
    }

    /// Sets `write_index` (the fake camera's wrap-around tests).
    pub fn set_write_index(&self, value: u32) {
        self.write_index_atomic().store(value, Ordering::SeqCst);
    }

    /// Removes the segment's name, as the daemon does when it exits.
    pub fn unlink(name: &str) {
        let _ = shm_unlink(shm_name(name).as_c_str());
    }
}

/// One frame for [`Segment::write_frame`]. `data_size` is separate from
/// `data` so tests can write lying headers.
#[derive(Clone, Debug)]
pub struct WriteFrame<'a> {
    pub frame_number: u64,
    pub capture_time: Duration,
    pub camera_id: i32,
    pub width: i32,
    pub height: i32,
    pub format: i32,
    pub data_size: u64,
    pub data: &'a [u8],
    pub post: bool,
}

/// The inode the name points at now, if any.
fn current_inode(name: &str) -> Option<u64> {
    let fd = shm_open(shm_name(name).as_c_str(), OFlag::O_RDONLY, Mode::empty()).ok()?;
    File::from(fd).metadata().ok().map(|meta| meta.ino())
}

/// `a` comes before `b` in wrapping `write_index` arithmetic.
fn before(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) > 0
}

/// Knows which frames are complete. Sans-IO: the reader passes in what it
/// observed (write_index, whether it took a post, posts it drained) and the
/// time.
///
/// The writer does, per frame k: fetch_add (write_index becomes k+1), copy,
/// post(k). So the number of posts made, P, is the number of complete
/// frames, and P is write_index - 1 or write_index. Counting posts gives P
/// up to a constant (`base`), pinned in one of two ways:
/// - exactly: once the reader has seen write_index == W and drained every
///   pending post, post(W-2) is behind it (it came before fetch_add(W-1));
///   so a post taken while write_index still reads W is post(W-1): P == W.
/// - by timing, until pinned exactly: write_index standing still for
///   [`SETTLE_TIME`] after the reader looked means the copy is done (a
///   frame copy is far faster than that).
///
/// Once pinned, counting is exact while this reader gets every post. If
/// other processes take posts it undercounts, and frames are handed on
/// when the next one starts (one frame late, never torn); if no post comes
/// for [`POSTS_ABSENT_AFTER`], timing takes over again.
#[derive(Debug)]
struct Completion {
    /// `base + posts` = frames posted (a lower bound until pinned).
    base: u32,
    posts: u32,
    pinned: bool,
    /// write_index when pending posts were last drained.
    armed_index: u32,
    last_index: u32,
    index_changed_at: Instant,
    last_post_at: Instant,
}

/// Without posts for this long, the reader stops counting on them.
const POSTS_ABSENT_AFTER: Duration = Duration::from_secs(1);

impl Completion {
    /// `write_index` was read, then pending posts were drained.
    fn new(write_index: u32, now: Instant) -> Completion {
        Completion {
            // Pessimistic: frame write_index - 1 may still be in its copy.
            // Except on a fresh segment, where no frame was ever started.
            base: if write_index == 0 { 0 } else { write_index.wrapping_sub(1) },
            posts: 0,
            pinned: write_index == 0,
            armed_index: write_index,
            last_index: write_index,
            index_changed_at: now,
            last_post_at: now,
        }
    }

    /// True if the reader must drain pending posts (and pass their count to
    /// [`Completion::update`]) before trusting the next post.
    fn needs_drain(&self, write_index: u32) -> bool {
        write_index != self.armed_index
    }

    fn set_posted(&mut self, posted: u32) {
        self.base = posted.wrapping_sub(self.posts);
    }

    /// Frames before the returned index are complete.
    fn update(&mut self, write_index: u32, took_post: bool, drained: u32, now: Instant) -> u32 {
        if took_post || drained > 0 {
            self.last_post_at = now;
        } else if self.posts_absent(now) {
            self.pinned = false;
        }
        self.posts = self.posts.wrapping_add(u32::from(took_post)).wrapping_add(drained);
        if write_index != self.last_index {
            self.last_index = write_index;
            self.index_changed_at = now;
        }
        if write_index != self.armed_index {
            self.armed_index = write_index;
        } else if took_post {
            self.set_posted(write_index);
            self.pinned = true;
        }
        let mut posted = self.base.wrapping_add(self.posts);
        if before(write_index, posted) {
            // More posts than frames started: the count was one too high.
            self.set_posted(write_index);
            posted = write_index;
        }
        if posted != write_index && self.may_settle(now) && now.duration_since(self.index_changed_at) >= SETTLE_TIME {
            self.set_posted(write_index);
            self.pinned = true;
            posted = write_index;
        }
        let floor = write_index.wrapping_sub(1);
        if before(floor, posted) {
            posted
        } else {
            floor
        }
    }

    fn posts_absent(&self, now: Instant) -> bool {
        now.duration_since(self.last_post_at) >= POSTS_ABSENT_AFTER
    }

    /// Timing may mark the newest frame complete only while the count is not
    /// pinned, and only once a post has been seen (the frame it came with is
    /// then almost surely done) or posts have stopped coming. Before any
    /// post, a frame caught mid-copy at attach is left to its post.
    fn may_settle(&self, now: Instant) -> bool {
        !self.pinned && (self.posts > 0 || self.posts_absent(now))
    }

    /// How long the reader may sleep on the semaphore: short while only
    /// timing can tell that the newest frame is complete.
    fn next_wait(&self, complete_end: u32, now: Instant) -> Duration {
        if complete_end != self.last_index && self.may_settle(now) {
            SETTLE_TIME
        } else {
            IDLE_WAIT
        }
    }
}

/// Why [`follow`] returned.
enum FollowEnd {
    Shutdown,
    Reattach,
}

/// Reader configuration.
#[derive(Clone, Debug)]
pub struct ReaderConfig {
    pub name: String,
    pub layout: Layout,
    /// What `format` 3 means: H.264, or H.265 for an older daemon that
    /// writes H.265 but says 3 (the path's `codec: h265`).
    pub format3: Codec,
}

/// Reads the camera's ring until shutdown, re-attaching across daemon
/// restarts, and calls `sink` for every event. Runs on the calling thread.
pub fn run(
    config: &ReaderConfig,
    shutdown: &Shutdown,
    metrics: &Metrics,
    status: &SourceStatus,
    mut sink: impl FnMut(ReaderEvent),
) {
    log::info!("camera segment {}: reading with layout {}", config.name, config.layout.describe());
    let mut last_error: Option<String> = None;
    let mut ever_attached = false;
    while !shutdown.is_triggered() {
        let segment = match Segment::open(&config.name, config.layout) {
            Ok(segment) => segment,
            Err(error) => {
                // One line per distinct problem, not one per retry.
                let text = error.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    match error {
                        AttachError::Missing => log::info!("camera segment {}: waiting ({text})", config.name),
                        _ => {
                            log::warn!("camera segment {}: {text}; retrying", config.name);
                            status.set_error(text.clone());
                        }
                    }
                    last_error = Some(text);
                }
                shutdown.wait_timeout(ATTACH_RETRY);
                continue;
            }
        };
        last_error = None;
        log::info!("camera segment {}: attached (inode {})", config.name, segment.inode());
        if ever_attached {
            metrics.camera_restarts.inc();
            status.restarts.fetch_add(1, Ordering::Relaxed);
        }
        ever_attached = true;
        status.attached.store(true, Ordering::Relaxed);
        metrics.camera_attached.set(1);
        sink(ReaderEvent::Attached);
        let end = follow(&segment, config, shutdown, metrics, status, &mut sink);
        status.attached.store(false, Ordering::Relaxed);
        metrics.camera_attached.set(0);
        sink(ReaderEvent::Detached);
        match end {
            FollowEnd::Shutdown => break,
            FollowEnd::Reattach => {
                metrics.gap(GapReason::CameraRestart.label());
                sink(ReaderEvent::Gap(GapReason::CameraRestart));
            }
        }
    }
}

fn follow(
    segment: &Segment,
    config: &ReaderConfig,
    shutdown: &Shutdown,
    metrics: &Metrics,
    status: &SourceStatus,
    sink: &mut impl FnMut(ReaderEvent),
) -> FollowEnd {
    let mut bad_frame_log = RateLimiter::new(Duration::from_secs(5));
    let mut gap_log = RateLimiter::new(Duration::from_secs(5));
    // Read write_index, then drop posts made before: see Completion.
    let start = segment.write_index();
    segment.drain_posts();
    let mut completion = Completion::new(start, Instant::now());
    let mut next = start.wrapping_sub(start.min(PREROLL_ON_ATTACH));
    let mut identity_checked = Instant::now();
    let mut wait = Duration::ZERO;
    loop {
        if shutdown.is_triggered() {
            return FollowEnd::Shutdown;
        }
        let took_post = segment.wait_post(wait);
        let now = Instant::now();
        let write_index = segment.write_index();
        let drained = if completion.needs_drain(write_index) { segment.drain_posts() } else { 0 };
        if before(write_index, next) {
            log::warn!(
                "camera segment {}: write_index went back from {} to {write_index}: camera restarted",
                config.name,
                next
            );
            return FollowEnd::Reattach;
        }
        if now.duration_since(identity_checked) >= IDENTITY_CHECK_EVERY {
            identity_checked = now;
            match current_inode(&config.name) {
                Some(inode) if inode == segment.inode() => {}
                Some(_) => {
                    log::warn!("camera segment {}: replaced by a new segment: camera restarted", config.name);
                    return FollowEnd::Reattach;
                }
                None => {
                    log::warn!("camera segment {}: unlinked: camera daemon stopped", config.name);
                    return FollowEnd::Reattach;
                }
            }
        }
        let complete_end = completion.update(write_index, took_post, drained, now);
        // Frame k's slot is rewritten once the writer starts frame k + RING.
        let oldest_safe = write_index.wrapping_sub(RING_BUFFER_SIZE);
        if before(next, oldest_safe) {
            let newest = complete_end.wrapping_sub(1);
            let lost = newest.wrapping_sub(next);
            warn_limited!(
                gap_log,
                "camera segment {}: reader fell behind the ring, skipped {lost} frames",
                config.name
            );
            report_gap(metrics, sink, GapReason::Overrun { lost }, u64::from(lost));
            next = newest;
        }
        while before(next, complete_end) {
            let index = next;
            next = next.wrapping_add(1);
            match segment.read_frame(index, config.format3) {
                Ok(frame) => {
                    // The writer may have reached this slot during the copy.
                    // The fence keeps the copy's loads before the re-read of
                    // write_index: an acquire load orders only what follows
                    // it, so without the fence ARM may finish reading the
                    // slot after the check and miss a rewrite (the seqlock
                    // reader's rule).
                    std::sync::atomic::fence(Ordering::Acquire);
                    let after = segment.write_index();
                    if after.wrapping_sub(index) > RING_BUFFER_SIZE {
                        warn_limited!(
                            gap_log,
                            "camera segment {}: slot of index {index} rewritten while copying",
                            config.name
                        );
                        report_gap(metrics, sink, GapReason::Overwritten { index }, 1);
                        continue;
                    }
                    metrics.frames_read.inc();
                    status.frame_arrived(frame.frame_number, frame.width, frame.height, frame.camera_id);
                    sink(ReaderEvent::Frame(frame));
                }
                Err(error) if before(index, start) && segment.slot_is_blank(index) => {
                    // Read back on attach: a slot the writer never filled
                    // (still zero from ftruncate) is not an error.
                    log::debug!("camera segment {}: ignored unwritten slot on attach: {error}", config.name);
                }
                Err(error) => {
                    warn_limited!(bad_frame_log, "camera segment {}: dropped malformed {error}", config.name);
                    metrics.read_errors.inc();
                    metrics.frame_error("read", error.label());
                    report_gap(metrics, sink, GapReason::Malformed { index: error.index() }, 1);
                }
            }
        }
        wait = completion.next_wait(complete_end, now);
    }
}

fn report_gap(metrics: &Metrics, sink: &mut impl FnMut(ReaderEvent), reason: GapReason, lost: u64) {
    metrics.frames_dropped.inc_by(lost);
    metrics.gap(reason.label());
    sink(ReaderEvent::Gap(reason));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_order() {
        assert!(before(1, 2));
        assert!(before(u32::MAX, 0));
        assert!(!before(5, 5));
        assert!(!before(3, 2));
    }

    #[test]
    fn a_post_taken_while_the_index_stands_still_pins_the_count() {
        let t0 = Instant::now();
        // Attach while the writer copies frame 9 (write_index 10).
        let mut c = Completion::new(10, t0);
        assert_eq!(c.update(10, false, 0, t0), 9, "frame 9 may be torn");
        // Its post arrives with write_index unchanged: frame 9 is complete.
        assert_eq!(c.update(10, true, 0, t0), 10);
        // Frame 10 starts and takes 50 ms: counting now waits for its post.
        assert!(c.needs_drain(11));
        assert_eq!(c.update(11, false, 0, t0), 10);
        assert_eq!(c.next_wait(10, t0), IDLE_WAIT);
        assert_eq!(c.update(11, false, 0, t0 + Duration::from_millis(50)), 10);
        assert_eq!(c.update(11, true, 0, t0 + Duration::from_millis(51)), 11);
    }

    #[test]
    fn attaching_to_an_idle_writer_settles_once_then_counts() {
        let t0 = Instant::now();
        // Writer idle at attach: frame 9 was complete and posted (drained).
        let mut c = Completion::new(10, t0);
        assert_eq!(c.update(10, false, 0, t0), 9, "unknown yet, so pessimistic");
        // Frame 10 starts and is posted before the reader looks.
        assert_eq!(c.update(11, true, 0, t0), 10);
        assert_eq!(c.next_wait(10, t0), SETTLE_TIME);
        assert_eq!(c.update(11, false, 0, t0 + SETTLE_TIME), 11, "settled: pinned by timing");
        // From now on each post says it at once.
        assert_eq!(c.update(12, true, 0, t0 + SETTLE_TIME * 3), 12);
        assert_eq!(c.update(13, true, 0, t0 + SETTLE_TIME * 5), 13);
    }

    #[test]
    fn a_fresh_segment_needs_no_settling() {
        let t0 = Instant::now();
        let mut c = Completion::new(0, t0);
        assert_eq!(c.update(1, true, 0, t0), 1);
    }

    #[test]
    fn a_count_one_too_high_is_corrected_by_the_next_post() {
        let t0 = Instant::now();
        let mut c = Completion::new(10, t0);
        // A post arrives together with frame 10's start; it was really
        // frame 9's, and frame 10's copy outlasts the settle time: the
        // timing guess takes frame 10 early.
        assert_eq!(c.update(11, true, 0, t0), 10);
        assert_eq!(c.update(11, false, 0, t0 + SETTLE_TIME), 11);
        // Frame 10's post arrives: one more than frames started, so re-based.
        assert_eq!(c.update(11, true, 0, t0 + Duration::from_millis(20)), 11);
        assert_eq!(c.update(12, false, 0, t0 + Duration::from_millis(40)), 11);
        assert_eq!(c.update(12, true, 0, t0 + Duration::from_millis(41)), 12);
    }

    #[test]
    fn a_frame_caught_mid_copy_at_attach_waits_for_its_post() {
        let t0 = Instant::now();
        let mut c = Completion::new(5, t0);
        assert_eq!(c.update(5, false, 0, t0), 4);
        assert_eq!(c.next_wait(4, t0), IDLE_WAIT, "no timing guess before any post");
        assert_eq!(c.update(5, false, 0, t0 + Duration::from_millis(50)), 4);
        assert_eq!(c.update(5, true, 0, t0 + Duration::from_millis(51)), 5);
    }

    #[test]
    fn without_posts_the_newest_frame_completes_once_the_index_settles() {
        let t0 = Instant::now();
        let mut c = Completion::new(5, t0);
        let t1 = t0 + POSTS_ABSENT_AFTER;
        assert_eq!(c.update(6, false, 0, t1), 5);
        assert_eq!(c.next_wait(5, t1), SETTLE_TIME);
        assert_eq!(c.update(6, false, 0, t1 + SETTLE_TIME / 2), 5);
        assert_eq!(c.update(6, false, 0, t1 + SETTLE_TIME), 6);
        assert_eq!(c.next_wait(6, t1 + SETTLE_TIME), IDLE_WAIT);
        let t2 = t1 + POSTS_ABSENT_AFTER * 2;
        assert_eq!(c.update(7, false, 0, t2), 6);
        assert_eq!(c.update(7, false, 0, t2 + SETTLE_TIME), 7);
    }

    #[test]
    fn posts_drained_on_an_index_change_still_count() {
        let t0 = Instant::now();
        let mut c = Completion::new(3, t0);
        c.update(3, true, 0, t0); // pinned: P = 3
                                  // The reader was slow: frames 3 and 4 were both written and posted
                                  // before it looked again.
        assert!(c.needs_drain(5));
        assert_eq!(c.update(5, false, 2, t0), 5);
    }

    #[test]
    fn completion_handles_wrap_around() {
        let t0 = Instant::now();
        let mut c = Completion::new(u32::MAX, t0);
        assert_eq!(c.update(u32::MAX, false, 0, t0), u32::MAX - 1);
        assert_eq!(c.update(u32::MAX, true, 0, t0), u32::MAX);
        assert_eq!(c.update(0, false, 0, t0), u32::MAX);
        assert_eq!(c.update(0, true, 0, t0), 0);
        assert_eq!(c.update(1, true, 0, t0), 1);
    }
}
