//! Command line: the Go server's flags (`../shared/API.md`), single-dash
//! forms included, parsed by clap after a small rewrite of `-flag` to
//! `--flag`.

use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::abi::{Layout, TimeBits, DEFAULT_SHM_NAME};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
    Silent,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Silent => log::LevelFilter::Off,
        }
    }
}

/// Serves a camera daemon's H.264 from shared memory to WebRTC viewers and
/// recordings. Flags take Go style (-http :8081, -http=:8081) or --long form.
#[derive(Debug, Parser)]
#[command(name = "streaming-server", version, about)]
pub struct Args {
    /// Shared-memory segment to read.
    #[arg(long, default_value = DEFAULT_SHM_NAME)]
    pub shm: String,
    /// Control plane and WebRTC signaling address.
    #[arg(long, default_value = ":8081")]
    pub http: String,
    /// Prometheus /metrics address; empty turns it off.
    #[arg(long, default_value = ":9090")]
    pub metrics: String,
    /// Profiling endpoints address; empty turns it off.
    #[arg(long, default_value = ":6060")]
    pub pprof: String,
    /// Where recordings go (created if missing).
    #[arg(long = "record-path", default_value = "./recordings")]
    pub record_path: PathBuf,
    /// WebRTC viewers at once.
    #[arg(long = "max-clients", default_value_t = 10)]
    pub max_clients: usize,
    /// STUN server URLs, comma separated (none by default: LAN host
    /// candidates always work).
    #[arg(long, default_value = "")]
    pub stun: String,
    /// TURN server for viewers that cannot reach the board directly
    /// (repeatable): turn:HOST[:PORT][?transport=udp|tcp] or turns:...; the
    /// server allocates over UDP turn: URLs, browsers get all of them.
    #[arg(long = "turn")]
    pub turn: Vec<String>,
    /// TURN long-term credentials: user name.
    #[arg(long = "turn-user", default_value = "")]
    pub turn_user: String,
    /// TURN long-term credentials: password (visible in `ps`; prefer
    /// -turn-pass-file).
    #[arg(long = "turn-pass", default_value = "")]
    pub turn_pass: String,
    /// File whose first line is the TURN password.
    #[arg(long = "turn-pass-file")]
    pub turn_pass_file: Option<PathBuf>,
    /// File whose first line is the secret shared with the TURN server
    /// (coturn use-auth-secret): time-limited credentials instead of a
    /// password.
    #[arg(long = "turn-secret-file")]
    pub turn_secret_file: Option<PathBuf>,
    /// Lifetime of time-limited TURN credentials (e.g. 1h, 24h).
    #[arg(long = "turn-ttl", default_value = "24h")]
    pub turn_ttl: String,
    /// UDP ports WebRTC viewers may use, LOW-HIGH (e.g. 50000-50100) for a
    /// firewalled board; any free port when empty.
    #[arg(long = "udp-port-range", default_value = "")]
    pub udp_port_range: String,
    /// Local IPs to offer WebRTC host candidates on, comma separated; all
    /// interfaces but loopback when empty (name 127.0.0.1 to add loopback).
    #[arg(long = "webrtc-ip", default_value = "")]
    pub webrtc_ip: String,
    /// RTSP server address for NVRs and home automation (e.g. :8554):
    /// every path as rtsp://HOST:PORT/NAME. Off when empty (the config
    /// file's rtspAddress turns it on too; this flag wins).
    #[arg(long, default_value = "")]
    pub rtsp: String,
    /// UDP ports the RTSP server sends RTP/RTCP from, LOW-HIGH (pairs from
    /// an even port); ephemeral ports when empty.
    #[arg(long = "rtsp-udp-port-range", default_value = "")]
    pub rtsp_udp_port_range: String,
    /// An RTSP session with no request or RTCP report for this long ends
    /// (announced in `Session: ID;timeout=`), e.g. 60s.
    #[arg(long = "rtsp-session-timeout", default_value = "60s")]
    pub rtsp_session_timeout: String,
    /// debug, info, warn, error or silent; RUST_LOG overrides.
    #[arg(long = "log-level", value_enum, default_value = "info")]
    pub log_level: LogLevel,
    /// The camera daemon's time_t width: native, 32 or 64. Only matters on
    /// 32-bit ARM, where native means 32-bit (Raspberry Pi OS, Debian 12);
    /// a daemon built with -D_TIME_BITS=64 (Debian 13) needs 64.
    #[arg(long = "time-bits", default_value = "native", value_parser = TimeBits::parse)]
    pub time_bits: TimeBits,
    /// Start a new recording file at the first IDR after this long (e.g.
    /// 10m, 1h, 600s); empty or 0: one file per recording.
    #[arg(long = "record-segment", default_value = "")]
    pub record_segment: String,
    /// Delete the oldest recordings while those in -record-path exceed this
    /// size (e.g. 2G, 500M); empty: no limit.
    #[arg(long = "record-max-bytes", default_value = "")]
    pub record_max_bytes: String,
    /// Delete the oldest recordings while the disk has less free space than
    /// this (e.g. 200M); empty: no floor.
    #[arg(long = "record-min-free", default_value = "")]
    pub record_min_free: String,
    /// Origins whose pages may call the control plane (CORS), comma
    /// separated; `*` allows any.
    #[arg(long = "cors-origin", default_value = "http://localhost:8080")]
    pub cors_origin: String,
    /// File holding a bearer token required by /offer, /whep, /start and
    /// /stop (off when not given).
    #[arg(long = "auth-token-file")]
    pub auth_token_file: Option<PathBuf>,
    /// Control-plane client timeout in milliseconds: request headers and
    /// bodies must arrive within it; idle connections close after it.
    #[arg(long = "http-timeout-ms", default_value_t = 10_000)]
    pub http_timeout_ms: u64,
    /// A path's HLS muxer stops (and frees its memory, and an on-demand
    /// source its camera) this long after the last HLS request (e.g. 30s, 2m).
    #[arg(long = "hls-close-after", default_value = "30s")]
    pub hls_close_after: String,
    /// Run a built-in fake camera playing a demo clip (no camera needed).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub demo: bool,
    /// The demo clip's codec: h264 or h265.
    #[arg(long = "demo-codec", default_value = "h264", value_parser = parse_codec)]
    pub demo_codec: crate::codec::Codec,
    /// YAML file with the paths to serve (shared memory, RTSP cameras,
    /// demo); see docs/operations.md. The camera flags, when given too,
    /// describe the path `cam`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Relay the path `cam` to an SFU or RTP receiver (repeatable):
    /// whip+https://HOST/PATH, whip+http://..., rtp://HOST:PORT?pt=96 or
    /// srtp://HOST:PORT?pt=96&key=BASE64.
    #[arg(long = "publish", value_name = "URL")]
    pub publish: Vec<String>,
    /// File holding the bearer token for the -publish WHIP endpoints (its
    /// first line).
    #[arg(long = "publish-token-file")]
    pub publish_token_file: Option<PathBuf>,
    /// Set by `parse`: a camera flag (-shm, -demo, -time-bits) was given on
    /// the command line (not just its default).
    #[arg(skip)]
    pub camera_flag_given: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Play an H.264 clip into a shared-memory segment like the camera daemon.
    FakeCamera(FakeCameraArgs),
    /// Connect N non-decoding WebRTC viewers to a server and report what they received (JSON).
    LoadClient(LoadClientArgs),
}

