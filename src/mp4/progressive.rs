//! A raw Annex-B recording served as a faststart MP4, produced on the fly.
//!
//! [`scan`] reads a `.h264`/`.h265` file once, in 256 KiB chunks (start
//! codes found by [`crate::codec::annexb::StartCodes`], access units
//! delimited by [`Codec::starts_access_unit`]), and
//! keeps per access unit only its source offset, its MP4 sample size and
//! whether it is a keyframe ([`Index`]: 12 bytes a frame, plus 4 a
//! keyframe, plus the parameter sets). [`Layout::new`] turns an index and
//! a [`Timing`] into the virtual file `ftyp` + `moov` + `mdat` (moov first,
//! so a browser can play and seek before the rest arrives), holding only
//! the header bytes (ftyp, moov, mdat header: about 4 bytes a frame, for
//! stsz) and the chunk offsets. [`Layout::read_at`] fills any byte range
//! of that file: header bytes from the prebuilt buffer, sample bytes by
//! reading the access unit from the source and converting it (see
//! [`super::sample`] for which NAL units are kept). So an HTTP server answers any `Range`
//! request without building the file; [`Layout::reader`] gives a
//! `Read + Seek` view for sequential serving (it converts each access
//! unit once however the reads are cut). An ETag is the caller's: e.g.
//! source path + size + mtime.
//!
//! In: the source file (`Read + Seek` to scan, [`ReadAt`] to serve) and
//! its codec (from the file extension, [`Codec::from_extension`]). Out:
//! [`Index`], [`Layout`], bytes.
//! Bad input, as [`Error`]s from `scan`:
//! - no start code or no picture: `NoAccessUnits`;
//! - first access unit not a keyframe: `StartsWithNonKeyframe`;
//! - first access unit without SPS/PPS (and VPS for H.265), or ones that
//!   do not parse: `MissingParameterSets` / `BadParameterSet`;
//! - B-frames (an H.264 B slice, or an H.265 SPS allowing reordering):
//!   `Unsupported`, as decode order would not be display order and this
//!   module writes no composition offsets;
//! - an access unit over [`MAX_ACCESS_UNIT_BYTES`]: `AccessUnitTooLarge`
//!   (bounds what one `read_at` holds in memory).
//!
//! Which access units are indexed: in an Annex-B stream an access unit
//! ends where the next begins, so the last one's end is unknown while a
//! file grows. With [`ScanOptions::growing`] (the recording being
//! written, or a file that may end in a torn write) the last access unit
//! is left out: every indexed one is followed by the start of another, so
//! it is whole. Without it (a closed recording: the recorder only ever
//! extends files by whole access units and cuts them back to one on
//! error) the last access unit runs to the end of the file, and is left
//! out only if it has no picture. A later scan of a longer file indexes
//! more frames; indexed bytes never change, so earlier ranges stay valid.
//!
//! A change of parameter sets (any SPS/PPS/VPS not byte-identical to the
//! first ones) ends the index before the access unit that carries it,
//! with [`Index::continues_at`] set: the rest is another MP4 (scan again
//! from that offset), as one sample entry describes one set.
//!
//! `read_at` re-reads the source. If the file was cut, the read fails; if
//! the indexed bytes changed so that a converted sample's size differs
//! from the index (NAL units moved: a different file under the same
//! name), it fails with `InvalidData` rather than serve a corrupt MP4. A
//! same-size rewrite cannot be seen: key caches and ETags on size + mtime.

use std::io::{self, Read, Seek, SeekFrom};

use mp4_atom::{Co64, Stbl, Stco, Stsc, StscEntry, Stss, Stsz, StszSamples, Stts, SttsEntry};

use super::boxes as moov;
use super::sample::{copy_sample_range, keep_in_sample};
use super::sample_entry::{ParameterSetList, TrackConfig};
use super::{Error, TIMESCALE};
use crate::codec::annexb::{StartCode, StartCodes};
use crate::codec::{h264, Codec, VideoInfo};

