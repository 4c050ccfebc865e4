//! Sending a session's media: RTP headers stamped around the stream's
//! shared payloads, RTCP sender reports, the interleaved framing of TCP
//! sessions, and the task that plays a UDP session.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rtc::shared::marshal::Marshal;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;

use super::{Inner, Session, SENDER_REPORT_INTERVAL, STUCK_AFTER};
use crate::codec::AccessUnit;
use crate::hub::{Queued, StartAt, SubscribeOptions, Subscription};
use crate::metrics::StreamMetrics;
use crate::rtp::PacketizedAu;

// Pause between catch-up frames (the GOP cache) on UDP, as for WebRTC
// viewers: a second of bitrate back to back overflows a receiver's socket
// buffer. TCP needs none: the connection paces itself.
use crate::webrtc::peer::CATCHUP_PACE as UDP_CATCHUP_PACE;

/// RTP header state of one session.
#[derive(Debug)]
pub(super) struct RtpSender {
    ssrc: u32,
    payload_type: u8,
    /// The next packet's sequence number.
    seq: u16,
    /// Session timestamp minus the stream's 90 kHz capture clock.
    offset: u32,
    packets: u32,
    /// Payload bytes sent (RFC 3550's octet count).
    octets: u32,
    /// RTP timestamp and capture time of the newest frame sent: the clock
    /// pair a sender report states.
    last: Option<(u32, Duration)>,
}

impl RtpSender {
    pub fn new(ssrc: u32) -> RtpSender {
        RtpSender {
            ssrc,
            payload_type: super::sdp::PAYLOAD_TYPE,
            seq: crate::random::random_u32() as u16,
            offset: crate::random::random_u32(),
            packets: 0,
            octets: 0,
            last: None,
        }
    }

    /// The sequence number the next packet gets (RTP-Info's `seq`).
    pub fn next_seq(&self) -> u16 {
        self.seq
    }

    /// This session's RTP timestamp for a 90 kHz capture time.
    pub fn timestamp(&self, rtp_time: u32) -> u32 {
        rtp_time.wrapping_add(self.offset)
    }

    /// Stamps one frame: each shared payload with this session's 12-byte
    /// header (the marker on the last packet), in order.
    pub fn stamp<'a>(
        &'a mut self,
        packets: &'a PacketizedAu,
        capture: Duration,
    ) -> impl Iterator<Item = ([u8; 12], &'a Bytes)> + 'a {
        let timestamp = self.timestamp(packets.rtp_time);
        self.last = Some((timestamp, capture));
        let count = packets.payloads.len();
        packets.payloads.iter().enumerate().map(move |(i, payload)| {
            let packet =
                crate::rtp::rtp_packet(payload, self.ssrc, self.payload_type, self.seq, timestamp, i + 1 == count);
            self.seq = self.seq.wrapping_add(1);
            self.packets = self.packets.wrapping_add(1);
            self.octets = self.octets.wrapping_add(payload.len() as u32);
            let mut header = [0u8; 12];
            // A version-2 header with no CSRC and no extension is exactly 12
            // bytes: marshalling it into 12 cannot fail.
            packet.header.marshal_to(&mut header).expect("a plain RTP header fits 12 bytes");
            (header, payload)
        })
    }

    /// An RTCP sender report for the newest frame sent, once one was.
    pub fn sender_report(&self) -> Option<Bytes> {
        let (rtp_time, capture) = self.last?;
        let ntp_time = crate::clock::ntp_of_monotonic(capture)?;
        let report = rtc::rtcp::sender_report::SenderReport {
            ssrc: self.ssrc,
            ntp_time,
            rtp_time,
            packet_count: self.packets,
            octet_count: self.octets,
            reports: Vec::new(),
            profile_extensions: Bytes::new(),
        };
        report.marshal().ok().map(BytesMut::freeze)
    }
}

/// One frame (or report) for a TCP-interleaved session: `$`, channel,
/// length and header in one small buffer per packet, the payloads shared.
pub(super) fn interleaved_frame(
    sender: &mut RtpSender,
    packets: &PacketizedAu,
    capture: Duration,
    channel: u8,
) -> VecDeque<Bytes> {
    let mut headers = BytesMut::with_capacity(16 * packets.payloads.len());
    let mut chunks = VecDeque::with_capacity(2 * packets.payloads.len());
    for (header, payload) in sender.stamp(packets, capture) {
        headers.put_u8(b'$');
        headers.put_u8(channel);
        // Payloads are at most rtp::MAX_PAYLOAD: the length fits 16 bits.
        headers.put_u16((12 + payload.len()) as u16);
        headers.put_slice(&header);
        chunks.push_back(headers.split().freeze());
        chunks.push_back(payload.clone());
    }
    chunks
}