#[derive(Debug, clap::Args)]
pub struct FakeCameraArgs {
    /// Segment to create.
    #[arg(long, default_value = DEFAULT_SHM_NAME)]
    pub shm: String,
    /// Annex-B .h264 or .h265 file to play (by its name; default: the
    /// built-in demo clip).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The ring's `format` to write (default: 3 for H.264, 4 for H.265;
    /// 3 with an H.265 clip acts as an older daemon).
    #[arg(long)]
    pub format: Option<i32>,
    #[arg(long, default_value_t = 30.0)]
    pub fps: f64,
    /// Stop after this many frames (default: loop until stopped).
    #[arg(long)]
    pub frames: Option<u64>,
    /// First write_index value (e.g. 4294967290 to test wrap-around).
    #[arg(long = "start-index", default_value_t = 0)]
    pub start_index: u32,
    /// Unlink and recreate the segment every N frames, like a daemon restart.
    #[arg(long = "restart-every")]
    pub restart_every: Option<u64>,
    /// Insert a malformed frame after every N good ones.
    #[arg(long = "malformed-every")]
    pub malformed_every: Option<u64>,
    /// Write N frames back to back, then pause as long.
    #[arg(long, default_value_t = 1)]
    pub burst: u64,
    /// Milliseconds to pause between header and data copy.
    #[arg(long = "slow-copy-ms")]
    pub slow_copy_ms: Option<u64>,
    /// Do not post the semaphore.
    #[arg(long = "no-post")]
    pub no_post: bool,
    /// Keep the segment this many milliseconds after the last frame.
    #[arg(long = "linger-ms", default_value_t = 0)]
    pub linger_ms: u64,
    #[arg(long = "time-bits", default_value = "native", value_parser = TimeBits::parse)]
    pub time_bits: TimeBits,
}

