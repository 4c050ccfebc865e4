//! RTSP camera source: an `rtsp://` URL in, H.264/H.265 access units out.
//!
//! In: an [`RtspConfig`] (URL, credentials, transport, timeouts). [`run`]
//! connects with [`retina`] (DESCRIBE, SETUP of the first H.264/H.265 video
//! stream, PLAY; basic or digest auth; keep-alives are retina's: OPTIONS,
//! then GET_PARAMETER/SET_PARAMETER if the server offers them, every half
//! session timeout, capped at 30 s) and reconnects forever until `stop`
//! resolves.
//!
//! Out, through the `sink` callback, in order ([`SourceEvent`]):
//! - `Connected` once per session, just before its first frame;
//! - `Frame`: one access unit, Annex-B with 4-byte start codes, in a buffer
//!   of its own (retina assembles it with start codes: no copy here, except
//!   one copy where parameter sets are inserted), with its capture time on
//!   CLOCK_MONOTONIC (rule in `clock.rs`). Each session's frames start at a
//!   random-access frame that carries VPS/SPS/PPS right after its AUD; so
//!   does the first random-access frame after a parameter change
//!   (`gate.rs`);
//! - `Gap` whenever frames were lost after one was emitted: RTP loss,
//!   session end (error, stall, reconnect, stop). Consumers resume at the
//!   next keyframe, which is the next frame this source emits;
//! - `Error` when a session could not start or ended, with the delay before
//!   the next attempt.
//!
//! Threads: none of its own; `run` is one future on the caller's tokio
//! runtime (retina spawns its TEARDOWN tasks on it). The sink is called on
//! that task: it must be quick and must not block (hand frames to a channel
//! or an in-memory fan-out).
//!
//! Bad input: nothing the server sends makes this panic. retina returns
//! errors for malformed RTSP/RTP/SDP; a session ends on any of them
//! ([`RtspError::Protocol`]) and is retried. A frame retina reports as
//! following lost packets is dropped, not passed on as whole. Credentials
//! are never logged: URLs go through [`redacted`].
//!
//! Reconnects: capped exponential backoff (`backoff_min` doubling to
//! `backoff_max`), back to `backoff_min` after a session that streamed for
//! `backoff_reset_after`; `401` waits `unauthorized_retry`. Each distinct
//! error is logged once at warn, repeats at debug.
//!
//! `Transport::Auto` starts with TCP (interleaved): it works through NAT and
//! firewalls and delivers in order, while retina's UDP has no reorder buffer
//! (a reordered packet counts as lost) and sends no receiver reports. A loss
//! costs this pipeline up to a whole GOP (it never decodes), so TCP's
//! retransmission is worth its latency on a LAN.
//! Auto switches to UDP for the next attempt when TCP's SETUP/PLAY is
//! refused (e.g. 461 Unsupported Transport) or no frame arrives within the
//! stall timeout, and back the same way.

mod backoff;
mod classify;
mod clock;
mod gate;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use retina::client::{Credentials, PlayOptions, Session, SessionGroup, SessionOptions, SetupOptions};
use retina::codec::{CodecItem, FrameFormat, ParameterSetInsertion, ParametersRef, VideoParametersCodec};
use url::Url;

use crate::clock::monotonic_now;
use backoff::{Backoff, TransportChoice};
use classify::{classify, timed_out, transport_related, Phase};
use gate::{FrameIn, Gate, Outcome, Params};

/// How RTP reaches us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Interleaved on the RTSP TCP connection.
    Tcp,
    /// RTP/RTCP on UDP port pairs (unicast).
    Udp,
    /// TCP first, UDP if TCP fails (module doc).
    Auto,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::Auto => "auto",
        })
    }
}

