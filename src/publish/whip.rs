//! WHIP (RFC 9725): the stream to an SFU over WebRTC, this server offering
//! a send-only peer connection.
//!
//! `whip+http://HOST[:PORT]/PATH` or `whip+https://...` names the endpoint
//! (`http(s)://HOST/PATH`); a bearer token, when configured, goes in
//! `Authorization` on every request. A session:
//!
//! 1. a peer connection with one send-only video transceiver carrying the
//!    stream's codec as the camera sends it (H.264 with the SPS's
//!    `profile-level-id` and packetization-mode=1; H.265 with its
//!    `profile-id`, `tier-flag`, `level-id`), NACK and PLI/FIR feedback, the
//!    same interceptors as a viewer ([`crate::webrtc::peer`]);
//! 2. the offer, once ICE gathering is complete (no trickle), `POST`ed as
//!    `application/sdp`; a 307/308 is followed (at most
//!    [`MAX_REDIRECTS`]); the answer is a 2xx (201 per the RFC) with the
//!    SDP answer and `Location`, the session's resource, resolved against
//!    the endpoint URL;
//! 3. once ICE and DTLS are up, frames from the GOP cache then live, as to a
//!    viewer: PLI/FIR restart from the cached keyframe (at most once a
//!    second), NACKs are answered from the last 256 packets sent;
//! 4. the session ends on shutdown (Ok), or when the endpoint goes silent
//!    (ICE consent lost for about 5 s: it was killed or restarted), closes
//!    DTLS, sends an RTCP BYE, or the stream's codec changes (Err: the
//!    supervisor retries with backoff). Either way the resource gets its
//!    `DELETE`, bounded ([`DELETE_TIMEOUT`]; [`super::STOP_TIMEOUT`] at
//!    shutdown), so the SFU frees it at once rather than at its own timeout.
//!
//! HTTP: `ureq` with rustls (the webpki roots), blocking calls on the
//! runtime's blocking pool, each bounded ([`HTTP_TIMEOUT`]). What the
//! endpoint sends is untrusted: the answer is read up to [`MAX_ANSWER`]
//! bytes and must parse as SDP; errors show the status and a short, cleaned
//! excerpt of the body, never the URL (a hosted SFU's URL can hold a stream
//! key) or the token.

use std::fmt;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use rtc::peer_connection::transport::RTCDtlsTransportState;
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters;
use tokio::sync::watch;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::peer_connection::transport::DtlsTransport;
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState, RTCSessionDescription};
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};

use super::Context;
use crate::codec::{Codec, VideoInfo};
use crate::rtp::Stamp;
use crate::webrtc::peer::{self, Feedback, Handler};
use crate::webrtc::KeyframeGate;

/// Each WHIP request (connect and whole exchange) at most this long.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A session's `DELETE` after a failure at most this long.
pub const DELETE_TIMEOUT: Duration = Duration::from_secs(2);
/// Redirects (307/308) followed per `POST`.
pub const MAX_REDIRECTS: usize = 3;
/// The SDP answer is read up to this size.
pub const MAX_ANSWER: u64 = 64 * 1024;
/// The payload type of our offer.
const OFFER_PAYLOAD_TYPE: u8 = 96;

/// A WHIP endpoint, checked.
#[derive(Clone, PartialEq, Eq)]
pub struct WhipTarget {
    /// `http(s)://...`: the `whip+` scheme prefix removed.
    pub endpoint: url::Url,
    pub token: Option<String>,
}

impl fmt::Debug for WhipTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WhipTarget")
            .field("endpoint", &super::redact(&format!("whip+{}", self.endpoint)))
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl WhipTarget {
    /// `whip+http(s)://HOST/PATH`, and a bearer token if any.
    pub fn parse(url: &str, token: Option<String>) -> Result<WhipTarget, String> {
        let label = super::redact(url);
        let label = if label.starts_with('(') { "the WHIP target".to_string() } else { label };
        let http = url.get(5..).filter(|_| url[..5].eq_ignore_ascii_case("whip+")).unwrap_or(url);
        let endpoint = url::Url::parse(http).map_err(|e| format!("{label}: not a URL ({e})"))?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(format!("{label}: expected whip+http:// or whip+https://"));
        }
        if endpoint.host_str().is_none_or(str::is_empty) {
            return Err(format!("{label}: no host"));
        }
        let token = token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        if let Some(token) = &token {
            if token.chars().any(|c| c.is_control() || c == ' ') {
                return Err("the bearer token has spaces or control characters".into());
            }
        }
        Ok(WhipTarget { endpoint, token })
    }
}

