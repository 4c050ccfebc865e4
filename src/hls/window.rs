//! The LL-HLS model of one path: segments made of parts, media sequence
//! numbers, init segments, the sliding window bounded in bytes, and what a
//! blocking playlist reload may wait for. Sans-IO: the muxer task writes
//! into it (through [`Window::begin_segment`], [`Window::add_part`],
//! [`Window::end_segment`]), HTTP requests read it; time comes in as
//! values.
//!
//! Numbering (RFC 8216bis 6.2.2): media sequence numbers (MSN) count
//! segments up from a first number for the life of the process and are
//! never reused, also across a stop and restart of the muxer (a client that
//! held an old playlist then sees a jump, never a repeat); a part is named
//! by its segment's MSN and its index in that segment. Init segments get
//! ids the same way. The caller picks the first number so that URIs never
//! repeat across restarts of the process either (media is served as
//! immutable). EXT-X-DISCONTINUITY-SEQUENCE counts the discontinuities that
//! left the playlist.
//!
//! Memory: a segment's bytes are its parts' bytes (a segment is served as
//! its parts one after the other), so each byte of media is held once. The
//! window keeps at most [`WindowLimits::playlist_segments`] complete
//! segments in the playlist plus [`WindowLimits::grace_segments`] that
//! left it (a client that has just read a playlist may still fetch them),
//! and drops the oldest sooner while the total is over
//! [`WindowLimits::max_bytes`]. The segment being made is never dropped;
//! the muxer bounds it (see `muxer`).

use std::collections::VecDeque;
use std::time::SystemTime;

use bytes::Bytes;

/// Ticks per second of every duration here: the fMP4 track's clock.
pub const TIMESCALE: u64 = crate::mp4::TIMESCALE as u64;

/// One part (a `moof`+`mdat` fragment of ~200 ms).
#[derive(Clone, Debug)]
pub struct Part {
    pub data: Bytes,
    /// In [`TIMESCALE`] ticks.
    pub duration: u64,
    /// Starts with a keyframe (`INDEPENDENT=YES`).
    pub independent: bool,
}

/// One segment: its parts, and what the playlist says before it.
#[derive(Clone, Debug)]
pub struct Segment {
    pub msn: u64,
    /// The init segment its `EXT-X-MAP` names.
    pub init: u64,
    /// `EXT-X-DISCONTINUITY` in front of it (new parameter sets or codec, a
    /// gap in the stream, a restart of the muxer).
    pub discontinuity: bool,
    /// The capture time of its first frame, on the wall clock.
    pub program_date_time: SystemTime,
    pub parts: Vec<Part>,
    /// Sum of its parts' durations, ticks.
    pub duration: u64,
    /// False while parts are still being added (the newest segment).
    pub complete: bool,
    pub bytes: usize,
}

impl Segment {
    /// Seconds, for `EXTINF`.
    pub fn seconds(&self) -> f64 {
        self.duration as f64 / TIMESCALE as f64
    }
}

/// An init segment (`ftyp`+`moov`): what a player needs before the parts
/// of every segment that names it.
#[derive(Clone, Debug)]
pub struct Init {
    pub id: u64,
    pub data: Bytes,
    /// The RFC 6381 codecs string (`avc1.640028`, `hvc1.1.6.L120.90`).
    pub codecs: String,
}

/// How much the window keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowLimits {
    /// Complete segments listed in the playlist at most.
    pub playlist_segments: usize,
    /// Complete segments kept after they left the playlist.
    pub grace_segments: usize,
    /// Bytes of media (parts and init segments) held at most, the segment
    /// being made apart.
    pub max_bytes: usize,
}

impl Default for WindowLimits {
    fn default() -> WindowLimits {
        // 10 segments of ~1 s make delta playlists worth their while
        // (CAN-SKIP-UNTIL is six target durations); 16 MiB holds ~20 s of
        // 6 Mbit/s 1080p, so the count limit is what usually applies.
        WindowLimits { playlist_segments: 10, grace_segments: 2, max_bytes: 16 << 20 }
    }
}

/// Where the stream is, as blocking reloads see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// The newest complete segment.
    pub last_complete: Option<u64>,
    /// The segment being made and how many of its parts exist.
    pub current: Option<(u64, u32)>,
    /// The MSN the next segment will get.
    pub next_msn: u64,
}

/// What a blocking playlist request (`_HLS_msn`, `_HLS_part`) gets now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// The playlist already holds it: answer.
    Ready,
    /// Not yet: wait for the next change.
    Wait,
    /// Further ahead than the spec lets a client ask (more than two
    /// segments, or more than the Advance Part Limit of parts): 400.
    TooFar,
}

