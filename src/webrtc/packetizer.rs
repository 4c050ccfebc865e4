//! H.264 RTP packetization (RFC 6184, packetization-mode=1), done once per
//! access unit and shared by every viewer.
//!
//! In: an [`AccessUnit`] from the hub. Out: an [`Arc<PacketizedAu>`]: the
//! RTP payloads of that access unit (single NAL unit packets, STAP-A for
//! runs of small NAL units, FU-A for NAL units over the payload budget) and
//! its 90 kHz capture timestamp. Headers are not built here: each viewer
//! stamps its own SSRC, payload type, sequence number and timestamp on the
//! shared payload `Bytes` (a reference-count bump, no copy).
//!
//! [`PacketCache`] makes "once" true across viewers: the first viewer task
//! that needs an access unit packetizes it under the cache lock (tens of
//! microseconds even for a large IDR), later ones get the same `Arc`. It is
//! keyed by the access unit's `seq`, so a viewer starting from the hub's GOP
//! cache finds those frames already packetized. It is bounded by entries and
//! bytes; a viewer so far behind that its frame was evicted packetizes it
//! again (counted in [`PacketCache::packetized`]), which costs CPU, never
//! correctness. Only viewer tasks touch it, never the media thread.
//!
//! Access unit delimiters and filler data are not sent: they carry nothing a
//! WebRTC receiver uses. The cached SPS/PPS go in front of an IDR that lacked
//! them ([`AccessUnit::nal_units`]). Nothing here fails on any byte content:
//! an empty NAL unit is skipped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::h264::{nal_type, AccessUnit};

/// RTP payload budget: 1200 bytes of RTP packet minus the 12-byte header,
/// which keeps SRTP + UDP + IPv6 well under a 1280-byte path MTU.
pub const MAX_PAYLOAD: usize = 1200 - 12;

const STAP_A: u8 = 24;
const FU_A: u8 = 28;

/// One access unit, ready to send.
#[derive(Debug)]
pub struct PacketizedAu {
    /// The access unit's `seq` (the cache key).
    pub seq: u64,
    /// Capture time on a 90 kHz clock (wraps, as RTP timestamps do).
    pub rtp_time: u32,
    /// RTP payloads in order; the marker bit goes on the last one.
    pub payloads: Vec<Bytes>,
    /// Sum of payload sizes, for the cache bound.
    pub bytes: usize,
}

/// 90 kHz RTP clock from a CLOCK_MONOTONIC capture time.
pub fn rtp_time_90k(capture: Duration) -> u32 {
    // u128: no overflow for any Duration; truncation to u32 is RTP's wrap.
    (capture.as_nanos() * 90_000 / 1_000_000_000) as u32
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
        let Some(&header) = nal.first() else { continue };
        if matches!(header & 0x1f, nal_type::AUD | nal_type::FILLER) {
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

/// One viewer's RTP packet around a shared payload: only the header is this
/// viewer's; the payload is a reference-count bump, not a copy.
pub fn rtp_packet(
    payload: &Bytes,
    ssrc: u32,
    payload_type: u8,
    sequence_number: u16,
    timestamp: u32,
    marker: bool,
) -> rtc::rtp::Packet {
    rtc::rtp::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            marker,
            payload_type,
            sequence_number,
            timestamp,
            ssrc,
            ..Default::default()
        },
        payload: payload.clone(),
    }
}

/// Packetizes one access unit.
pub fn packetize(au: &AccessUnit, max_payload: usize) -> PacketizedAu {
    let payloads = packetize_nals(au.nal_units(), max_payload);
    let bytes = payloads.iter().map(Bytes::len).sum();
    PacketizedAu { seq: au.seq, rtp_time: rtp_time_90k(au.capture_time), payloads, bytes }
}

/// Entries the cache keeps at most: a 30 fps camera's 1 s GOP and a little,
/// so a viewer started from the GOP cache hits. Each entry holds its FU-A
/// copies (~25 KB a frame at 1080p 6 Mbit/s) and pins its access unit's
/// buffer (single NAL unit payloads are slices of it), so this bounds
/// memory. With a longer GOP a joining viewer packetizes the older part of
/// it again (tens of microseconds a frame, once).
pub const CACHE_MAX_ENTRIES: usize = 32;
/// Bytes of payload the cache keeps at most.
pub const CACHE_MAX_BYTES: usize = 4 << 20;

/// Packetized access units shared by all viewers, keyed by `seq`.
#[derive(Debug, Default)]
pub struct PacketCache {
    entries: Mutex<Cache>,
    packetized: AtomicU64,
    hits: AtomicU64,
}

#[derive(Debug, Default)]
struct Cache {
    /// Ordered by `seq`.
    queue: VecDeque<Arc<PacketizedAu>>,
    bytes: usize,
}

impl PacketCache {
    pub fn new() -> PacketCache {
        PacketCache::default()
    }

    /// The packets of `au`, packetized now if no viewer did it before.
    pub fn get(&self, au: &AccessUnit) -> Arc<PacketizedAu> {
        // The lock only guards in-memory bookkeeping; a poisoned one still
        // holds a consistent queue (pushes and pops are single calls).
        let mut cache = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let position = cache.queue.binary_search_by_key(&au.seq, |p| p.seq);
        match position {
            Ok(found) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                cache.queue[found].clone()
            }
            Err(insert_at) => {
                let packets = Arc::new(packetize(au, MAX_PAYLOAD));
                self.packetized.fetch_add(1, Ordering::Relaxed);
                cache.bytes += packets.bytes;
                cache.queue.insert(insert_at, packets.clone());
                while cache.queue.len() > CACHE_MAX_ENTRIES || cache.bytes > CACHE_MAX_BYTES {
                    match cache.queue.pop_front() {
                        Some(old) => cache.bytes -= old.bytes,
                        None => break,
                    }
                }
                packets
            }
        }
    }

    /// Access units packetized since start (misses).
    pub fn packetized(&self) -> u64 {
        self.packetized.load(Ordering::Relaxed)
    }

    /// Lookups served from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn rtp_clock_is_90khz() {
        assert_eq!(rtp_time_90k(Duration::from_secs(1)), 90_000);
        assert_eq!(rtp_time_90k(Duration::from_millis(33)), 2970);
    }
}
