//! fMP4 for the LL-HLS window: the [`Segmenter`]'s events in, init
//! segments and `moof`+`mdat` parts out. One fragment per part, so a part
//! is servable the moment it is made and a segment is its parts one after
//! the other (hls.js and Safari both read several `moof`s per segment).
//!
//! TEMPORARY: builds without MP4 until `crate::mp4` is merged.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::codec::{AccessUnit, ParameterSets};

use super::segmenter::{Event, Segmenter};

/// What the muxer task puts into the window, in order.
#[derive(Clone, Debug)]
pub enum Output {
    Init { data: Bytes, codecs: String },
    BeginSegment { discontinuity: bool, capture_time: Duration },
    Part { data: Bytes, duration: u64, independent: bool, first_capture: Duration },
    EndSegment,
}

#[derive(Debug, Default)]
pub struct Muxer {
    segmenter: Segmenter,
    events: Vec<Event>,
    errors: u64,
}

impl Muxer {
    pub fn new() -> Muxer {
        Muxer::default()
    }

    pub fn skipped(&self) -> u64 {
        self.segmenter.skipped
    }

    pub fn errors(&self) -> u64 {
        self.errors
    }

    pub fn push(&mut self, au: &Arc<AccessUnit>, out: &mut Vec<Output>) {
        self.segmenter.push(au, &mut self.events);
        for event in self.events.drain(..) {
            match event {
                Event::Init(ps) => out.push(Output::Init { data: init(&ps), codecs: String::new() }),
                Event::BeginSegment { discontinuity, capture_time } => {
                    out.push(Output::BeginSegment { discontinuity, capture_time })
                }
                Event::Part { frames, independent } => {
                    let duration = frames.iter().map(|f| u64::from(f.duration)).sum();
                    let first_capture = frames[0].au.capture_time;
                    let data: Vec<u8> = frames.iter().flat_map(|f| f.au.data.to_vec()).collect();
                    out.push(Output::Part { data: data.into(), duration, independent, first_capture })
                }
                Event::EndSegment => out.push(Output::EndSegment),
            }
        }
    }
}

fn init(ps: &ParameterSets) -> Bytes {
    ps.annexb.clone()
}