impl Position {
    /// RFC 8216bis 6.2.5.2: a request for segment `msn` (complete) or its
    /// part `part`, against where the stream is. `part_limit` is the
    /// Advance Part Limit ([`advance_part_limit`]).
    pub fn readiness(&self, msn: u64, part: Option<u32>, part_limit: u32) -> Readiness {
        let done = |m: u64| self.last_complete.is_some_and(|last| m <= last);
        let ready = match (part, self.current) {
            (None, _) => done(msn),
            (Some(_), _) if done(msn) => true,
            (Some(p), Some((current, parts))) => msn < current || (msn == current && p < parts),
            (Some(_), None) => false,
        };
        if ready {
            return Readiness::Ready;
        }
        // The newest segment the playlist names (the one being made, or
        // the next one to begin).
        let last = self.current.map_or(self.next_msn, |(current, _)| current);
        if msn > last + 2 {
            return Readiness::TooFar;
        }
        if let Some(part) = part {
            let ahead = match self.current {
                Some((current, parts)) if msn == current => part.saturating_sub(parts),
                // A later segment: its parts are all ahead of what exists.
                _ => part,
            };
            if ahead >= part_limit {
                return Readiness::TooFar;
            }
        }
        Readiness::Wait
    }
}

/// RFC 8216bis 6.2.5.2: three divided by the part target duration when it
/// is under a second, else three.
pub fn advance_part_limit(part_target: u64) -> u32 {
    if part_target == 0 || part_target >= TIMESCALE {
        return 3;
    }
    (3 * TIMESCALE).div_ceil(part_target) as u32
}

/// The window of one path.
#[derive(Debug)]
pub struct Window {
    limits: WindowLimits,
    segments: VecDeque<Segment>,
    inits: VecDeque<Init>,
    next_msn: u64,
    next_init: u64,
    /// Discontinuities of segments dropped from the window.
    dropped_discontinuities: u64,
    /// Seconds; 0 until the first segment is complete. Never decreases
    /// (the spec wants it constant; it only grows if the camera's GOP does).
    target_duration: u64,
    /// Ticks; the longest part so far. Never decreases.
    part_target: u64,
    /// Bytes of complete segments and init segments held.
    bytes: usize,
    /// Set by [`Window::clear`]: the next segment follows a restart.
    restarted: bool,
}

impl Window {
    /// A window whose first segment and init segment are numbered `first`.
    pub fn new(limits: WindowLimits, first: u64) -> Window {
        Window {
            limits,
            segments: VecDeque::new(),
            inits: VecDeque::new(),
            next_msn: first,
            next_init: first,
            dropped_discontinuities: 0,
            target_duration: 0,
            part_target: 0,
            bytes: 0,
            restarted: false,
        }
    }

    pub fn limits(&self) -> WindowLimits {
        self.limits
    }

    /// Adds an init segment; the id later segments name.
    pub fn add_init(&mut self, data: Bytes, codecs: String) -> u64 {
        let id = self.next_init;
        self.next_init += 1;
        self.bytes += data.len();
        self.inits.push_back(Init { id, data, codecs });
        id
    }

    /// Starts a segment (completing the one before, if still open).
    pub fn begin_segment(&mut self, init: u64, discontinuity: bool, program_date_time: SystemTime) -> u64 {
        self.end_segment();
        let msn = self.next_msn;
        self.next_msn += 1;
        // After a restart a client that saw the old segments must reset.
        let discontinuity = discontinuity || std::mem::take(&mut self.restarted);
        self.segments.push_back(Segment {
            msn,
            init,
            discontinuity,
            program_date_time,
            parts: Vec::new(),
            duration: 0,
            complete: false,
            bytes: 0,
        });
        msn
    }

    /// Adds a part to the segment being made; false if none is open.
    pub fn add_part(&mut self, part: Part) -> bool {
        let Some(segment) = self.segments.back_mut().filter(|s| !s.complete) else {
            return false;
        };
        self.part_target = self.part_target.max(part.duration);
        segment.duration += part.duration;
        segment.bytes += part.data.len();
        segment.parts.push(part);
        true
    }

    /// Completes the segment being made (a segment without parts is
    /// dropped), then trims the window.
    pub fn end_segment(&mut self) {
        let Some(segment) = self.segments.back_mut().filter(|s| !s.complete) else {
            return;
        };
        if segment.parts.is_empty() {
            // Nothing to list; its MSN stays unused (numbers only grow).
            if let Some(empty) = self.segments.pop_back() {
                self.restarted |= empty.discontinuity;
            }
            return;
        }
        segment.complete = true;
        self.bytes += segment.bytes;
        // EXTINF rounded to the nearest integer must not exceed it.
        let rounded = (segment.duration + TIMESCALE / 2) / TIMESCALE;
        self.target_duration = self.target_duration.max(rounded.max(1));
        self.trim();
    }