/// The fmtp of our offer: what the camera's stream is.
pub fn offer_fmtp(info: &VideoInfo) -> String {
    match info {
        VideoInfo::H264(sps) => {
            format!("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={}", sps.profile_level_id())
        }
        VideoInfo::H265(sps) => {
            let ptl = sps.profile_tier_level();
            format!("level-id={};profile-id={};tier-flag={};tx-mode=SRST", ptl.level_id, ptl.profile_id, ptl.tier_flag)
        }
    }
}

/// One session (see the module doc): Ok on shutdown, Err when it failed.
pub(crate) async fn run(target: &WhipTarget, cx: &Context) -> Result<(), String> {
    let parameter_sets = cx.stream.hub.parameter_sets().ok_or("no stream yet")?;
    let codec = parameter_sets.codec();
    let rtp_codec = peer::video_codec(codec, offer_fmtp(&parameter_sets.info));
    let (handler, state_rx, gathered) = Handler::new();
    let parameters = RTCRtpCodecParameters { rtp_codec: rtp_codec.clone(), payload_type: OFFER_PAYLOAD_TYPE };
    let pc = peer::build(&cx.webrtc, &cx.next_port, parameters, handler)
        .await
        .map_err(|e| format!("peer connection: {}", e.why))?;
    let ssrc = crate::random::random_u32();
    let session =
        Session { cx, http: Http::new(target.token.clone()), track: peer::track(ssrc, rtp_codec), pc, codec, ssrc };
    let mut resource = None;
    let result = session.run(&target.endpoint, state_rx, gathered, &mut resource).await;
    if let Some(resource) = resource {
        let limit = if cx.shutdown.is_triggered() { super::STOP_TIMEOUT } else { DELETE_TIMEOUT };
        match tokio::time::timeout(limit, session.http.delete(resource)).await {
            Ok(Ok(())) => log::info!("publish: {}: session deleted", cx.status.label),
            Ok(Err(e)) => log::debug!("publish: {}: DELETE: {e}", cx.status.label),
            Err(_) => log::debug!("publish: {}: DELETE timed out", cx.status.label),
        }
    }
    peer::close(&session.pc).await;
    result
}

/// One WHIP session's parts.
struct Session<'a> {
    cx: &'a Context,
    http: Http,
    pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticRTP>,
    codec: Codec,
    ssrc: u32,
}

/// What the answer settled.
struct Negotiated {
    payload_type: u8,
    /// The abs-capture-time extension id, when the endpoint accepted it.
    abs_capture_id: Option<u8>,
    /// Polled for the endpoint's DTLS close_notify.
    dtls: Option<Arc<dyn DtlsTransport>>,
}

