//! Annex-B byte streams (ITU-T H.264 and H.265 annex B): NAL units
//! separated by start codes. Codec independent: both codecs, the sources
//! and the MP4 muxer share it. Nothing here fails on any byte content.
//!
//! One start-code finder, [`StartCodes`], serves both shapes of input: a
//! buffer held whole (a frame, a clip: [`NalUnits`], [`split_annexb`]) and
//! a stream read in pieces (a recording scanned from disk by
//! [`crate::mp4::progressive`]), where a start code or a run of trailing
//! zeros may straddle two reads.

use std::ops::Range;

/// A start code found by [`StartCodes`], in absolute stream offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartCode {
    /// The first byte of the NAL unit it introduces.
    pub payload: u64,
    /// Zero bytes right before its `01` byte (2 or more): the start code's
    /// own zeros plus any trailing zeros of the NAL unit before, which
    /// belong to the byte stream, not to that NAL unit.
    pub zeros: u64,
}

impl StartCode {
    /// Where the NAL unit before it ends (its trailing zeros excluded).
    pub fn previous_end(&self) -> u64 {
        self.payload - 1 - self.zeros
    }

    /// Where the start code begins, counting one leading zero of a 4-byte
    /// code (`00 00 00 01`): where an access unit that begins with this NAL
    /// unit begins in the stream.
    pub fn begin(&self) -> u64 {
        self.payload - 1 - self.zeros.min(3)
    }
}

/// Finds `00 00 01` start codes in a stream fed in pieces, in order; a
/// start code may straddle two pieces. The state is two counters.
#[derive(Clone, Debug, Default)]
pub struct StartCodes {
    /// Absolute offset of the first byte of the current piece.
    base: u64,
    /// Consecutive zero bytes just before `base + next`.
    zeros: u64,
    /// Index in the current piece where the search goes on.
    next: usize,
}

impl StartCodes {
    /// A finder whose first byte is at absolute offset `base`.
    pub fn new(base: u64) -> StartCodes {
        StartCodes { base, zeros: 0, next: 0 }
    }

    /// The next start code in `piece` (the bytes after everything fed so
    /// far), or None once `piece` is used up; then feed the next piece.
    /// Call again with the same `piece` until it returns None.
    pub fn next_in(&mut self, piece: &[u8]) -> Option<StartCode> {
        let mut i = self.next;
        while i < piece.len() {
            // Fast skip, as in a memory search: with no zero before i and a
            // byte above 1 at i + 2, no `01` ending a start code is at i,
            // i + 1 or i + 2.
            if self.zeros == 0 && piece.get(i + 2).is_some_and(|&b| b > 1) {
                i += 3;
                continue;
            }
            let byte = piece[i];
            i += 1;
            if byte == 0 {
                self.zeros += 1;
            } else if byte == 1 && self.zeros >= 2 {
                let found = StartCode { payload: self.base + i as u64, zeros: self.zeros };
                self.zeros = 0;
                self.next = i;
                return Some(found);
            } else {
                self.zeros = 0;
            }
        }
        self.base += piece.len() as u64;
        self.next = 0;
        None
    }

    /// Absolute offset of the next byte to feed.
    pub fn position(&self) -> u64 {
        self.base + self.next as u64
    }

    /// Zero bytes at the end of what was fed (trailing zeros of the last
    /// NAL unit, if the stream ends here).
    pub fn trailing_zeros(&self) -> u64 {
        self.zeros
    }
}

/// The NAL units of an Annex-B buffer as ranges, lazily: start codes and
/// the zero bytes before the next start code excluded, empty NAL units
/// skipped, bytes before the first start code ignored.
#[derive(Clone, Debug)]
pub struct NalUnits<'a> {
    data: &'a [u8],
    codes: StartCodes,
    /// Payload start of the NAL unit being delimited, if any.
    open: Option<usize>,
}

impl<'a> NalUnits<'a> {
    pub fn new(data: &'a [u8]) -> NalUnits<'a> {
        let mut codes = StartCodes::new(0);
        let open = codes.next_in(data).map(|code| code.payload as usize);
        NalUnits { data, codes, open }
    }
}

impl Iterator for NalUnits<'_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        loop {
            let start = self.open?;
            let end = match self.codes.next_in(self.data) {
                Some(code) => {
                    self.open = Some(code.payload as usize);
                    code.previous_end() as usize
                }
                None => {
                    self.open = None;
                    self.data.len() - self.codes.trailing_zeros() as usize
                }
            };
            if end > start {
                return Some(start..end);
            }
        }
    }
}

/// Splits an Annex-B byte stream into NAL unit ranges (start codes and the
/// trailing zero bytes before the next start code excluded). Handles 3- and
/// 4-byte start codes; bytes before the first start code are ignored. Empty
/// NAL units are skipped.
pub fn split_annexb(data: &[u8]) -> Vec<Range<usize>> {
    NalUnits::new(data).collect()
}

/// True if `data` begins with an Annex-B start code (after optional zeros).
pub fn starts_with_start_code(data: &[u8]) -> bool {
    let zeros = data.iter().take_while(|&&b| b == 0).count();
    zeros >= 2 && data.get(zeros) == Some(&1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_codes_straddling_pieces_are_found_once_with_their_zero_runs() {
        let data = [7, 0, 0, 0, 1, 0x65, 0, 0, 1, 0x41, 0, 0, 0, 0, 0, 1, 0x09, 0];
        let whole: Vec<StartCode> = {
            let mut codes = StartCodes::new(100);
            std::iter::from_fn(|| codes.next_in(&data)).collect()
        };
        assert_eq!(
            whole,
            [
                StartCode { payload: 105, zeros: 3 },
                StartCode { payload: 109, zeros: 2 },
                StartCode { payload: 116, zeros: 5 }
            ]
        );
        assert_eq!((whole[0].begin(), whole[1].begin(), whole[2].previous_end()), (101, 106, 110));
        for piece in 1..data.len() {
            let mut codes = StartCodes::new(100);
            let mut found = Vec::new();
            for chunk in data.chunks(piece) {
                while let Some(code) = codes.next_in(chunk) {
                    found.push(code);
                }
            }
            assert_eq!(found, whole, "pieces of {piece}");
            assert_eq!((codes.position(), codes.trailing_zeros()), (118, 1));
        }
    }

    #[test]
    fn nal_units_trim_trailing_zeros_and_skip_empty_ones() {
        let data = [0, 0, 1, 0x67, 0, 0, 0, 1, 0, 0, 1, 0x68, 0, 0];
        let nals: Vec<&[u8]> = split_annexb(&data).into_iter().map(|r| &data[r]).collect();
        assert_eq!(nals, [&[0x67][..], &[0x68]]);
        assert!(split_annexb(&[0, 0, 0, 0]).is_empty());
        assert!(split_annexb(&[0, 1, 0, 1]).is_empty());
    }
}
