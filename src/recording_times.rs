//! Capture-time sidecars: when each frame of a recording was captured.
//!
//! A raw Annex-B file has no timestamps, and it must stay exactly the
//! elementary stream ffplay, mpv and VLC play. So beside each recording
//! `recording_X.h264` the recorder keeps the hidden file
//! `.recording_X.h264.times`:
//!
//! ```text
//! header (96 bytes, little-endian)
//!   0  magic "SSTIMES1"
//!   8  i64 wall clock of the anchor, microseconds since the Unix epoch
//!  16  i64 CLOCK_MONOTONIC of the anchor, microseconds (the clock of capture times)
//!  24  u32 segment number of this file in its recording (1 for the first)
//!  28  u32 reserved (0)
//!  32  64 bytes: the recording's first file name, NUL-padded
//! records (16 bytes each, one per access unit written, in file order)
//!   0  u64 byte offset of the access unit in the recording
//!   8  u64 capture time, CLOCK_MONOTONIC microseconds
//! ```
//!
//! Writer ([`TimesWriter`], the recorder's writer thread): the header when
//! the file is created, a record right after each access unit is written
//! whole, `fdatasync` together with the recording's own syncs. The sidecar
//! is metadata: an I/O error on it is logged and ends the sidecar only
//! (later frames get estimated times), never the recording. It is bounded:
//! at most [`MAX_RECORDS`] records (16 MiB, 9.7 h at 30 fps); frames past
//! that get estimated times too.
//!
//! Reader ([`read_summary`], [`read_captures`]): untrusted bytes (a file
//! may be cut by a crash, copied, or edited). A bad magic or a short header
//! is "no sidecar"; a torn last record is ignored; a record is used only
//! where its offset is the start of an indexed access unit, so records of
//! data a crash lost, or of a different file, time nothing.
//!
//! Fallback when a file has no (usable) sidecar: the file name's local
//! time stamp for the start, and the SPS's VUI frame rate (else 30 fps) for
//! frame durations ([`crate::recordings`] reports which was used).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub const MAGIC: &[u8; 8] = b"SSTIMES1";
pub const HEADER_LEN: u64 = 96;
pub const RECORD_LEN: u64 = 16;
/// Records a sidecar holds at most (16 MiB of records).
pub const MAX_RECORDS: u64 = 1 << 20;
const NAME_FIELD: usize = 64;

/// The sidecar's name for a recording file name.
pub fn sidecar_name(recording: &str) -> String {
    format!(".{recording}.times")
}

/// The sidecar's path for a recording's path.
pub fn sidecar_path(recording: &Path) -> PathBuf {
    let name = recording.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    recording.with_file_name(sidecar_name(&name))
}

/// What a sidecar says about its recording as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The wall clock and CLOCK_MONOTONIC read at the same moment: maps
    /// capture times to wall time.
    pub wall_anchor_us: i64,
    pub mono_anchor_us: i64,
    /// 1 for a recording's first file, 2 for the next segment, ...
    pub segment: u32,
    /// The file name of the recording's first segment.
    pub recording: String,
}

impl Header {
    /// A header anchored now.
    pub fn now(segment: u32, recording: &str) -> Header {
        let wall = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let mono = crate::clock::monotonic_now();
        Header {
            wall_anchor_us: wall.as_micros() as i64,
            mono_anchor_us: mono.as_micros() as i64,
            segment,
            recording: recording.to_string(),
        }
    }

    fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut out = [0u8; HEADER_LEN as usize];
        out[..8].copy_from_slice(MAGIC);
        out[8..16].copy_from_slice(&self.wall_anchor_us.to_le_bytes());
        out[16..24].copy_from_slice(&self.mono_anchor_us.to_le_bytes());
        out[24..28].copy_from_slice(&self.segment.to_le_bytes());
        let name = self.recording.as_bytes();
        let n = name.len().min(NAME_FIELD);
        out[32..32 + n].copy_from_slice(&name[..n]);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Header> {
        if bytes.len() < HEADER_LEN as usize || &bytes[..8] != MAGIC {
            return None;
        }
        let i64_at = |at: usize| i64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
        let name = &bytes[32..32 + NAME_FIELD];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(NAME_FIELD)];
        Some(Header {
            wall_anchor_us: i64_at(8),
            mono_anchor_us: i64_at(16),
            segment: u32::from_le_bytes(bytes[24..28].try_into().unwrap_or_default()),
            recording: String::from_utf8_lossy(name).into_owned(),
        })
    }

    /// The wall time of a capture time.
    pub fn wall_time(&self, capture_us: u64) -> SystemTime {
        let micros = self.wall_anchor_us.saturating_add((capture_us as i64).saturating_sub(self.mono_anchor_us));
        SystemTime::UNIX_EPOCH + Duration::from_micros(micros.max(0) as u64)
    }
}

/// One access unit: where it starts in the recording, when it was captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub capture_us: u64,
}

impl Record {
    fn decode(bytes: &[u8]) -> Record {
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
        Record { offset: u64_at(0), capture_us: u64_at(8) }
    }
}