impl Session<'_> {
    /// Offer, answer, connect, then send until shutdown or failure. Sets
    /// `resource` as soon as the endpoint created one (for the `DELETE`).
    async fn run(
        &self,
        endpoint: &url::Url,
        mut state_rx: watch::Receiver<RTCPeerConnectionState>,
        gathered: watch::Receiver<bool>,
        resource: &mut Option<url::Url>,
    ) -> Result<(), String> {
        let cx = self.cx;
        let Some(negotiated) = self.negotiate(endpoint, gathered, resource).await? else { return Ok(()) };
        tokio::select! {
            _ = cx.shutdown.wait() => return Ok(()),
            result = tokio::time::timeout(crate::webrtc::CONNECT_TIMEOUT, peer::connected(&mut state_rx)) => match result {
                Ok(Ok(())) => {}
                Ok(Err(why)) => return Err(format!("the endpoint answered, but {why}")),
                Err(_) => {
                    let limit = crate::webrtc::CONNECT_TIMEOUT;
                    return Err(format!("the endpoint answered, but ICE/DTLS did not connect within {limit:?}"));
                }
            },
        }
        cx.publishing();
        log::info!(
            "publish: {} -> {}: publishing {} over WHIP (payload type {})",
            cx.stream.name,
            cx.status.label,
            self.codec,
            negotiated.payload_type
        );
        let feedback =
            Feedback::spawn(self.track.clone(), self.ssrc, cx.status.metrics.keyframe_requests.clone(), None);
        self.send(&negotiated, state_rx, feedback).await
    }

    /// The offer (once gathering is complete), its POST, the answer. None
    /// if shutdown came first.
    async fn negotiate(
        &self,
        endpoint: &url::Url,
        mut gathered: watch::Receiver<bool>,
        resource: &mut Option<url::Url>,
    ) -> Result<Option<Negotiated>, String> {
        let (cx, pc) = (self.cx, &self.pc);
        let webrtc_error = |what: &'static str| move |e: webrtc::error::Error| format!("{what}: {e}");
        let init = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            streams: Vec::new(),
            send_encodings: Vec::new(),
        };
        let transceiver = pc
            .add_transceiver_from_track(self.track.clone() as Arc<dyn TrackLocal>, Some(init))
            .await
            .map_err(webrtc_error("add_transceiver"))?;
        let offer = pc.create_offer(None).await.map_err(webrtc_error("create_offer"))?;
        pc.set_local_description(offer).await.map_err(webrtc_error("set_local_description"))?;
        if tokio::time::timeout(crate::webrtc::GATHER_TIMEOUT, gathered.wait_for(|done| *done)).await.is_err() {
            log::debug!("publish: {}: ICE gathering not complete; offering what we have", cx.status.label);
        }
        let offer = pc.local_description().await.ok_or("no local description")?.sdp;

        let created = tokio::select! {
            _ = cx.shutdown.wait() => return Ok(None),
            created = self.http.post_offer(endpoint.clone(), offer) => created?,
        };
        *resource = created.resource;
        if resource.is_none() {
            log::warn!(
                "publish: {}: the endpoint's answer has no Location: the session cannot be deleted",
                cx.status.label
            );
        }
        let answer_sdp = created.answer;
        let answer = RTCSessionDescription::answer(answer_sdp.clone())
            .map_err(|e| format!("the endpoint's answer is not SDP: {e}"))?;
        pc.set_remote_description(answer).await.map_err(|e| format!("the endpoint's answer: {e}"))?;
        let sender = transceiver.sender().await.ok().flatten().ok_or("no sender")?;
        let dtls = sender.transport().await.ok().flatten();
        let (payload_type, abs_capture_id) =
            peer::sent_parameters(sender.as_ref(), &answer_sdp, OFFER_PAYLOAD_TYPE).await;
        Ok(Some(Negotiated { payload_type, abs_capture_id, dtls }))
    }

    /// Frames from the GOP cache, then live, until shutdown (Ok) or until
    /// the session fails (Err).
    async fn send(
        &self,
        negotiated: &Negotiated,
        mut state_rx: watch::Receiver<RTCPeerConnectionState>,
        mut feedback: Feedback,
    ) -> Result<(), String> {
        let cx = self.cx;
        let mut subscription = cx.subscribe();
        let mut stamp = Stamp::new(self.ssrc, negotiated.payload_type, subscription.backlog);
        stamp.abs_capture_id = negotiated.abs_capture_id;
        let mut gate = KeyframeGate::new();
        let mut poll = tokio::time::interval(crate::webrtc::CLOSE_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut quality_shown = std::time::Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = cx.shutdown.wait() => return Ok(()),
                changed = state_rx.changed() => {
                    if changed.is_err() {
                        return Err("the peer connection went away".into());
                    }
                    match *state_rx.borrow_and_update() {
                        RTCPeerConnectionState::Failed => {
                            return Err("the endpoint went silent (no ICE consent for about 5 s)".into())
                        }
                        RTCPeerConnectionState::Closed => return Err("the connection closed".into()),
                        _ => {}
                    }
                }
                Some(()) = feedback.goodbye.recv() => return Err("the endpoint ended the session (RTCP BYE)".into()),
                _ = poll.tick() => {
                    if let Some(dtls) = &negotiated.dtls {
                        if matches!(dtls.state().await, Ok(RTCDtlsTransportState::Closed)) {
                            return Err("the endpoint closed the session (DTLS close_notify)".into());
                        }
                    }
                    if quality_shown.elapsed() >= Duration::from_secs(1) {
                        quality_shown = std::time::Instant::now();
                        let quality = feedback.quality();
                        if quality.reports > 0 {
                            cx.status.set_quality(Some(quality.rtt_ms).filter(|r| *r > 0.0), Some(quality.lost));
                        }
                    }
                }
                Some(()) = feedback.keyframe_requests.recv() => {
                    if gate.allow(&cx.stream) {
                        drop(subscription);
                        subscription = cx.subscribe();
                        stamp.catchup = subscription.backlog;
                        log::debug!("publish: {}: keyframe request: restarting from the cached keyframe", cx.status.label);
                    }
                }
                frame = subscription.frames.recv_async() => {
                    let Ok(au) = frame else { return Err("the hub went away".into()) };
                    if au.codec != self.codec {
                        return Err(format!("the stream's codec changed to {}: starting a new session", au.codec));
                    }
                    let packets = cx.stream.packets.get(&au);
                    let sent = peer::write_frame(&self.track, &mut stamp, &packets, au.capture_time).await?;
                    cx.sent(sent.packets, sent.bytes);
                    if stamp.catchup > 0 {
                        // Pace the cached GOP, as for viewers.
                        tokio::time::sleep(peer::CATCHUP_PACE).await;
                    }
                }
            }
        }
    }
}

