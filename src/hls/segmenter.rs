//! Where parts and segments begin and end: access units in, [`Event`]s
//! out, for the muxer task to turn into fMP4 and the window. Sans-IO and
//! codec-blind (it reads only the verdicts the codec processor put on each
//! access unit); time comes from the frames' capture times.
//!
//! Rules:
//! - A frame's duration is the gap to the next frame's capture time, in
//!   90 kHz ticks (from the absolute times, so rounding never accumulates);
//!   a frame is therefore placed one frame late, when the next arrives.
//! - A part closes once it holds [`PART_MIN`] of media, give or take half
//!   a frame (six frames at 30 fps), or [`PART_MAX_FRAMES`] frames; parts
//!   never straddle segments.
//! - A segment begins at a keyframe and ends at the first keyframe after
//!   [`SEGMENT_MIN`] (one GOP of ~1 s, two of a 0.5 s GOP); a camera whose
//!   GOP is longer than [`SEGMENT_MAX`] or whose segment would pass
//!   [`SEGMENT_MAX_BYTES`] gets its segment cut at a part boundary anyway
//!   (the next segment then starts without a keyframe; its parts say which
//!   are `INDEPENDENT`), so memory and the target duration stay bounded.
//! - New parameter sets or a new codec mean a new init segment and a
//!   discontinuity; so does a gap (the hub skipped frames, the source lost
//!   some, capture times jump back or by more than [`MAX_FRAME_DURATION`]).
//!   After a gap the stream resumes at the next keyframe; the frame before
//!   it gets the last normal frame duration.
//! - An access unit without parameter sets (none seen yet) is skipped.

use std::sync::Arc;
use std::time::Duration;

use crate::codec::{AccessUnit, ParameterSets};

use super::window::TIMESCALE;

/// A part closes once it holds this much media.
pub const PART_MIN: Duration = Duration::from_millis(200);
/// A segment ends at the first keyframe once it holds this much.
pub const SEGMENT_MIN: Duration = Duration::from_millis(800);
/// A segment ends at a part boundary once it holds this much, keyframe or not.
pub const SEGMENT_MAX: Duration = Duration::from_secs(6);
/// ... or this many bytes of access units.
pub const SEGMENT_MAX_BYTES: usize = 4 << 20;
/// A part closes at this many frames whatever their capture times say (a
/// camera that stamps every frame alike must not grow one without bound).
pub const PART_MAX_FRAMES: usize = 60;
/// Consecutive frames further apart than this are a gap, not a long frame.
pub const MAX_FRAME_DURATION: Duration = Duration::from_secs(2);
/// The frame duration assumed before any was measured (30 fps).
const DEFAULT_FRAME_TICKS: u32 = (TIMESCALE / 30) as u32;

/// One frame of a part and how long it lasts, in 90 kHz ticks.
#[derive(Clone, Debug)]
pub struct Frame {
    pub au: Arc<AccessUnit>,
    pub duration: u32,
}

/// What the muxer task does, in order.
#[derive(Clone, Debug)]
pub enum Event {
    /// New parameter sets (the first, or a change): make an init segment.
    Init(Arc<ParameterSets>),
    /// A segment begins; its first frame was captured at `capture_time`
    /// (CLOCK_MONOTONIC).
    BeginSegment { discontinuity: bool, capture_time: Duration },
    /// A part of the open segment.
    Part { frames: Vec<Frame>, independent: bool },
    /// The open segment is complete.
    EndSegment,
}

fn ticks(time: Duration) -> u64 {
    (time.as_nanos() * u128::from(TIMESCALE) / 1_000_000_000) as u64
}

fn same_parameter_sets(a: &Arc<ParameterSets>, b: &Arc<ParameterSets>) -> bool {
    Arc::ptr_eq(a, b) || (a.codec() == b.codec() && a.vps == b.vps && a.sps == b.sps && a.pps == b.pps)
}