/// Read size of [`scan`].
pub const CHUNK_SIZE: usize = 256 * 1024;
/// The largest access unit accepted (a 4K keyframe is a few MiB).
pub const MAX_ACCESS_UNIT_BYTES: u64 = 64 << 20;
/// Samples per MP4 chunk (stsc/stco): with one track and samples back to
/// back any grouping is valid; 32 keeps stco small (4-8 bytes per 32
/// samples) and lets [`Layout::read_at`] find a sample by binary search on
/// chunk offsets plus at most 31 additions.
pub const SAMPLES_PER_CHUNK: usize = 32;
/// Bytes of a NAL unit kept while scanning: enough for the NAL header and
/// the slice-header fields looked at.
const HEAD_BYTES: usize = 32;
/// Parameter sets longer than this cannot go into an avcC/hvcC.
const MAX_PARAMETER_SET: usize = u16::MAX as usize;

/// How to scan.
#[derive(Clone, Debug)]
pub struct ScanOptions {
    pub codec: Codec,
    /// Where the stream starts in the file (0, or an
    /// [`Index::continues_at`] offset).
    pub start_offset: u64,
    /// The file may still be written to (or end in a torn write): leave out
    /// its last access unit. See the module doc.
    pub growing: bool,
    /// Bytes per read (default [`CHUNK_SIZE`]).
    pub chunk_size: usize,
}

impl ScanOptions {
    pub fn new(codec: Codec) -> ScanOptions {
        ScanOptions { codec, start_offset: 0, growing: false, chunk_size: CHUNK_SIZE }
    }
}

/// Where each access unit of a recording is and what it becomes.
#[derive(Clone, Debug)]
pub struct Index {
    pub codec: Codec,
    /// The parameter sets of the first access unit (all of this index's).
    pub parameter_sets: ParameterSetList,
    /// Source offset of each access unit, and one past the last one's end
    /// (so access unit i is `offsets[i]..offsets[i + 1]`).
    offsets: Vec<u64>,
    /// MP4 sample size of each access unit.
    sizes: Vec<u32>,
    /// Indices of keyframes (sync samples), ascending.
    sync: Vec<u32>,
    /// Set when the parameter sets changed: the offset of the first access
    /// unit not indexed, where the next MP4 of this file starts.
    pub continues_at: Option<u64>,
}

/// One indexed access unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub source_offset: u64,
    pub source_len: u64,
    pub sample_size: u32,
    pub is_sync: bool,
}

impl Index {
    /// Access units indexed.
    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }

    pub fn entry(&self, i: usize) -> Option<IndexEntry> {
        let size = *self.sizes.get(i)?;
        let (start, end) = (self.offsets[i], self.offsets[i + 1]);
        Some(IndexEntry {
            source_offset: start,
            source_len: end - start,
            sample_size: size,
            is_sync: self.sync.binary_search(&(i as u32)).is_ok(),
        })
    }

    /// Source offsets where the access units start, in order.
    pub fn source_offsets(&self) -> &[u64] {
        self.offsets.split_last().map_or(&[], |(_, starts)| starts)
    }

    /// Indices of the keyframes.
    pub fn sync_samples(&self) -> &[u32] {
        &self.sync
    }

    /// Bytes of MP4 payload (the mdat body).
    pub fn payload_len(&self) -> u64 {
        self.sizes.iter().map(|&s| u64::from(s)).sum()
    }

    /// Source bytes covered by the index (from the first access unit to
    /// the end of the last).
    pub fn source_range(&self) -> std::ops::Range<u64> {
        self.offsets.first().copied().unwrap_or(0)..self.offsets.last().copied().unwrap_or(0)
    }

    /// Heap bytes the index holds (capacity, as allocated).
    pub fn heap_bytes(&self) -> usize {
        self.offsets.capacity() * 8
            + self.sizes.capacity() * 4
            + self.sync.capacity() * 4
            + self.parameter_sets.heap_bytes()
    }

    fn shrink(&mut self) {
        self.offsets.shrink_to_fit();
        self.sizes.shrink_to_fit();
        self.sync.shrink_to_fit();
    }
}

/// A NAL unit being read: where it starts and its first bytes (all of it
/// for a parameter set).
struct OpenNal {
    /// Where its access unit would begin if it starts one (its start code,
    /// with one zero of a 4-byte code, as `Codec::split_access_units`).
    begin: u64,
    start: u64,
    head: [u8; HEAD_BYTES],
    head_len: usize,
    /// Whether it is a parameter set is known (from its header).
    classified: bool,
    /// Some for a parameter set: its bytes so far (and possibly bytes of
    /// the next start code, cut off when it ends), up to
    /// MAX_PARAMETER_SET + 1.
    capture: Option<Vec<u8>>,
}