/// A `POST` that created a session.
struct Created {
    /// `Location`, resolved; None if the endpoint sent none.
    resource: Option<url::Url>,
    answer: String,
}

/// The endpoint's HTTP side: blocking `ureq` calls on the blocking pool.
struct Http {
    agent: ureq::Agent,
    token: Option<String>,
}

impl Http {
    fn new(token: Option<String>) -> Http {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout(HTTP_TIMEOUT)
            // Followed by hand: ureq re-sends only GET/HEAD on a redirect.
            .redirects(0)
            .user_agent(concat!("streaming-server/", env!("CARGO_PKG_VERSION")))
            .build();
        Http { agent, token }
    }

    fn request(&self, method: &str, url: &url::Url) -> ureq::Request {
        let request = self.agent.request_url(method, url);
        match &self.token {
            Some(token) => request.set("Authorization", &format!("Bearer {token}")),
            None => request,
        }
    }

    async fn post_offer(&self, endpoint: url::Url, offer: String) -> Result<Created, String> {
        let agent = Http { agent: self.agent.clone(), token: self.token.clone() };
        tokio::task::spawn_blocking(move || agent.post_offer_blocking(endpoint, &offer))
            .await
            .map_err(|e| format!("POST: {e}"))?
    }

    fn post_offer_blocking(&self, endpoint: url::Url, offer: &str) -> Result<Created, String> {
        let mut url = endpoint;
        for _ in 0..=MAX_REDIRECTS {
            let response = self
                .request("POST", &url)
                .set("Content-Type", "application/sdp")
                .set("Accept", "application/sdp")
                .send_string(offer)
                .map_err(|e| http_error("POST", e))?;
            let status = response.status();
            if matches!(status, 307 | 308) {
                let location = response.header("Location").ok_or("POST: a redirect without Location")?;
                url = url.join(location).map_err(|_| "POST: a redirect to an invalid Location".to_string())?;
                continue;
            }
            if !(200..300).contains(&status) {
                return Err(format!("POST: unexpected {status} {}", response.status_text()));
            }
            let resource = response.header("Location").and_then(|location| url.join(location).ok());
            let mut answer = String::new();
            response
                .into_reader()
                .take(MAX_ANSWER)
                .read_to_string(&mut answer)
                .map_err(|e| format!("POST: reading the answer: {e}"))?;
            if !answer.trim_start().starts_with("v=") {
                return Err(format!("POST: {status}, but the body is not an SDP answer ({})", excerpt(&answer)));
            }
            return Ok(Created { resource, answer });
        }
        Err(format!("POST: more than {MAX_REDIRECTS} redirects"))
    }