/// An RTCP packet on an interleaved channel.
pub(super) fn interleaved_rtcp(report: &Bytes, channel: u8) -> VecDeque<Bytes> {
    let mut prefix = BytesMut::with_capacity(4);
    prefix.put_u8(b'$');
    prefix.put_u8(channel);
    prefix.put_u16(report.len() as u16);
    VecDeque::from([prefix.freeze(), report.clone()])
}

/// Why a write to a client failed.
#[derive(Debug)]
pub(super) enum WriteFailure {
    /// No byte accepted for [`STUCK_AFTER`]: the client stopped reading.
    Stuck,
    Io(std::io::Error),
}

/// Writes `chunks` whole with vectored writes (no copy into one buffer).
/// Each write must make progress within [`STUCK_AFTER`]. Returns the bytes
/// written.
pub(super) async fn write_chunks<W: AsyncWrite + Unpin>(
    writer: &mut W,
    chunks: &mut VecDeque<Bytes>,
) -> Result<usize, WriteFailure> {
    let mut total = 0;
    while !chunks.is_empty() {
        let slices: Vec<IoSlice<'_>> = chunks.iter().take(64).map(|c| IoSlice::new(c)).collect();
        let written = match tokio::time::timeout(STUCK_AFTER, writer.write_vectored(&slices)).await {
            Err(_) => return Err(WriteFailure::Stuck),
            Ok(Err(e)) => return Err(WriteFailure::Io(e)),
            Ok(Ok(0)) => return Err(WriteFailure::Io(std::io::ErrorKind::WriteZero.into())),
            Ok(Ok(n)) => n,
        };
        drop(slices);
        total += written;
        let mut left = written;
        while left > 0 {
            let Some(front) = chunks.front_mut() else { break };
            if left >= front.len() {
                left -= front.len();
                chunks.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
    }
    Ok(total)
}

/// A UDP session's server ports and its client's.
#[derive(Debug)]
pub(super) struct UdpPair {
    pub rtp: UdpSocket,
    pub rtcp: UdpSocket,
    pub client_rtp: SocketAddr,
    pub client_rtcp: SocketAddr,
}

impl UdpPair {
    /// Binds an RTP/RTCP pair on `ip`: from `range` (an even port and the
    /// next, as RFC 3550 asks), or ephemeral (the RTCP port the one after the
    /// RTP port when it is free). Media goes to `client_ip` only.
    pub fn bind(
        ip: IpAddr,
        range: Option<(u16, u16)>,
        next: &AtomicU16,
        client_ip: IpAddr,
        client_ports: (u16, u16),
    ) -> std::io::Result<UdpPair> {
        let (rtp, rtcp) = match range {
            Some((low, high)) => bind_from_range(ip, low, high, next)?,
            None => bind_ephemeral(ip)?,
        };
        Ok(UdpPair {
            rtp: UdpSocket::from_std(rtp)?,
            rtcp: UdpSocket::from_std(rtcp)?,
            client_rtp: SocketAddr::new(client_ip, client_ports.0),
            client_rtcp: SocketAddr::new(client_ip, client_ports.1),
        })
    }

    pub fn server_ports(&self) -> (u16, u16) {
        let port = |s: &UdpSocket| s.local_addr().map(|a| a.port()).unwrap_or(0);
        (port(&self.rtp), port(&self.rtcp))
    }
}

fn udp(ip: IpAddr, port: u16) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(SocketAddr::new(ip, port))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn bind_from_range(
    ip: IpAddr,
    low: u16,
    high: u16,
    next: &AtomicU16,
) -> std::io::Result<(std::net::UdpSocket, std::net::UdpSocket)> {
    // In u32: an odd LOW of 65535 has no even port after it.
    let first = u32::from(low) + u32::from(low % 2);
    let pairs = (u32::from(high) + 1).saturating_sub(first) / 2;
    if pairs == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "the range has no even/odd port pair"));
    }
    let start = u32::from(next.fetch_add(1, Ordering::Relaxed)) % pairs;
    for i in 0..pairs {
        // first + 2 * (pairs - 1) + 1 <= high: both fit u16.
        let port = (first + ((start + i) % pairs) * 2) as u16;
        if let Ok(rtp) = udp(ip, port) {
            if let Ok(rtcp) = udp(ip, port + 1) {
                return Ok((rtp, rtcp));
            }
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, format!("every port pair of {low}-{high} is in use")))
}

