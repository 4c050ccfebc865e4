//! streaming-server: serves cameras' hardware-encoded H.264 (a camera
//! daemon's POSIX shared memory, IP cameras over RTSP) to browsers over
//! WebRTC and to raw `.h264` files, without decoding or re-encoding.
//!
//! Data flows one way, per path (one camera):
//!
//! ```text
//! source (ring | rtsp | demo) -> Feed: codec processor -> hub (fan-out) -+-> webrtc viewers
//!                                                                          +-> recorder
//!                                                                          +-> publish targets (SFU)
//! ```
//!
//! Module map:
//! - [`config`]: `-config` YAML and the legacy flags -> checked path configurations.
//! - [`paths`]: each path's stream and outputs; [`stream`]: the stream value
//!   (hub, source status, metrics, demand).
//! - [`source`]: the sources ([`source::ring`]: the daemon's ring, whose
//!   layout is in [`abi`]; [`source::rtsp`]: IP cameras; the demo camera) and
//!   their supervisor; [`fake_camera`]: a daemon stand-in that plays a clip.
//! - [`codec`]: Annex-B splitting and the H.264 processor (SPS parsing, SPS/PPS
//!   cache, IDR rules).
//! - [`hub`]: budgeted per-consumer queues, GOP cache, drop-to-next-IDR.
//! - [`webrtc`]: viewers (negotiation, packetize once, per-viewer send);
//!   [`rtp`]: payload formats, the shared packet cache, per-receiver headers.
//! - [`recorder`]: raw `.h264` files on their own thread.
//! - [`publish`]: a path relayed to SFUs: WHIP ([`publish::whip`]) and
//!   RTP/SRTP ([`publish::rtp`]) targets, supervised with backoff.
//! - [`http`]: the HTTP/1.1 server behind every listener; [`control`] (API
//!   routes, dashboard), [`health`], [`profiling`] (pprof) are its services.
//! - [`load_client`]: N non-decoding WebRTC viewers for benchmarks, from
//!   this server or through Janus.
//! - [`systemd`]: sd_notify readiness and a watchdog fed by the media threads.
//! - [`metrics`], [`clock`], [`shutdown`], [`tasks`], [`ratelimit`], [`cli`],
//!   [`backoff`], [`random`]: shared leaves that know nothing of video.

pub mod abi;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod codec;
pub mod config;
pub mod control;
pub mod fake_camera;
pub mod health;
pub mod http;
pub mod hub;
pub mod load_client;
pub mod metrics;
pub mod paths;
pub mod profiling;
pub mod publish;
pub mod random;
pub mod ratelimit;
pub mod recorder;
pub mod rtp;
pub mod shutdown;
pub mod source;
pub mod stream;
pub mod systemd;
pub mod tasks;
pub mod webrtc;
