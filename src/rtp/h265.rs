//! H.265 RTP payload format (RFC 7798), without DONL
//! (`sprop-max-don-diff` 0, `tx-mode=SRST`): packetizer and depacketizer.
//!
//! Packetizer. In: the NAL units of one access unit (no start codes, e.g.
//! `AccessUnit::nal_units`) and a payload budget. Out: RTP payloads of at
//! most that size, in order, the marker bit belonging on the last one:
//! single NAL unit packets; Aggregation Packets (type 48) for runs of small
//! NAL units such as VPS+SPS+PPS+SEI in front of an IRAP; Fragmentation
//! Units (type 49) for NAL units over the budget. Single NAL unit payloads
//! are the caller's `Bytes` (no copy); each fragmented NAL unit is copied
//! once into one buffer that all its fragments slice. Access unit
//! delimiters and filler data are dropped (nothing a receiver uses), and so
//! are NAL units shorter than their 2-byte header and types 48..=63
//! (unspecified in H.265; 48-50 would read as AP/FU/PACI). Nothing fails on
//! any byte content.
//!
//! Depacketizer ([`Depacketizer`]). In: each RTP payload with its sequence
//! number and marker bit, in sequence order (after any jitter buffer). Out:
//! the NAL units completed by that packet and whether it ends the access
//! unit. A malformed payload is a [`DepacketizeError`] and the depacketizer
//! stays usable; a fragmented NAL unit with a fragment missing (a sequence
//! gap, a missing start or end) is dropped and counted, never emitted
//! corrupt. [`payload_starts_irap`] tells from one payload whether it
//! starts a keyframe, for receivers that do not reassemble.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::h265::{is_irap, nal_type, nal_unit_type, nuh_layer_id, nuh_temporal_id_plus1};

pub use super::MAX_PAYLOAD;

/// Payload header (2) + FU header (1).
const FU_OVERHEAD: usize = 3;
/// Payload header of an aggregation packet.
const AP_HEADER: usize = 2;

/// Whether a NAL unit goes out over RTP: a whole 2-byte header, not an
/// access unit delimiter or filler data, and not a type RFC 7798 uses for
/// its own packets (48 and up).
pub fn is_sent(nal: &[u8]) -> bool {
    nal.len() >= 2 && {
        let kind = nal_unit_type(nal);
        !matches!(kind, nal_type::AUD | nal_type::FD) && kind < nal_type::AP
    }
}

