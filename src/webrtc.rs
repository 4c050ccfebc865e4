//! WebRTC viewers. INTERFACE ONLY, agreed between the control plane and
//! the WebRTC work (issue 3), which replaces every body below.

use std::fmt;

use crate::pipeline::Media;
use crate::shutdown::Shutdown;

/// The viewer page served at `GET /`.
pub static VIEWER_PAGE: &str = "<!doctype html><title>streaming-server</title><p>viewer page: issue 3</p>";

#[derive(Clone, Debug)]
pub struct WebrtcConfig {
    pub max_clients: usize,
    /// STUN URLs from `-stun` (empty: none).
    pub stun: Vec<String>,
    /// `-udp-port-range`, inclusive.
    pub udp_port_range: Option<(u16, u16)>,
}

/// A negotiated viewer.
#[derive(Clone, Debug)]
pub struct Session {
    /// Opaque id, used in the WHEP resource URL `/whep/<id>`.
    pub id: String,
    pub answer_sdp: String,
}

/// Why an offer was refused; the control plane maps these to statuses.
#[derive(Clone, Debug)]
pub enum OfferError {
    /// 400: not parseable SDP, or not an offer.
    BadSdp(String),
    /// 400: no H.264 the camera's stream can be sent as (message says why).
    NoCompatibleCodec(String),
    /// 503 with Retry-After: `max_clients` viewers already.
    TooManyViewers,
    /// 503 with Retry-After: the camera has not sent SPS/PPS yet.
    NoStreamYet,
    /// 500.
    Internal(String),
}

impl fmt::Display for OfferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OfferError::BadSdp(why) => write!(f, "bad SDP offer: {why}"),
            OfferError::NoCompatibleCodec(why) => write!(f, "no compatible H.264 in the offer: {why}"),
            OfferError::TooManyViewers => write!(f, "too many viewers"),
            OfferError::NoStreamYet => write!(f, "the camera stream has not started yet"),
            OfferError::Internal(why) => write!(f, "internal error: {why}"),
        }
    }
}

/// All viewers; cheap to clone. Owns its own tokio runtime.
#[derive(Clone, Debug)]
pub struct Viewers {}

impl Viewers {
    pub fn new(_config: WebrtcConfig, _media: Media, _shutdown: Shutdown) -> Result<Viewers, String> {
        Ok(Viewers {})
    }

    /// Negotiates a new viewer; blocks the calling (control-plane) thread
    /// until ICE gathering is complete, bounded by a few seconds.
    pub fn offer(&self, _offer_sdp: &str) -> Result<Session, OfferError> {
        Err(OfferError::Internal("WebRTC not implemented yet".into()))
    }

    /// Ends a viewer at once (WHEP DELETE); false if unknown.
    pub fn close(&self, _session_id: &str) -> bool {
        false
    }

    /// Viewers connected now.
    pub fn count(&self) -> usize {
        0
    }

    /// Closes every viewer; returns within about half a second.
    pub fn close_all(&self) {}
}
