//! Codecs: what the camera sends, taken apart without decoding. One module
//! per codec; [`annexb`] is what they share.
//!
//! Nothing downstream of a codec's processor looks inside the bytes: the
//! hub, viewers and the recorder work on access units and the processor's
//! verdicts (keyframe, parameter sets).

pub mod annexb;
pub mod h264;

use std::time::Duration;

use bytes::Bytes;

/// One access unit as a source delivered it: Annex-B bytes plus timing
/// (from the camera daemon's ring header, or an RTSP camera's RTP clock).
#[derive(Clone, Debug)]
pub struct RawFrame {
    /// The access unit, Annex-B, exactly as the source delivered it.
    pub data: Bytes,
    /// The daemon's `frame_number`, or the source's own count.
    pub frame_number: u64,
    /// The ring position (`write_index` value) the frame was written at; a
    /// source without a ring counts frames here.
    pub index: u32,
    /// Capture time on CLOCK_MONOTONIC (the daemon's `timestamp`, or the RTP
    /// timestamp mapped onto that clock).
    pub capture_time: Duration,
    /// When the source had the whole frame, on CLOCK_MONOTONIC.
    pub read_time: Duration,
    pub camera_id: i32,
    pub width: i32,
    pub height: i32,
}
