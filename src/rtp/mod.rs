//! RTP packetization, done once per access unit and shared by every
//! receiver (WebRTC viewers, publish targets; an RTSP server next). One
//! module per payload format: [`h264`] (RFC 6184, packetization-mode=1) and
//! [`h265`] (RFC 7798); [`stamp`] puts one receiver's headers around the
//! shared payloads.
//!
//! In: an [`AccessUnit`] from the hub. Out: an [`Arc<PacketizedAu>`]: the
//! RTP payloads of that access unit in its codec's payload format (single
//! NAL unit packets, aggregates of small NAL units, fragments of NAL units
//! over the payload budget) and its 90 kHz capture timestamp. Headers are
//! not built here: each receiver stamps its own SSRC, payload type,
//! sequence number and timestamp on the shared payload `Bytes` (a
//! reference-count bump, no copy).
//!
//! [`PacketCache`] makes "once" true across receivers: the stream owns one
//! ([`Stream::packets`](crate::stream::Stream)), the first receiver task
//! that needs an access unit packetizes it under the cache lock (tens of
//! microseconds even for a large IDR), later ones get the same `Arc`. It is
//! keyed by the access unit's `seq`, so a receiver starting from the hub's
//! GOP cache finds those frames already packetized. It is bounded by entries
//! and bytes; a receiver so far behind that its frame was evicted packetizes
//! it again (counted in [`PacketCache::packetized`]), which costs CPU, never
//! correctness. Only receiver tasks touch it, never the media thread.
//!
//! Access unit delimiters and filler data are not sent: they carry nothing a
//! receiver uses. The cached parameter sets go in front of a keyframe that
//! lacked them ([`AccessUnit::nal_units`]). Nothing here fails on any byte
//! content: an empty NAL unit is skipped.

pub mod h264;
pub mod h265;
pub mod stamp;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::codec::{AccessUnit, Codec};

pub use stamp::Stamp;

/// RTP payload budget: 1200 bytes of RTP packet minus the 12-byte header,
/// which keeps SRTP + UDP + IPv6 well under a 1280-byte path MTU.
pub const MAX_PAYLOAD: usize = 1200 - 12;

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

/// Whether a NAL unit of `codec` goes out over RTP (see the module docs).
pub fn is_sent(codec: Codec, nal: &[u8]) -> bool {
    match codec {
        Codec::H264 => h264::is_sent(nal),
        Codec::H265 => h265::is_sent(nal),
    }
}

/// 90 kHz RTP clock from a CLOCK_MONOTONIC capture time.
pub fn rtp_time_90k(capture: Duration) -> u32 {
    // u128: no overflow for any Duration; truncation to u32 is RTP's wrap.
    (capture.as_nanos() * 90_000 / 1_000_000_000) as u32
}

/// One receiver's RTP packet around a shared payload: only the header is
/// this receiver's; the payload is a reference-count bump, not a copy.
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

/// Packetizes one access unit in its codec's payload format.
pub fn packetize(au: &AccessUnit, max_payload: usize) -> PacketizedAu {
    let payloads = match au.codec {
        Codec::H264 => h264::packetize_nals(au.nal_units(), max_payload),
        Codec::H265 => h265::packetize_nals(au.nal_units(), max_payload),
    };
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

/// Packetized access units shared by all receivers of a stream, keyed by `seq`.
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

    /// The packets of `au`, packetized now if no receiver did it before.
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

    #[test]
    fn rtp_clock_is_90khz() {
        assert_eq!(rtp_time_90k(Duration::from_secs(1)), 90_000);
        assert_eq!(rtp_time_90k(Duration::from_millis(33)), 2970);
    }
}
