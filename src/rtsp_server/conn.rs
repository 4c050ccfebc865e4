//! One RTSP connection: framing (requests and `$`-interleaved data in one
//! byte stream), the requests, and the media of a TCP-interleaved session
//! playing on it. One task: it reads while idle and writes a frame when the
//! session's hub queue has one, so responses and media never interleave
//! mid-message.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use rtsp_types::headers::{self, HeaderName, Transport as TransportSpec, Transports};
use rtsp_types::{Message, Method, ParseError, Request, Response, StatusCode, Version};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::auth::Refusal;
use super::play::{self, PlayingGuard, RtpSender, WriteFailure};
use super::{ConnectionCount, Inner, Session, Transport, MAX_BODY_BYTES, MAX_HEAD_BYTES, MAX_SESSIONS};
use crate::hub::{Queued, Subscription};
use crate::paths::Path;

/// What `OPTIONS` lists.
const PUBLIC: &str = "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER, SET_PARAMETER";
/// The `Server` header.
const SERVER: &str = concat!("streaming-server/", env!("CARGO_PKG_VERSION"));

/// The connection task. `_count` keeps the connection counted until it ends.
pub(super) async fn run(inner: Arc<Inner>, stream: TcpStream, peer: SocketAddr, id: u64, _count: ConnectionCount) {
    let _ = stream.set_nodelay(true);
    // Bound what a client that stops reading pins in the kernel.
    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(super::SEND_BUFFER_BYTES);
    let Ok(local) = stream.local_addr() else { return };
    let mut conn =
        Conn { inner, id, peer, local, nonce: super::random_hex(), play: None, buf: BytesMut::with_capacity(4096) };
    log::debug!("rtsp: connection {id} from {peer}");
    let why = conn.serve(stream).await;
    log::debug!("rtsp: connection {id} from {peer} closed: {why}");
    conn.play = None;
    // Interleaved sessions live on this connection; UDP ones outlive it
    // (RFC 2326 allows a client to close it) until TEARDOWN or the timeout.
    let owned: Vec<String> = conn
        .inner
        .sessions()
        .values()
        .filter(|s| s.connection == conn.id && s.is_tcp())
        .map(|s| s.id.clone())
        .collect();
    for session in owned {
        conn.inner.end_session(&session, &format!("connection closed ({why})"));
    }
}

/// A TCP-interleaved session playing on this connection.
struct TcpPlay {
    session: Arc<Session>,
    subscription: Subscription,
    /// The frame peeked for RTP-Info, sent first.
    first: Option<Queued>,
    sender: RtpSender,
    rtp_channel: u8,
    rtcp_channel: u8,
    _playing: PlayingGuard,
}

/// What a playing session has for the connection.
enum PlayEvent {
    Frame(Queued),
    Stopped(&'static str),
}

/// Waits for the next frame of the playing session (forever when none).
async fn next_event(play: &mut Option<TcpPlay>) -> PlayEvent {
    let Some(play) = play else { return std::future::pending().await };
    if let Some(first) = play.first.take() {
        return PlayEvent::Frame(first);
    }
    tokio::select! {
        biased;
        _ = play.session.stopped.wait() => PlayEvent::Stopped("the session ended"),
        frame = play.subscription.frames.recv_async() => match frame {
            Ok(au) => PlayEvent::Frame(au),
            Err(_) => PlayEvent::Stopped("the stream went away"),
        },
    }
}

/// A response to write.
struct Reply {
    status: StatusCode,
    headers: Vec<(HeaderName, String)>,
    body: Vec<u8>,
    /// Close the connection after it (the framing is lost).
    close: bool,
}

impl Reply {
    fn new(status: StatusCode) -> Reply {
        Reply { status, headers: Vec::new(), body: Vec::new(), close: false }
    }