impl OpenNal {
    fn new(code: StartCode) -> OpenNal {
        OpenNal {
            begin: code.begin(),
            start: code.payload,
            head: [0; HEAD_BYTES],
            head_len: 0,
            classified: false,
            capture: None,
        }
    }

    /// Takes the next bytes of the stream (which may run past this NAL
    /// unit's end: `end_nal` cuts them off).
    fn take(&mut self, codec: Codec, bytes: &[u8]) {
        let n = (HEAD_BYTES - self.head_len).min(bytes.len());
        self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
        self.head_len += n;
        let mut fresh = bytes;
        // Both codecs' headers fit 2 bytes.
        if !self.classified && self.head_len >= 2 {
            self.classified = true;
            if codec.is_parameter_set(&self.head[..self.head_len]) {
                // The head already holds the first n of these bytes.
                self.capture = Some(self.head[..self.head_len].to_vec());
                fresh = &bytes[n..];
            }
        }
        if let Some(capture) = &mut self.capture {
            let room = (MAX_PARAMETER_SET + 1).saturating_sub(capture.len());
            capture.extend_from_slice(&fresh[..fresh.len().min(room)]);
        }
    }
}

/// The access unit being gathered.
struct OpenAu {
    begin: u64,
    size: u64,
    is_sync: bool,
    seen_vcl: bool,
}

/// The streaming scanner: NAL units across chunk boundaries and
/// access-unit grouping, so nothing about where reads end matters.
struct Scanner {
    codec: Codec,
    codes: StartCodes,
    nal: Option<OpenNal>,
    au: Option<OpenAu>,
    index: Index,
    /// Parameter sets of the first access unit are still being collected.
    first_au: bool,
    done: bool,
}