fn bind_ephemeral(ip: IpAddr) -> std::io::Result<(std::net::UdpSocket, std::net::UdpSocket)> {
    for _ in 0..8 {
        let rtp = udp(ip, 0)?;
        let port = rtp.local_addr()?.port();
        if let Some(next) = port.checked_add(1) {
            if let Ok(rtcp) = udp(ip, next) {
                return Ok((rtp, rtcp));
            }
        }
    }
    // No adjacent pair free: two ports apart (clients take both from
    // server_port= as they are).
    Ok((udp(ip, 0)?, udp(ip, 0)?))
}

/// Counts a playing client on its path until dropped.
pub(super) struct PlayingGuard(StreamMetrics);

impl PlayingGuard {
    pub fn new(metrics: &StreamMetrics) -> PlayingGuard {
        metrics.rtsp_clients.inc();
        metrics.rtsp_sessions.inc();
        PlayingGuard(metrics.clone())
    }
}

impl Drop for PlayingGuard {
    fn drop(&mut self) {
        self.0.rtsp_clients.dec();
    }
}

/// A client's hub subscription: from the GOP cache's keyframe.
pub(super) fn subscribe(session: &Session) -> Subscription {
    let stream = &session.path.stream;
    stream.hub.subscribe(SubscribeOptions {
        name: format!("rtsp {}", super::short(&session.id)),
        budget: super::CLIENT_QUEUE,
        start: StartAt::GopCache,
        dropped_metric: Some(stream.metrics.rtsp_frames_dropped.clone()),
    })
}

/// The shared packets of `au` (packetized once for every receiver).
pub(super) fn packets_of(session: &Session, au: &AccessUnit) -> Arc<PacketizedAu> {
    session.path.stream.packets.get(au)
}

