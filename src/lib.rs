//! streaming-server: serves a camera daemon's hardware-encoded H.264 from
//! POSIX shared memory to browsers over WebRTC and to raw `.h264` files,
//! without decoding or re-encoding.
//!
//! Data flows one way:
//!
//! ```text
//! camera daemon --shm--> shm (reader) -> h264 (processor) -> hub (fan-out) -+-> webrtc viewers
//!                        \________ media thread: pipeline ________/         +-> recorder
//! ```
//!
//! Module map:
//! - [`abi`]: the daemon's segment layout, checked against its C header.
//! - [`shm`]: attaches to the segment and copies every complete frame once.
//! - [`h264`]: Annex-B splitting, SPS parsing, SPS/PPS cache, IDR rules.
//! - [`hub`]: bounded per-consumer queues, GOP cache, drop-to-next-IDR.
//! - [`pipeline`]: the media thread joining the three above.
//! - [`webrtc`]: viewers (negotiation, packetize once, per-viewer send).
//! - [`recorder`]: raw `.h264` files on their own thread.
//! - [`http`]: the HTTP/1.1 server behind every listener; [`control`] (API
//!   routes), [`health`], [`profiling`] (pprof) are its services.
//! - [`fake_camera`]: a daemon stand-in that plays a clip into a segment;
//!   [`load_client`]: N non-decoding WebRTC viewers for benchmarks.
//! - [`systemd`]: sd_notify readiness and a watchdog fed by the media path.
//! - [`metrics`], [`clock`], [`shutdown`], [`tasks`], [`ratelimit`], [`cli`]:
//!   shared leaves that know nothing of video.

pub mod abi;
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
pub mod ratelimit;
pub mod recorder;
pub mod shutdown;
pub mod source;
pub mod stream;
pub mod systemd;
pub mod tasks;
pub mod webrtc;