/// Packetizes a sequence of NAL units (no start codes) into RTP payloads of
/// at most `max_payload` bytes (at least 16 is used).
pub fn packetize_nals(nals: impl IntoIterator<Item = Bytes>, max_payload: usize) -> Vec<Bytes> {
    let max_payload = max_payload.max(16);
    let mut out = Vec::new();
    // Small NAL units waiting to be sent together in one aggregation packet.
    let mut pending: Vec<Bytes> = Vec::new();
    let mut pending_size = AP_HEADER;
    for nal in nals {
        if !is_sent(&nal) {
            continue;
        }
        // An aggregation unit is a 16-bit size and the NAL unit.
        let aggregated = 2 + nal.len();
        let fits_ap_size = nal.len() <= usize::from(u16::MAX);
        if fits_ap_size && pending_size + aggregated <= max_payload {
            pending_size += aggregated;
            pending.push(nal);
            continue;
        }
        flush_pending(&mut pending, &mut out);
        pending_size = AP_HEADER;
        if fits_ap_size && pending_size + aggregated <= max_payload {
            // Room for others after it: hold it back.
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

/// Sends one waiting NAL unit as is, several as one aggregation packet.
fn flush_pending(pending: &mut Vec<Bytes>, out: &mut Vec<Bytes>) {
    match pending.len() {
        0 => {}
        1 => out.append(pending),
        _ => {
            let size = AP_HEADER + pending.iter().map(|n| 2 + n.len()).sum::<usize>();
            let mut buf = BytesMut::with_capacity(size);
            // RFC 7798 4.4.2: F is the OR of the F bits, LayerId and TID the
            // lowest of the aggregated NAL units'.
            let f = pending.iter().any(|n| n[0] & 0x80 != 0);
            let layer = pending.iter().map(|n| nuh_layer_id(n)).min().unwrap_or(0);
            let tid = pending.iter().map(|n| nuh_temporal_id_plus1(n)).min().unwrap_or(1);
            let header =
                (u16::from(f) << 15) | (u16::from(nal_type::AP) << 9) | (u16::from(layer) << 3) | u16::from(tid);
            buf.put_u16(header);
            for nal in pending.drain(..) {
                // Pending NAL units were checked to fit 16 bits.
                buf.put_u16(nal.len() as u16);
                buf.put_slice(&nal);
            }
            out.push(buf.freeze());
        }
    }
}

/// Fragmentation units: the NAL header becomes a payload header of type 49
/// (F, LayerId, TID kept) plus an FU header carrying S, E and the type. One
/// buffer per NAL unit, sliced into the fragments. Called only for NAL
/// units over the budget, so there are always two fragments or more (RFC
/// 7798 forbids S and E in one FU).
fn fragment(nal: &Bytes, max_payload: usize, out: &mut Vec<Bytes>) {
    let (header, body) = nal.split_at(2);
    let payload_header = [(header[0] & 0x81) | (nal_type::FU << 1), header[1]];
    let kind = nal_unit_type(nal);
    let chunk = max_payload - FU_OVERHEAD;
    let count = body.len().div_ceil(chunk);
    let mut buf = BytesMut::with_capacity(body.len() + FU_OVERHEAD * count);
    let mut bounds = Vec::with_capacity(count);
    for (i, piece) in body.chunks(chunk).enumerate() {
        let start = buf.len();
        let mut fu_header = kind;
        if i == 0 {
            fu_header |= 0x80;
        }
        if i + 1 == count {
            fu_header |= 0x40;
        }
        buf.put_slice(&payload_header);
        buf.put_u8(fu_header);
        buf.put_slice(piece);
        bounds.push(start..buf.len());
    }
    let all = buf.freeze();
    out.extend(bounds.into_iter().map(|range| all.slice(range)));
}

/// True if an RTP H.265 payload carries (the start of) an IRAP NAL unit:
/// a single NAL unit packet, any unit of an aggregation packet, or the
/// first fragment of a fragmentation unit.
pub fn payload_starts_irap(payload: &[u8]) -> bool {
    if payload.len() < 2 {
        return false;
    }
    match nal_unit_type(payload) {
        nal_type::AP => {
            // [payload header] then (u16 size, NAL unit) repeated.
            let mut rest = payload.get(2..).unwrap_or_default();
            while rest.len() >= 3 {
                let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                if is_irap(nal_unit_type(&rest[2..])) {
                    return true;
                }
                rest = rest.get(2 + size..).unwrap_or_default();
            }
            false
        }
        nal_type::FU => payload.get(2).is_some_and(|fu| fu & 0x80 != 0 && is_irap(fu & 0x3f)),
        kind => is_irap(kind),
    }
}

/// Why a payload was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DepacketizeError {
    /// Shorter than a payload header, or an FU without room for data.
    Truncated,
    /// The payload header's F bit is set: the sender says it is damaged.
    ForbiddenBit,
    /// `TID` (nuh_temporal_id_plus1) is 0, which H.265 forbids.
    ZeroTemporalId,
    /// An aggregation packet that does not parse.
    BadAggregation(&'static str),
    /// A fragmentation unit that does not parse or does not continue the
    /// fragmented NAL unit in progress.
    BadFragment(&'static str),
    /// PACI packets (type 50) are not used with `tx-mode=SRST` here.
    Paci,
    /// A reassembled NAL unit over [`Depacketizer::MAX_NAL_SIZE`].
    TooLarge,
}

impl DepacketizeError {
    /// Label for error metrics.
    pub fn label(&self) -> &'static str {
        match self {
            DepacketizeError::Truncated => "truncated",
            DepacketizeError::ForbiddenBit => "forbidden_bit",
            DepacketizeError::ZeroTemporalId => "zero_temporal_id",
            DepacketizeError::BadAggregation(_) => "bad_aggregation_packet",
            DepacketizeError::BadFragment(_) => "bad_fragmentation_unit",
            DepacketizeError::Paci => "paci",
            DepacketizeError::TooLarge => "too_large",
        }
    }
}

impl fmt::Display for DepacketizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DepacketizeError::Truncated => write!(f, "H.265 RTP payload too short"),
            DepacketizeError::ForbiddenBit => write!(f, "H.265 RTP payload header has F set"),
            DepacketizeError::ZeroTemporalId => write!(f, "H.265 RTP payload header has TID 0"),
            DepacketizeError::BadAggregation(why) => write!(f, "H.265 aggregation packet: {why}"),
            DepacketizeError::BadFragment(why) => write!(f, "H.265 fragmentation unit: {why}"),
            DepacketizeError::Paci => write!(f, "H.265 PACI packets are not supported"),
            DepacketizeError::TooLarge => write!(f, "H.265 fragmented NAL unit over the size limit"),
        }
    }
}

