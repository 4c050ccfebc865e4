//! Plain RTP and SRTP to `HOST:PORT` over UDP: how Janus's streaming plugin
//! (an `rtp` mountpoint), mediamtx, GStreamer's `udpsrc` and many SFUs take
//! a camera.
//!
//! `rtp://HOST:PORT?pt=96[&rtcpport=N]` and
//! `srtp://HOST:PORT?pt=96&key=BASE64[&rtcpport=N]`: the stream's RTP
//! payloads (RFC 6184 or RFC 7798, from the stream's shared packet cache)
//! under our own SSRC, payload type `pt` (default 96), sequence numbers and
//! 90 kHz timestamps, one datagram per packet from a socket connected to
//! `HOST:PORT` (so an ICMP port-unreachable shows as an error). SRTP uses the
//! SDES-style inline key: 30 bytes of base64, a 16-byte master key and a
//! 14-byte master salt, AES_CM_128_HMAC_SHA1_80 (`srtpsuite = 80` and
//! `srtpcrypto` in Janus), encrypted with the `rtc` stack's SRTP.
//!
//! RTCP goes to `rtcpport` (default `PORT + 1`; `rtcpport=0` turns it off)
//! from a second socket: a sender report (with a CNAME) every second, so
//! the receiver can map RTP time to wall-clock time and learns where to send
//! feedback (Janus's `videortcpport` answers to the address its RTCP came
//! from); a BYE when the target stops. A PLI or FIR coming back restarts the
//! target from the cached keyframe (see the [module doc](super)); receiver
//! reports give the RTT and loss in `/paths`; NACKs are not answered (an SFU
//! taking plain RTP repairs with a keyframe request). SRTCP is used for an
//! SRTP target; feedback is read encrypted or plain (Janus sends it plain).
//!
//! A send that fails (nothing listens: ICMP port unreachable) drops that
//! packet, is counted once per frame and shows the target as `error` in
//! `/paths`; the session goes on, since a receiver may appear any time.
//! Failing to resolve the host or to open a socket ends the session (and
//! the supervisor retries).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use rtc::rtcp::goodbye::Goodbye;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::source_description::{SdesType, SourceDescription, SourceDescriptionChunk, SourceDescriptionItem};
use rtc::shared::marshal::Marshal;
use rtc::srtp::context::Context as SrtpContext;
use rtc::srtp::protection_profile::ProtectionProfile;
use tokio::net::UdpSocket;

use super::Context;
use crate::rtp::Stamp;
use crate::webrtc::KeyframeGate;

/// Sender reports are sent this often (RFC 3550 allows more than its 5 s
/// minimum for a single sender; an SFU learns the feedback address sooner).
const SENDER_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// An RTP packet at most: [`crate::rtp::MAX_PAYLOAD`] plus headers and the
/// SRTP tag, with room.
const MAX_DATAGRAM: usize = 1500;

/// An `rtp://` or `srtp://` target, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpTarget {
    /// A name or an address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Where RTCP goes; None: no RTCP.
    pub rtcp_port: Option<u16>,
    pub payload_type: u8,
    pub srtp: Option<SrtpKey>,
}

/// An SRTP master key and salt (AES_CM_128_HMAC_SHA1_80).
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpKey {
    key: [u8; 16],
    salt: [u8; 14],
}

impl fmt::Debug for SrtpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SrtpKey(***)")
    }
}

impl SrtpKey {
    /// The SDES inline form: base64 of the 16-byte key then the 14-byte salt.
    pub fn parse(text: &str) -> Result<SrtpKey, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| "key= is not base64 (SDES inline: base64 of a 30-byte master key and salt)".to_string())?;
        if bytes.len() != 30 {
            return Err(format!(
                "key= holds {} bytes; AES_CM_128_HMAC_SHA1_80 needs 30 (16 of master key, 14 of salt)",
                bytes.len()
            ));
        }
        let mut key = SrtpKey { key: [0; 16], salt: [0; 14] };
        key.key.copy_from_slice(&bytes[..16]);
        key.salt.copy_from_slice(&bytes[16..]);
        Ok(key)
    }

    fn context(&self) -> Result<SrtpContext, String> {
        let provider = rtc::crypto::default_provider().map_err(|e| format!("SRTP: {e}"))?;
        SrtpContext::new(&self.key, &self.salt, ProtectionProfile::Aes128CmHmacSha1_80, None, None, provider.crypto())
            .map_err(|e| format!("SRTP: {e}"))
    }
}

