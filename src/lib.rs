//! streaming-server: serves cameras' hardware-encoded H.264 (a camera
//! daemon's POSIX shared memory, IP cameras over RTSP) to browsers over
//! WebRTC and to raw `.h264` files, without decoding or re-encoding.
//!
//! Data flows one way, per path (one camera):
//!
//! ```text
//! source (ring | rtsp | demo) -> Feed: codec processor -> hub (fan-out) -+-> webrtc viewers
//!                                                                          +-> rtsp_server clients
//!                                                                          +-> recorder
//!                                                                          +-> publish targets (SFU)
//!                                                                          +-> hls muxer
//! ```
//!
//! Module map:
//! - [`config`]: `-config` YAML and the legacy flags -> checked path configurations.
//! - [`paths`]: each path's stream and outputs; [`stream`]: the stream value
//!   (hub, source status, metrics, demand).
//! - [`source`]: the sources ([`source::ring`]: the daemon's ring, whose
//!   layout is in [`abi`]; [`source::rtsp`]: IP cameras; the demo camera) and
//!   their supervisor; [`fake_camera`]: a daemon stand-in that plays a clip.
//! - [`codec`]: Annex-B splitting and the H.264/H.265 processors (SPS
//!   parsing, parameter-set cache, keyframe rules).
//! - [`mp4`]: access units to MP4 without decoding: fMP4 init segments and
//!   fragments (LL-HLS), and raw recordings served as faststart MP4 on the
//!   fly.
//! - [`hub`]: budgeted per-consumer queues, GOP cache, drop-to-next-IDR.
//! - [`webrtc`]: viewers (negotiation, packetize once, per-viewer send).
//! - [`rtp`]: RTP payload formats, the packet cache every receiver shares,
//!   per-receiver headers.
//! - [`rtsp_server`]: every path as `rtsp://HOST:PORT/NAME` for NVRs (TCP
//!   interleaved and UDP, Basic/Digest auth).
//! - [`publish`]: a path relayed to SFUs: WHIP ([`publish::whip`]) and
//!   RTP/SRTP ([`publish::rtp`]) targets, supervised with backoff.
//! - [`recorder`]: raw `.h264`/`.h265` files on their own thread, with
//!   [`recording_times`] sidecars (every frame's capture time).
//! - [`recordings`]: the files on disk as the `/recordings` routes serve
//!   them (listing, safe opening, MP4 layouts, deletion).
//! - [`http`]: the HTTP/1.1 server behind every listener; [`control`] (API
//!   routes, dashboard), [`health`], [`profiling`] (pprof) are its services.
//! - [`turn`]: TURN servers, their credentials and a probe of each.
//! - [`load_client`]: N non-decoding WebRTC viewers for benchmarks, from
//!   this server or through Janus.
//! - [`hls`]: LL-HLS per path (segmenter, fMP4 muxer on [`mp4`], window,
//!   playlists, blocking reloads), the fallback for networks without UDP.
//! - [`load_client`]: N non-decoding WebRTC viewers (and LL-HLS clients)
//!   for benchmarks.
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
pub mod hls;
pub mod http;
pub mod hub;
pub mod load_client;
pub mod metrics;
pub mod mp4;
pub mod paths;
pub mod profiling;
pub mod publish;
pub mod random;
pub mod ratelimit;
pub mod recorder;
pub mod recording_times;
pub mod recordings;
pub mod rtp;
pub mod rtsp_server;
pub mod shutdown;
pub mod source;
pub mod stream;
pub mod systemd;
pub mod tasks;
pub mod turn;
pub mod webrtc;
