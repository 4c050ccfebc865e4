//! MP4 muxing of already-encoded H.264 / H.265 access units, never
//! decoding or re-encoding.
//!
//! Two users:
//! - LL-HLS ([`fmp4`]): an init segment per parameter-set generation and one
//!   `moof`+`mdat` fragment per part; a segment is its parts concatenated.
//! - `GET /recordings/FILE?format=mp4` ([`progressive`]): a raw Annex-B
//!   `.h264`/`.h265` recording is indexed in one streaming pass (a few
//!   bytes per frame) and any byte range of a faststart MP4 (`moov` before
//!   `mdat`) is produced on demand from that index and the source file.
//!
//! In: Annex-B bytes (start codes, in-band AUD/SPS/PPS/VPS/SEI allowed),
//! split and classified by [`crate::codec`] (its [`Codec`], start-code
//! finder and access-unit rules, its SPS parsers). Out: ISO BMFF bytes:
//! boxes from the maintained `mp4-atom` crate, except the `mdat` header,
//! written by hand so a payload is never held in an `mp4_atom::Mdat`.
//! [`sample_entry`] makes the `avc1`/`hvc1` sample entries and RFC 6381
//! `codecs` strings; [`sample`] turns access units into MP4 samples.
//!
//! Bad input: every entry point returns [`Error`] (or `io::Error` for
//! reads); nothing here panics on any input bytes (`tests/mp4_properties.rs`
//! checks it).
//!
//! Decode order is presentation order: no composition offsets are written,
//! so streams with B-frames are refused where they can be seen (the
//! cameras send none; WebRTC could not carry them either).

mod boxes;
pub mod fmp4;
pub mod progressive;
pub mod reader;
pub mod sample;
pub mod sample_entry;

use std::fmt;

pub use crate::codec::Codec;
pub use fmp4::{init_segment, media_fragment, Fragmenter, Sample};
pub use progressive::{scan, Index, Layout, ReadAt, ScanOptions, Timing};
pub use sample_entry::{ParameterSetList, TrackConfig};

/// The media timescale of every track made here (unless a constant frame
/// rate needs its own, see [`Timing::Fps`]): 90 kHz, the RTP/MPEG-TS clock,
/// which the usual frame rates (25, 30, 30000/1001, 50, 60) divide evenly.
pub const TIMESCALE: u32 = 90_000;

/// Why input could not be muxed.
#[derive(Debug)]
pub enum Error {
    Io(std::io::Error),
    /// No Annex-B start code, or no picture.
    NoAccessUnits,
    /// A stream (or a cut of one) must start at a keyframe (IDR / IRAP).
    StartsWithNonKeyframe,
    /// The first access unit lacks this kind of parameter set.
    MissingParameterSets(&'static str),
    /// A parameter set that does not parse or cannot go into a sample entry.
    BadParameterSet(String),
    Unsupported(&'static str),
    AccessUnitTooLarge {
        offset: u64,
        len: u64,
        max: u64,
    },
    Timing(&'static str),
    /// `mp4-atom` could not encode a box.
    Encode(mp4_atom::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::NoAccessUnits => write!(f, "no access unit found (no Annex-B start code, or no picture)"),
            Error::StartsWithNonKeyframe => {
                write!(f, "the stream does not start with a keyframe (IDR/IRAP): cut streams must start at one")
            }
            Error::MissingParameterSets(kind) => {
                write!(f, "the first access unit lacks parameter sets: {kind} missing")
            }
            Error::BadParameterSet(why) => write!(f, "bad parameter set: {why}"),
            Error::Unsupported(why) => f.write_str(why),
            Error::AccessUnitTooLarge { offset, len, max } => {
                write!(f, "access unit at byte {offset} is {len} bytes, over the {max}-byte limit")
            }
            Error::Timing(why) => write!(f, "invalid timing: {why}"),
            Error::Encode(e) => write!(f, "box encoding failed: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Encode(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(e)
    }
}

impl From<mp4_atom::Error> for Error {
    fn from(e: mp4_atom::Error) -> Error {
        Error::Encode(e)
    }
}