/// The segmenter of one muxer run.
#[derive(Debug, Default)]
pub struct Segmenter {
    parameter_sets: Option<Arc<ParameterSets>>,
    /// The newest frame, waiting for the next to know its duration.
    pending: Option<Arc<AccessUnit>>,
    part: Vec<Frame>,
    part_ticks: u64,
    segment_open: bool,
    segment_ticks: u64,
    segment_bytes: usize,
    /// A segment was ever made (the next after a gap is a discontinuity).
    made_any: bool,
    /// The next segment follows a gap or new parameter sets.
    discontinuity: bool,
    /// The last segment was cut without a keyframe: the next may begin
    /// without one.
    continues: bool,
    last_seq: Option<u64>,
    last_duration: Option<u32>,
    /// Access units skipped (no parameter sets yet, or waiting for a
    /// keyframe after a gap).
    pub skipped: u64,
}

impl Segmenter {
    pub fn new() -> Segmenter {
        Segmenter::default()
    }

    /// Takes the next access unit; appends what follows from it to `out`.
    pub fn push(&mut self, au: &Arc<AccessUnit>, out: &mut Vec<Event>) {
        let Some(parameter_sets) = au.parameter_sets.clone() else {
            self.skipped += 1;
            return;
        };
        let changed = !self.parameter_sets.as_ref().is_some_and(|ps| same_parameter_sets(ps, &parameter_sets));
        let mut gap = au.after_gap || self.last_seq.is_some_and(|seq| au.seq != seq.wrapping_add(1));
        self.last_seq = Some(au.seq);

        if let Some(previous) = self.pending.take() {
            let measured = au.capture_time.checked_sub(previous.capture_time).filter(|d| *d <= MAX_FRAME_DURATION);
            let duration = match measured {
                Some(_) if !gap && !changed => {
                    let d = ticks(au.capture_time) - ticks(previous.capture_time);
                    u32::try_from(d).unwrap_or(u32::MAX).max(1)
                }
                _ => {
                    // A jump back or a long silence is a gap too.
                    gap |= measured.is_none();
                    self.last_duration.unwrap_or(DEFAULT_FRAME_TICKS)
                }
            };
            if !gap && !changed {
                self.last_duration = Some(duration);
            }
            self.part_ticks += u64::from(duration);
            self.segment_ticks += u64::from(duration);
            self.segment_bytes += previous.data.len();
            self.part.push(Frame { au: previous, duration });
        }

        if gap || changed {
            self.close_segment(out);
            self.discontinuity |= self.made_any;
            self.continues = false;
        } else if au.is_keyframe && self.segment_ticks >= ticks(SEGMENT_MIN) {
            self.close_segment(out);
        } else if self.part_ticks + u64::from(self.last_duration.unwrap_or(0) / 2) >= ticks(PART_MIN)
            || self.part.len() >= PART_MAX_FRAMES
        {
            // Within half a frame: capture times jitter, and six frames of
            // a 30 fps camera must not become seven because they measure
            // 199.9 ms.
            self.close_part(out);
            if self.segment_ticks >= ticks(SEGMENT_MAX) || self.segment_bytes >= SEGMENT_MAX_BYTES {
                self.close_segment(out);
                self.continues = true;
            }
        }

        if changed {
            self.parameter_sets = Some(parameter_sets.clone());
            out.push(Event::Init(parameter_sets));
        }
        if !self.segment_open {
            if !au.is_keyframe && !self.continues {
                // Decoding cannot start here: wait for a keyframe.
                self.skipped += 1;
                return;
            }
            let discontinuity = std::mem::take(&mut self.discontinuity);
            out.push(Event::BeginSegment { discontinuity, capture_time: au.capture_time });
            self.segment_open = true;
            self.continues = false;
            self.made_any = true;
        }
        self.pending = Some(au.clone());
    }

    fn close_part(&mut self, out: &mut Vec<Event>) {
        if self.part.is_empty() {
            return;
        }
        let frames = std::mem::take(&mut self.part);
        let independent = frames[0].au.is_keyframe;
        out.push(Event::Part { frames, independent });
        self.part_ticks = 0;
    }

