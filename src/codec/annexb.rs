//! Annex-B byte streams (ITU-T H.264 and H.265 annex B): NAL units
//! separated by start codes. Codec independent: both codecs and the sources
//! share it. Nothing here fails on any byte content.

use std::ops::Range;

/// Splits an Annex-B byte stream into NAL unit ranges (start codes and the
/// trailing zero bytes before the next start code excluded). Handles 3- and
/// 4-byte start codes; bytes before the first start code are ignored. Empty
/// NAL units are skipped.
pub fn split_annexb(data: &[u8]) -> Vec<Range<usize>> {
    let mut nals = Vec::new();
    let mut start = match find_start_code(data, 0) {
        Some((_, payload)) => payload,
        None => return nals,
    };
    loop {
        let (end, next) = match find_start_code(data, start) {
            Some((code_at, payload)) => (code_at, Some(payload)),
            None => (data.len(), None),
        };
        // trailing_zero_8bits belong to the byte stream, not the NAL unit.
        let mut trimmed = end;
        while trimmed > start && data[trimmed - 1] == 0 {
            trimmed -= 1;
        }
        if trimmed > start {
            nals.push(start..trimmed);
        }
        match next {
            Some(payload) => start = payload,
            None => return nals,
        }
    }
}

/// Finds the next `00 00 01` at or after `from`: returns where the start code
/// begins and where its payload begins.
fn find_start_code(data: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i + 3 <= data.len() {
        // Fast skip: a start code needs data[i+2] == 1 and data[i+1] == 0.
        match data[i + 2] {
            1 if data[i] == 0 && data[i + 1] == 0 => return Some((i, i + 3)),
            0 => i += 1,
            _ => i += 3,
        }
    }
    None
}

/// True if `data` begins with an Annex-B start code (after optional zeros).
pub fn starts_with_start_code(data: &[u8]) -> bool {
    let zeros = data.iter().take_while(|&&b| b == 0).count();
    zeros >= 2 && data.get(zeros) == Some(&1)
}
