//! The media playlist text (RFC 8216bis, protocol version 9): rendered
//! from a [`Window`] once per change for every client, in two forms, full
//! and the delta update (`_HLS_skip=YES`).
//!
//! What it says: `EXT-X-SERVER-CONTROL` with `CAN-BLOCK-RELOAD=YES`,
//! `CAN-SKIP-UNTIL` (six target durations, the least the spec allows) and
//! `PART-HOLD-BACK` (three part targets, what the spec recommends: the
//! latency a player aims for); `EXT-X-PART-INF`; per segment an
//! `EXT-X-PROGRAM-DATE-TIME` (its first frame's capture time, so a player
//! can tell its delay from the camera), the `EXT-X-MAP` where the init
//! segment changes, `EXT-X-DISCONTINUITY` where the stream does, its parts
//! while it is within three target durations of the live edge (the spec's
//! advice), and its `EXTINF`; the parts of the segment being made; and an
//! `EXT-X-PRELOAD-HINT` for the next part, which a player requests before
//! it exists (the request waits for it).
//!
//! URIs are relative (`seg-12.m4s`, `part-12-3.m4s`, `init-0.mp4`), so the
//! same text serves `/NAME/index.m3u8` and the legacy `/index.m3u8`; a
//! query (the token a client passed in the playlist's URL) can be added to
//! every URI.

use std::fmt::Write;
use std::time::SystemTime;

use super::window::{Segment, Window, TIMESCALE};

/// The protocol version: `EXT-X-SKIP` needs 9.
pub const VERSION: u32 = 9;

/// A segment's URI (relative to the playlist).
pub fn segment_uri(msn: u64) -> String {
    format!("seg-{msn}.m4s")
}

/// A part's URI.
pub fn part_uri(msn: u64, index: u32) -> String {
    format!("part-{msn}-{index}.m4s")
}

/// An init segment's URI.
pub fn init_uri(id: u64) -> String {
    format!("init-{id}.mp4")
}

/// Seconds with five decimals (durations are 90 kHz ticks: exact to 11 us).
fn seconds(ticks: u64) -> String {
    format!("{:.5}", ticks as f64 / TIMESCALE as f64)
}