    fn header(mut self, name: HeaderName, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    fn closing(mut self) -> Reply {
        self.close = true;
        self
    }

    /// The response's bytes, with `CSeq` echoed when the request had one.
    fn encode(self, cseq: Option<u32>) -> Vec<u8> {
        let mut builder = Response::builder(Version::V1_0, self.status).header(headers::SERVER, SERVER);
        if self.status == StatusCode::Ok {
            // RFC 2326's spelling (rtsp-types writes "Ok").
            builder = builder.reason_phrase("OK");
        }
        if let Some(cseq) = cseq {
            builder = builder.header(headers::CSEQ, cseq.to_string());
        }
        for (name, value) in self.headers {
            builder = builder.header(name, value);
        }
        let mut out = Vec::with_capacity(256 + self.body.len());
        // Writing into a Vec cannot fail.
        let _ = builder.build(self.body).write(&mut out);
        out
    }
}

/// What the buffer holds next.
enum Framed {
    Incomplete,
    /// `$`, channel, 16-bit length, data: RTCP from a client, or garbage.
    Interleaved {
        channel: u8,
        len: usize,
    },
    Request(Box<Request<Vec<u8>>>, usize),
    /// A response from the client (to nothing we asked): skipped.
    Skip(usize),
    /// Framing lost: answer with `status` and close.
    Bad(StatusCode, &'static str),
}

/// Finds the next message in `buf`; never reads past [`MAX_HEAD_BYTES`] of
/// head or [`MAX_BODY_BYTES`] of body.
fn frame(buf: &[u8]) -> Framed {
    let Some(&first) = buf.first() else { return Framed::Incomplete };
    if first == b'$' {
        if buf.len() < 4 {
            return Framed::Incomplete;
        }
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        return if buf.len() < 4 + len { Framed::Incomplete } else { Framed::Interleaved { channel: buf[1], len } };
    }
    let head_end = buf.windows(4).take(MAX_HEAD_BYTES + 4).position(|w| w == b"\r\n\r\n");
    let Some(head_end) = head_end else {
        return if buf.len() > MAX_HEAD_BYTES {
            Framed::Bad(StatusCode::BadRequest, "head_too_large")
        } else {
            Framed::Incomplete
        };
    };
    if head_end + 4 > MAX_HEAD_BYTES {
        return Framed::Bad(StatusCode::BadRequest, "head_too_large");
    }
    match Message::<Vec<u8>>::parse(buf) {
        Ok((Message::Request(request), consumed)) => Framed::Request(Box::new(request), consumed),
        Ok((_, consumed)) => Framed::Skip(consumed),
        Err(ParseError::Incomplete(needed)) => {
            let body_so_far = buf.len() - (head_end + 4);
            let missing = needed.map_or(1, |n| n.get());
            if body_so_far + missing > MAX_BODY_BYTES {
                Framed::Bad(StatusCode::RequestMessageBodyTooLarge, "body_too_large")
            } else {
                Framed::Incomplete
            }
        }
        Err(ParseError::Error) => Framed::Bad(StatusCode::BadRequest, "parse"),
    }
}

struct Conn {
    inner: Arc<Inner>,
    id: u64,
    peer: SocketAddr,
    local: SocketAddr,
    /// The Digest nonce of this connection.
    nonce: String,
    play: Option<TcpPlay>,
    buf: BytesMut,
}

impl Conn {
    /// Serves requests (and a playing session's media) until the connection
    /// ends; returns why.
    async fn serve(&mut self, mut stream: TcpStream) -> String {
        let (mut reader, mut writer) = stream.split();
        let mut reports = tokio::time::interval(super::SENDER_REPORT_INTERVAL);
        reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.inner.shutdown.clone();
        loop {
            // Everything complete in the buffer, in order.
            loop {
                let (reply, cseq) = match frame(&self.buf) {
                    Framed::Incomplete => break,
                    Framed::Interleaved { channel, len } => {
                        self.buf.advance(4 + len);
                        self.interleaved(channel);
                        continue;
                    }
                    Framed::Skip(consumed) => {
                        self.buf.advance(consumed);
                        continue;
                    }
                    Framed::Request(request, consumed) => {
                        self.buf.advance(consumed);
                        let cseq = cseq_of(&request);
                        let reply = tokio::select! {
                            biased;
                            _ = shutdown.wait() => return "shutdown".into(),
                            reply = self.handle(&request, cseq) => reply,
                        };
                        (reply, cseq)
                    }
                    Framed::Bad(status, reason) => {
                        self.inner.metrics.bad_request(reason);
                        log::debug!("rtsp: connection {} from {}: {reason}", self.id, self.peer);
                        (Reply::new(status).closing(), None)
                    }
                };
                let close = reply.close;
                let mut chunks = VecDeque::from([Bytes::from(reply.encode(cseq))]);
                if let Err(failure) = self.write(&mut writer, &mut chunks).await {
                    return failure;
                }
                if close {
                    return "bad request".into();
                }
            }
            // A connection with no session ends after the session timeout of
            // silence; one whose sessions live stays (a live555 client keeps
            // its UDP session alive with RTCP alone, its connection idle).
            let idle = self.inner.config.session_timeout;
            tokio::select! {
                biased;
                _ = shutdown.wait() => return "shutdown".into(),
                read = tokio::time::timeout(idle, reader.read_buf(&mut self.buf)) => match read {
                    Err(_) if self.play.is_none() && !self.owns_sessions() => return "idle".into(),
                    Err(_) => {}
                    Ok(Ok(0)) => return "closed by the client".into(),
                    Ok(Err(e)) => return format!("read: {e}"),
                    Ok(Ok(_)) => {}
                },
                event = next_event(&mut self.play) => match event {
                    PlayEvent::Frame(au) => {
                        if let Err(failure) = self.send_frame(&mut writer, &au).await {
                            return failure;
                        }
                    }
                    PlayEvent::Stopped(why) => {
                        log::debug!("rtsp: connection {}: {why}", self.id);
                        self.play = None;
                    }
                },
                _ = reports.tick(), if self.play.is_some() => {
                    let report = self.play.as_ref().and_then(|p| p.sender.sender_report().map(|r| (r, p.rtcp_channel)));
                    if let Some((report, channel)) = report {
                        let mut chunks = play::interleaved_rtcp(&report, channel);
                        match self.write(&mut writer, &mut chunks).await {
                            Ok(bytes) => self.count_sent(bytes),
                            Err(failure) => return failure,
                        }
                    }
                }
            }
        }
    }