    fn close_segment(&mut self, out: &mut Vec<Event>) {
        self.close_part(out);
        if self.segment_open {
            out.push(Event::EndSegment);
        }
        self.segment_open = false;
        self.segment_ticks = 0;
        self.segment_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Codec, VideoInfo};
    use bytes::Bytes;

    fn parameter_sets(sps: &'static [u8]) -> Arc<ParameterSets> {
        let info = crate::codec::h264::SpsInfo::with_profile(66, 0xc0, 31, 640, 360);
        Arc::new(ParameterSets::new(
            None,
            Bytes::from_static(sps),
            Bytes::from_static(b"\x68"),
            VideoInfo::H264(info),
            1,
        ))
    }

    /// A 30 fps stream with a keyframe every `gop` frames.
    struct Stream {
        seq: u64,
        ps: Arc<ParameterSets>,
        gop: u64,
        capture: Duration,
    }

    impl Stream {
        fn new(gop: u64) -> Stream {
            Stream { seq: 0, ps: parameter_sets(b"\x67\x42"), gop, capture: Duration::from_secs(100) }
        }

        fn next(&mut self) -> Arc<AccessUnit> {
            let au = Arc::new(AccessUnit {
                codec: Codec::H264,
                seq: self.seq,
                data: Bytes::from(vec![0u8; 1000]),
                nals: Vec::new(),
                is_keyframe: self.seq.is_multiple_of(self.gop),
                parameter_sets: Some(self.ps.clone()),
                prepend_parameter_sets: false,
                after_gap: false,
                frame_number: self.seq,
                capture_time: self.capture,
                read_time: Duration::ZERO,
                camera_id: 0,
            });
            self.seq += 1;
            // 30000/1001 fps: durations alternate between 3003 ticks exactly.
            self.capture += Duration::from_nanos(33_366_667);
            au
        }
    }

    fn run(segmenter: &mut Segmenter, stream: &mut Stream, frames: usize) -> Vec<Event> {
        let mut out = Vec::new();
        for _ in 0..frames {
            segmenter.push(&stream.next(), &mut out);
        }
        out
    }

    /// Segments as lists of part sizes in frames.
    fn shape(events: &[Event]) -> Vec<Vec<usize>> {
        let mut segments = Vec::new();
        for event in events {
            match event {
                Event::BeginSegment { .. } => segments.push(Vec::new()),
                Event::Part { frames, .. } => segments.last_mut().unwrap().push(frames.len()),
                _ => {}
            }
        }
        segments
    }

    #[test]
    fn one_gop_segments_of_200_ms_parts() {
        let mut segmenter = Segmenter::new();
        let mut stream = Stream::new(30);
        let events = run(&mut segmenter, &mut stream, 91);
        assert!(matches!(events[0], Event::Init(_)));
        assert!(matches!(events[1], Event::BeginSegment { discontinuity: false, .. }));
        // 6 frames of 33.37 ms reach 200 ms; the keyframe at 30 ends the segment.
        assert_eq!(shape(&events), [vec![6, 6, 6, 6, 6], vec![6, 6, 6, 6, 6], vec![6, 6, 6, 6, 6], vec![]]);
        assert_eq!(events.iter().filter(|e| matches!(e, Event::EndSegment)).count(), 3);
        let durations: u64 = events
            .iter()
            .filter_map(|e| match e {
                Event::Part { frames, .. } => Some(frames.iter().map(|f| u64::from(f.duration)).sum::<u64>()),
                _ => None,
            })
            .sum();
        // 90 frames of 1001/30 ms: the capture times' span, within a tick.
        assert!((durations as i64 - 90 * 3003).abs() <= 1, "{durations}");
        let independent: Vec<bool> = events
            .iter()
            .filter_map(|e| match e {
                Event::Part { independent, .. } => Some(*independent),
                _ => None,
            })
            .collect();
        assert_eq!(independent.iter().filter(|i| **i).count(), 3, "the first part of each segment");
        assert!(independent[0] && independent[5] && !independent[1]);
    }

