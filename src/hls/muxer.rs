//! fMP4 for the LL-HLS window: the [`Segmenter`]'s events in, init
//! segments and `moof`+`mdat` parts out, with [`crate::mp4`] (boxes from
//! `mp4-atom`). One fragment per part, so a part is servable the moment it
//! is made and a segment is its parts one after the other (hls.js and
//! Safari read several `moof`s per segment; see [`crate::mp4::fmp4`]).
//!
//! Per frame, once for every client: the access unit becomes an MP4 sample
//! (start codes to 4-byte lengths, AUD and filler left out: one copy), and
//! at the end of each part its samples are copied once more into the
//! fragment that every client is then served from.
//!
//! Decode times run on across segments, init segments and discontinuities
//! (a new [`Fragmenter`] starts where the last one ended), so a player's
//! timeline never goes back. New parameter sets that no sample entry can
//! describe (the MP4 crate refuses them) are logged once and their frames
//! skipped until the stream changes again.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::codec::{AccessUnit, ParameterSets};
use crate::mp4::fmp4::{init_segment, Fragmenter, Sample};
use crate::mp4::sample_entry::TrackConfig;

use super::segmenter::{Event, Frame, Segmenter};

/// What the muxer task puts into the window, in order.
#[derive(Clone, Debug)]
pub enum Output {
    /// An init segment (`ftyp`+`moov`) and its RFC 6381 codecs string.
    Init {
        data: Bytes,
        codecs: String,
    },
    BeginSegment {
        discontinuity: bool,
        capture_time: Duration,
    },
    /// A part: one `moof`+`mdat`; `duration` in 90 kHz ticks;
    /// `first_capture` is its first frame's capture time.
    Part {
        data: Bytes,
        duration: u64,
        independent: bool,
        first_capture: Duration,
    },
    EndSegment,
}

/// The muxer of one run of a path's HLS.
#[derive(Debug, Default)]
pub struct Muxer {
    segmenter: Segmenter,
    events: Vec<Event>,
    /// Numbering of the current init segment's fragments; `None` while the
    /// stream's parameter sets could not be muxed.
    fragmenter: Option<Fragmenter>,
    /// Where the next fragment's decode time starts, across inits.
    decode_time: u64,
    /// Fragments or inits that could not be made.
    errors: u64,
}

impl Muxer {
    pub fn new() -> Muxer {
        Muxer::default()
    }

    /// Access units skipped (before parameter sets, waiting for a keyframe).
    pub fn skipped(&self) -> u64 {
        self.segmenter.skipped
    }

    /// Init segments or fragments that could not be made.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Takes the next access unit; appends what it completes to `out`.
    pub fn push(&mut self, au: &Arc<AccessUnit>, out: &mut Vec<Output>) {
        self.segmenter.push(au, &mut self.events);
        for event in std::mem::take(&mut self.events) {
            match event {
                Event::Init(parameter_sets) => self.init(&parameter_sets, out),
                Event::BeginSegment { discontinuity, capture_time } if self.fragmenter.is_some() => {
                    out.push(Output::BeginSegment { discontinuity, capture_time });
                }
                Event::Part { frames, independent } => self.part(&frames, independent, out),
                Event::EndSegment if self.fragmenter.is_some() => out.push(Output::EndSegment),
                Event::BeginSegment { .. } | Event::EndSegment => {}
            }
        }
    }

    fn init(&mut self, parameter_sets: &ParameterSets, out: &mut Vec<Output>) {
        if let Some(fragmenter) = &self.fragmenter {
            self.decode_time = fragmenter.decode_time();
        }
        let made = TrackConfig::for_stream(parameter_sets)
            .and_then(|track| Ok((init_segment(&track)?, track.codecs().to_string())));
        match made {
            Ok((data, codecs)) => {
                log::debug!("HLS: init segment for {codecs} ({} bytes)", data.len());
                self.fragmenter = Some(Fragmenter::new(self.decode_time));
                out.push(Output::Init { data, codecs });
            }
            Err(error) => {
                self.errors += 1;
                self.fragmenter = None;
                log::warn!(
                    "HLS: cannot describe the stream's {} parameter sets in MP4 ({error}); no HLS until they change",
                    parameter_sets.codec()
                );
            }
        }
    }

    fn part(&mut self, frames: &[Frame], independent: bool, out: &mut Vec<Output>) {
        let Some(fragmenter) = &mut self.fragmenter else { return };
        let samples: Vec<Sample> = frames.iter().map(|f| Sample::from_access_unit(&f.au, f.duration)).collect();
        match fragmenter.fragment(&samples) {
            Ok(data) => out.push(Output::Part {
                data,
                duration: frames.iter().map(|f| u64::from(f.duration)).sum(),
                independent,
                first_capture: frames[0].au.capture_time,
            }),
            Err(error) => {
                // Cannot happen for access units under the hub's limits; a
                // part missing from a segment is still better than a panic.
                self.errors += 1;
                log::warn!("HLS: cannot make a part: {error}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo clip through the processor, as the hub would deliver it.
    fn demo_units(codec: crate::codec::Codec, count: usize) -> Vec<Arc<AccessUnit>> {
        crate::fake_camera::demo_clip(codec).unwrap().access_units(count, Duration::from_micros(33_333))
    }

    #[test]
    fn the_demo_clips_become_an_init_and_fragments_with_continuous_decode_times() {
        for codec in crate::codec::Codec::ALL {
            let mut muxer = Muxer::new();
            let mut out = Vec::new();
            for au in demo_units(codec, 95) {
                muxer.push(&au, &mut out);
            }
            assert_eq!(muxer.errors(), 0);
            let Output::Init { data, codecs } = &out[0] else { panic!("{codec}: no init first") };
            assert_eq!(&data[4..8], b"ftyp");
            assert!(codecs.starts_with(if codec == crate::codec::Codec::H264 { "avc1." } else { "hvc1." }), "{codecs}");
            let parts: Vec<(&Bytes, u64)> = out
                .iter()
                .filter_map(|o| match o {
                    Output::Part { data, duration, .. } => Some((data, *duration)),
                    _ => None,
                })
                .collect();
            assert!(parts.len() >= 10, "{codec}: {} parts", parts.len());
            // Each part's tfdt is where the previous ones ended.
            let mut expected = 0u64;
            for (data, duration) in parts {
                assert_eq!(&data[4..8], b"moof");
                let tfdt = data.windows(4).position(|w| w == b"tfdt").unwrap();
                let time = u64::from_be_bytes(data[tfdt + 8..tfdt + 16].try_into().unwrap());
                assert_eq!(time, expected, "{codec}");
                expected += duration;
            }
        }
    }
}