    fn owns_sessions(&self) -> bool {
        self.inner.sessions().values().any(|s| s.connection == self.id)
    }

    /// Writes to the client; a stuck client ends the connection (counted).
    async fn write(
        &mut self,
        writer: &mut tokio::net::tcp::WriteHalf<'_>,
        chunks: &mut VecDeque<Bytes>,
    ) -> Result<usize, String> {
        let shutdown = self.inner.shutdown.clone();
        let result = tokio::select! {
            biased;
            _ = shutdown.wait() => return Err("shutdown".into()),
            result = play::write_chunks(writer, chunks) => result,
        };
        match result {
            Ok(bytes) => Ok(bytes),
            Err(WriteFailure::Stuck) => {
                if let Some(play) = &self.play {
                    play.session.path.stream.metrics.rtsp_clients_stuck.inc();
                }
                log::warn!(
                    "rtsp: client {} accepted nothing for {}s: dropped",
                    self.peer,
                    super::STUCK_AFTER.as_secs()
                );
                Err("stuck: the client stopped reading".into())
            }
            Err(WriteFailure::Io(e)) => Err(format!("write: {e}")),
        }
    }

    async fn send_frame(&mut self, writer: &mut tokio::net::tcp::WriteHalf<'_>, au: &Queued) -> Result<(), String> {
        let Some(play) = &mut self.play else { return Ok(()) };
        let packets = play::packets_of(&play.session, au);
        let mut chunks = play::interleaved_frame(&mut play.sender, &packets, au.capture_time, play.rtp_channel);
        let bytes = self.write(writer, &mut chunks).await?;
        self.count_sent(bytes);
        if let Some(play) = &self.play {
            play.session.path.stream.metrics.rtsp_frames_sent.inc();
        }
        Ok(())
    }

    /// Media bytes (RTP, RTCP, interleave prefixes) sent on this connection.
    fn count_sent(&self, bytes: usize) {
        if let Some(play) = &self.play {
            play.session.path.stream.metrics.rtsp_bytes_sent.inc_by(bytes as u64);
        }
    }

    /// `$` data from the client: RTCP on the playing session's channel keeps
    /// it alive; anything else is counted and ignored.
    fn interleaved(&mut self, channel: u8) {
        match &self.play {
            Some(play) if channel == play.rtcp_channel || channel == play.rtp_channel => play.session.touch(),
            _ => self.inner.metrics.bad_request("interleaved"),
        }
    }