/// Appends records to one recording's sidecar; owned by its writer thread.
#[derive(Debug)]
pub struct TimesWriter {
    /// None once the sidecar failed or is full: nothing more is written.
    file: Option<File>,
    path: PathBuf,
    records: u64,
    dirty: bool,
}

impl TimesWriter {
    /// Creates the sidecar of `recording` (a file just created in `dir`)
    /// with its header. A stale sidecar of that name (left by a recording
    /// deleted by hand) is replaced. An error here is the caller's to log:
    /// the recording goes on without times.
    pub fn create(dir: &Path, recording: &str, header: &Header) -> io::Result<TimesWriter> {
        let path = dir.join(sidecar_name(recording));
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&path)?;
        file.write_all(&header.encode())?;
        Ok(TimesWriter { file: Some(file), path, records: 0, dirty: true })
    }

    /// A writer that writes nothing (the sidecar could not be created).
    pub fn none(dir: &Path, recording: &str) -> TimesWriter {
        TimesWriter { file: None, path: dir.join(sidecar_name(recording)), records: 0, dirty: false }
    }

    /// Records the access unit just written whole at `offset`.
    pub fn record(&mut self, offset: u64, capture: Duration) {
        let Some(file) = &mut self.file else { return };
        if self.records >= MAX_RECORDS {
            log::warn!(
                "recording: {} is full ({MAX_RECORDS} frames); later frames get estimated times",
                self.path.display()
            );
            self.file = None;
            return;
        }
        let mut bytes = [0u8; RECORD_LEN as usize];
        bytes[..8].copy_from_slice(&offset.to_le_bytes());
        bytes[8..].copy_from_slice(&(capture.as_micros() as u64).to_le_bytes());
        match file.write_all(&bytes) {
            Ok(()) => {
                self.records += 1;
                self.dirty = true;
            }
            Err(e) => self.abandon("write", &e),
        }
    }

    /// `fdatasync`, alongside the recording's own.
    pub fn sync(&mut self) {
        let Some(file) = &self.file else { return };
        if !self.dirty {
            return;
        }
        match file.sync_data() {
            Ok(()) => self.dirty = false,
            Err(e) => self.abandon("fdatasync", &e),
        }
    }

    /// Deletes the sidecar (its recording was renamed while still empty).
    pub fn remove(self) {
        if self.file.is_some() {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log::warn!("recording: cannot delete {}: {e}", self.path.display());
            }
        }
    }

    fn abandon(&mut self, op: &str, error: &io::Error) {
        log::warn!("recording: {op} {}: {error}; later frames of this file get estimated times", self.path.display());
        self.file = None;
    }
}

/// Header, record count, first and last record of a sidecar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub header: Header,
    pub records: u64,
    pub first: Option<Record>,
    pub last: Option<Record>,
}

impl Summary {
    /// The recording's duration from its capture times: first to last
    /// frame, plus one mean frame interval for the last frame. None with
    /// fewer than two records.
    pub fn duration(&self) -> Option<Duration> {
        let (first, last) = (self.first?, self.last?);
        let span = last.capture_us.checked_sub(first.capture_us)?;
        let intervals = self.records.checked_sub(1).filter(|&n| n > 0)?;
        Some(Duration::from_micros(span + span / intervals))
    }
}

/// Reads a sidecar's header and its first and last records (three small
/// reads, whatever its length). `Ok(None)`: no usable sidecar.
pub fn read_summary(file: &mut File) -> io::Result<Option<Summary>> {
    let mut header = [0u8; HEADER_LEN as usize];
    if read_full(file, &mut header)? < header.len() {
        return Ok(None);
    }
    let Some(header) = Header::decode(&header) else { return Ok(None) };
    let len = file.metadata()?.len();
    let records = (len.saturating_sub(HEADER_LEN) / RECORD_LEN).min(MAX_RECORDS);
    let mut read_record = |i: u64| -> io::Result<Option<Record>> {
        let mut bytes = [0u8; RECORD_LEN as usize];
        file.seek(SeekFrom::Start(HEADER_LEN + i * RECORD_LEN))?;
        Ok((read_full(file, &mut bytes)? == bytes.len()).then(|| Record::decode(&bytes)))
    };
    let first = if records > 0 { read_record(0)? } else { None };
    let last = if records > 0 { read_record(records - 1)? } else { None };
    Ok(Some(Summary { header, records, first, last }))
}