impl Scanner {
    fn new(codec: Codec, start: u64) -> Scanner {
        Scanner {
            codec,
            codes: StartCodes::new(start),
            nal: None,
            au: None,
            index: Index {
                codec,
                parameter_sets: ParameterSetList::default(),
                offsets: Vec::new(),
                sizes: Vec::new(),
                sync: Vec::new(),
                continues_at: None,
            },
            first_au: true,
            done: false,
        }
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<(), Error> {
        let base = self.codes.position();
        let mut from = 0;
        while !self.done {
            let code = self.codes.next_in(chunk);
            let upto = code.map_or(chunk.len(), |c| (c.payload - base) as usize);
            if let Some(nal) = &mut self.nal {
                nal.take(self.codec, &chunk[from..upto]);
            }
            let Some(code) = code else { break };
            self.end_nal(code.previous_end())?;
            self.nal = Some(OpenNal::new(code));
            from = upto;
        }
        Ok(())
    }

    /// The open NAL unit ends (trailing zeros excluded) at `end`.
    fn end_nal(&mut self, end: u64) -> Result<(), Error> {
        let Some(mut nal) = self.nal.take() else { return Ok(()) };
        let len = end.saturating_sub(nal.start);
        if len == 0 {
            return Ok(()); // empty NAL units are skipped, as in split_annexb
        }
        let codec = self.codec;
        let head = &nal.head[..nal.head_len.min(len as usize)];
        if !nal.classified && codec.is_parameter_set(head) {
            nal.capture = Some(head.to_vec());
        }
        let seen_vcl = self.au.as_ref().is_some_and(|au| au.seen_vcl);
        if codec.starts_access_unit(head, seen_vcl) {
            self.end_au(nal.begin)?;
            if self.done {
                return Ok(());
            }
        }
        let au = self.au.get_or_insert(OpenAu { begin: nal.begin, size: 0, is_sync: false, seen_vcl: false });
        if keep_in_sample(codec, head) {
            au.size += 4 + len;
        }
        au.is_sync |= codec.is_keyframe_nal(head);
        if codec.is_vcl(head) {
            au.seen_vcl = true;
            if codec == Codec::H264 && h264::is_b_slice(head) {
                return Err(Error::Unsupported(
                    "the stream has B-frames (picture reordering), which this muxer does not support",
                ));
            }
        }
        if let Some(capture) = nal.capture.as_mut() {
            if len as usize > MAX_PARAMETER_SET {
                return Err(Error::BadParameterSet("parameter set over 65535 bytes".into()));
            }
            // What was taken may run into the next start code.
            capture.truncate(len as usize);
            if !codec.is_parameter_set(capture) {
                // Classified from bytes past its end (a 1-byte NAL unit).
            } else if self.first_au {
                self.index.parameter_sets.add(codec, capture);
            } else if !self.index.parameter_sets.contains(capture) {
                // New parameter sets: the rest of the file is another MP4.
                let begin = au.begin;
                self.au = None;
                self.index.continues_at = Some(begin);
                self.done = true;
            }
        }
        Ok(())
    }

    /// Closes the open access unit, which ends at `end`.
    fn end_au(&mut self, end: u64) -> Result<(), Error> {
        let Some(au) = self.au.take() else { return Ok(()) };
        if !au.seen_vcl {
            return Ok(()); // only possible at the end of the stream
        }
        if end - au.begin > MAX_ACCESS_UNIT_BYTES || au.size > u64::from(u32::MAX) {
            let len = end - au.begin;
            return Err(Error::AccessUnitTooLarge { offset: au.begin, len, max: MAX_ACCESS_UNIT_BYTES });
        }
        if self.first_au {
            if !au.is_sync {
                return Err(Error::StartsWithNonKeyframe);
            }
            // Fail now, not when serving, on parameter sets we cannot use.
            let track = TrackConfig::from_parameter_sets(self.codec, self.index.parameter_sets.clone())?;
            if let VideoInfo::H265(sps) = track.info {
                if sps.max_num_reorder_pics > 0 {
                    return Err(Error::Unsupported(
                        "the stream allows B-frames (sps_max_num_reorder_pics > 0), which this muxer does not support",
                    ));
                }
            }
            self.first_au = false;
            self.index.offsets.push(au.begin);
        }
        self.index.offsets.push(end);
        self.index.sizes.push(au.size as u32);
        if au.is_sync {
            self.index.sync.push((self.index.sizes.len() - 1) as u32);
        }
        Ok(())
    }

    fn finish(mut self, growing: bool) -> Result<Index, Error> {
        if !self.done {
            let end = self.codes.position();
            self.end_nal(end - self.codes.trailing_zeros())?;
            if !self.done && !growing {
                self.end_au(end)?;
            }
        }
        if self.index.is_empty() {
            // Also for a growing file whose only access unit may be unfinished.
            return Err(Error::NoAccessUnits);
        }
        self.index.shrink();
        Ok(self.index)
    }
}

/// Indexes an Annex-B elementary stream in one pass, reading
/// `options.chunk_size` bytes at a time; memory is the chunk plus the
/// index (see [`Index::heap_bytes`]). Errors: see the module doc.
pub fn scan<R: Read + Seek>(mut reader: R, options: &ScanOptions) -> Result<Index, Error> {
    reader.seek(SeekFrom::Start(options.start_offset))?;
    let mut scanner = Scanner::new(options.codec, options.start_offset);
    let mut buf = vec![0u8; options.chunk_size.max(1)];
    while !scanner.done {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        scanner.feed(&buf[..n])?;
    }
    scanner.finish(options.growing)
}

/// Sample durations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Timing {
    /// Constant frame rate `num / den` frames per second (30/1 by default;
    /// 30000/1001 for NTSC rates).
    Fps { num: u32, den: u32 },
    /// One duration per access unit, in 90 kHz ticks (e.g. from capture
    /// timestamps kept beside the recording).
    Durations(Vec<u32>),
}

impl Default for Timing {
    fn default() -> Self {
        Timing::Fps { num: 30, den: 1 }
    }
}

/// Source bytes, read at an offset without moving a shared cursor (so one
/// open file serves concurrent requests).
pub trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

#[cfg(unix)]
impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).ok().filter(|&s| s <= self.len());
        let src = start.and_then(|s| self.get(s..s.checked_add(buf.len())?));
        let src = src.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for std::sync::Arc<T> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
}