    async fn handle(&mut self, request: &Request<Vec<u8>>, cseq: Option<u32>) -> Reply {
        let Some(_) = cseq else {
            self.inner.metrics.bad_request("cseq");
            return Reply::new(StatusCode::BadRequest);
        };
        if request.version() != Version::V1_0 {
            self.inner.metrics.bad_request("version");
            return Reply::new(StatusCode::RTSPVersionNotSupported);
        }
        let result = match request.method() {
            Method::Options => Ok(self.options(request)),
            Method::Describe => self.describe(request).await,
            Method::Setup => self.setup(request),
            Method::Play => self.play(request),
            Method::Teardown => self.teardown(request),
            Method::GetParameter | Method::SetParameter => self.keep_alive(request),
            Method::Extension(name) => {
                self.inner.metrics.bad_request("method");
                log::debug!(
                    "rtsp: connection {}: unknown method {:?}",
                    self.id,
                    name.chars().take(32).collect::<String>()
                );
                Ok(Reply::new(StatusCode::NotImplemented).header(headers::PUBLIC, PUBLIC))
            }
            // A live stream is not paused, and nothing is published here.
            Method::Pause | Method::Announce | Method::Record | Method::Redirect | Method::PlayNotify => {
                Ok(Reply::new(StatusCode::MethodNotValidInThisState).header(headers::ALLOW, PUBLIC))
            }
        };
        result.unwrap_or_else(|reply| reply)
    }

    fn options(&self, request: &Request<Vec<u8>>) -> Reply {
        if let Some(session) = session_id(request).and_then(|id| self.inner.session(&id)) {
            session.touch();
        }
        Reply::new(StatusCode::Ok).header(headers::PUBLIC, PUBLIC)
    }

    /// Checks credentials; a 401 with the challenges otherwise.
    fn authorize(&self, request: &Request<Vec<u8>>) -> Result<(), Reply> {
        let auth = &self.inner.config.auth;
        let method = method_name(request.method());
        let given = request.header(&headers::AUTHORIZATION).map(|v| v.as_str());
        match auth.check(method, given, &self.nonce) {
            Ok(()) => Ok(()),
            Err(refusal) => {
                self.inner.metrics.auth_failures.with_label_values(&[refusal.label()]).inc();
                if refusal == Refusal::Wrong {
                    log::info!("rtsp: wrong credentials from {}", self.peer);
                }
                let [digest, basic] = auth.challenges(&self.nonce);
                Err(Reply::new(StatusCode::Unauthorized)
                    .header(headers::WWW_AUTHENTICATE, digest)
                    .header(headers::WWW_AUTHENTICATE, basic))
            }
        }
    }

    /// The path (and whether the track was named) of a request's URI.
    fn target(&self, request: &Request<Vec<u8>>) -> Result<(Arc<Path>, Target), Reply> {
        let Some(uri) = request.request_uri() else {
            self.inner.metrics.bad_request("uri");
            return Err(Reply::new(StatusCode::BadRequest));
        };
        let trimmed = uri.path().trim_matches('/');
        let (name, track) = trimmed.split_once('/').unwrap_or((trimmed, ""));
        if !track.is_empty() && track != super::sdp::TRACK {
            return Err(Reply::new(StatusCode::NotFound));
        }
        let path = self.inner.path_of(name).ok_or_else(|| Reply::new(StatusCode::NotFound))?;
        // The URLs we answer with keep the host and name the client used.
        let mut base = uri.clone();
        base.set_query(None);
        base.set_fragment(None);
        base.set_path(&format!("/{name}/"));
        Ok((path, Target { base: base.to_string() }))
    }

