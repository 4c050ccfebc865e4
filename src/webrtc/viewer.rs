//! One viewer: its peer connection, its hub subscription and its send loop.
//! Runs as a task on the [`super::Viewers`] runtime; see the module doc of
//! [`super`] for the sequence. What a viewer shares with a WHIP publish
//! target (building the peer connection, RTCP feedback, writing a frame)
//! is in [`super::peer`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::peer_connection::transport::RTCDtlsTransportState;
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters;
use tokio::sync::{oneshot, watch};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::peer_connection::transport::DtlsTransport;
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState, RTCSessionDescription};

use super::negotiate::{self, Choice};
use super::peer::{self, Feedback, Handler};
use super::{Inner, KeyframeGate, OfferError, SlotGuard};
use crate::codec::AccessUnit;
use crate::hub::{StartAt, SubscribeOptions, Subscription};
use crate::rtp::Stamp;

fn internal(what: &str) -> impl Fn(webrtc::error::Error) -> OfferError + '_ {
    move |e| OfferError::Internal(format!("{what}: {e}"))
}

/// A negotiated peer connection and what the send loop needs of it.
struct Negotiated {
    track: Arc<TrackLocalStaticRTP>,
    payload_type: u8,
    ssrc: u32,
    /// The negotiated abs-capture-time extension id, if the viewer offered it.
    abs_capture_id: Option<u8>,
    /// Polled for the viewer's DTLS close_notify (see the module doc).
    dtls: Option<Arc<dyn DtlsTransport>>,
    answer: String,
}

async fn negotiate(
    inner: &Inner,
    pc: &dyn PeerConnection,
    offer: String,
    choice: &Choice,
    mut gathered: watch::Receiver<bool>,
) -> Result<Negotiated, OfferError> {
    let ssrc = super::random_u32();
    let track = peer::track(ssrc, codec(choice));
    let sender = pc.add_track(track.clone() as Arc<dyn TrackLocal>).await.map_err(internal("add_track"))?;
    let offer = RTCSessionDescription::offer(offer).map_err(|e| OfferError::BadSdp(e.to_string()))?;
    pc.set_remote_description(offer).await.map_err(|e| OfferError::BadSdp(e.to_string()))?;
    // Our side is fixed and known good, so a failure here comes from what
    // the offer says (a malformed extmap, say): bad input.
    let answer =
        pc.create_answer(None).await.map_err(|e| OfferError::BadSdp(format!("the offer cannot be answered: {e}")))?;
    pc.set_local_description(answer).await.map_err(internal("set_local_description"))?;
    // Host candidates are gathered at once; only STUN can take long. Bound
    // the wait and answer with what we have.
    if tokio::time::timeout(super::GATHER_TIMEOUT, gathered.wait_for(|done| *done)).await.is_err() {
        log::warn!(
            "webrtc: ICE gathering not complete after {:?}; answering with host candidates",
            super::GATHER_TIMEOUT
        );
    }
    let local = pc.local_description().await.ok_or_else(|| OfferError::Internal("no local description".into()))?;
    let answer = negotiate::finish_answer(&local.sdp, choice);
    // Every well-formed browser offer answers cleanly (tests/webrtc_offers.rs);
    // one that does not is an offer the stack cannot make sense of: bad
    // input (400), logged for diagnosis.
    negotiate::check_answer(&answer, choice).map_err(|e| {
        inner.stream.metrics.webrtc_errors.inc();
        log::warn!("webrtc: cannot answer an offer ({e})");
        OfferError::BadSdp(format!("the offer cannot be answered: {e}"))
    })?;
    let dtls = sender.transport().await.ok().flatten();
    let (payload_type, abs_capture_id) = peer::sent_parameters(sender.as_ref(), &answer, choice.payload_type).await;
    Ok(Negotiated { track, payload_type, ssrc, abs_capture_id, dtls, answer })
}