/// The virtual MP4 of one index: header bytes and where every sample goes.
#[derive(Debug)]
pub struct Layout {
    index: Index,
    track: TrackConfig,
    /// ftyp + moov + mdat header.
    header: Vec<u8>,
    /// Output offset of each chunk of SAMPLES_PER_CHUNK samples (the stco
    /// values), ascending.
    chunk_offsets: Vec<u64>,
    total_len: u64,
    duration: u64,
}

/// The access unit last read, converted on demand.
#[derive(Default)]
struct AuCache {
    sample: Option<usize>,
    bytes: Vec<u8>,
}

impl Layout {
    /// Builds the header (ftyp, moov with stts/stss/stsz/stsc/stco or
    /// co64, mdat header) for `index` played with `timing`. Errors: an
    /// empty index, timing that does not fit (zero, wrong count), or boxes
    /// that cannot be encoded.
    pub fn new(index: Index, timing: Timing) -> Result<Layout, Error> {
        let n = index.len();
        if n == 0 || u32::try_from(n).is_err() {
            return Err(Error::NoAccessUnits);
        }
        let mut track = TrackConfig::from_parameter_sets(index.codec, index.parameter_sets.clone())?;
        let (stts, duration) = match &timing {
            Timing::Fps { num, den } => {
                if *num == 0 || *den == 0 {
                    return Err(Error::Timing("frame rate must be positive"));
                }
                // 90 kHz when a frame is a whole number of ticks, else the
                // rate's own clock (e.g. 24000/1001 has 3753.75 ticks).
                let ticks = u64::from(TIMESCALE) * u64::from(*den);
                let (timescale, delta) =
                    if ticks % u64::from(*num) == 0 && ticks / u64::from(*num) <= u64::from(u32::MAX) {
                        (TIMESCALE, (ticks / u64::from(*num)) as u32)
                    } else {
                        (*num, *den)
                    };
                track.timescale = timescale;
                let entries = vec![SttsEntry { sample_count: n as u32, sample_delta: delta }];
                (entries, n as u64 * u64::from(delta))
            }
            Timing::Durations(list) => {
                if list.len() != n {
                    return Err(Error::Timing("need exactly one duration per access unit"));
                }
                if list.contains(&0) {
                    return Err(Error::Timing("a duration of 0"));
                }
                let mut entries: Vec<SttsEntry> = Vec::new();
                for &d in list {
                    match entries.last_mut() {
                        Some(last) if last.sample_delta == d => last.sample_count += 1,
                        _ => entries.push(SttsEntry { sample_count: 1, sample_delta: d }),
                    }
                }
                (entries, list.iter().map(|&d| u64::from(d)).sum())
            }
        };

        // Chunk offsets relative to the mdat payload.
        let mut relative = Vec::with_capacity(n.div_ceil(SAMPLES_PER_CHUNK));
        let mut at = 0u64;
        for (i, &size) in index.sizes.iter().enumerate() {
            if i % SAMPLES_PER_CHUNK == 0 {
                relative.push(at);
            }
            at += u64::from(size);
        }
        let payload = at;
        let mut stsc = vec![StscEntry {
            first_chunk: 1,
            samples_per_chunk: SAMPLES_PER_CHUNK as u32,
            sample_description_index: 1,
        }];
        let last = n % SAMPLES_PER_CHUNK;
        if last != 0 {
            if relative.len() == 1 {
                stsc.clear();
            }
            stsc.push(StscEntry {
                first_chunk: relative.len() as u32,
                samples_per_chunk: last as u32,
                sample_description_index: 1,
            });
        }
        let all_sync = index.sync.len() == n;
        let stbl = |chunk_offsets: &[u64], wide: bool| Stbl {
            stts: Stts { entries: stts.clone() },
            // No stss means every sample is a sync sample.
            stss: (!all_sync).then(|| Stss { entries: index.sync.iter().map(|&i| i + 1).collect() }),
            stsc: Stsc { entries: stsc.clone() },
            stsz: Stsz { samples: StszSamples::Different { sizes: index.sizes.clone() } },
            stco: (!wide).then(|| Stco { entries: chunk_offsets.iter().map(|&o| o as u32).collect() }),
            co64: wide.then(|| Co64 { entries: chunk_offsets.to_vec() }),
            ..Default::default()
        };
        let brands: &[&[u8; 4]] = match index.codec {
            Codec::H264 => &[b"isom", b"iso2", b"avc1", b"mp41"],
            Codec::H265 => &[b"isom", b"iso2", b"mp41"],
        };
        let mut ftyp = Vec::new();
        moov::encode(&moov::ftyp(b"isom", brands), &mut ftyp)?;
        let mdat_header = moov::mdat_header_len(payload);

        // The moov's size does not depend on the offsets' values, only on
        // stco vs co64: measure with relative offsets, then write for real.
        let mut probe = Vec::new();
        moov::encode(&moov::moov(&track, duration, stbl(&relative, false), false), &mut probe)?;
        let mut header_len = ftyp.len() as u64 + probe.len() as u64 + mdat_header;
        let wide = header_len + payload > u64::from(u32::MAX);
        if wide {
            probe.clear();
            moov::encode(&moov::moov(&track, duration, stbl(&relative, true), false), &mut probe)?;
            header_len = ftyp.len() as u64 + probe.len() as u64 + mdat_header;
        }
        let chunk_offsets: Vec<u64> = relative.iter().map(|&o| o + header_len).collect();
        let mut header = ftyp;
        moov::encode(&moov::moov(&track, duration, stbl(&chunk_offsets, wide), false), &mut header)?;
        moov::mdat_header(payload, &mut header);
        header.shrink_to_fit();
        if header.len() as u64 != header_len {
            return Err(Error::Unsupported("moov size changed between passes"));
        }
        Ok(Layout { index, track, header, chunk_offsets, total_len: header_len + payload, duration })
    }