impl std::error::Error for DepacketizeError {}

/// What one payload completed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Depacketized {
    /// Complete NAL units (2-byte header included, no start code).
    pub nal_units: Vec<Bytes>,
    /// The packet had the marker bit: the access unit is complete.
    pub end_of_access_unit: bool,
}

/// A NAL unit being reassembled from fragmentation units.
#[derive(Debug)]
struct Reassembly {
    data: BytesMut,
    nal_type: u8,
    /// The payload header's layer and TID bits, identical in every fragment.
    header_tail: [u8; 2],
}

/// Sans-IO RFC 7798 depacketizer (no DONL).
#[derive(Debug, Default)]
pub struct Depacketizer {
    reassembly: Option<Reassembly>,
    last_sequence: Option<u16>,
    dropped_nal_units: u64,
    stray_fragments: u64,
}

impl Depacketizer {
    /// Largest NAL unit reassembled: a 4K IDR is a few MB at most; garbage
    /// claiming more must not grow a buffer without end.
    pub const MAX_NAL_SIZE: usize = 16 << 20;

    pub fn new() -> Depacketizer {
        Depacketizer::default()
    }

    /// Fragmented NAL units dropped because a fragment was lost (or the
    /// access unit ended, or another packet interrupted them).
    pub fn dropped_nal_units(&self) -> u64 {
        self.dropped_nal_units
    }

    /// Middle or end fragments that arrived with no start (their NAL unit's
    /// start was lost): dropped.
    pub fn stray_fragments(&self) -> u64 {
        self.stray_fragments
    }

    fn drop_reassembly(&mut self) {
        if self.reassembly.take().is_some() {
            self.dropped_nal_units += 1;
        }
    }

    /// Takes one RTP payload. `sequence_number` finds lost packets (a gap
    /// in the middle of a fragmented NAL unit drops it); `marker` ends the
    /// access unit.
    pub fn push(
        &mut self,
        sequence_number: u16,
        payload: &Bytes,
        marker: bool,
    ) -> Result<Depacketized, DepacketizeError> {
        let in_order = self.last_sequence.is_none_or(|last| last.wrapping_add(1) == sequence_number);
        self.last_sequence = Some(sequence_number);
        if !in_order {
            self.drop_reassembly();
        }
        let result = self.parse(payload);
        if result.is_err() {
            // Whatever was being reassembled cannot continue past a bad packet.
            self.drop_reassembly();
        }
        let nal_units = result?;
        if marker {
            // The access unit ended: a NAL unit still open lost its end.
            self.drop_reassembly();
        }
        Ok(Depacketized { nal_units, end_of_access_unit: marker })
    }

    fn parse(&mut self, payload: &Bytes) -> Result<Vec<Bytes>, DepacketizeError> {
        let [first, second, ..] = payload[..] else {
            return Err(DepacketizeError::Truncated);
        };
        if first & 0x80 != 0 {
            return Err(DepacketizeError::ForbiddenBit);
        }
        if second & 7 == 0 {
            return Err(DepacketizeError::ZeroTemporalId);
        }
        match nal_unit_type(payload) {
            nal_type::AP => {
                self.drop_reassembly();
                parse_aggregation(payload)
            }
            nal_type::FU => self.parse_fragment(payload),
            nal_type::PACI => {
                self.drop_reassembly();
                Err(DepacketizeError::Paci)
            }
            _ => {
                self.drop_reassembly();
                Ok(vec![payload.clone()])
            }
        }
    }