impl RtpTarget {
    /// Checks an `rtp://` / `srtp://` URL and its query (`pt`, `rtcpport`,
    /// `key`).
    pub fn parse(url: &url::Url, query: &[(String, String)]) -> Result<RtpTarget, String> {
        let scheme = url.scheme();
        let host = url.host_str().unwrap_or("").trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() {
            return Err(format!("{scheme}:// target: no host"));
        }
        let port = url.port().ok_or_else(|| format!("{scheme}://{host}: needs a port ({scheme}://HOST:PORT)"))?;
        if port == 0 {
            return Err(format!("{scheme}://{host}: port 0"));
        }
        if !url.path().is_empty() && url.path() != "/" {
            return Err(format!("{scheme}://{host}:{port}: no path expected"));
        }
        let mut target = RtpTarget { host, port, rtcp_port: port.checked_add(1), payload_type: 96, srtp: None };
        for (name, value) in query {
            match name.as_str() {
                "pt" => {
                    target.payload_type = value
                        .parse()
                        .ok()
                        .filter(|pt| (96..=127).contains(pt))
                        .ok_or_else(|| format!("pt={value}: a dynamic payload type, 96-127"))?
                }
                "rtcpport" => {
                    let rtcp: u16 = value.parse().map_err(|_| format!("rtcpport={value}: a port, or 0 for no RTCP"))?;
                    target.rtcp_port = (rtcp != 0).then_some(rtcp);
                }
                "key" if scheme == "srtp" => target.srtp = Some(SrtpKey::parse(value)?),
                "key" => return Err("key= applies to srtp:// only".into()),
                other => return Err(format!("unknown parameter {other:?} (pt, rtcpport, key)")),
            }
        }
        if scheme == "srtp" && target.srtp.is_none() {
            return Err("srtp:// needs key=BASE64 (30 bytes: master key and salt)".into());
        }
        Ok(target)
    }
}

/// The SRTP state of a session: one context per direction (a context is
/// one-way).
struct Srtp {
    outbound: SrtpContext,
    inbound: SrtpContext,
}

/// One session: sends until shutdown (Ok) or until it cannot go on (Err).
pub(crate) async fn run(target: &RtpTarget, cx: &Context) -> Result<(), String> {
    let codec = cx.stream.hub.parameter_sets().map(|ps| ps.codec()).ok_or("no stream yet")?;
    let destination = resolve(&target.host, target.port).await?;
    let rtp = open(destination).await?;
    let rtcp = match target.rtcp_port {
        Some(port) => Some(open(SocketAddr::new(destination.ip(), port)).await?),
        None => None,
    };
    let mut srtp = match &target.srtp {
        Some(key) => Some(Srtp { outbound: key.context()?, inbound: key.context()? }),
        None => None,
    };
    let ssrc = crate::random::random_u32();
    let mut session = Session {
        cx,
        destination,
        ssrc,
        cname: Bytes::from(format!("streaming-server-{}-{ssrc:08x}", cx.stream.name)),
        packets: 0,
        octets: 0,
        last_capture: None,
        buf: vec![0u8; MAX_DATAGRAM],
    };
    log::info!(
        "publish: {} -> {}: sending {codec} to {destination} (payload type {}, RTCP {})",
        cx.stream.name,
        cx.status.label,
        target.payload_type,
        target.rtcp_port.map_or("off".to_string(), |p| format!("to port {p}"))
    );
    cx.publishing();
    let mut subscription = cx.subscribe();
    let mut stamp = Stamp::new(ssrc, target.payload_type, subscription.backlog);
    let mut gate = KeyframeGate::new();
    let mut reports = tokio::time::interval(SENDER_REPORT_INTERVAL);
    reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut feedback = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            biased;
            _ = cx.shutdown.wait() => {
                if let Some(rtcp) = &rtcp {
                    let bye = session.goodbye();
                    let _ = tokio::time::timeout(super::STOP_TIMEOUT, send_rtcp(rtcp, srtp.as_mut(), &bye)).await;
                }
                return Ok(());
            }
            _ = reports.tick(), if rtcp.is_some() => {
                if let (Some(rtcp), Some(report)) = (&rtcp, session.sender_report()) {
                    // Nobody listening for RTCP is not an error worth showing:
                    // many receivers take RTP alone.
                    if let Err(e) = send_rtcp(rtcp, srtp.as_mut(), &report).await {
                        log::debug!("publish: {}: RTCP: {e}", cx.status.label);
                    }
                }
            }
            received = recv_some(rtcp.as_ref(), &mut feedback) => {
                let Ok(length) = received else { continue };
                let keyframe = session.feedback(&feedback[..length], srtp.as_mut());
                if keyframe && gate.allow(&cx.stream) {
                    drop(subscription);
                    subscription = cx.subscribe();
                    stamp.catchup = subscription.backlog;
                    log::debug!("publish: {}: keyframe request: restarting from the cached keyframe", cx.status.label);
                }
            }
            frame = subscription.frames.recv_async() => {
                let Ok(au) = frame else { return Err("the hub went away".into()) };
                if au.codec != codec {
                    return Err(format!("the stream's codec changed to {}: starting a new session", au.codec));
                }
                session.send_frame(&rtp, srtp.as_mut(), &mut stamp, &au).await;
                if stamp.catchup > 0 {
                    // Pace the cached GOP, as for viewers.
                    tokio::time::sleep(crate::webrtc::peer::CATCHUP_PACE).await;
                }
            }
        }
    }
}