/// RFC 3339 in UTC with milliseconds, as `EXT-X-PROGRAM-DATE-TIME` wants.
pub fn date_time(time: SystemTime) -> String {
    let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let millis = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(since.as_millis() as u64);
    let datetime = time::OffsetDateTime::from(millis);
    datetime.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// `CAN-SKIP-UNTIL`, seconds.
pub fn skip_until(window: &Window) -> u64 {
    6 * window.target_duration()
}

/// The playlist, `None` before the first segment is complete (a player
/// needs a target duration and a segment to start). `skip` makes the delta
/// update: the segments that end `CAN-SKIP-UNTIL` or more before the live
/// edge become one `EXT-X-SKIP`. `query` (`""` or `?token=...`) is added
/// to every URI.
pub fn render(window: &Window, skip: bool, query: &str) -> Option<String> {
    let target = window.target_duration();
    let listed: Vec<&Segment> = window.listed().filter(|s| !s.parts.is_empty()).collect();
    if target == 0 || !listed.iter().any(|s| s.complete) {
        return None;
    }
    let part_target = window.part_target();
    let total: u64 = listed.iter().map(|s| s.duration).sum();
    // Where each listed segment ends, from the first one's start.
    let ends: Vec<u64> = listed
        .iter()
        .scan(0u64, |end, s| {
            *end += s.duration;
            Some(*end)
        })
        .collect();
    // A delta update never skips a discontinuity (but the first segment's,
    // which the sequence number already counts): the client could not
    // number the segments after it.
    let skipped = if skip {
        let boundary = total.saturating_sub(skip_until(window) * TIMESCALE);
        listed
            .iter()
            .zip(&ends)
            .enumerate()
            .take_while(|(i, (s, &end))| s.complete && end <= boundary && (*i == 0 || !s.discontinuity))
            .count()
    } else {
        0
    };
    let parts_from = total.saturating_sub(3 * target * TIMESCALE);

    let mut out = String::with_capacity(256 + listed.len() * 400);
    // Writing to a String cannot fail.
    let _ = writeln!(out, "#EXTM3U\n#EXT-X-VERSION:{VERSION}\n#EXT-X-TARGETDURATION:{target}");
    let _ = writeln!(
        out,
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL={:.1},PART-HOLD-BACK={}",
        skip_until(window) as f64,
        seconds(3 * part_target)
    );
    let _ = writeln!(out, "#EXT-X-PART-INF:PART-TARGET={}", seconds(part_target));
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{}", listed[0].msn);
    let _ = writeln!(out, "#EXT-X-DISCONTINUITY-SEQUENCE:{}", window.discontinuity_sequence());
    if skipped > 0 {
        let _ = writeln!(out, "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
    }
    let mut init = None;
    for (index, (segment, &end)) in listed.iter().zip(&ends).enumerate().skip(skipped) {
        // The first segment's discontinuity is in the sequence number.
        if segment.discontinuity && index > 0 {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        if init != Some(segment.init) {
            let _ = writeln!(out, "#EXT-X-MAP:URI=\"{}{query}\"", init_uri(segment.init));
            init = Some(segment.init);
        }
        let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{}", date_time(segment.program_date_time));
        if !segment.complete || end > parts_from {
            for (index, part) in segment.parts.iter().enumerate() {
                let _ = write!(
                    out,
                    "#EXT-X-PART:DURATION={},URI=\"{}{query}\"",
                    seconds(part.duration),
                    part_uri(segment.msn, index as u32)
                );
                out.push_str(if part.independent { ",INDEPENDENT=YES\n" } else { "\n" });
            }
        }
        if segment.complete {
            let _ = writeln!(out, "#EXTINF:{},\n{}{query}", seconds(segment.duration), segment_uri(segment.msn));
        }
    }
    let position = window.position();
    let (msn, index) = position.current.unwrap_or((position.next_msn, 0));
    let _ = writeln!(out, "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{}{query}\"", part_uri(msn, index));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::window::{Part, WindowLimits};
    use bytes::Bytes;
    use std::time::Duration;

    fn part(ms: u64, independent: bool) -> Part {
        Part { data: Bytes::from_static(b"0123456789"), duration: ms * 90, independent }
    }

    /// `segments` complete one-second segments of five parts, then one
    /// being made with `open_parts` parts.
    fn window(segments: usize, open_parts: usize) -> Window {
        let mut window = Window::new(WindowLimits { playlist_segments: 10, grace_segments: 2, max_bytes: 1 << 20 }, 0);
        let init = window.add_init(Bytes::from_static(b"init"), "avc1.640028".into());
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for i in 0..segments + 1 {
            window.begin_segment(init, false, start + Duration::from_secs(i as u64));
            let parts = if i == segments { open_parts } else { 5 };
            for p in 0..parts {
                window.add_part(part(200, p == 0));
            }
            if i < segments {
                window.end_segment();
            }
        }
        window
    }

    #[test]
    fn nothing_before_the_first_complete_segment() {
        assert_eq!(render(&window(0, 3), false, ""), None);
    }

    #[test]
    fn a_full_playlist_lists_segments_parts_near_the_edge_and_a_hint() {
        let text = render(&window(12, 2), false, "").unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..8],
            [
                "#EXTM3U",
                "#EXT-X-VERSION:9",
                "#EXT-X-TARGETDURATION:1",
                "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL=6.0,PART-HOLD-BACK=0.60000",
                "#EXT-X-PART-INF:PART-TARGET=0.20000",
                "#EXT-X-MEDIA-SEQUENCE:2",
                "#EXT-X-DISCONTINUITY-SEQUENCE:0",
                "#EXT-X-MAP:URI=\"init-0.mp4\"",
            ]
        );
        assert_eq!(lines[8], "#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:22Z");
        assert_eq!(text.matches("#EXTINF:1.00000,\n").count(), 10);
        assert_eq!(text.matches("#EXT-X-MAP").count(), 1);
        // Parts of the last three seconds: segments 9, 10, 11 whole and the
        // two parts of 12.
        assert_eq!(text.matches("#EXT-X-PART:").count(), 3 * 5 + 2);
        assert!(!text.contains("part-8-"), "{text}");
        assert!(text.contains("#EXT-X-PART:DURATION=0.20000,URI=\"part-9-0.m4s\",INDEPENDENT=YES\n"));
        assert!(text.contains("#EXT-X-PART:DURATION=0.20000,URI=\"part-9-1.m4s\"\n"));
        assert!(text.ends_with(
            "#EXT-X-PART:DURATION=0.20000,URI=\"part-12-1.m4s\"\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-12-2.m4s\"\n"
        ));
        assert!(text.contains("#EXTINF:1.00000,\nseg-11.m4s\n#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:32Z\n"));
    }

    #[test]
    fn a_delta_update_skips_what_ends_six_target_durations_before_the_edge() {
        let window = window(12, 2);
        let text = render(&window, true, "").unwrap();
        // Listed: 2..=11 complete, 12 with 0.4 s; the boundary is at
        // 10.4 - 6 = 4.4 s: segments 2, 3, 4, 5 end before it.
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:2\n"), "{text}");
        assert!(text.contains("#EXT-X-SKIP:SKIPPED-SEGMENTS=4\n#EXT-X-MAP:URI=\"init-0.mp4\"\n"), "{text}");
        assert!(!text.contains("seg-5.m4s") && text.contains("seg-6.m4s"), "{text}");
        let full = render(&window, false, "").unwrap();
        assert_eq!(
            full.lines().count() - text.lines().count(),
            4 * 3 - 1,
            "three lines per skipped segment, one EXT-X-SKIP"
        );
        // Too short to skip anything: the full playlist.
        let short = window_without_skip();
        assert!(!render(&short, true, "").unwrap().contains("EXT-X-SKIP"));
    }

    fn window_without_skip() -> Window {
        window(3, 1)
    }

    #[test]
    fn discontinuities_new_inits_and_queries() {
        let mut window = window(2, 0);
        let init = window.add_init(Bytes::from_static(b"init2"), "hvc1.1.6.L93.B0".into());
        window.begin_segment(init, true, SystemTime::UNIX_EPOCH);
        window.add_part(part(100, true));
        window.end_segment();
        let text = render(&window, false, "?token=a%20b").unwrap();
        assert!(text.contains("#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"init-1.mp4?token=a%20b\"\n"), "{text}");
        assert!(text.contains("seg-3.m4s?token=a%20b\n"), "{text}");
        assert!(text.contains("URI=\"part-3-0.m4s?token=a%20b\",INDEPENDENT=YES"), "{text}");
        assert!(text.contains("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-4-0.m4s?token=a%20b\""), "{text}");
        assert!(!text.contains("seg-2.m4s"), "the empty segment 2 is not listed: {text}");
    }

    #[test]
    fn the_first_segments_discontinuity_is_counted_not_written_and_deltas_do_not_skip_one() {
        let mut window = Window::new(WindowLimits { playlist_segments: 10, grace_segments: 2, max_bytes: 1 << 20 }, 0);
        window.add_init(Bytes::from_static(b"init"), "avc1.640028".into());
        for i in 0..12u64 {
            // A restart before segment 0, a gap before segment 3.
            window.begin_segment(0, i == 0 || i == 3, SystemTime::UNIX_EPOCH + Duration::from_secs(i));
            for p in 0..5 {
                window.add_part(part(200, p == 0));
            }
            window.end_segment();
        }
        // Listed: 2..=11; segment 3 carries the tag.
        let full = render(&window, false, "").unwrap();
        assert!(
            full.contains(
                "#EXT-X-DISCONTINUITY-SEQUENCE:1
"
            ),
            "{full}"
        );
        assert_eq!(
            full.matches(
                "#EXT-X-DISCONTINUITY
"
            )
            .count(),
            1,
            "{full}"
        );
        assert!(
            full.contains(
                "#EXT-X-DISCONTINUITY
#EXT-X-PROGRAM-DATE-TIME:1970-01-01T00:00:03Z
"
            ),
            "{full}"
        );
        // The boundary (10 - 6 s) would skip 2..=5; it stops before 3.
        let delta = render(&window, true, "").unwrap();
        assert!(
            delta.contains(
                "#EXT-X-SKIP:SKIPPED-SEGMENTS=1
"
            ),
            "{delta}"
        );
        assert!(
            delta.contains(
                "#EXT-X-DISCONTINUITY
"
            ),
            "{delta}"
        );
        // Once the tagged segment has left the playlist, it is still counted.
        for i in 12..14u64 {
            window.begin_segment(0, false, SystemTime::UNIX_EPOCH + Duration::from_secs(i));
            window.add_part(part(1000, true));
            window.end_segment();
        }
        let later = render(&window, false, "").unwrap();
        assert!(
            later.contains(
                "#EXT-X-MEDIA-SEQUENCE:4
#EXT-X-DISCONTINUITY-SEQUENCE:2
"
            ),
            "{later}"
        );
        assert!(
            !later.contains(
                "#EXT-X-DISCONTINUITY
"
            ),
            "{later}"
        );
    }

    #[test]
    fn dates_are_utc_with_milliseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        assert_eq!(date_time(t), "2023-11-14T22:13:20.123Z");
    }
}