    fn parse_fragment(&mut self, payload: &Bytes) -> Result<Vec<Bytes>, DepacketizeError> {
        let (Some(&fu_header), Some(data)) = (payload.get(2), payload.get(3..)) else {
            return Err(DepacketizeError::Truncated);
        };
        if data.is_empty() {
            return Err(DepacketizeError::Truncated);
        }
        let (start, end, kind) = (fu_header & 0x80 != 0, fu_header & 0x40 != 0, fu_header & 0x3f);
        if start && end {
            return Err(DepacketizeError::BadFragment("S and E both set"));
        }
        if (nal_type::AP..=nal_type::PACI).contains(&kind) {
            return Err(DepacketizeError::BadFragment("FuType is an RTP packet type"));
        }
        let header_tail = [payload[0] & 0x81, payload[1]];
        if start {
            self.drop_reassembly();
            let mut data_buf = BytesMut::with_capacity(2 + data.len() * 8);
            data_buf.put_u8(header_tail[0] | (kind << 1));
            data_buf.put_u8(header_tail[1]);
            data_buf.put_slice(data);
            self.reassembly = Some(Reassembly { data: data_buf, nal_type: kind, header_tail });
            return Ok(Vec::new());
        }
        let Some(reassembly) = self.reassembly.as_mut() else {
            // Its start was lost (already counted as a gap) or never sent.
            self.stray_fragments += 1;
            return Ok(Vec::new());
        };
        if reassembly.nal_type != kind || reassembly.header_tail != header_tail {
            return Err(DepacketizeError::BadFragment("fragment of a different NAL unit"));
        }
        if reassembly.data.len() + data.len() > Self::MAX_NAL_SIZE {
            return Err(DepacketizeError::TooLarge);
        }
        reassembly.data.put_slice(data);
        if !end {
            return Ok(Vec::new());
        }
        let done = self.reassembly.take().map(|r| r.data.freeze());
        Ok(done.into_iter().collect())
    }
}