/// The whole life of one viewer. `guard` holds its slot until this ends.
pub(super) async fn run(
    guard: SlotGuard,
    offer: String,
    choice: Choice,
    answer_tx: oneshot::Sender<Result<String, OfferError>>,
    close_rx: oneshot::Receiver<()>,
) {
    let inner = guard.inner.clone();
    let id = guard.id.clone();
    let short = id[..8.min(id.len())].to_string();
    let (handler, state_rx, gathered_rx) = Handler::new();
    let codec = RTCRtpCodecParameters { rtp_codec: codec(&choice), payload_type: choice.payload_type };
    let pc = match peer::build(&inner.config, &inner.next_port, codec, handler).await {
        Ok(pc) => pc,
        Err(error) => {
            let error = match inner.config.udp_port_range {
                // Every port of the range is taken: a capacity limit like
                // -max-clients (503), not a fault.
                Some((low, high)) if error.ports_exhausted => {
                    log::warn!("webrtc: no free UDP port in -udp-port-range {low}-{high} ({})", error.why);
                    OfferError::TooManyViewers
                }
                _ => OfferError::Internal(format!("peer connection: {}", error.why)),
            };
            let _ = answer_tx.send(Err(error));
            return;
        }
    };
    let negotiated = negotiate(&inner, pc.as_ref(), offer, &choice, gathered_rx).await;
    let negotiated = match negotiated {
        Ok(n) => n,
        Err(error) => {
            let _ = answer_tx.send(Err(error));
            inner.release(&id);
            peer::close(&pc).await;
            return;
        }
    };
    if answer_tx.send(Ok(negotiated.answer.clone())).is_err() {
        // The control plane gave up waiting; nobody will get this answer.
        inner.release(&id);
        peer::close(&pc).await;
        return;
    }
    log::info!("webrtc: viewer {short} negotiated (PT {}, {})", negotiated.payload_type, choice.answer_fmtp);
    let outcome = serve(&inner, &id, &negotiated, state_rx, close_rx).await;
    match &outcome {
        Ok(why) => log::info!("webrtc: viewer {short} ended: {why}"),
        Err(why) => {
            inner.stream.metrics.webrtc_errors.inc();
            log::warn!("webrtc: viewer {short} failed: {why}");
        }
    }
    // The slot is free before the (bounded) close: a viewer that left is
    // gone for the next offer at once.
    inner.release(&id);
    peer::close(&pc).await;
    drop(guard);
}

/// The codec a viewer registers: exactly the offered one, so the `rtc`
/// matcher takes its exact path.
fn codec(choice: &Choice) -> rtc::rtp_transceiver::rtp_sender::RTCRtpCodec {
    peer::video_codec(choice.codec, choice.offered_fmtp.clone())
}

fn subscribe(inner: &Inner, short: &str) -> Subscription {
    inner.stream.hub.subscribe(SubscribeOptions {
        name: format!("viewer {short}"),
        budget: super::VIEWER_QUEUE,
        start: StartAt::GopCache,
        dropped_metric: Some(inner.stream.metrics.webrtc_frames_dropped.clone()),
    })
}

