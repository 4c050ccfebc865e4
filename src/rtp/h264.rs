//! H.264 RTP payloads (RFC 6184, packetization-mode=1): single NAL unit
//! packets, STAP-A for runs of small NAL units, FU-A for NAL units over the
//! payload budget. AUD and filler data are not sent.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::h264::nal_type;

const STAP_A: u8 = 24;
const FU_A: u8 = 28;

/// Whether a NAL unit goes out over RTP: not empty, not an access unit
/// delimiter or filler data.
pub fn is_sent(nal: &[u8]) -> bool {
    nal.first().is_some_and(|header| !matches!(header & 0x1f, nal_type::AUD | nal_type::FILLER))
}

/// Packetizes a sequence of NAL units (no start codes) into RTP payloads of
/// at most `max_payload` bytes.
pub fn packetize_nals(nals: impl IntoIterator<Item = Bytes>, max_payload: usize) -> Vec<Bytes> {
    let max_payload = max_payload.max(16);
    let mut out = Vec::new();
    // Small NAL units waiting to be sent together in one STAP-A.
    let mut pending: Vec<Bytes> = Vec::new();
    let mut pending_size = 1; // the STAP-A header byte
    for nal in nals {
        if !is_sent(&nal) {
            continue;
        }
        let aggregated = 2 + nal.len();
        if pending_size + aggregated <= max_payload {
            pending_size += aggregated;
            pending.push(nal);
            continue;
        }
        flush_pending(&mut pending, &mut out);
        pending_size = 1;
        // Fits a STAP-A with others (header byte + length + NAL).
        if aggregated < max_payload {
            pending_size += aggregated;
            pending.push(nal);
        } else if nal.len() <= max_payload {
            out.push(nal);
        } else {
            fragment(&nal, max_payload, &mut out);
        }
    }
    flush_pending(&mut pending, &mut out);
    out
}

/// Sends one waiting NAL unit as is, several as one STAP-A.
fn flush_pending(pending: &mut Vec<Bytes>, out: &mut Vec<Bytes>) {
    match pending.len() {
        0 => {}
        1 => out.push(pending.remove(0)),
        _ => {
            let size = 1 + pending.iter().map(|n| 2 + n.len()).sum::<usize>();
            let mut buf = BytesMut::with_capacity(size);
            // F is the OR of the F bits, NRI the highest NRI (RFC 6184 5.7.1).
            let f = pending.iter().fold(0, |acc, n| acc | (n[0] & 0x80));
            let nri = pending.iter().map(|n| n[0] & 0x60).max().unwrap_or(0);
            buf.put_u8(f | nri | STAP_A);
            for nal in pending.drain(..) {
                // A pending NAL unit is smaller than the payload budget, so
                // its length fits 16 bits.
                buf.put_u16(nal.len() as u16);
                buf.put_slice(&nal);
            }
            out.push(buf.freeze());
        }
    }
}

/// FU-A: the NAL header becomes an indicator + FU header on each fragment.
/// One buffer per NAL unit, sliced into the fragments.
fn fragment(nal: &Bytes, max_payload: usize, out: &mut Vec<Bytes>) {
    let header = nal[0];
    let body = &nal[1..];
    let chunk = max_payload - 2;
    let count = body.len().div_ceil(chunk);
    let mut buf = BytesMut::with_capacity(body.len() + 2 * count);
    let mut bounds = Vec::with_capacity(count);
    for (i, piece) in body.chunks(chunk).enumerate() {
        let start = buf.len();
        let mut fu_header = header & 0x1f;
        if i == 0 {
            fu_header |= 0x80;
        }
        if i + 1 == count {
            fu_header |= 0x40;
        }
        buf.put_u8((header & 0xe0) | FU_A);
        buf.put_u8(fu_header);
        buf.put_slice(piece);
        bounds.push(start..buf.len());
    }
    let all = buf.freeze();
    out.extend(bounds.into_iter().map(|range| all.slice(range)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::MAX_PAYLOAD;
    use rtc::rtp::packetizer::Depacketizer;

    fn nal(kind: u8, len: usize, fill: u8) -> Bytes {
        let mut v = vec![0x60 | kind];
        v.extend((0..len - 1).map(|i| fill.wrapping_add(i as u8)));
        Bytes::from(v)
    }

    /// Depacketizes with the rtc crate's own H.264 depacketizer (Annex-B
    /// output) and splits back into NAL units.
    fn roundtrip(payloads: &[Bytes]) -> Vec<Bytes> {
        let mut depacketizer = rtc::rtp::codec::h264::H264Packet::default();
        let mut annexb = BytesMut::new();
        for payload in payloads {
            annexb.extend_from_slice(&depacketizer.depacketize(payload).unwrap());
        }
        let annexb = annexb.freeze();
        crate::codec::h264::split_annexb(&annexb).into_iter().map(|r| annexb.slice(r)).collect()
    }

    #[test]
    fn small_nals_aggregate_large_ones_fragment() {
        let nals = vec![nal(9, 2, 0), nal(7, 20, 1), nal(8, 5, 2), nal(5, 5000, 3), nal(1, 800, 4), nal(1, 800, 5)];
        let payloads = packetize_nals(nals.clone(), MAX_PAYLOAD);
        assert!(payloads.iter().all(|p| p.len() <= MAX_PAYLOAD));
        assert_eq!(payloads[0][0] & 0x1f, STAP_A, "SPS+PPS aggregated");
        assert_eq!(payloads[1][0] & 0x1f, FU_A);
        // 5000-byte IDR -> 5 fragments, then the two 800-byte slices alone.
        assert_eq!(payloads.len(), 1 + 5 + 2);
        assert_eq!(roundtrip(&payloads), nals[1..].to_vec(), "AUD dropped, the rest byte for byte");
    }

    #[test]
    fn every_size_roundtrips() {
        for len in [1, 2, 100, MAX_PAYLOAD - 3, MAX_PAYLOAD - 2, MAX_PAYLOAD, MAX_PAYLOAD + 1, 3 * MAX_PAYLOAD] {
            let nals = vec![nal(1, len, 7), nal(1, len.max(2) - 1, 9)];
            let payloads = packetize_nals(nals.clone(), MAX_PAYLOAD);
            assert!(payloads.iter().all(|p| p.len() <= MAX_PAYLOAD), "len {len}");
            assert_eq!(roundtrip(&payloads), nals, "len {len}");
        }
    }
}