/// The aggregated NAL units of an AP (zero-copy slices of the payload).
fn parse_aggregation(payload: &Bytes) -> Result<Vec<Bytes>, DepacketizeError> {
    let mut units = Vec::new();
    let mut at = AP_HEADER;
    while at < payload.len() {
        let size_bytes = payload.get(at..at + 2).ok_or(DepacketizeError::BadAggregation("trailing byte"))?;
        let size = usize::from(u16::from_be_bytes([size_bytes[0], size_bytes[1]]));
        if size < 2 {
            return Err(DepacketizeError::BadAggregation("unit shorter than a NAL unit header"));
        }
        let end = at + 2 + size;
        if end > payload.len() {
            return Err(DepacketizeError::BadAggregation("unit size past the end"));
        }
        units.push(payload.slice(at + 2..end));
        at = end;
    }
    if units.len() < 2 {
        return Err(DepacketizeError::BadAggregation("fewer than two units"));
    }
    Ok(units)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NAL unit of `kind`, layer 0, TID 1, `len` bytes in all.
    fn nal(kind: u8, len: usize, fill: u8) -> Bytes {
        let mut v = vec![kind << 1, 0x01];
        v.extend((0..len.saturating_sub(2)).map(|i| fill.wrapping_add(i as u8)));
        Bytes::from(v)
    }

    /// Ours: NAL units of every payload, in order.
    fn depacketize(payloads: &[Bytes]) -> Vec<Bytes> {
        let mut d = Depacketizer::new();
        let mut out = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            let got = d.push(i as u16, p, i + 1 == payloads.len()).unwrap();
            out.extend(got.nal_units);
        }
        assert_eq!(d.dropped_nal_units(), 0);
        out
    }

    #[test]
    fn small_nals_aggregate_large_ones_fragment() {
        let nals = vec![
            nal(nal_type::AUD, 3, 0),
            nal(nal_type::VPS, 24, 1),
            nal(nal_type::SPS, 42, 2),
            nal(nal_type::PPS, 7, 3),
            nal(nal_type::PREFIX_SEI, 30, 4),
            nal(nal_type::IDR_W_RADL, 5000, 5),
            nal(nal_type::IDR_W_RADL, 800, 6),
            nal(nal_type::FD, 100, 7),
            nal(nal_type::SUFFIX_SEI, 900, 8),
        ];
        let payloads = packetize_nals(nals.clone(), MAX_PAYLOAD);
        assert!(payloads.iter().all(|p| p.len() <= MAX_PAYLOAD));
        // VPS+SPS+PPS+SEI in one AP: header type 48, layer 0, TID 1.
        assert_eq!(&payloads[0][..2], &[48 << 1, 0x01]);
        assert_eq!(payloads[0].len(), 2 + (2 + 24) + (2 + 42) + (2 + 7) + (2 + 30));
        // 5000-byte IDR: 4998 bytes of body in 1185-byte pieces -> 5 FUs.
        let fus: Vec<&Bytes> = payloads.iter().filter(|p| nal_unit_type(p) == nal_type::FU).collect();
        assert_eq!(fus.len(), 5);
        assert_eq!(fus[0][2], 0x80 | nal_type::IDR_W_RADL);
        assert_eq!(fus[4][2], 0x40 | nal_type::IDR_W_RADL);
        assert!(fus[1..4].iter().all(|f| f[2] == nal_type::IDR_W_RADL));
        // Then the two 800/900-byte NAL units alone (FD dropped between).
        assert_eq!(payloads.len(), 1 + 5 + 2);
        let sent: Vec<Bytes> =
            nals.iter().filter(|n| !matches!(nal_unit_type(n), nal_type::AUD | nal_type::FD)).cloned().collect();
        // (tests/h265_clips.rs and h265_properties.rs also check the rtc
        // crate's depacketizer reads the same.)
        assert_eq!(depacketize(&payloads), sent);
        assert!(payload_starts_irap(fus[0]) && !payload_starts_irap(fus[1]));
        assert!(!payload_starts_irap(&payloads[0]));
    }

    #[test]
    fn every_size_roundtrips() {
        for len in [
            2,
            3,
            100,
            MAX_PAYLOAD - 5,
            MAX_PAYLOAD - 4,
            MAX_PAYLOAD - 3,
            MAX_PAYLOAD,
            MAX_PAYLOAD + 1,
            3 * MAX_PAYLOAD,
        ] {
            let nals = vec![nal(1, len, 7), nal(1, len.max(3) - 1, 9)];
            let payloads = packetize_nals(nals.clone(), MAX_PAYLOAD);
            assert!(payloads.iter().all(|p| p.len() <= MAX_PAYLOAD), "len {len}");
            assert_eq!(depacketize(&payloads), nals, "len {len}");
        }
    }

    #[test]
    fn aggregation_header_takes_or_of_f_and_lowest_layer_and_tid() {
        // Layer 2 TID 3 and layer 1 TID 2: the lowest of each.
        let a = Bytes::from_static(&[0x02, 0x13, 0xaa]);
        let b = Bytes::from_static(&[0x02, 0x0a, 0xbb]);
        let p = packetize_nals([a.clone(), b.clone()], MAX_PAYLOAD);
        assert_eq!(p.len(), 1);
        assert_eq!(&p[0][..2], &[0x60, 0x0a]);
        // F is the OR: set on one unit, set on the AP.
        let f = Bytes::from_static(&[0x82, 0x13, 0xcc]);
        let p = packetize_nals([a, f], MAX_PAYLOAD);
        assert_eq!(&p[0][..2], &[0xe0, 0x13]);
    }

    #[test]
    fn fragments_keep_layer_and_tid() {
        let mut v = vec![0x27, 0x0b];
        v.extend(std::iter::repeat_n(0x55, 3000));
        let nal = Bytes::from(v);
        let payloads = packetize_nals([nal.clone()], 1000);
        assert!(payloads.iter().all(|p| p[..2] == [0x63, 0x0b] && p.len() <= 1000));
        assert_eq!(depacketize(&payloads), vec![nal]);
    }

    #[test]
    fn drops_what_receivers_cannot_use() {
        let p = packetize_nals(
            [Bytes::new(), Bytes::from_static(&[0x02]), nal(nal_type::AUD, 3, 0), nal(48, 10, 0), nal(63, 10, 0)],
            MAX_PAYLOAD,
        );
        assert!(p.is_empty());
    }

    #[test]
    fn lost_fragments_drop_their_nal_unit_only() {
        let big = nal(nal_type::TRAIL_R, 4000, 1);
        let small = nal(nal_type::TRAIL_R, 40, 2);
        let payloads = packetize_nals([big.clone()], MAX_PAYLOAD);
        assert_eq!(payloads.len(), 4);
        let mut d = Depacketizer::new();
        // Fragment 2 of 4 lost (sequence 1 missing).
        assert!(d.push(0, &payloads[0], false).unwrap().nal_units.is_empty());
        assert!(d.push(2, &payloads[2], false).unwrap().nal_units.is_empty());
        assert!(d.push(3, &payloads[3], false).unwrap().nal_units.is_empty());
        assert_eq!((d.dropped_nal_units(), d.stray_fragments()), (1, 2));
        // The next NAL unit comes through whole.
        let got = d.push(4, &small, true).unwrap();
        assert_eq!(got, Depacketized { nal_units: vec![small.clone()], end_of_access_unit: true });
        // A start whose end never comes before the marker is dropped too.
        assert!(d.push(5, &payloads[0], true).unwrap().nal_units.is_empty());
        assert_eq!(d.dropped_nal_units(), 2);
        // And a complete run works again.
        for (i, p) in payloads.iter().enumerate() {
            let got = d.push(6 + i as u16, p, i == 3).unwrap();
            if i == 3 {
                assert_eq!(got.nal_units, vec![big.clone()]);
            }
        }
    }

    #[test]
    fn malformed_payloads_are_errors_and_the_depacketizer_stays_usable() {
        let mut d = Depacketizer::new();
        let cases: Vec<(&[u8], &str)> = vec![
            (&[], "truncated"),
            (&[0x02], "truncated"),
            (&[0x82, 0x01, 0x00], "forbidden_bit"),
            (&[0x02, 0x00, 0x00], "zero_temporal_id"),
            (&[0x60, 0x01, 0x00, 0x03, 0x02, 0x01, 0x00], "bad_aggregation_packet"), // one unit only
            (&[0x60, 0x01, 0x00, 0x09, 0x02, 0x01], "bad_aggregation_packet"),       // past the end
            (&[0x60, 0x01, 0x00, 0x01, 0x02, 0x00, 0x02, 0x02, 0x01], "bad_aggregation_packet"), // size 1
            (&[0x60, 0x01, 0x00, 0x02, 0x02, 0x01, 0x00, 0x02, 0x02, 0x01, 0x07], "bad_aggregation_packet"), // trailing byte
            (&[0x62, 0x01, 0x81], "truncated"),
            (&[0x62, 0x01, 0xc1, 0x00], "bad_fragmentation_unit"), // S and E
            (&[0x62, 0x01, 0x80 | 49, 0x00], "bad_fragmentation_unit"),
            (&[0x64, 0x01, 0x00, 0x00, 0x00], "paci"),
        ];
        for (i, (payload, label)) in cases.into_iter().enumerate() {
            let err = d.push(i as u16, &Bytes::copy_from_slice(payload), false).unwrap_err();
            assert_eq!(err.label(), label, "{payload:02x?}: {err}");
        }
        // A two-unit AP of header-only NAL units (EOS, EOB) is fine.
        let ap = Bytes::from_static(&[0x60, 0x01, 0x00, 0x02, 0x48, 0x01, 0x00, 0x02, 0x4a, 0x01]);
        let got = d.push(100, &ap, true).unwrap();
        assert_eq!(got.nal_units, vec![Bytes::from_static(&[0x48, 0x01]), Bytes::from_static(&[0x4a, 0x01])]);
        // An FU of another NAL unit in the middle of one is refused and
        // drops both.
        let a = packetize_nals([nal(1, 3000, 0)], MAX_PAYLOAD);
        let b = packetize_nals([nal(19, 3000, 0)], MAX_PAYLOAD);
        d.push(101, &a[0], false).unwrap();
        assert_eq!(d.push(102, &b[1], false).unwrap_err().label(), "bad_fragmentation_unit");
        assert!(d.push(103, &a[1], false).unwrap().nal_units.is_empty());
    }

    #[test]
    fn irap_detection_in_every_packet_form() {
        assert!(payload_starts_irap(&nal(nal_type::CRA_NUT, 10, 0)));
        assert!(!payload_starts_irap(&nal(nal_type::TRAIL_R, 10, 0)));
        let ap = packetize_nals([nal(nal_type::VPS, 20, 0), nal(nal_type::IDR_N_LP, 20, 0)], MAX_PAYLOAD);
        assert!(payload_starts_irap(&ap[0]));
        let ap = packetize_nals([nal(nal_type::VPS, 20, 0), nal(nal_type::SPS, 20, 0)], MAX_PAYLOAD);
        assert!(!payload_starts_irap(&ap[0]));
        assert!(
            !payload_starts_irap(&[])
                && !payload_starts_irap(&[0x62, 0x01])
                && !payload_starts_irap(&[0x60, 0x01, 0xff])
        );
    }
}
