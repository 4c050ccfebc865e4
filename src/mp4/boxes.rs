//! The `ftyp` and `moov` boxes shared by the fMP4 init segment and the
//! progressive file (one video track, id 1), and the hand-written `mdat`
//! header.
//!
//! In: a [`TrackConfig`] and, for a progressive file, its sample tables.
//! Out: encoded boxes appended to a `Vec`. Bad input: `mp4-atom` encode
//! errors are passed on as [`Error::Encode`].

use mp4_atom::{
    Dinf, Dref, DrefEntry, Encode, FixedPoint, Ftyp, Hdlr, Mdhd, Mdia, Minf, Moov, Mvex, Mvhd, Stbl, Stsd, Tkhd, Trak,
    Trex, Url, Vmhd,
};

use super::sample_entry::TrackConfig;
use super::Error;

pub(crate) const TRACK_ID: u32 = 1;

pub(crate) fn ftyp(major: &[u8; 4], compatible: &[&[u8; 4]]) -> Ftyp {
    Ftyp {
        major_brand: major.into(),
        minor_version: 512,
        compatible_brands: compatible.iter().map(|&b| b.into()).collect(),
    }
}

/// The moov of a one-video-track file. `duration` is in the track's
/// timescale (0 for fragmented files); `stbl` holds the sample tables
/// (empty ones for fragmented files); `mvex` makes it fragmented.
pub(crate) fn moov(track: &TrackConfig, duration: u64, stbl: Stbl, fragmented: bool) -> Moov {
    Moov {
        mvhd: Mvhd {
            // The movie timescale equals the media one, so durations are exact.
            timescale: track.timescale,
            duration,
            rate: FixedPoint::from(1u16),
            volume: FixedPoint::from(1u8),
            next_track_id: TRACK_ID + 1,
            ..Default::default()
        },
        trak: vec![Trak {
            tkhd: Tkhd {
                track_id: TRACK_ID,
                duration,
                enabled: true,
                in_movie: true,
                width: FixedPoint::from(track.width),
                height: FixedPoint::from(track.height),
                ..Default::default()
            },
            mdia: Mdia {
                mdhd: Mdhd { timescale: track.timescale, duration, language: "und".into(), ..Default::default() },
                hdlr: Hdlr { handler: b"vide".into(), name: "VideoHandler".into() },
                minf: Minf {
                    vmhd: Some(Vmhd::default()),
                    dinf: Dinf { dref: Dref { entries: vec![DrefEntry::Url(Url { location: String::new() })] } },
                    stbl: Stbl { stsd: Stsd { codecs: vec![track.entry.clone()] }, ..stbl },
                    ..Default::default()
                },
            },
            ..Default::default()
        }],
        mvex: fragmented.then(|| Mvex {
            mehd: None,
            trex: vec![Trex {
                track_id: TRACK_ID,
                default_sample_description_index: 1,
                default_sample_duration: 0,
                default_sample_size: 0,
                default_sample_flags: 0,
            }],
        }),
        ..Default::default()
    }
}

pub(crate) fn encode(atom: &impl Encode, out: &mut Vec<u8>) -> Result<(), Error> {
    atom.encode(out)?;
    Ok(())
}

/// Bytes of the mdat header for a payload of `payload` bytes: 8, or 16
/// with a 64-bit size when the box would not fit 32 bits.
pub(crate) fn mdat_header_len(payload: u64) -> u64 {
    if payload + 8 <= u64::from(u32::MAX) {
        8
    } else {
        16
    }
}

/// Writes the mdat header. By hand because `mp4_atom::Mdat` owns its
/// payload, and we never hold a whole progressive payload (and copy an
/// fMP4 payload only once, straight into the output buffer).
pub(crate) fn mdat_header(payload: u64, out: &mut Vec<u8>) {
    if mdat_header_len(payload) == 8 {
        out.extend_from_slice(&((payload + 8) as u32).to_be_bytes());
        out.extend_from_slice(b"mdat");
    } else {
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(b"mdat");
        out.extend_from_slice(&(payload + 16).to_be_bytes());
    }
}