    async fn delete(&self, resource: url::Url) -> Result<(), String> {
        let agent = Http { agent: self.agent.clone(), token: self.token.clone() };
        tokio::task::spawn_blocking(move || {
            agent.request("DELETE", &resource).call().map(|_| ()).map_err(|e| http_error("DELETE", e))
        })
        .await
        .map_err(|e| format!("DELETE: {e}"))?
    }
}

/// An HTTP failure in words, without the URL.
fn http_error(method: &str, error: ureq::Error) -> String {
    match error {
        ureq::Error::Status(status, response) => {
            let text = response.status_text().to_string();
            let body = response.into_string().unwrap_or_default();
            let hint = match status {
                401 | 403 => " (check the bearer token)",
                404 => " (check the endpoint URL)",
                _ => "",
            };
            let body = excerpt(&body);
            if body.is_empty() {
                format!("{method}: {status} {text}{hint}")
            } else {
                format!("{method}: {status} {text}{hint}: {body}")
            }
        }
        ureq::Error::Transport(transport) => {
            use std::error::Error as _;
            // The innermost error says it best: "connection refused", or
            // rustls's "invalid peer certificate: UnknownIssuer".
            let mut innermost: Option<&(dyn std::error::Error + 'static)> = transport.source();
            while let Some(next) = innermost.and_then(|e| e.source()) {
                innermost = Some(next);
            }
            let cause = innermost.map(|error| match error.downcast_ref::<std::io::Error>() {
                Some(io) if io.raw_os_error().is_some() => io.kind().to_string(),
                _ => error.to_string(),
            });
            match (transport.kind(), cause) {
                (ureq::ErrorKind::Dns, _) => format!("unreachable: cannot resolve the host ({method})"),
                (_, Some(cause)) => format!("unreachable: {cause} ({method})"),
                (kind, None) => match transport.message() {
                    Some(message) => format!("{method}: {kind}: {message}"),
                    None => format!("{method}: {kind}"),
                },
            }
        }
    }
}

/// At most 120 printable characters of an untrusted body, on one line.
fn excerpt(body: &str) -> String {
    let clean: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match clean.char_indices().nth(120) {
        Some((at, _)) => format!("{}…", &clean[..at]),
        None => clean,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offer_describes_the_camera() {
        let h264 = crate::codec::h264::SpsInfo::with_profile(0x64, 0, 0x28, 1920, 1080);
        assert_eq!(
            offer_fmtp(&VideoInfo::H264(h264)),
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640028"
        );
    }

    #[test]
    fn endpoints_parse_and_tokens_never_show() {
        let target = WhipTarget::parse("whip+https://sfu.example:8443/whip/KEY?x=1", Some(" s3cr3t ".into())).unwrap();
        assert_eq!(target.endpoint.as_str(), "https://sfu.example:8443/whip/KEY?x=1");
        assert_eq!(target.token.as_deref(), Some("s3cr3t"));
        let debug = format!("{target:?}");
        assert!(!debug.contains("s3cr3t") && !debug.contains("KEY"), "{debug}");
        assert!(WhipTarget::parse("whip+http://h/x", Some("a b".into())).is_err());
        assert_eq!(WhipTarget::parse("whip+http://h/x", Some("  ".into())).unwrap().token, None);
    }

    #[test]
    fn bodies_are_cut_and_cleaned() {
        assert_eq!(excerpt("a\r\nb\tc"), "a b c");
        let long = "x".repeat(300);
        assert_eq!(excerpt(&long).chars().count(), 121);
    }
}