/// Waits for DTLS, then sends frames until the viewer goes. Ok(reason) for
/// an orderly end.
async fn serve(
    inner: &Inner,
    id: &str,
    negotiated: &Negotiated,
    mut state_rx: watch::Receiver<RTCPeerConnectionState>,
    mut close_rx: oneshot::Receiver<()>,
) -> Result<String, String> {
    let short = &id[..8.min(id.len())];
    let shutdown = inner.shutdown.clone();
    let started = Instant::now();
    tokio::select! {
        _ = &mut close_rx => return Ok("closed before connecting".into()),
        _ = shutdown.wait() => return Ok("shutdown".into()),
        result = tokio::time::timeout(super::CONNECT_TIMEOUT, peer::connected(&mut state_rx)) => match result {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(why),
            Err(_) => return Err(format!("not connected after {:?}", super::CONNECT_TIMEOUT)),
        },
    }
    inner.connected.fetch_add(1, Ordering::Relaxed);
    inner.mark_connected(id);
    log::info!("webrtc: viewer {short} connected in {:.0} ms", started.elapsed().as_secs_f64() * 1e3);

    // PLI/FIR and receiver reports arrive on the track's event stream.
    let metrics = &inner.stream.metrics;
    let mut feedback = Feedback::spawn(
        negotiated.track.clone(),
        negotiated.ssrc,
        metrics.webrtc_keyframe_requests.clone(),
        Some(metrics.clone()),
    );
    let mut subscription = subscribe(inner, short);
    let mut stamp = Stamp::new(negotiated.ssrc, negotiated.payload_type, subscription.backlog);
    stamp.abs_capture_id = negotiated.abs_capture_id;
    let mut close_poll = tokio::time::interval(super::CLOSE_POLL);
    close_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut keyframe_gate = KeyframeGate::started_now();
    let mut last_usage = Instant::now();

    let mut first_frame_logged = false;
    let result = loop {
        tokio::select! {
            biased;
            _ = &mut close_rx => break Ok("closed".to_string()),
            _ = shutdown.wait() => break Ok("shutdown".to_string()),
            changed = state_rx.changed() => {
                if changed.is_err() {
                    break Ok("peer connection went away".to_string());
                }
                match *state_rx.borrow_and_update() {
                    // ICE consent failed: the viewer vanished without a word.
                    RTCPeerConnectionState::Failed => {
                        break Ok("the viewer went silent (no ICE consent for about 5 s)".to_string())
                    }
                    RTCPeerConnectionState::Closed => break Ok("connection closed".to_string()),
                    _ => {}
                }
            }
            Some(()) = feedback.goodbye.recv() => break Ok("the viewer left (RTCP BYE)".to_string()),
            _ = close_poll.tick(), if negotiated.dtls.is_some() => {
                if let Some(dtls) = &negotiated.dtls {
                    if matches!(dtls.state().await, Ok(RTCDtlsTransportState::Closed)) {
                        break Ok("the viewer closed the connection (DTLS close_notify)".to_string());
                    }
                }
            }
            Some(()) = feedback.keyframe_requests.recv() => {
                // A browser asks for keyframes when frames stop coming.
                if keyframe_gate.allow(&inner.stream) {
                    drop(subscription);
                    subscription = subscribe(inner, short);
                    stamp.catchup = subscription.backlog;
                    inner.keyframe_restarts.fetch_add(1, Ordering::Relaxed);
                    log::debug!("webrtc: viewer {short} asked for a keyframe: restarting from the cached IDR");
                }
            }
            frame = subscription.frames.recv_async() => {
                let Ok(au) = frame else { break Err("the hub went away".to_string()) };
                if let Err(why) = send(inner, &negotiated.track, &mut stamp, &au).await {
                    break Err(why);
                }
                if stamp.catchup > 0 {
                    // Pace the rest of the cached GOP: sent back to back it
                    // is up to a second of bitrate in a few milliseconds,
                    // which overflows a receiver's socket buffer (measured:
                    // lost packets at every join). The first frame, the IDR,
                    // is never delayed.
                    tokio::time::sleep(peer::CATCHUP_PACE).await;
                }
                if !first_frame_logged {
                    first_frame_logged = true;
                    log::debug!("webrtc: viewer {short} first frame sent {:.0} ms after connect", started.elapsed().as_secs_f64() * 1e3);
                }
                if last_usage.elapsed() >= Duration::from_millis(500) {
                    last_usage = Instant::now();
                    inner.report_usage(id, subscription.usage_percent());
                }
            }
        }
    };
    let quality = feedback.quality();
    drop(feedback);
    log::info!(
        "webrtc: viewer {short}: {} receiver reports, {} packets reported lost, jitter {:.1} ms, RTT {:.1} ms",
        quality.reports,
        quality.lost,
        quality.jitter_ms,
        quality.rtt_ms
    );
    result
}

/// Sends one access unit: the shared packets with this viewer's header.
async fn send(inner: &Inner, track: &TrackLocalStaticRTP, stamp: &mut Stamp, au: &AccessUnit) -> Result<(), String> {
    let packets = inner.stream.packets.get(au);
    let live = stamp.catchup == 0;
    peer::write_frame(track, stamp, &packets, au.capture_time).await?;
    if live {
        // Handed to the peer connection's driver task, which seals and sends
        // it at once (its queue is bounded; this await waits when it is full).
        let sent = crate::clock::monotonic_now();
        inner.stream.metrics.capture_to_sent_ms.observe(crate::clock::millis_between(au.capture_time, sent));
    }
    inner.stream.metrics.webrtc_frames_sent.inc();
    Ok(())
}