    #[test]
    fn a_short_gop_makes_segments_of_two() {
        let mut segmenter = Segmenter::new();
        let mut stream = Stream::new(15);
        let events = run(&mut segmenter, &mut stream, 61);
        // Parts close at 6 frames, or at the segment's end (keyframe at 30).
        assert_eq!(shape(&events)[..2], [vec![6, 6, 6, 6, 6], vec![6, 6, 6, 6, 6]]);
    }

    #[test]
    fn a_long_gop_is_cut_at_six_seconds_and_goes_on_without_a_keyframe() {
        let mut segmenter = Segmenter::new();
        let mut stream = Stream::new(600);
        let events = run(&mut segmenter, &mut stream, 400);
        let shape = shape(&events);
        assert_eq!(shape[0].iter().sum::<usize>(), 180, "6 s at 30 fps");
        assert_eq!(shape.len(), 3);
        let begins = events.iter().filter(|e| matches!(e, Event::BeginSegment { discontinuity: false, .. })).count();
        assert_eq!(begins, 3, "no discontinuity at a forced cut");
    }

    #[test]
    fn new_parameter_sets_make_an_init_and_a_discontinuity() {
        let mut segmenter = Segmenter::new();
        let mut stream = Stream::new(30);
        run(&mut segmenter, &mut stream, 40);
        stream.ps = parameter_sets(b"\x67\x4d");
        stream.seq = 60; // and lost frames: resume at a keyframe
        let events = run(&mut segmenter, &mut stream, 31);
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| match e {
                Event::Init(_) => "init",
                Event::BeginSegment { discontinuity: true, .. } => "begin-discontinuity",
                Event::BeginSegment { .. } => "begin",
                Event::Part { .. } => "part",
                Event::EndSegment => "end",
            })
            .collect();
        assert_eq!(kinds[..5], ["part", "end", "init", "begin-discontinuity", "part"]);
        // The same parameter sets in a new Arc (a processor restart) are no change.
        stream.ps = parameter_sets(b"\x67\x4d");
        let events = run(&mut segmenter, &mut stream, 10);
        assert!(!events.iter().any(|e| matches!(e, Event::Init(_) | Event::BeginSegment { discontinuity: true, .. })));
    }

    #[test]
    fn after_a_gap_it_waits_for_a_keyframe() {
        let mut segmenter = Segmenter::new();
        let mut stream = Stream::new(30);
        run(&mut segmenter, &mut stream, 10);
        stream.seq = 15; // the hub dropped 5 frames; P-frames follow
        let events = run(&mut segmenter, &mut stream, 14);
        assert_eq!(segmenter.skipped, 14, "{events:?}");
        let events = run(&mut segmenter, &mut stream, 2);
        assert!(matches!(events[0], Event::BeginSegment { discontinuity: true, .. }), "{events:?}");
        // A capture time that jumps is a gap as well.
        stream.capture += Duration::from_secs(5);
        let events = run(&mut segmenter, &mut stream, 1);
        assert!(events.iter().any(|e| matches!(e, Event::EndSegment)), "{events:?}");
    }

    #[test]
    fn frozen_capture_times_still_make_bounded_parts_and_segments() {
        let mut segmenter = Segmenter::new();
        let mut stream = Stream::new(100_000);
        let mut out = Vec::new();
        for _ in 0..(SEGMENT_MAX_BYTES / 1000 + 200) {
            let au = stream.next();
            stream.capture = Duration::from_secs(100); // never advances
            segmenter.push(&au, &mut out);
        }
        let parts = shape(&out);
        assert!(parts.iter().flatten().all(|&frames| frames <= PART_MAX_FRAMES), "{parts:?}");
        assert!(parts.len() >= 2, "the byte bound cut the segment: {parts:?}");
    }

    #[test]
    fn no_parameter_sets_no_segments() {
        let mut segmenter = Segmenter::new();
        let mut stream = Stream::new(30);
        let mut au = Arc::try_unwrap(stream.next()).unwrap();
        au.parameter_sets = None;
        let mut out = Vec::new();
        segmenter.push(&Arc::new(au), &mut out);
        assert!(out.is_empty());
        assert_eq!(segmenter.skipped, 1);
    }
}