/// Per-session sender state.
struct Session<'a> {
    cx: &'a Context,
    destination: SocketAddr,
    ssrc: u32,
    cname: Bytes,
    /// RTP packets and payload octets sent (for sender reports; wrap as
    /// RFC 3550 says).
    packets: u32,
    octets: u32,
    /// The capture time and RTP timestamp of the last frame sent.
    last_capture: Option<(Duration, u32)>,
    buf: Vec<u8>,
}

impl Session<'_> {
    /// Sends one frame's packets; a failed send drops that packet (counted
    /// once per frame).
    async fn send_frame(
        &mut self,
        socket: &UdpSocket,
        mut srtp: Option<&mut Srtp>,
        stamp: &mut Stamp,
        au: &crate::codec::AccessUnit,
    ) {
        let packets = self.cx.stream.packets.get(au);
        let (mut sent_packets, mut sent_bytes) = (0usize, 0usize);
        let mut error = None;
        for packet in stamp.packets(&packets, None) {
            let length = match packet.marshal_to(&mut self.buf) {
                Ok(length) => length,
                Err(e) => {
                    // Payloads are at most MAX_PAYLOAD: cannot happen.
                    error = Some(format!("RTP packet: {e}"));
                    continue;
                }
            };
            let result = match srtp.as_deref_mut() {
                Some(srtp) => match srtp.outbound.encrypt_rtp(&self.buf[..length]) {
                    Ok(sealed) => socket.send(&sealed).await,
                    Err(e) => {
                        error = Some(format!("SRTP: {e}"));
                        continue;
                    }
                },
                None => socket.send(&self.buf[..length]).await,
            };
            match result {
                Ok(_) => {
                    sent_packets += 1;
                    sent_bytes += length;
                    self.packets = self.packets.wrapping_add(1);
                    self.octets = self.octets.wrapping_add(packet.payload.len() as u32);
                }
                Err(e) => error = Some(send_error(&e, self.destination)),
            }
        }
        if let Some(timestamp) = stamp.last_timestamp() {
            self.last_capture = Some((au.capture_time, timestamp));
        }
        self.cx.sent(sent_packets, sent_bytes);
        if let Some(error) = error {
            self.cx.status.send_failed(&error);
        }
    }

    /// A sender report for now, with our CNAME; None before the first frame.
    fn sender_report(&self) -> Option<Vec<Box<dyn rtc::rtcp::Packet>>> {
        let (capture, timestamp) = self.last_capture?;
        // The RTP time of now: the last frame's timestamp plus the time
        // since its capture, at 90 kHz.
        let since = crate::clock::monotonic_now().saturating_sub(capture);
        let rtp_time = timestamp.wrapping_add(crate::rtp::rtp_time_90k(since));
        let report = SenderReport {
            ssrc: self.ssrc,
            ntp_time: crate::clock::ntp_now(),
            rtp_time,
            packet_count: self.packets,
            octet_count: self.octets,
            ..Default::default()
        };
        Some(vec![Box::new(report), Box::new(self.description())])
    }

    /// A BYE for when the target stops: a last report, CNAME, BYE.
    fn goodbye(&self) -> Vec<Box<dyn rtc::rtcp::Packet>> {
        let mut packets = self.sender_report().unwrap_or_else(|| vec![Box::new(self.description())]);
        packets.push(Box::new(Goodbye { sources: vec![self.ssrc], reason: Bytes::from_static(b"stopping") }));
        packets
    }

    fn description(&self) -> SourceDescription {
        SourceDescription {
            chunks: vec![SourceDescriptionChunk {
                source: self.ssrc,
                items: vec![SourceDescriptionItem { sdes_type: SdesType::SdesCname, text: self.cname.clone() }],
            }],
        }
    }

    /// Reads one RTCP datagram from the target (SRTCP or plain); true if it
    /// asks for a keyframe. Receiver reports update the status's RTT and
    /// loss. Anything unreadable is ignored.
    fn feedback(&self, datagram: &[u8], srtp: Option<&mut Srtp>) -> bool {
        let decrypted = srtp.and_then(|srtp| srtp.inbound.decrypt_rtcp(datagram).ok());
        let mut raw = match &decrypted {
            Some(plain) => Bytes::copy_from_slice(plain),
            None => Bytes::copy_from_slice(datagram),
        };
        let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut raw) else { return false };
        let mut keyframe = false;
        for packet in &packets {
            let any = packet.as_any();
            if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                self.cx.status.metrics.keyframe_requests.inc();
                keyframe = true;
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                for block in rr.reports.iter().filter(|b| b.ssrc == self.ssrc) {
                    let now = (crate::clock::ntp_now() >> 16) as u32;
                    let rtt = crate::webrtc::peer::round_trip(block.last_sender_report, block.delay, now);
                    self.cx.status.set_quality(rtt, Some(block.total_lost));
                }
            }
        }
        keyframe
    }
}