    /// Drops everything (the muxer stopped): memory back, numbering kept;
    /// the next segment carries a discontinuity.
    pub fn clear(&mut self) {
        self.dropped_discontinuities += self.segments.iter().filter(|s| s.discontinuity).count() as u64;
        self.segments.clear();
        self.inits.clear();
        self.bytes = 0;
        self.restarted = true;
    }

    fn complete_count(&self) -> usize {
        self.segments.iter().filter(|s| s.complete).count()
    }

    fn trim(&mut self) {
        let keep = self.limits.playlist_segments + self.limits.grace_segments;
        while let Some(oldest) = self.segments.front() {
            // The segment being made, or the only complete one, stays.
            if !oldest.complete || self.complete_count() <= 1 {
                break;
            }
            if self.complete_count() <= keep && self.bytes <= self.limits.max_bytes {
                break;
            }
            let Some(dropped) = self.segments.pop_front() else { break };
            self.bytes -= dropped.bytes;
            self.dropped_discontinuities += u64::from(dropped.discontinuity);
        }
        // Init segments no held segment names, but for the newest.
        while self.inits.len() > 1 {
            let oldest = self.inits[0].id;
            if self.segments.iter().any(|s| s.init == oldest) {
                break;
            }
            if let Some(init) = self.inits.pop_front() {
                self.bytes -= init.data.len();
            }
        }
    }

    /// Where the stream is now.
    pub fn position(&self) -> Position {
        let last_complete = self.segments.iter().rev().find(|s| s.complete).map(|s| s.msn);
        let current = self.segments.back().filter(|s| !s.complete).map(|s| (s.msn, s.parts.len() as u32));
        Position { last_complete, current, next_msn: self.next_msn }
    }

    /// Seconds; 0 before the first complete segment.
    pub fn target_duration(&self) -> u64 {
        self.target_duration
    }

    /// Ticks; the longest part so far.
    pub fn part_target(&self) -> u64 {
        self.part_target
    }

    /// Bytes held (complete segments, init segments).
    pub fn bytes(&self) -> usize {
        self.bytes + self.segments.back().filter(|s| !s.complete).map_or(0, |s| s.bytes)
    }

    /// Segments held, oldest first (grace, listed, being made).
    pub fn segments(&self) -> &VecDeque<Segment> {
        &self.segments
    }

    /// The segments the playlist lists: the newest complete ones (at most
    /// `playlist_segments`) and the one being made.
    pub fn listed(&self) -> impl Iterator<Item = &Segment> {
        let complete = self.complete_count();
        let skip = complete.saturating_sub(self.limits.playlist_segments);
        self.segments.iter().skip(skip)
    }

    /// EXT-X-DISCONTINUITY-SEQUENCE: the discontinuity sequence number of
    /// the first listed segment, counting its own discontinuity too: the
    /// playlist never writes a tag in front of its first segment (players
    /// would count it, and a delta update that skips that segment could
    /// not say so), so the number stays the same for every segment whether
    /// the first one is written, skipped or gone.
    pub fn discontinuity_sequence(&self) -> u64 {
        let complete = self.complete_count();
        let unlisted = complete.saturating_sub(self.limits.playlist_segments);
        let through_first = self.segments.iter().take(unlisted + 1).filter(|s| s.discontinuity).count();
        self.dropped_discontinuities + through_first as u64
    }

    pub fn init(&self, id: u64) -> Option<&Init> {
        self.inits.iter().find(|i| i.id == id)
    }

    /// The newest init segment.
    pub fn current_init(&self) -> Option<&Init> {
        self.inits.back()
    }

    /// A part of a held segment.
    pub fn part(&self, msn: u64, index: u32) -> Option<&Part> {
        self.segment(msn)?.parts.get(index as usize)
    }