/// The capture time of each access unit starting at `starts[i]` (ascending
/// source offsets), from a sidecar read in one pass; None where no record
/// names that offset. Also the header. `Ok(None)`: no usable sidecar.
pub fn read_captures(file: &mut File, starts: &[u64]) -> io::Result<Option<(Header, Vec<Option<u64>>)>> {
    let mut header = [0u8; HEADER_LEN as usize];
    if read_full(file, &mut header)? < header.len() {
        return Ok(None);
    }
    let Some(header) = Header::decode(&header) else { return Ok(None) };
    let mut captures = vec![None; starts.len()];
    let mut reader = io::BufReader::with_capacity(64 * 1024, file.take(MAX_RECORDS * RECORD_LEN));
    let mut next = 0; // the first access unit not yet matched
    let mut bytes = [0u8; RECORD_LEN as usize];
    while next < starts.len() && read_full(&mut reader, &mut bytes)? == bytes.len() {
        let record = Record::decode(&bytes);
        // Both lists ascend: skip access units this record is past.
        while next < starts.len() && starts[next] < record.offset {
            next += 1;
        }
        if next < starts.len() && starts[next] == record.offset {
            captures[next] = Some(record.capture_us);
            next += 1;
        }
    }
    Ok(Some((header, captures)))
}

/// Reads until `buf` is full or the end; how many bytes were read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match reader.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Sample durations in `timescale` ticks for access units with these
/// capture times (microseconds; None where unknown): the difference to
/// the next frame's capture where both are known and increase, else the
/// mean interval of the known ones (else `nominal_us`). Tick positions
/// are rounded from the capture times themselves, so durations add up to
/// the captured span without drift. Every duration is at least 1 tick.
pub fn durations(captures: &[Option<u64>], nominal_us: u64, timescale: u32) -> Vec<u32> {
    let known: Vec<(usize, u64)> = captures.iter().enumerate().filter_map(|(i, c)| c.map(|c| (i, c))).collect();
    let mean_us = match (known.first(), known.last()) {
        (Some(&(i0, c0)), Some(&(i1, c1))) if i1 > i0 && c1 > c0 => (c1 - c0) / (i1 - i0) as u64,
        _ => nominal_us,
    }
    .max(1);
    let ticks = |us: u64| ((u128::from(us) * u128::from(timescale) + 500_000) / 1_000_000) as u64;
    let clamp = |t: u64| t.clamp(1, u64::from(u32::MAX)) as u32;
    (0..captures.len())
        .map(|i| match (captures[i], captures.get(i + 1).copied().flatten()) {
            (Some(now), Some(next)) if next > now => clamp(ticks(next) - ticks(now)),
            _ => clamp(ticks(mean_us)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_sidecar_reads_back_and_maps_to_wall_time() {
        let dir = tempfile::tempdir().unwrap();
        let header = Header::now(2, "recording_20250101_000000.h264");
        let mut writer = TimesWriter::create(dir.path(), "recording_20250101_000010.h264", &header).unwrap();
        for i in 0..4u64 {
            writer.record(i * 1000, Duration::from_micros(5_000_000 + i * 33_333));
        }
        writer.sync();
        let path = dir.path().join(".recording_20250101_000010.h264.times");
        assert_eq!(sidecar_path(&dir.path().join("recording_20250101_000010.h264")), path);
        let summary = read_summary(&mut File::open(&path).unwrap()).unwrap().unwrap();
        assert_eq!(summary.header, header);
        assert_eq!(summary.records, 4);
        assert_eq!(summary.first, Some(Record { offset: 0, capture_us: 5_000_000 }));
        assert_eq!(summary.last.unwrap().offset, 3000);
        assert_eq!(summary.duration(), Some(Duration::from_micros(133_332)));
        let wall = header.wall_time(header.mono_anchor_us as u64 + 1_500_000);
        let anchor = SystemTime::UNIX_EPOCH + Duration::from_micros(header.wall_anchor_us as u64);
        assert_eq!(wall.duration_since(anchor).unwrap(), Duration::from_millis(1500));
        // A torn last record is not read; an offset no access unit starts
        // at times nothing.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(&[1, 2, 3]).unwrap();
        let (_, captures) =
            read_captures(&mut File::open(&path).unwrap(), &[0, 1000, 1500, 3000, 4000]).unwrap().unwrap();
        assert_eq!(captures, [Some(5_000_000), Some(5_033_333), None, Some(5_099_999), None]);
    }

    #[test]
    fn garbage_is_no_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        for bytes in [&b""[..], b"SSTIMES1", &[0u8; 200]] {
            std::fs::write(&path, bytes).unwrap();
            assert_eq!(read_summary(&mut File::open(&path).unwrap()).unwrap(), None);
            assert_eq!(read_captures(&mut File::open(&path).unwrap(), &[0]).unwrap(), None);
        }
    }

    #[test]
    fn durations_follow_capture_times_and_fill_gaps_with_the_mean() {
        // 30 fps with a late frame, a lost record, and a clock step back;
        // unknown or backwards steps get the mean interval.
        let c = [Some(0), Some(33_333), Some(80_000), None, Some(133_333), Some(100_000), Some(166_666)];
        let d = durations(&c, 40_000, 90_000);
        // The mean interval: 166666 us / 6 = 27777 us = 2500 ticks.
        assert_eq!(d, [3000, 4200, 2500, 2500, 2500, 6000, 2500]);
        assert_eq!(durations(&[None, None], 40_000, 90_000), [3600, 3600], "nothing known: the nominal rate");
        assert_eq!(durations(&[Some(5), Some(5)], 40_000, 90_000), [3600, 3600]);
    }
}