#[derive(Debug, clap::Args)]
pub struct LoadClientArgs {
    /// The server's control plane.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub url: String,
    #[arg(long, default_value_t = 1)]
    pub viewers: usize,
    /// Seconds each viewer receives.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Milliseconds between two viewers joining (so they land across the GOP).
    #[arg(long = "stagger-ms", default_value_t = 37)]
    pub stagger_ms: u64,
    /// Local IP for the viewers' ICE candidates.
    #[arg(long = "local-ip", default_value = "127.0.0.1")]
    pub local_ip: std::net::IpAddr,
    /// File holding the server's bearer token, if it requires one.
    #[arg(long = "auth-token-file")]
    pub auth_token_file: Option<PathBuf>,
    /// The path to watch (POST /NAME/offer); the legacy /offer when empty.
    #[arg(long, default_value = "")]
    pub path: String,
    /// Codecs the viewers offer, in preference order: `h264`, `h265`, or
    /// both (`h265,h264`).
    #[arg(long, default_value = "h264", value_delimiter = ',', value_parser = parse_codec)]
    pub codec: Vec<crate::codec::Codec>,
    /// The clip the camera plays in a loop (`.h264`/`.h265`): every NAL
    /// unit received must equal the clip's, byte for byte; any that differ
    /// fail the run.
    #[arg(long)]
    pub verify: Option<PathBuf>,
    /// Watch this mountpoint of a Janus streaming plugin instead of the
    /// server: -url is then Janus's HTTP API (http://HOST:8088/janus);
    /// Janus offers, each viewer answers.
    #[arg(long = "janus-mountpoint")]
    pub janus_mountpoint: Option<u64>,
    /// LL-HLS clients to run beside the viewers (GET NAME/index.m3u8 with
    /// blocking reloads, every part fetched); -viewers 0 for HLS only.
    #[arg(long, default_value_t = 0)]
    pub hls: usize,
}

impl FakeCameraArgs {
    pub fn options(&self) -> crate::fake_camera::FakeCameraOptions {
        let mut options = crate::fake_camera::FakeCameraOptions::new(&self.shm, Layout::new(self.time_bits));
        options.fps = self.fps;
        options.frames = self.frames;
        options.start_index = self.start_index;
        options.restart_every = self.restart_every;
        options.malformed_every = self.malformed_every;
        options.burst = self.burst;
        options.slow_copy = self.slow_copy_ms.map(std::time::Duration::from_millis);
        options.post = !self.no_post;
        options.linger = std::time::Duration::from_millis(self.linger_ms);
        options
    }
}

/// `h264` or `h265` (also `hevc`, `avc`).
pub fn parse_codec(text: &str) -> Result<crate::codec::Codec, String> {
    match text.to_ascii_lowercase().as_str() {
        "h264" | "h.264" | "avc" => Ok(crate::codec::Codec::H264),
        "h265" | "h.265" | "hevc" => Ok(crate::codec::Codec::H265),
        other => Err(format!("codec {other:?}: h264 or h265")),
    }
}