    pub fn segment(&self, msn: u64) -> Option<&Segment> {
        // Usually at its offset from the first; not when an empty segment's
        // MSN was skipped.
        let first = self.segments.front()?.msn;
        let at = usize::try_from(msn.checked_sub(first)?).ok()?;
        match self.segments.get(at) {
            Some(segment) if segment.msn == msn => Some(segment),
            _ => self.segments.iter().find(|s| s.msn == msn),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(bytes: usize, ms: u64, independent: bool) -> Part {
        Part { data: Bytes::from(vec![0u8; bytes]), duration: ms * 90, independent }
    }

    fn segment(window: &mut Window, parts: usize, discontinuity: bool) -> u64 {
        let msn = window.begin_segment(0, discontinuity, SystemTime::UNIX_EPOCH);
        for i in 0..parts {
            window.add_part(part(100, 200, i == 0));
        }
        window.end_segment();
        msn
    }

    #[test]
    fn numbers_only_grow_and_the_window_slides_by_count() {
        let mut window = Window::new(WindowLimits { playlist_segments: 3, grace_segments: 1, max_bytes: 1 << 20 }, 0);
        window.add_init(Bytes::from_static(b"init"), "avc1.42c01f".into());
        for expected in 0..6 {
            assert_eq!(segment(&mut window, 5, false), expected);
        }
        let held: Vec<u64> = window.segments().iter().map(|s| s.msn).collect();
        assert_eq!(held, [2, 3, 4, 5], "three listed, one in grace");
        assert_eq!(window.listed().map(|s| s.msn).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(window.target_duration(), 1);
        assert_eq!(window.part_target(), 200 * 90);
        assert_eq!(window.bytes(), 4 * 500 + 4);
        window.clear();
        assert_eq!(window.bytes(), 0);
        assert_eq!(segment(&mut window, 1, false), 6, "numbering continues after a restart");
        assert!(window.segments()[0].discontinuity, "a restart is a discontinuity");
    }

    #[test]
    fn the_window_is_bounded_in_bytes_but_keeps_the_newest_segment() {
        let mut window = Window::new(WindowLimits { playlist_segments: 10, grace_segments: 2, max_bytes: 1000 }, 0);
        for _ in 0..5 {
            segment(&mut window, 4, false); // 400 bytes each
        }
        assert_eq!(window.segments().len(), 2);
        assert!(window.bytes() <= 1000);
        let mut huge = Window::new(WindowLimits { playlist_segments: 10, grace_segments: 2, max_bytes: 10 }, 0);
        segment(&mut huge, 4, false);
        segment(&mut huge, 4, false);
        assert_eq!(huge.segments().len(), 1, "one complete segment always stays");
    }

    #[test]
    fn discontinuities_that_leave_the_playlist_are_counted() {
        let mut window = Window::new(WindowLimits { playlist_segments: 2, grace_segments: 1, max_bytes: 1 << 20 }, 0);
        segment(&mut window, 1, false);
        segment(&mut window, 1, true);
        assert_eq!(window.discontinuity_sequence(), 0, "msn 1 is not first");
        segment(&mut window, 1, false); // msn 1 (with the tag) is first now
        assert_eq!(window.discontinuity_sequence(), 1);
        segment(&mut window, 1, false); // it goes to grace
        assert_eq!(window.discontinuity_sequence(), 1);
        segment(&mut window, 1, false); // and out of the window
        assert_eq!(window.discontinuity_sequence(), 1);
    }

    #[test]
    fn a_segment_without_parts_is_not_kept_and_its_discontinuity_moves_on() {
        let mut window = Window::new(WindowLimits::default(), 0);
        segment(&mut window, 1, false);
        window.begin_segment(0, true, SystemTime::UNIX_EPOCH);
        window.end_segment();
        let msn = segment(&mut window, 1, false);
        assert_eq!(msn, 2);
        assert!(window.segment(2).unwrap().discontinuity);
        assert!(window.segment(1).is_none());
        assert_eq!(window.part(2, 0).unwrap().data.len(), 100);
    }

    #[test]
    fn blocking_requests_wait_answer_or_are_too_far() {
        let position = Position { last_complete: Some(9), current: Some((10, 2)), next_msn: 11 };
        let limit = advance_part_limit(200 * 90);
        assert_eq!(limit, 15);
        assert_eq!(position.readiness(9, None, limit), Readiness::Ready);
        assert_eq!(position.readiness(3, Some(7), limit), Readiness::Ready, "long gone: answer at once");
        assert_eq!(position.readiness(10, Some(1), limit), Readiness::Ready);
        assert_eq!(position.readiness(10, Some(2), limit), Readiness::Wait, "the hinted part");
        assert_eq!(position.readiness(10, None, limit), Readiness::Wait, "a whole segment: when complete");
        assert_eq!(position.readiness(11, Some(0), limit), Readiness::Wait);
        assert_eq!(position.readiness(12, None, limit), Readiness::Wait, "two segments ahead is allowed");
        assert_eq!(position.readiness(13, None, limit), Readiness::TooFar);
        assert_eq!(position.readiness(10, Some(2 + 14), limit), Readiness::Wait);
        assert_eq!(position.readiness(10, Some(2 + 15), limit), Readiness::TooFar);
        assert_eq!(position.readiness(11, Some(15), limit), Readiness::TooFar);
        assert_eq!(advance_part_limit(0), 3);
        assert_eq!(advance_part_limit(2 * TIMESCALE), 3);
        assert_eq!(advance_part_limit(TIMESCALE / 3), 9);
    }
}