/// Where and how to connect. [`RtspConfig::new`] fills in the defaults.
#[derive(Clone)]
pub struct RtspConfig {
    /// `rtsp://[user[:password]@]host[:port]/path`. Credentials here are
    /// used unless `username`/`password` are set.
    pub url: Url,
    pub username: Option<String>,
    pub password: Option<String>,
    pub transport: Transport,
    /// DESCRIBE to PLAY (TCP connect included) must finish within this.
    pub setup_timeout: Duration,
    /// No frame for this long ends the session with [`RtspError::Stalled`].
    pub stall_timeout: Duration,
    /// Frames arriving but none usable (no keyframe, or no parameter sets
    /// to decode it) for this long ends the session with
    /// [`RtspError::NoKeyframe`]: a new session usually starts with one.
    pub keyframe_timeout: Duration,
    /// First reconnect delay; doubles per failure up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A session that streamed this long resets the backoff.
    pub backoff_reset_after: Duration,
    /// Delay after a 401: retrying sooner only fills the camera's log.
    pub unauthorized_retry: Duration,
    /// How long `run` waits for TEARDOWN once `stop` resolved.
    pub teardown_timeout: Duration,
    /// Capture-time mapping: re-anchor when a frame maps this far from its
    /// arrival (`clock.rs`).
    pub max_capture_jump: Duration,
    pub user_agent: String,
}

impl RtspConfig {
    pub fn new(url: Url) -> RtspConfig {
        RtspConfig {
            url,
            username: None,
            password: None,
            transport: Transport::Auto,
            setup_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(5),
            keyframe_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            backoff_reset_after: Duration::from_secs(10),
            unauthorized_retry: Duration::from_secs(30),
            teardown_timeout: Duration::from_secs(1),
            max_capture_jump: Duration::from_secs(1),
            user_agent: concat!("streaming-server/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

impl fmt::Debug for RtspConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RtspConfig")
            .field("url", &redacted(&self.url))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("transport", &self.transport)
            .field("setup_timeout", &self.setup_timeout)
            .field("stall_timeout", &self.stall_timeout)
            .field("keyframe_timeout", &self.keyframe_timeout)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("backoff_reset_after", &self.backoff_reset_after)
            .field("unauthorized_retry", &self.unauthorized_retry)
            .field("teardown_timeout", &self.teardown_timeout)
            .field("max_capture_jump", &self.max_capture_jump)
            .finish()
    }
}

/// The camera's video codec, by its SDP encoding name.
pub use crate::codec::Codec as VideoCodec;

/// What [`run`] reports (module doc for the order).
#[derive(Clone, Debug, PartialEq)]
pub enum SourceEvent {
    /// A session is playing; sent just before its first frame.
    Connected {
        codec: VideoCodec,
        /// Display size from the SPS (after cropping).
        width: u32,
        height: u32,
        /// From the SPS timing info, else the SDP's `a=framerate`.
        fps: Option<f64>,
        /// Tcp or Udp: what this session uses.
        transport: Transport,
    },
    Frame {
        /// One access unit, Annex-B, 4-byte start codes.
        data: Bytes,
        /// CLOCK_MONOTONIC.
        capture_time: Duration,
        /// retina's extended (wrap-free) RTP timestamp, stream clock units.
        rtp_timestamp: i64,
        /// IDR (H.264) / IRAP (H.265).
        is_random_access: bool,
    },
    /// Frames were lost since the previous `Frame`: resume at a keyframe.
    Gap { reason: GapReason },
    /// The session ended or could not start; the next attempt is in `retry_in`.
    Error { error: RtspError, retry_in: Duration },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GapReason {
    /// RTP packets lost (or dropped by retina for arriving out of order).
    Loss { packets: u16 },
    /// The session ended: error, stall, server gone, or `stop`. Includes a
    /// codec change, which can only happen across sessions (the next
    /// `Connected` tells the new codec).
    SessionEnded,
}

/// Why a TCP connection to the server could not be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The host name did not resolve.
    Dns(String),
    /// The host answered, nothing listens on the port.
    Refused,
    /// No route / network down / other socket error.
    NoRoute(String),
    /// No answer (connect or DESCRIBE) within the setup timeout.
    NoAnswer(Option<Duration>),
}

/// Why a session ended or could not start. `Display` is one short line for
/// users (no URL, no credentials).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RtspError {
    /// Not an `rtsp://` URL (rtsps is not supported by retina 0.4), no host.
    InvalidUrl(String),
    Unreachable(ConnectFailure),
    /// 401: wrong or missing credentials.
    Unauthorized,
    /// Any other error status from the server (404 wrong path, 461
    /// unsupported transport, 503...).
    Rejected {
        method: String,
        status: u16,
    },
    /// The SDP has no video stream; lists what it has.
    NoVideoTrack(String),
    /// Video, but not H.264/H.265; lists what it has.
    UnsupportedCodec(String),
    /// No frame for this long (connection open, nothing arriving).
    Stalled(Duration),
    /// Frames arrive, but no usable keyframe came for this long;
    /// `no_parameters`: keyframes came, but no SPS/PPS (VPS) to decode them.
    NoKeyframe {
        after: Duration,
        no_parameters: bool,
    },
    /// The server closed the connection or it broke mid-session.
    Disconnected(String),
    /// Anything else the server did wrong, as retina described it.
    Protocol(String),
}

impl fmt::Display for RtspError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RtspError::InvalidUrl(detail) => write!(f, "invalid URL: {detail}"),
            RtspError::Unreachable(ConnectFailure::Dns(detail)) => write!(f, "unreachable: DNS: {detail}"),
            RtspError::Unreachable(ConnectFailure::Refused) => write!(f, "unreachable: connection refused"),
            RtspError::Unreachable(ConnectFailure::NoRoute(detail)) => write!(f, "unreachable: {detail}"),
            RtspError::Unreachable(ConnectFailure::NoAnswer(Some(after))) => {
                write!(f, "unreachable: no answer within {after:?}")
            }
            RtspError::Unreachable(ConnectFailure::NoAnswer(None)) => write!(f, "unreachable: connection timed out"),
            RtspError::Unauthorized => write!(f, "401 unauthorized"),
            RtspError::Rejected { method, status } => write!(f, "{method} refused with status {status}"),
            RtspError::NoVideoTrack(offered) => write!(f, "no video track (SDP offers {offered})"),
            RtspError::UnsupportedCodec(offered) => write!(f, "unsupported video codec: {offered}"),
            RtspError::Stalled(after) => write!(f, "stalled: no frame for {after:?}"),
            RtspError::NoKeyframe { after, no_parameters: false } => write!(f, "no keyframe for {after:?}"),
            RtspError::NoKeyframe { after, no_parameters: true } => {
                write!(f, "no parameter sets (SPS/PPS) for {after:?}: keyframes cannot be decoded")
            }
            RtspError::Disconnected(detail) => write!(f, "disconnected: {detail}"),
            RtspError::Protocol(detail) => write!(f, "protocol error: {detail}"),
        }
    }
}