/// Rewrites Go-style `-flag` / `-flag=value` to `--flag...`; leaves `-h`,
/// `--flag`, `-` and values alone.
pub fn normalize_go_flags(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    args.into_iter()
        .enumerate()
        .map(|(i, arg)| match arg.to_str() {
            Some(s) if i > 0 && s.len() > 2 && s.starts_with('-') && !s.starts_with("--") => {
                let name = &s[1..];
                if name.starts_with(|c: char| c.is_ascii_alphabetic()) {
                    OsString::from(format!("--{name}"))
                } else {
                    arg
                }
            }
            _ => arg,
        })
        .collect()
}

/// Parses the process's arguments (exits with usage on error, like clap).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Args {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Args::command().get_matches_from(normalize_go_flags(args));
    let mut args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let given = |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    args.camera_flag_given = given("shm") || given("demo") || given("time_bits") || given("demo_codec");
    args
}

/// A Go-style listen address: `:8081` (all interfaces), `host:port`, or
/// empty (listener off).
pub fn parse_listen(text: &str) -> Result<Option<SocketAddr>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let full = if text.starts_with(':') { format!("0.0.0.0{text}") } else { text.to_string() };
    full.to_socket_addrs()
        .map_err(|e| format!("bad listen address {text:?}: {e}"))?
        .next()
        .map(Some)
        .ok_or_else(|| format!("listen address {text:?} resolves to nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::try_parse_from(normalize_go_flags(list.iter().map(OsString::from))).unwrap()
    }

    #[test]
    fn go_style_flags_work_in_both_forms() {
        let a = args(&["streaming-server", "-http", "127.0.0.1:0", "-max-clients=3", "-metrics=", "-demo"]);
        assert_eq!(a.http, "127.0.0.1:0");
        assert_eq!(a.max_clients, 3);
        assert_eq!(a.metrics, "");
        assert!(a.demo);
        let b = args(&["streaming-server", "--shm", "/x", "-log-level", "silent", "-demo=false"]);
        assert_eq!((b.shm.as_str(), b.log_level, b.demo), ("/x", LogLevel::Silent, false));
    }

    #[test]
    fn defaults_match_the_go_server() {
        let a = args(&["streaming-server"]);
        assert_eq!(
            (a.shm.as_str(), a.http.as_str(), a.metrics.as_str(), a.pprof.as_str(), a.max_clients),
            ("/pet_camera_stream", ":8081", ":9090", ":6060", 10)
        );
        assert_eq!(a.record_path, PathBuf::from("./recordings"));
        assert_eq!(a.rtsp, "", "the RTSP server is off by default");
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen("").unwrap(), None);
        assert_eq!(parse_listen(":8081").unwrap(), Some("0.0.0.0:8081".parse().unwrap()));
        assert_eq!(parse_listen("127.0.0.1:0").unwrap(), Some("127.0.0.1:0".parse().unwrap()));
        assert!(parse_listen("nonsense").is_err());
    }

    #[test]
    fn explicit_camera_flags_are_told_from_defaults() {
        let given = parse(["streaming-server", "-config", "a.yml", "-shm", "/x"].map(OsString::from));
        assert!(given.camera_flag_given);
        assert_eq!(given.config.as_deref(), Some(std::path::Path::new("a.yml")));
        let defaults = parse(["streaming-server", "-config", "a.yml", "-max-clients", "3"].map(OsString::from));
        assert!(!defaults.camera_flag_given);
        assert!(parse(["streaming-server", "-demo"].map(OsString::from)).camera_flag_given);
    }

    #[test]
    fn publish_repeats() {
        let a = args(&["streaming-server", "-publish", "rtp://h:5004", "-publish=whip+http://h/w"]);
        assert_eq!(a.publish, ["rtp://h:5004", "whip+http://h/w"]);
        assert!(args(&["streaming-server"]).publish.is_empty());
    }

    #[test]
    fn fake_camera_subcommand_takes_go_style_flags() {
        let a = args(&["streaming-server", "fake-camera", "-shm", "/t", "-fps=60", "-no-post"]);
        let Some(Command::FakeCamera(f)) = a.command else { panic!("no subcommand") };
        assert_eq!((f.shm.as_str(), f.fps, f.no_post), ("/t", 60.0, true));
    }
}