    /// Size of the virtual MP4 file.
    pub fn total_len(&self) -> u64 {
        self.total_len
    }

    /// ftyp + moov + mdat header: the first `header().len()` bytes.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// Duration in the track timescale ([`Layout::timescale`]).
    pub fn duration(&self) -> u64 {
        self.duration
    }

    pub fn timescale(&self) -> u32 {
        self.track.timescale
    }

    pub fn track(&self) -> &TrackConfig {
        &self.track
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Heap bytes held: the index, the header buffer and chunk offsets.
    pub fn heap_bytes(&self) -> usize {
        self.index.heap_bytes() + self.header.capacity() + self.chunk_offsets.capacity() * 8
    }

    /// Fills `buf` with the virtual file's bytes from `offset`; returns how
    /// many (0 at or past the end, fewer than `buf.len()` only at the end).
    pub fn read_at<S: ReadAt + ?Sized>(&self, source: &S, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.read_cached(source, offset, buf, &mut AuCache::default())
    }

    /// A `Read + Seek` view of the virtual file over `source`, converting
    /// each access unit once for sequential reads.
    pub fn reader<S: ReadAt>(&self, source: S) -> Mp4Reader<&Layout, S> {
        Mp4Reader { layout: self, source, pos: 0, cache: AuCache::default() }
    }

    /// [`Layout::reader`] owning a shared layout: `'static`, so it can be
    /// an HTTP response body (e.g. `tiny_http::Response::new(.., reader.take(len), ..)`).
    pub fn shared_reader<S: ReadAt>(self: std::sync::Arc<Self>, source: S) -> Mp4Reader<std::sync::Arc<Layout>, S> {
        Mp4Reader { layout: self, source, pos: 0, cache: AuCache::default() }
    }

    /// The sample holding output byte `pos` (>= the payload start) and the
    /// output offset where that sample starts.
    fn locate(&self, pos: u64) -> (usize, u64) {
        let chunk = self.chunk_offsets.partition_point(|&o| o <= pos).saturating_sub(1);
        let mut sample = chunk * SAMPLES_PER_CHUNK;
        let mut start = self.chunk_offsets.get(chunk).copied().unwrap_or(self.header.len() as u64);
        while let Some(&size) = self.index.sizes.get(sample) {
            if start + u64::from(size) > pos {
                break;
            }
            start += u64::from(size);
            sample += 1;
        }
        (sample, start)
    }

    fn read_cached<S: ReadAt + ?Sized>(
        &self,
        source: &S,
        offset: u64,
        buf: &mut [u8],
        cache: &mut AuCache,
    ) -> io::Result<usize> {
        let mut done = 0;
        let mut pos = offset;
        let header_len = self.header.len() as u64;
        if pos < header_len && !buf.is_empty() {
            let n = ((header_len - pos) as usize).min(buf.len());
            buf[..n].copy_from_slice(&self.header[pos as usize..pos as usize + n]);
            done = n;
            pos += n as u64;
        }
        if done == buf.len() || pos >= self.total_len {
            return Ok(done);
        }
        let (mut sample, mut start) = self.locate(pos);
        while done < buf.len() {
            let Some(entry) = self.index.entry(sample) else { break };
            if cache.sample != Some(sample) {
                cache.sample = None;
                cache.bytes.resize(entry.source_len as usize, 0);
                source.read_exact_at(&mut cache.bytes, entry.source_offset)?;
                cache.sample = Some(sample);
            }
            let (n, size) = copy_sample_range(self.index.codec, &cache.bytes, pos - start, &mut buf[done..]);
            if size != u64::from(entry.sample_size) {
                cache.sample = None;
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("source changed since it was indexed (access unit at byte {})", entry.source_offset),
                ));
            }
            done += n;
            pos += n as u64;
            start += size;
            sample += 1;
        }
        Ok(done)
    }
}

