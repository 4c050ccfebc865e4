//! RTP headers for one receiver around the shared payloads of
//! [`PacketizedAu`]s: its SSRC, payload type, sequence numbers and
//! timestamps. Used by every output that sends RTP (WebRTC viewers, publish
//! targets), so all of them start and pace the same way.
//!
//! Timestamps: frames caught up from the GOP cache are stamped 1 tick apart
//! (a receiver shows the newest of them at once instead of replaying the
//! GOP at camera pace), live frames keep the capture cadence (90 kHz from the
//! capture times), and a timestamp never goes back (a camera restart, a
//! restart from the cache).

use super::PacketizedAu;

/// RTP header state of one receiver (a WebRTC viewer, a publish target).
#[derive(Clone, Debug)]
pub struct Stamp {
    pub ssrc: u32,
    pub payload_type: u8,
    /// The next packet's sequence number.
    pub seq: u16,
    /// Receiver timestamp minus camera timestamp (wrapping).
    offset: Option<u32>,
    /// The last timestamp stamped.
    last: Option<u32>,
    /// Frames still to send as catch-up (from the GOP cache).
    pub catchup: usize,
    /// abs-capture-time extension id (None: not negotiated).
    pub abs_capture_id: Option<u8>,
}

impl Stamp {
    /// A receiver's header state: random sequence number and timestamp
    /// start (RFC 3550 5.1); `catchup` frames from the GOP cache first.
    pub fn new(ssrc: u32, payload_type: u8, catchup: usize) -> Stamp {
        Stamp {
            ssrc,
            payload_type,
            seq: crate::random::random_u32() as u16,
            offset: None,
            last: None,
            catchup,
            abs_capture_id: None,
        }
    }

    /// The last timestamp stamped, if any (sender reports map it to a
    /// wall-clock time).
    pub fn last_timestamp(&self) -> Option<u32> {
        self.last
    }

    /// The RTP timestamp for a frame captured at `camera` (90 kHz).
    /// Catch-up frames are 1 tick apart, so a browser shows the newest of
    /// them at once; live frames keep the capture cadence. Never goes back.
    pub fn timestamp(&mut self, camera: u32) -> u32 {
        let ts = match (self.catchup, self.offset, self.last) {
            (1.., _, last) => {
                self.catchup -= 1;
                last.map_or_else(crate::random::random_u32, |l| l.wrapping_add(1))
            }
            (0, Some(offset), Some(last)) => {
                let ts = camera.wrapping_add(offset);
                // Capture times went back or jumped (camera restart): stay
                // monotonic, a frame interval after the last one.
                let step = ts.wrapping_sub(last) as i32;
                if step <= 0 || step > 90_000 * 10 {
                    last.wrapping_add(3000)
                } else {
                    ts
                }
            }
            (0, _, last) => last.map_or_else(crate::random::random_u32, |l| l.wrapping_add(3000)),
        };
        self.offset = Some(ts.wrapping_sub(camera));
        self.last = Some(ts);
        ts
    }

    /// The packets of one frame. `capture_ntp`, when given and negotiated,
    /// goes on the last packet as abs-capture-time: once per frame is all a
    /// receiver needs (libwebrtc interpolates the frame's other packets), and
    /// the last packet is the one that completes the frame, so the receiver's
    /// capture -> receive figure covers the whole frame.
    pub fn packets<'a>(
        &'a mut self,
        au: &'a PacketizedAu,
        capture_ntp: Option<u64>,
    ) -> impl Iterator<Item = rtc::rtp::Packet> + 'a {
        let live = self.catchup == 0;
        let timestamp = self.timestamp(au.rtp_time);
        let count = au.payloads.len();
        // Catch-up frames from the GOP cache are up to a GOP old by design;
        // their age is not the stream's delay, so they carry no capture time.
        let extension = self.abs_capture_id.filter(|_| live).zip(capture_ntp);
        au.payloads.iter().enumerate().map(move |(i, payload)| {
            let sequence_number = self.seq;
            self.seq = self.seq.wrapping_add(1);
            let last = i + 1 == count;
            let mut packet = super::rtp_packet(payload, self.ssrc, self.payload_type, sequence_number, timestamp, last);
            if let (true, Some((id, ntp))) = (last, extension) {
                // Short form: the 64-bit NTP capture time only (8 bytes, a
                // one-byte-header element); id 1..=14 checked at negotiation.
                let _ = packet.header.set_extension(id, bytes::Bytes::copy_from_slice(&ntp.to_be_bytes()));
            }
            packet
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(catchup: usize) -> Stamp {
        Stamp { ssrc: 1, payload_type: 96, seq: 0, offset: None, last: None, catchup, abs_capture_id: None }
    }

    #[test]
    fn catch_up_frames_are_packed_then_live_keeps_cadence() {
        let mut s = stamp(3);
        let a = s.timestamp(1000);
        let b = s.timestamp(4000);
        let c = s.timestamp(7000);
        assert_eq!((b.wrapping_sub(a), c.wrapping_sub(b)), (1, 1));
        let d = s.timestamp(10_000);
        assert_eq!(d.wrapping_sub(c), 3000, "live frames keep the camera's spacing");
        // A restart from the cache: older capture times, still monotonic.
        s.catchup = 2;
        let e = s.timestamp(1000);
        let f = s.timestamp(4000);
        assert_eq!((e.wrapping_sub(d), f.wrapping_sub(e)), (1, 1));
        let g = s.timestamp(13_000);
        assert_eq!(g.wrapping_sub(f), 9000);
        // Capture time going backwards (camera restart): still forward.
        let h = s.timestamp(5);
        assert_eq!(h.wrapping_sub(g), 3000);
        assert_eq!(s.last_timestamp(), Some(h));
    }

    #[test]
    fn headers_are_stamped_per_receiver() {
        let au = PacketizedAu {
            seq: 0,
            rtp_time: 0,
            payloads: vec![bytes::Bytes::from_static(b"\x65a"), bytes::Bytes::from_static(b"\x65b")],
            bytes: 4,
        };
        let mut s = Stamp {
            ssrc: 7,
            payload_type: 102,
            seq: u16::MAX,
            offset: None,
            last: None,
            catchup: 0,
            abs_capture_id: Some(5),
        };
        let packets: Vec<_> = s.packets(&au, Some(0x0123_4567_89ab_cdef)).collect();
        assert_eq!(packets.len(), 2);
        assert_eq!((packets[0].header.sequence_number, packets[1].header.sequence_number), (u16::MAX, 0));
        assert!(!packets[0].header.marker && packets[1].header.marker);
        assert!(packets.iter().all(|p| p.header.ssrc == 7 && p.header.payload_type == 102));
        assert_eq!(packets[0].payload.as_ptr(), au.payloads[0].as_ptr(), "payloads are shared, not copied");
        assert!(packets[0].header.extensions.is_empty(), "capture time only on the last packet");
        assert_eq!(packets[1].header.get_extension(5).as_deref(), Some(&0x0123_4567_89ab_cdef_u64.to_be_bytes()[..]));
        // A catch-up frame (from the GOP cache) carries none.
        s.catchup = 1;
        assert!(s.packets(&au, Some(1)).all(|p| p.header.extensions.is_empty()));
    }
}