/// Plays a UDP session until it is torn down, times out or the server stops.
pub(super) async fn play_udp(
    inner: Arc<Inner>,
    session: Arc<Session>,
    pair: Arc<UdpPair>,
    subscription: Subscription,
    first: Option<Queued>,
    mut sender: RtpSender,
    playing: PlayingGuard,
) {
    let metrics = session.path.stream.metrics.clone();
    let mut catchup = subscription.backlog;
    let mut datagram = Vec::with_capacity(1500);
    let mut rtcp_in = vec![0u8; 1500];
    let mut reports =
        tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(1), SENDER_REPORT_INTERVAL);
    reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut send_errors = 0u64;
    let mut pending = first;
    let why = loop {
        let au = match pending.take() {
            Some(au) => au,
            None => tokio::select! {
                biased;
                _ = session.stopped.wait() => break "stopped".to_string(),
                _ = reports.tick() => {
                    if let Some(report) = sender.sender_report() {
                        if pair.rtcp.send_to(&report, pair.client_rtcp).await.is_ok() {
                            metrics.rtsp_bytes_sent.inc_by(report.len() as u64);
                        }
                    }
                    continue;
                }
                received = pair.rtcp.recv_from(&mut rtcp_in) => {
                    // Receiver reports keep the session alive (RFC 2326 12.37).
                    if let Ok((_, from)) = received {
                        if from.ip() == pair.client_rtcp.ip() {
                            session.touch();
                        }
                    }
                    continue;
                }
                frame = subscription.frames.recv_async() => match frame {
                    Ok(au) => au,
                    Err(_) => break "the stream went away".to_string(),
                },
            },
        };
        let packets = packets_of(&session, &au);
        let mut bytes = 0u64;
        for (header, payload) in sender.stamp(&packets, au.capture_time) {
            // A datagram needs header and payload together: one 1.2 KB copy
            // into a reused buffer (the kernel copies it once more anyway).
            datagram.clear();
            datagram.extend_from_slice(&header);
            datagram.extend_from_slice(payload);
            match pair.rtp.send_to(&datagram, pair.client_rtp).await {
                Ok(n) => bytes += n as u64,
                Err(e) => {
                    send_errors += 1;
                    if send_errors == 1 {
                        log::debug!("rtsp: session {}: send to {}: {e}", super::short(&session.id), pair.client_rtp);
                    }
                }
            }
        }
        metrics.rtsp_bytes_sent.inc_by(bytes);
        metrics.rtsp_frames_sent.inc();
        if catchup > 0 {
            catchup -= 1;
            tokio::time::sleep(UDP_CATCHUP_PACE).await;
        }
    };
    drop(playing);
    log::debug!("rtsp: UDP player of session {} ended: {why}", super::short(&session.id));
    // A stream that went away ends the session too.
    inner.end_session(&session.id, &why);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::shared::marshal::Unmarshal;

    fn frame(payloads: &[&'static [u8]]) -> PacketizedAu {
        let payloads: Vec<Bytes> = payloads.iter().map(|p| Bytes::from_static(p)).collect();
        PacketizedAu { seq: 0, rtp_time: 1000, bytes: payloads.iter().map(Bytes::len).sum(), payloads }
    }

    #[test]
    fn headers_are_stamped_around_shared_payloads() {
        let mut sender = RtpSender::new(0xfeed);
        sender.seq = u16::MAX;
        let au = frame(&[b"\x7c\x85a", b"\x7c\x45b"]);
        let stamped: Vec<([u8; 12], Bytes)> =
            sender.stamp(&au, Duration::from_secs(1)).map(|(h, p)| (h, p.clone())).collect();
        assert_eq!(stamped.len(), 2);
        let header = |i: usize| rtc::rtp::header::Header::unmarshal(&mut &stamped[i].0[..]).unwrap();
        assert_eq!((header(0).sequence_number, header(1).sequence_number), (u16::MAX, 0));
        assert!(!header(0).marker && header(1).marker, "the marker on the frame's last packet");
        assert_eq!((header(0).ssrc, header(0).payload_type), (0xfeed, 96));
        assert_eq!(header(0).timestamp, 1000u32.wrapping_add(sender.offset));
        assert_eq!(stamped[0].1.as_ptr(), au.payloads[0].as_ptr(), "payloads are shared, not copied");
    }

    #[test]
    fn interleaved_frames_carry_channel_and_length() {
        let mut sender = RtpSender::new(1);
        let au = frame(&[b"\x65abc"]);
        let chunks = interleaved_frame(&mut sender, &au, Duration::ZERO, 6);
        assert_eq!(chunks.len(), 2);
        assert_eq!(&chunks[0][..4], &[b'$', 6, 0, 16]);
        assert_eq!(chunks[0].len(), 16);
        assert_eq!(chunks[1], au.payloads[0]);
    }

    #[test]
    fn a_sender_report_states_the_last_frame_and_the_counts() {
        let mut sender = RtpSender::new(9);
        assert!(sender.sender_report().is_none(), "nothing sent yet");
        let au = frame(&[b"\x65abc", b"\x41de"]);
        let _ = sender.stamp(&au, crate::clock::monotonic_now()).count();
        let report = sender.sender_report().unwrap();
        let parsed = rtc::rtcp::sender_report::SenderReport::unmarshal(&mut &report[..]).unwrap();
        assert_eq!((parsed.ssrc, parsed.packet_count, parsed.octet_count), (9, 2, 7));
        assert_eq!(parsed.rtp_time, sender.timestamp(1000));
        assert!(parsed.ntp_time > 0);
    }

    #[test]
    fn port_pairs_from_a_range_are_even_and_adjacent() {
        let next = AtomicU16::new(0);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let (rtp, rtcp) = bind_from_range(ip, 41001, 41999, &next).unwrap();
        let (a, b) = (rtp.local_addr().unwrap().port(), rtcp.local_addr().unwrap().port());
        assert!(a % 2 == 0 && b == a + 1 && (41002..=41999).contains(&b), "{a}-{b}");
        assert!(bind_from_range(ip, 65535, 65535, &next).is_err(), "no pair in the range");
        assert!(bind_from_range(ip, 41000, 41000, &next).is_err(), "one port is no pair");
    }

    #[tokio::test]
    async fn partial_writes_resume_where_they_stopped() {
        let (mut client, mut server) = tokio::io::duplex(7);
        let mut chunks = VecDeque::from([
            Bytes::from_static(b"hello "),
            Bytes::from_static(b"world, "),
            Bytes::from_static(b"rtsp"),
        ]);
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut server, &mut out).await.unwrap();
            out
        });
        let written = write_chunks(&mut client, &mut chunks).await.unwrap();
        drop(client);
        assert_eq!(written, 17);
        assert_eq!(reader.await.unwrap(), b"hello world, rtsp");
    }
}