/// A cursor over a [`Layout`]'s virtual file (see [`Layout::reader`]);
/// `L` is `&Layout` or `Arc<Layout>`.
pub struct Mp4Reader<L, S> {
    layout: L,
    source: S,
    pos: u64,
    cache: AuCache,
}

impl<L: std::ops::Deref<Target = Layout>, S: ReadAt> Read for Mp4Reader<L, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.layout.read_cached(&self.source, self.pos, buf, &mut self.cache)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<L: std::ops::Deref<Target = Layout>, S: ReadAt> Seek for Mp4Reader<L, S> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.layout.total_len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mp4::sample_entry::tests::{PPS, SPS_640X360 as SPS};
    use std::io::Cursor;

    use crate::mp4::reader::boxes;
    use crate::mp4::sample::length_prefixed_size;

    fn annexb(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter().flat_map(|n| [0, 0, 0, 1].iter().chain(n.iter()).copied()).collect()
    }

    /// IDR, P, P, IDR, P with AUDs and SPS/PPS before each IDR.
    fn stream() -> Vec<u8> {
        let aud: &[u8] = &[0x09, 0xf0];
        let idr: &[u8] = &[0x65, 0x88, 0x84, 0x00, 0x33];
        let p: &[u8] = &[0x41, 0x9a, 0x02, 0x03];
        annexb(&[aud, SPS, PPS, idr, aud, p, aud, p, aud, SPS, PPS, idr, aud, p])
    }

    fn scan_bytes(data: &[u8], growing: bool, chunk: usize) -> Result<Index, Error> {
        let options = ScanOptions { growing, chunk_size: chunk, ..ScanOptions::new(Codec::H264) };
        scan(Cursor::new(data), &options)
    }

    #[test]
    fn index_matches_the_in_memory_split_for_any_chunk_size() {
        let data = stream();
        let aus = Codec::H264.split_access_units(&data);
        assert_eq!(aus.len(), 5);
        for chunk in [1, 2, 3, 5, 7, 64, CHUNK_SIZE] {
            let index = scan_bytes(&data, false, chunk).unwrap();
            assert_eq!(index.len(), 5);
            for (i, au) in aus.iter().enumerate() {
                let e = index.entry(i).unwrap();
                assert_eq!(e.source_offset..e.source_offset + e.source_len, au.start as u64..au.end as u64);
                assert_eq!(e.sample_size as usize, length_prefixed_size(Codec::H264, &data[au.clone()]));
            }
            assert_eq!(index.sync_samples(), [0, 3]);
            assert_eq!(index.parameter_sets.sps.len(), 1);
        }
        // Growing: the last access unit is left out.
        assert_eq!(scan_bytes(&data, true, 7).unwrap().len(), 4);
    }

    #[test]
    fn clear_errors_for_bad_starts() {
        let p: &[u8] = &[0x41, 0x9a, 0x02];
        let idr: &[u8] = &[0x65, 0x88, 0x84];
        assert!(matches!(scan_bytes(&annexb(&[p, idr]), false, 64), Err(Error::StartsWithNonKeyframe)));
        assert!(matches!(scan_bytes(&annexb(&[PPS, idr, p]), false, 64), Err(Error::MissingParameterSets("SPS"))));
        assert!(matches!(scan_bytes(b"not a stream", false, 64), Err(Error::NoAccessUnits)));
        assert!(matches!(scan_bytes(&[], false, 64), Err(Error::NoAccessUnits)));
        // A B slice: first_mb 0 ('1'), slice_type 1 ('010').
        let b: &[u8] = &[0x01, 0xa0, 0x00];
        assert!(matches!(scan_bytes(&annexb(&[SPS, PPS, idr, b, p]), false, 64), Err(Error::Unsupported(_))));
    }

    #[test]
    fn changed_parameter_sets_end_the_index() {
        let mut data = stream();
        let other_pps: &[u8] = &[0x68, 0xce, 0x3c, 0x81];
        let at = data.len();
        data.extend(annexb(&[SPS, other_pps, &[0x65, 0x88, 0x84], &[0x41, 0x9a]]));
        let index = scan_bytes(&data, false, 3).unwrap();
        assert_eq!(index.len(), 5);
        assert_eq!(index.continues_at, Some(at as u64));
        let rest = scan(Cursor::new(&data), &ScanOptions { start_offset: at as u64, ..ScanOptions::new(Codec::H264) });
        let rest = rest.unwrap();
        assert_eq!(rest.len(), 2);
        assert_eq!(rest.parameter_sets.pps[0], other_pps);
    }

    #[test]
    fn read_at_matches_the_whole_file() {
        let data = stream();
        let layout = Layout::new(scan_bytes(&data, false, 5).unwrap(), Timing::default()).unwrap();
        let mut whole = Vec::new();
        layout.reader(&data).read_to_end(&mut whole).unwrap();
        assert_eq!(whole.len() as u64, layout.total_len());
        let kinds: Vec<_> = boxes(&whole).iter().map(|b| b.kind).collect();
        assert_eq!(kinds, [*b"ftyp", *b"moov", *b"mdat"]);
        for start in 0..whole.len() {
            for len in [0, 1, 3, 17, 1000] {
                let mut buf = vec![0; len];
                let n = layout.read_at(&data, start as u64, &mut buf).unwrap();
                let end = (start + len).min(whole.len());
                assert_eq!(&buf[..n], &whole[start..end]);
            }
        }
        let shared = std::sync::Arc::new(layout);
        let mut tail = Vec::new();
        let mut reader = shared.clone().shared_reader(data.clone());
        reader.seek(SeekFrom::End(-10)).unwrap();
        reader.read_to_end(&mut tail).unwrap();
        assert_eq!(tail, &whole[whole.len() - 10..]);
        let layout = &*shared;
        // A source cut short, or whose NAL units moved, is refused, not served.
        let mut buf = vec![0; whole.len()];
        assert!(layout.read_at(&data[..data.len() - 2], 0, &mut buf).is_err());
        let mut changed = data.clone();
        let p = changed.windows(4).position(|w| w == [0x41, 0x9a, 0x02, 0x03]).unwrap();
        changed[p + 1..p + 4].copy_from_slice(&[0, 0, 1]);
        assert!(layout.read_at(&changed, 0, &mut buf).is_err());
    }

    #[test]
    fn timing_choices() {
        let data = stream();
        let index = scan_bytes(&data, false, 64).unwrap();
        let layout = Layout::new(index.clone(), Timing::Fps { num: 30000, den: 1001 }).unwrap();
        assert_eq!((layout.timescale(), layout.duration()), (90_000, 5 * 3003));
        let layout = Layout::new(index.clone(), Timing::Fps { num: 24000, den: 1001 }).unwrap();
        assert_eq!((layout.timescale(), layout.duration()), (24_000, 5 * 1001));
        let layout = Layout::new(index.clone(), Timing::Durations(vec![3000, 3000, 3003, 3003, 2990])).unwrap();
        assert_eq!(layout.duration(), 14_996);
        assert!(Layout::new(index.clone(), Timing::Durations(vec![3000])).is_err());
        assert!(Layout::new(index, Timing::Fps { num: 0, den: 1 }).is_err());
    }
}