impl std::error::Error for RtspError {}

/// `url` for logs: password replaced by `***`, and so are the values of
/// query parameters that look like secrets (some cameras take
/// `?user=..&password=..`).
pub fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        // Only fails for URLs that cannot have credentials at all.
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(key, value)| {
                let lower = key.to_ascii_lowercase();
                let secret = ["pass", "pwd", "token", "secret", "key", "auth", "sig"].iter().any(|s| lower.contains(s));
                (key.into_owned(), if secret { "***".to_owned() } else { value.into_owned() })
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// The URL retina gets (no credentials: retina refuses them in the URL)
/// and the credentials, separate fields first.
fn split_credentials(config: &RtspConfig) -> Result<(Url, Option<Credentials>), RtspError> {
    let url = &config.url;
    match url.scheme() {
        "rtsp" => {}
        "rtsps" => return Err(RtspError::InvalidUrl("rtsps:// (RTSP over TLS) is not supported".into())),
        other => return Err(RtspError::InvalidUrl(format!("scheme {other}: is not rtsp"))),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(RtspError::InvalidUrl("no host".into()));
    }
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    let username = config.username.clone().or_else(|| Some(decode(url.username())).filter(|u| !u.is_empty()));
    let password = config.password.clone().or_else(|| url.password().map(decode));
    let mut bare = url.clone();
    let _ = bare.set_username("");
    let _ = bare.set_password(None);
    let creds = match (username, password) {
        (None, None) => None,
        (username, password) => {
            Some(Credentials { username: username.unwrap_or_default(), password: password.unwrap_or_default() })
        }
    };
    Ok((bare, creds))
}

/// The first H.264/H.265 video stream among `(media, encoding, clock rate)`.
fn pick_video_stream(offered: &[(String, String, u32)]) -> Result<(usize, VideoCodec), RtspError> {
    let describe = |filter: &dyn Fn(&str) -> bool| {
        let list: Vec<String> = offered
            .iter()
            .filter(|(media, _, _)| filter(media))
            .map(|(media, encoding, rate)| format!("{media} {}/{rate}", encoding.to_ascii_uppercase()))
            .collect();
        if list.is_empty() {
            "nothing".to_owned()
        } else {
            list.join(", ")
        }
    };
    for (i, (media, encoding, _)) in offered.iter().enumerate() {
        if media == "video" {
            match encoding.as_str() {
                "h264" => return Ok((i, VideoCodec::H264)),
                "h265" => return Ok((i, VideoCodec::H265)),
                _ => {}
            }
        }
    }
    if offered.iter().any(|(media, _, _)| media == "video") {
        Err(RtspError::UnsupportedCodec(describe(&|m| m == "video")))
    } else {
        Err(RtspError::NoVideoTrack(describe(&|_| true)))
    }
}

/// The stream's parameters as retina knows them now.
fn params_of(stream: &retina::client::Stream) -> Option<Params> {
    let Some(ParametersRef::Video(video)) = stream.parameters() else {
        return None;
    };
    let sets: Vec<&Bytes> = match video.codec_params() {
        VideoParametersCodec::H264 { sps, pps } => vec![sps, pps],
        VideoParametersCodec::H265 { vps, sps, pps } => vec![vps, sps, pps],
        _ => return None,
    };
    let mut annexb = Vec::with_capacity(sets.iter().map(|s| s.len() + 4).sum());
    for set in sets {
        annexb.extend_from_slice(&[0, 0, 0, 1]);
        annexb.extend_from_slice(set);
    }
    let (width, height) = video.pixel_dimensions();
    let sane = |fps: f64| (fps.is_finite() && fps > 0.0 && fps <= 1000.0).then_some(fps);
    let fps = video
        .frame_rate()
        .and_then(|(num, den)| if num == 0 { None } else { sane(f64::from(den) / f64::from(num)) })
        .or_else(|| stream.framerate().and_then(|f| sane(f64::from(f))));
    Some(Params { annexb, width, height, fps })
}

/// How a session ended.
struct SessionEnd {
    error: RtspError,
    phase: Phase,
    /// From the first emitted frame to the end, if any was emitted.
    streamed_for: Option<Duration>,
}

/// Logs each distinct error once at warn, repeats at debug.
#[derive(Default)]
struct ErrorLog {
    last: Option<String>,
}

impl ErrorLog {
    fn log(&mut self, url: &str, error: &RtspError, retry_in: Duration, user: Option<&str>) {
        let line = error.to_string();
        if self.last.as_deref() == Some(line.as_str()) {
            log::debug!("{url}: {line} (again); retrying in {retry_in:?}");
            return;
        }
        match (error, user) {
            (RtspError::Unauthorized, Some(user)) => {
                log::warn!("{url}: {line} (credentials for user {user:?} rejected); retrying every {retry_in:?}")
            }
            (RtspError::Unauthorized, None) => {
                log::warn!("{url}: {line} (no credentials configured); retrying every {retry_in:?}")
            }
            _ => log::warn!("{url}: {line}; retrying in {retry_in:?}"),
        }
        self.last = Some(line);
    }

    /// A session delivered frames: the next error is news again.
    fn clear(&mut self) {
        self.last = None;
    }
}

/// Connects, streams and reconnects until `stop` resolves (module doc).
pub async fn run(config: RtspConfig, mut sink: impl FnMut(SourceEvent) + Send, stop: impl Future<Output = ()> + Send) {
    let sink: &mut (dyn FnMut(SourceEvent) + Send) = &mut sink;
    let url = redacted(&config.url);
    let group = Arc::new(SessionGroup::default().named(url.clone()));
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    let mut transport = TransportChoice::new(config.transport);
    let mut gate = Gate::new(config.max_capture_jump);
    let mut errors = ErrorLog::default();
    tokio::pin!(stop);
    loop {
        let attempt = async {
            match split_credentials(&config) {
                Ok((bare_url, creds)) => {
                    session(&config, &url, bare_url, creds, transport.current(), &group, &mut gate, &mut errors, sink)
                        .await
                }
                Err(error) => SessionEnd { error, phase: Phase::Describe, streamed_for: None },
            }
        };
        let end = tokio::select! {
            biased;
            () = &mut stop => None,
            end = attempt => Some(end),
        };
        // The session (if any) is dropped here, which starts its TEARDOWN.
        gate.end_session(sink);
        let Some(end) = end else { break };
        let retry_in = match end.error {
            RtspError::Unauthorized => config.unauthorized_retry,
            RtspError::InvalidUrl(_) => config.backoff_max,
            _ => {
                if end.streamed_for.is_some_and(|d| d >= config.backoff_reset_after) {
                    backoff.reset();
                }
                backoff.next_delay()
            }
        };
        if end.streamed_for.is_none() {
            transport.failed(transport_related(&end.error, end.phase));
        }
        let user = config.username.clone().or_else(|| Some(config.url.username().to_owned()).filter(|u| !u.is_empty()));
        errors.log(&url, &end.error, retry_in, user.as_deref());
        sink(SourceEvent::Error { error: end.error, retry_in });
        tokio::select! {
            biased;
            () = &mut stop => break,
            () = tokio::time::sleep(retry_in) => {}
        }
    }
    // Best effort: wait for retina's TEARDOWN, bounded.
    match tokio::time::timeout(config.teardown_timeout, group.await_teardown()).await {
        Ok(Ok(())) => log::debug!("{url}: stopped"),
        Ok(Err(e)) => log::debug!("{url}: stopped; TEARDOWN failed: {}", classify::first_line(&e.to_string())),
        Err(_) => log::debug!("{url}: stopped; TEARDOWN not confirmed within {:?}", config.teardown_timeout),
    }
}

/// One session: connect, play, stream until something ends it.
#[allow(clippy::too_many_arguments)]
async fn session(
    config: &RtspConfig,
    url: &str,
    bare_url: Url,
    creds: Option<Credentials>,
    transport: Transport,
    group: &Arc<SessionGroup>,
    gate: &mut Gate,
    errors: &mut ErrorLog,
    sink: &mut (dyn FnMut(SourceEvent) + Send),
) -> SessionEnd {
    let fail = |error, phase| SessionEnd { error, phase, streamed_for: None };
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + config.setup_timeout;
    let options =
        SessionOptions::default().creds(creds).session_group(group.clone()).user_agent(config.user_agent.clone());

    log::debug!("{url}: DESCRIBE");
    let mut described = match tokio::time::timeout_at(deadline, Session::describe(bare_url, options)).await {
        Err(_) => return fail(timed_out(Phase::Describe, config.setup_timeout), Phase::Describe),
        Ok(Err(e)) => return fail(classify(&e, Phase::Describe), Phase::Describe),
        Ok(Ok(s)) => s,
    };
    let offered: Vec<(String, String, u32)> = described
        .streams()
        .iter()
        .map(|s| (s.media().to_owned(), s.encoding_name().to_owned(), s.clock_rate_hz()))
        .collect();
    let (index, codec) = match pick_video_stream(&offered) {
        Ok(picked) => picked,
        Err(error) => return fail(error, Phase::Describe),
    };

    let setup = SetupOptions::default()
        .transport(match transport {
            Transport::Udp => retina::client::Transport::Udp(Default::default()),
            _ => retina::client::Transport::Tcp(Default::default()),
        })
        // Annex-B straight from retina's assembly buffer. It strips in-band
        // parameter sets in every mode; the gate puts them back where
        // downstream needs them.
        .frame_format(FrameFormat {
            h26x_framing: retina::codec::h26x::Framing::AnnexB,
            parameter_set_insertion: ParameterSetInsertion::Never,
            ..FrameFormat::default()
        });
    log::debug!("{url}: SETUP stream {index} ({codec}) over {transport}");
    match tokio::time::timeout_at(deadline, described.setup(index, setup)).await {
        Err(_) => return fail(timed_out(Phase::Setup, config.setup_timeout), Phase::Setup),
        Ok(Err(e)) => return fail(classify(&e, Phase::Setup), Phase::Setup),
        Ok(Ok(())) => {}
    }
    let playing = match tokio::time::timeout_at(deadline, described.play(PlayOptions::default())).await {
        Err(_) => return fail(timed_out(Phase::Play, config.setup_timeout), Phase::Play),
        Ok(Err(e)) => return fail(classify(&e, Phase::Play), Phase::Play),
        Ok(Ok(p)) => p,
    };
    let mut demuxed = match playing.demuxed() {
        Err(e) => return fail(classify(&e, Phase::Play), Phase::Play),
        Ok(d) => d,
    };
    let Some(stream) = demuxed.streams().get(index) else {
        return fail(RtspError::Protocol("stream vanished after SETUP".into()), Phase::Play);
    };
    gate.start_session(codec, transport, params_of(stream));
    log::debug!("{url}: PLAY after {} ms", started.elapsed().as_millis());

    let mut first_frame: Option<Instant> = None;
    // Since when frames arrive but none is usable.
    let mut unusable_since = Some(Instant::now());
    let mut no_parameters = false;
    let end = |error, first_frame: Option<Instant>| SessionEnd {
        error,
        phase: Phase::Streaming,
        streamed_for: first_frame.map(|t| t.elapsed()),
    };
    loop {
        let stall_at = tokio::time::Instant::now() + config.stall_timeout;
        let item = match tokio::time::timeout_at(stall_at, next_video_frame(&mut demuxed)).await {
            Err(_) => return end(RtspError::Stalled(config.stall_timeout), first_frame),
            Ok(Err(error)) => return end(error, first_frame),
            Ok(Ok(frame)) => frame,
        };
        let arrival = monotonic_now();
        if item.has_new_parameters() {
            gate.new_parameters(demuxed.streams().get(index).and_then(params_of));
        }
        let timestamp = item.timestamp();
        let frame = FrameIn {
            rtp_timestamp: timestamp.timestamp(),
            clock_rate: timestamp.clock_rate().get(),
            is_random_access: item.is_random_access_point(),
            loss: item.loss(),
            data: item.into_data(),
            arrival,
        };
        match gate.frame(frame, sink) {
            Outcome::Emitted => {
                unusable_since = None;
                no_parameters = false;
            }
            outcome => {
                no_parameters |= outcome == Outcome::NoParameters;
                let since = *unusable_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= config.keyframe_timeout {
                    return end(RtspError::NoKeyframe { after: config.keyframe_timeout, no_parameters }, first_frame);
                }
            }
        }
        if first_frame.is_none() && gate.session_frames > 0 {
            first_frame = Some(Instant::now());
            errors.clear();
            log::info!(
                "{url}: playing {codec} over {transport}, first frame {} ms after connecting",
                started.elapsed().as_millis()
            );
        }
    }
}

/// The next video frame; RTCP and other items are skipped (the session
/// only set up the video stream).
async fn next_video_frame(demuxed: &mut retina::client::Demuxed) -> Result<retina::codec::VideoFrame, RtspError> {
    loop {
        match demuxed.next().await {
            None => return Err(RtspError::Disconnected("server closed the connection".into())),
            Some(Err(e)) => return Err(classify(&e, Phase::Streaming)),
            Some(Ok(CodecItem::VideoFrame(frame))) => return Ok(frame),
            Some(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(list: &[(&str, &str)]) -> Vec<(String, String, u32)> {
        list.iter().map(|(m, e)| (m.to_string(), e.to_string(), if *m == "video" { 90_000 } else { 8000 })).collect()
    }

    #[test]
    fn picks_first_h26x_video() {
        assert_eq!(pick_video_stream(&offered(&[("audio", "pcmu"), ("video", "h265")])), Ok((1, VideoCodec::H265)));
        assert_eq!(pick_video_stream(&offered(&[("video", "jpeg"), ("video", "h264")])), Ok((1, VideoCodec::H264)));
        assert_eq!(
            pick_video_stream(&offered(&[("audio", "pcmu"), ("application", "vnd.onvif.metadata")])),
            Err(RtspError::NoVideoTrack("audio PCMU/8000, application VND.ONVIF.METADATA/8000".into()))
        );
        assert_eq!(
            pick_video_stream(&offered(&[("video", "jpeg"), ("audio", "pcma")])),
            Err(RtspError::UnsupportedCodec("video JPEG/90000".into()))
        );
        assert_eq!(pick_video_stream(&[]), Err(RtspError::NoVideoTrack("nothing".into())));
    }

    #[test]
    fn redacts_passwords() {
        let url = Url::parse("rtsp://admin:s3cr%40t@cam.local:8554/live?channel=1&password=hunter2&Token=x").unwrap();
        let shown = redacted(&url);
        assert_eq!(shown, "rtsp://admin:***@cam.local:8554/live?channel=1&password=***&Token=***");
        assert!(!shown.contains("s3cr") && !shown.contains("hunter2"));
        let plain = Url::parse("rtsp://10.0.0.2/stream1").unwrap();
        assert_eq!(redacted(&plain), "rtsp://10.0.0.2/stream1");
        let config = RtspConfig { password: Some("pw!".into()), ..RtspConfig::new(url) };
        let debug = format!("{config:?}");
        assert!(!debug.contains("pw!") && !debug.contains("s3cr") && !debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn credentials_from_url_or_fields() {
        let config = RtspConfig::new(Url::parse("rtsp://admin:p%40ss@cam/live").unwrap());
        let (bare, creds) = split_credentials(&config).unwrap();
        assert_eq!(bare.as_str(), "rtsp://cam/live");
        assert_eq!(creds, Some(Credentials { username: "admin".into(), password: "p@ss".into() }));
        let config = RtspConfig {
            username: Some("op".into()),
            password: Some("x".into()),
            ..RtspConfig::new(Url::parse("rtsp://admin:y@cam/live").unwrap())
        };
        let (_, creds) = split_credentials(&config).unwrap();
        assert_eq!(creds, Some(Credentials { username: "op".into(), password: "x".into() }));
        let (_, creds) = split_credentials(&RtspConfig::new(Url::parse("rtsp://cam/").unwrap())).unwrap();
        assert_eq!(creds, None);
        for bad in ["rtsps://cam/live", "http://cam/", "rtsp:/nohost"] {
            let err = split_credentials(&RtspConfig::new(Url::parse(bad).unwrap())).unwrap_err();
            assert!(matches!(err, RtspError::InvalidUrl(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn error_lines_are_short_and_distinct() {
        let cases = [
            (RtspError::Unauthorized, "401 unauthorized"),
            (RtspError::Unreachable(ConnectFailure::Refused), "unreachable: connection refused"),
            (RtspError::Stalled(Duration::from_secs(5)), "stalled: no frame for 5s"),
            (RtspError::Rejected { method: "DESCRIBE".into(), status: 404 }, "DESCRIBE refused with status 404"),
        ];
        for (error, line) in cases {
            assert_eq!(error.to_string(), line);
        }
    }

    #[test]
    fn defaults() {
        let c = RtspConfig::new(Url::parse("rtsp://cam/").unwrap());
        assert_eq!(c.stall_timeout, Duration::from_secs(5));
        assert_eq!(c.backoff_min, Duration::from_millis(500));
        assert_eq!(c.backoff_max, Duration::from_secs(30));
        assert_eq!(c.teardown_timeout, Duration::from_secs(1));
        assert_eq!(c.transport, Transport::Auto);
    }
}