    async fn describe(&mut self, request: &Request<Vec<u8>>) -> Result<Reply, Reply> {
        self.authorize(request)?;
        let (path, target) = self.target(request)?;
        let stream = &path.stream;
        // An idle on-demand path may still hold the parameter sets of its
        // last run: start it and describe what it sends now.
        let idle = path.config.on_demand && stream.source.state() != crate::stream::SourceState::Ready;
        if idle || stream.hub.parameter_sets().is_none() {
            let _demand = stream.demand.hold();
            let wait = if path.config.on_demand { super::ON_DEMAND_WAIT } else { super::STARTING_WAIT };
            let deadline = tokio::time::Instant::now() + wait;
            while tokio::time::Instant::now() < deadline {
                let ready = stream.source.state() == crate::stream::SourceState::Ready;
                if stream.hub.parameter_sets().is_some() && (ready || !path.config.on_demand) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
        }
        let Some(parameter_sets) = stream.hub.parameter_sets() else {
            return Err(Reply::new(StatusCode::ServiceUnavailable).header(headers::RETRY_AFTER, "2"));
        };
        let version = crate::clock::monotonic_now().as_secs() + parameter_sets.generation;
        let sdp = super::sdp::describe(path.name(), self.local.ip(), version, &parameter_sets);
        let mut reply = Reply::new(StatusCode::Ok)
            .header(headers::CONTENT_TYPE, "application/sdp")
            .header(headers::CONTENT_BASE, target.base);
        reply.body = sdp.into_bytes();
        Ok(reply)
    }

    fn setup(&mut self, request: &Request<Vec<u8>>) -> Result<Reply, Reply> {
        self.authorize(request)?;
        let (path, _target) = self.target(request)?;
        if session_id(request).is_some() {
            // One track: a second SETUP in a session has nothing to add.
            return Err(Reply::new(StatusCode::AggregateOperationNotAllowed));
        }
        let transports = match request.typed_header::<Transports>() {
            Ok(Some(transports)) => transports,
            Ok(None) | Err(_) => {
                self.inner.metrics.bad_request("transport");
                return Err(Reply::new(StatusCode::BadRequest));
            }
        };
        let Some(choice) = transports.iter().find_map(|t| self.choose_transport(t)) else {
            self.inner.metrics.bad_request("transport");
            return Err(Reply::new(StatusCode::UnsupportedTransport));
        };
        if self.inner.sessions().len() >= MAX_SESSIONS {
            log::warn!("rtsp: {MAX_SESSIONS} sessions already; refusing {}", self.peer);
            return Err(Reply::new(StatusCode::ServiceUnavailable).header(headers::RETRY_AFTER, "5"));
        }
        let ssrc = crate::random::random_u32();
        let (transport, answer) = match choice {
            Chosen::Tcp(rtp_channel, rtcp_channel) => (
                Transport::Tcp { rtp_channel, rtcp_channel },
                format!("RTP/AVP/TCP;unicast;interleaved={rtp_channel}-{rtcp_channel};ssrc={ssrc:08X};mode=play"),
            ),
            Chosen::Udp(client_rtp, client_rtcp) => {
                let pair = play::UdpPair::bind(
                    self.local.ip(),
                    self.inner.config.udp_port_range,
                    &self.inner.next_udp_port,
                    self.peer.ip(),
                    (client_rtp, client_rtcp),
                )
                .map_err(|e| {
                    log::warn!("rtsp: no UDP ports for {}: {e}", self.peer);
                    Reply::new(StatusCode::ServiceUnavailable).header(headers::RETRY_AFTER, "5")
                })?;
                let (server_rtp, server_rtcp) = pair.server_ports();
                (
                    Transport::Udp(Arc::new(pair)),
                    format!(
                        "RTP/AVP;unicast;client_port={client_rtp}-{client_rtcp};server_port={server_rtp}-{server_rtcp};ssrc={ssrc:08X};mode=play"
                    ),
                )
            }
        };
        let id = super::random_hex();
        let (stop, stopped) = self.inner.shutdown.child();
        let session = Arc::new(Session {
            id: id.clone(),
            path: path.clone(),
            transport,
            connection: self.id,
            ssrc,
            last_seen_ms: Default::default(),
            playing: Default::default(),
            rtp_info: Mutex::new(None),
            stop,
            stopped,
            _demand: path.stream.demand.hold(),
        });
        session.touch();
        self.inner.sessions().insert(id.clone(), session);
        log::info!("rtsp: session {} on {} for {} ({answer})", super::short(&id), path.name(), self.peer);
        Ok(Reply::new(StatusCode::Ok)
            .header(headers::TRANSPORT, answer)
            .header(headers::SESSION, format!("{id};timeout={}", self.inner.config.session_timeout.as_secs())))
    }

    /// The first transport we can serve of what the client offers.
    fn choose_transport(&self, offered: &TransportSpec) -> Option<Chosen> {
        let TransportSpec::Rtp(rtp) = offered else { return None };
        if rtp.profile != headers::transport::RtpProfile::Avp || rtp.params.multicast {
            return None;
        }
        match rtp.lower_transport {
            Some(headers::transport::RtpLowerTransport::Tcp) => {
                let (rtp_channel, rtcp_channel) = match rtp.params.interleaved {
                    Some((a, Some(b))) if a != b => (a, b),
                    Some((a, _)) if a < u8::MAX => (a, a + 1),
                    Some(_) => return None,
                    None => (0, 1),
                };
                Some(Chosen::Tcp(rtp_channel, rtcp_channel))
            }
            None | Some(headers::transport::RtpLowerTransport::Udp) => {
                let (rtp_port, rtcp_port) = match rtp.params.client_port {
                    Some((a, Some(b))) => (a, b),
                    Some((a, None)) => (a, a.checked_add(1)?),
                    None => return None,
                };
                (rtp_port != 0 && rtcp_port != 0).then_some(Chosen::Udp(rtp_port, rtcp_port))
            }
            _ => None,
        }
    }

    /// The session a request names; 454 when it names none we know.
    fn named_session(&self, request: &Request<Vec<u8>>) -> Result<Arc<Session>, Reply> {
        let id = session_id(request).ok_or_else(|| {
            self.inner.metrics.bad_request("session");
            Reply::new(StatusCode::SessionNotFound)
        })?;
        self.inner.session(&id).ok_or_else(|| Reply::new(StatusCode::SessionNotFound))
    }

    fn play(&mut self, request: &Request<Vec<u8>>) -> Result<Reply, Reply> {
        self.authorize(request)?;
        let (_path, target) = self.target(request)?;
        let session = self.named_session(request)?;
        session.touch();
        let session_header = format!("{};timeout={}", session.id, self.inner.config.session_timeout.as_secs());
        let track_url = format!("{}{}", target.base, super::sdp::TRACK);
        let reply = |(seq, rtptime): (u16, u32)| {
            Reply::new(StatusCode::Ok)
                .header(headers::SESSION, session_header.clone())
                .header(headers::RANGE, "npt=0.000-")
                .header(headers::RTP_INFO, format!("url={track_url};seq={seq};rtptime={rtptime}"))
        };
        if let Some(info) = *session.rtp_info.lock().unwrap_or_else(|e| e.into_inner()) {
            // Already playing: PLAY again changes nothing.
            return Ok(reply(info));
        }
        let tcp_channels = match session.transport {
            Transport::Tcp { rtp_channel, rtcp_channel } => {
                if session.connection != self.id {
                    // Its media would go down another connection.
                    return Err(Reply::new(StatusCode::MethodNotValidInThisState));
                }
                if self.play.is_some() {
                    return Err(Reply::new(StatusCode::MethodNotValidInThisState));
                }
                Some((rtp_channel, rtcp_channel))
            }
            Transport::Udp(_) => None,
        };
        let subscription = play::subscribe(&session);
        let first = subscription.frames.try_recv().ok();
        let sender = RtpSender::new(session.ssrc);
        // The first packet's timestamp: the first cached frame's, or (no
        // frame yet) now on the same 90 kHz capture clock.
        let capture = first.as_ref().map_or_else(crate::clock::monotonic_now, |au| au.capture_time);
        let info = (sender.next_seq(), sender.timestamp(crate::rtp::rtp_time_90k(capture)));
        *session.rtp_info.lock().unwrap_or_else(|e| e.into_inner()) = Some(info);
        session.playing.store(true, Ordering::Relaxed);
        let playing = PlayingGuard::new(&session.path.stream.metrics);
        log::info!("rtsp: session {} playing {} to {}", super::short(&session.id), session.path.name(), self.peer);
        match (&session.transport, tcp_channels) {
            (_, Some((rtp_channel, rtcp_channel))) => {
                self.play = Some(TcpPlay {
                    session: session.clone(),
                    subscription,
                    first,
                    sender,
                    rtp_channel,
                    rtcp_channel,
                    _playing: playing,
                });
            }
            (Transport::Udp(pair), None) => {
                let player = play::play_udp(
                    self.inner.clone(),
                    session.clone(),
                    pair.clone(),
                    subscription,
                    first,
                    sender,
                    playing,
                );
                self.inner.tasks.spawn(&self.inner.runtime, player);
            }
            (Transport::Tcp { .. }, None) => unreachable!("TCP sessions always have channels"),
        }
        Ok(reply(info))
    }

    fn teardown(&mut self, request: &Request<Vec<u8>>) -> Result<Reply, Reply> {
        let session = self.named_session(request)?;
        if self.play.as_ref().is_some_and(|p| p.session.id == session.id) {
            self.play = None;
        }
        self.inner.end_session(&session.id, "TEARDOWN");
        Ok(Reply::new(StatusCode::Ok))
    }

    /// GET_PARAMETER / SET_PARAMETER: keep-alives (no parameters to get or
    /// set).
    fn keep_alive(&mut self, request: &Request<Vec<u8>>) -> Result<Reply, Reply> {
        if session_id(request).is_some() {
            self.named_session(request)?.touch();
        }
        if !request.body().is_empty() {
            return Err(Reply::new(StatusCode::ParameterNotUnderstood));
        }
        Ok(Reply::new(StatusCode::Ok))
    }
}

/// The URLs a request's answer names.
struct Target {
    /// `rtsp://HOST:PORT/NAME/` as the client wrote host and name.
    base: String,
}

enum Chosen {
    Tcp(u8, u8),
    Udp(u16, u16),
}

fn cseq_of(request: &Request<Vec<u8>>) -> Option<u32> {
    request.header(&headers::CSEQ).and_then(|v| v.as_str().trim().parse().ok())
}

/// The id of a `Session: ID[;timeout=N]` header.
fn session_id(request: &Request<Vec<u8>>) -> Option<String> {
    let value = request.header(&headers::SESSION)?.as_str();
    let id = value.split(';').next()?.trim();
    (!id.is_empty() && id.len() <= 64).then(|| id.to_string())
}

fn method_name(method: &Method) -> &str {
    match method {
        Method::Describe => "DESCRIBE",
        Method::GetParameter => "GET_PARAMETER",
        Method::Options => "OPTIONS",
        Method::Pause => "PAUSE",
        Method::Play => "PLAY",
        Method::PlayNotify => "PLAY_NOTIFY",
        Method::Redirect => "REDIRECT",
        Method::Setup => "SETUP",
        Method::SetParameter => "SET_PARAMETER",
        Method::Announce => "ANNOUNCE",
        Method::Record => "RECORD",
        Method::Teardown => "TEARDOWN",
        Method::Extension(name) => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_finds_requests_and_interleaved_data() {
        let request = b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n";
        let Framed::Request(parsed, consumed) = frame(request) else { panic!("not a request") };
        assert_eq!((parsed.method(), consumed), (&Method::Options, request.len()));
        assert!(matches!(frame(&request[..10]), Framed::Incomplete));
        assert!(matches!(frame(b"$\x01\x00\x02ab"), Framed::Interleaved { channel: 1, len: 2 }));
        assert!(matches!(frame(b"$\x01\x00\x05ab"), Framed::Incomplete));
        assert!(matches!(frame(b"\x00\x01garbage\r\n\r\n"), Framed::Bad(StatusCode::BadRequest, "parse")));
    }

    #[test]
    fn framing_bounds_heads_and_bodies() {
        let huge_head = format!("OPTIONS * RTSP/1.0\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert!(matches!(frame(huge_head.as_bytes()), Framed::Bad(_, "head_too_large")));
        let huge_body = b"SET_PARAMETER * RTSP/1.0\r\nCSeq: 2\r\nContent-Length: 99999999\r\n\r\nab";
        assert!(matches!(frame(huge_body), Framed::Bad(StatusCode::RequestMessageBodyTooLarge, "body_too_large")));
        let small_body = b"SET_PARAMETER * RTSP/1.0\r\nCSeq: 2\r\nContent-Length: 10\r\n\r\nab";
        assert!(matches!(frame(small_body), Framed::Incomplete));
    }

    #[test]
    fn replies_echo_cseq() {
        let bytes = Reply::new(StatusCode::Ok).header(headers::PUBLIC, PUBLIC).encode(Some(7));
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("RTSP/1.0 200 OK\r\n"), "{text}");
        assert!(text.contains("CSeq: 7\r\n") && text.contains("Public: OPTIONS"), "{text}");
    }
}