/// Sends one compound RTCP packet (SRTCP for an SRTP target).
async fn send_rtcp(
    socket: &UdpSocket,
    srtp: Option<&mut Srtp>,
    packets: &[Box<dyn rtc::rtcp::Packet>],
) -> Result<(), String> {
    let plain = rtc::rtcp::packet::marshal(packets).map_err(|e| e.to_string())?;
    let datagram = match srtp {
        Some(srtp) => srtp.outbound.encrypt_rtcp(&plain).map_err(|e| format!("SRTCP: {e}"))?,
        None => plain,
    };
    socket.send(&datagram).await.map(|_| ()).map_err(|e| e.to_string())
}

/// Waits for a datagram on `socket`; never resolves without one.
async fn recv_some(socket: Option<&UdpSocket>, buf: &mut [u8]) -> std::io::Result<usize> {
    match socket {
        // An ICMP error on the RTCP socket (nobody listens for RTCP) comes
        // back as an error here: ignored by the caller.
        Some(socket) => socket.recv(buf).await,
        None => std::future::pending().await,
    }
}

/// The target's address (the first the resolver gives).
async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    let mut addrs = tokio::net::lookup_host((host, port)).await.map_err(|e| format!("cannot resolve {host}: {e}"))?;
    addrs.next().ok_or_else(|| format!("cannot resolve {host}: no address"))
}

/// A UDP socket on an ephemeral port, connected to `peer`.
async fn open(peer: SocketAddr) -> Result<UdpSocket, String> {
    let any = match peer.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0)).await.map_err(|e| format!("UDP socket: {e}"))?;
    socket.connect(peer).await.map_err(|e| format!("UDP to {peer}: {e}"))?;
    Ok(socket)
}

/// A failed send, in words.
fn send_error(error: &std::io::Error, destination: SocketAddr) -> String {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => {
            format!("refused: nothing receives on {destination} (ICMP port unreachable)")
        }
        _ => format!("send to {destination}: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sdes_key_is_key_then_salt() {
        let bytes: Vec<u8> = (0..30).collect();
        let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let key = SrtpKey::parse(&text).unwrap();
        assert_eq!(&key.key[..], &bytes[..16]);
        assert_eq!(&key.salt[..], &bytes[16..]);
        assert_eq!(format!("{key:?}"), "SrtpKey(***)");
        assert!(key.context().is_ok());
    }

    #[test]
    fn srtp_from_one_key_decrypts_with_the_same_key() {
        // What a receiver configured with the same key (Janus srtpcrypto)
        // does with our packets.
        let key = SrtpKey::parse("WbTBosdVUZqEb6Htqhn+m3z7wUh4RJVR8nE15GbN").unwrap();
        let packet = crate::rtp::rtp_packet(&Bytes::from_static(b"\x65payload"), 7, 96, 1, 90, true);
        let plain = packet.marshal().unwrap();
        let sealed = key.context().unwrap().encrypt_rtp(&plain).unwrap();
        assert_eq!(sealed.len(), plain.len() + 10, "an 80-bit tag");
        assert_ne!(&sealed[12..plain.len()], &plain[12..], "the payload is encrypted");
        let opened = key.context().unwrap().decrypt_rtp(&sealed).unwrap();
        assert_eq!(&opened[..], &plain[..]);
    }
}
