//! The paths this server serves: from `-config FILE` (YAML, in the style of
//! mediamtx), from the legacy flags, or both.
//!
//! In: the YAML text (untrusted: a typo must not start a half-configured
//! server) and the parsed flags. Out: a list of [`PathConfig`] in file
//! order, each checked: names `[A-Za-z0-9_-]{1,64}` that do not shadow a
//! top-level route, a source that parses, durations and sizes that parse.
//! Every error names the file, the line and the path, and the server does
//! not start.
//!
//! Without `-config` the legacy flags define one path named `cam`, exactly
//! the Go server's single camera. With `-config`, a `cam` path is added from
//! the flags when a camera flag (`-shm`, `-demo`, `-time-bits`) is given and
//! the file has no `cam`; the recording flags (`-record-path`,
//! `-record-segment`, `-record-max-bytes`, `-record-min-free`) and
//! `-max-clients` are the defaults every path starts from.
//!
//! YAML: `serde_norway`, a maintained fork of the deprecated `serde_yaml`
//! with the same API and error locations. Booleans also take `yes`/`no`/
//! `on`/`off`, as mediamtx files write them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Deserializer};

use crate::abi::TimeBits;
use crate::codec::Codec;
use crate::publish::PublishConfig;

/// Top-level routes a path name may not take (`/NAME/...` would hide them).
pub const RESERVED_NAMES: &[&str] = &[
    "offer",
    "whep",
    "start",
    "stop",
    "status",
    "health",
    "paths",
    "metrics",
    "recordings",
    "debug",
    "assets",
    "index.m3u8",
    "ice-servers",
];

/// The path legacy routes and metrics mean (the Go server's one camera).
pub const LEGACY_PATH: &str = "cam";

/// Where a path's frames come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceConfig {
    /// The camera daemon's shared-memory ring. `codec` is what `format` 3
    /// means there (H.264, or H.265 for an older daemon that says 3).
    Ring { segment: String, time_bits: TimeBits, codec: Codec },
    /// An IP camera over RTSP (its SDP says the codec).
    Rtsp(RtspSourceConfig),
    /// The built-in fake camera (a ring of its own, played in-process),
    /// playing the demo clip of `codec`.
    Demo { codec: Codec },
}

impl SourceConfig {
    /// `shm`, `rtsp` or `demo`: what `/paths` shows (never a URL).
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Ring { .. } => "shm",
            SourceConfig::Rtsp(_) => "rtsp",
            SourceConfig::Demo { .. } => "demo",
        }
    }
}

/// How RTP reaches us from an RTSP camera.
pub use crate::source::rtsp::Transport as RtspTransport;

#[derive(Clone, PartialEq, Eq)]
pub struct RtspSourceConfig {
    pub url: String,
    pub user: Option<String>,
    pub pass: Option<String>,
    pub transport: RtspTransport,
}

impl fmt::Debug for RtspSourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password, in the URL or beside it.
        f.debug_struct("RtspSourceConfig")
            .field("url", &redact_url(&self.url))
            .field("user", &self.user)
            .field("pass", &self.pass.as_ref().map(|_| "***"))
            .field("transport", &self.transport)
            .finish()
    }
}

/// `url` with any password replaced by `***` (for logs and `/paths`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (authority, tail) = rest.split_once('/').map_or((rest, ""), |(a, t)| (a, t));
    let Some((userinfo, host)) = authority.rsplit_once('@') else { return url.to_string() };
    let user = userinfo.split(':').next().unwrap_or("");
    let slash = if rest.contains('/') { "/" } else { "" };
    format!("{scheme}://{user}:***@{host}{slash}{tail}")
}

/// Recording settings of a path: the recorder's own.
pub use crate::recorder::RecorderConfig as RecordConfig;

/// One path, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathConfig {
    pub name: String,
    pub source: SourceConfig,
    pub on_demand: bool,
    pub on_demand_close_after: Duration,
    pub record: RecordConfig,
    pub max_clients: usize,
    /// An H.264 path that viewers whose browsers cannot play this path's
    /// codec (H.265) are given instead, e.g. the camera's H.264 substream.
    pub fallback: Option<String>,
    /// TURN servers for this path's viewers; `None`: the `-turn` flags'.
    pub turn: Option<Vec<crate::turn::TurnServer>>,
    /// Where the stream is relayed to (WHIP, RTP, SRTP), see
    /// [`crate::publish`].
    pub publish: Vec<PublishConfig>,
}

/// A configuration error: where, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    pub path: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{line}: ", file.display())?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            (None, _) => write!(f, "flags: ")?,
        }
        if let Some(path) = &self.path {
            write!(f, "path {path:?}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// What the legacy flags say, for [`load`].
#[derive(Clone, Debug)]
pub struct FlagDefaults {
    pub shm: String,
    pub time_bits: TimeBits,
    pub demo: bool,
    /// The codec of the demo clip (`-demo-codec`).
    pub demo_codec: Codec,
    /// True when `-shm`, `-demo` or `-time-bits` was given on the command
    /// line (with `-config`, those flags then define `cam`).
    pub camera_flag_given: bool,
    pub record_path: PathBuf,
    pub record_segment: Option<Duration>,
    pub record_max_bytes: Option<u64>,
    pub record_min_free: Option<u64>,
    pub max_clients: usize,
    /// `-publish` targets: published from the path `cam`.
    pub publish: Vec<PublishConfig>,
}

impl FlagDefaults {
    /// The `cam` path the flags describe.
    pub fn legacy_path(&self) -> PathConfig {
        let source = if self.demo {
            SourceConfig::Demo { codec: self.demo_codec }
        } else {
            SourceConfig::Ring { segment: self.shm.clone(), time_bits: self.time_bits, codec: Codec::H264 }
        };
        PathConfig {
            name: LEGACY_PATH.into(),
            source,
            on_demand: false,
            on_demand_close_after: DEFAULT_CLOSE_AFTER,
            record: self.record_for(LEGACY_PATH),
            max_clients: self.max_clients,
            fallback: None,
            turn: None,
            publish: self.publish.clone(),
        }
    }

    /// Recording settings from the flags: `cam` records into `-record-path`
    /// itself (as the Go server did), other paths into a folder of their
    /// name inside it.
    fn record_for(&self, name: &str) -> RecordConfig {
        let dir = if name == LEGACY_PATH { self.record_path.clone() } else { self.record_path.join(name) };
        RecordConfig {
            dir,
            segment: self.record_segment,
            max_bytes: self.record_max_bytes,
            min_free: self.record_min_free,
        }
    }
}

/// `sourceOnDemandCloseAfter` when not given.
pub const DEFAULT_CLOSE_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileConfig {
    #[serde(default)]
    paths: IndexMap<String, PathEntry>,
    #[serde(default)]
    rtsp_address: Option<String>,
    #[serde(default)]
    rtsp_user: Option<String>,
    #[serde(default)]
    rtsp_pass: Option<String>,
}

/// The RTSP server's settings from the file (`-rtsp` overrides the address).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RtspFileSettings {
    /// `rtspAddress:` (`:8554`, `127.0.0.1:8554`), checked.
    pub address: Option<std::net::SocketAddr>,
    /// `rtspUser:`/`rtspPass:`: the RTSP server's own credentials.
    pub credentials: Option<(String, String)>,
}

impl fmt::Debug for RtspFileSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RtspFileSettings")
            .field("address", &self.address)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .finish()
    }
}

/// Everything a config file says: its paths and the server-wide settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub paths: Vec<PathConfig>,
    pub rtsp: RtspFileSettings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PathEntry {
    source: String,
    #[serde(default)]
    time_bits: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    pass: Option<String>,
    #[serde(default)]
    rtsp_transport: Option<String>,
    #[serde(default, deserialize_with = "yes_no")]
    source_on_demand: bool,
    #[serde(default)]
    source_on_demand_close_after: Option<String>,
    #[serde(default)]
    record: Option<RecordEntry>,
    #[serde(default)]
    max_clients: Option<usize>,
    #[serde(default)]
    codec: Option<String>,
    #[serde(default)]
    fallback: Option<String>,
    #[serde(default)]
    turn: Option<Vec<TurnEntry>>,
    #[serde(default)]
    publish: Vec<PublishEntry>,
}

/// One TURN server of a path: `url` and a `user`/`pass` or the server's
/// shared `secret` (or `secretFile`), `ttl` for credentials made from it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TurnEntry {
    url: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    pass: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    secret_file: Option<PathBuf>,
    #[serde(default)]
    ttl: Option<String>,
}

fn parse_turn(entries: &[TurnEntry]) -> Result<Vec<crate::turn::TurnServer>, String> {
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let fail = |e: String| format!("turn[{i}]: {e}");
            let secret = match (&entry.secret, &entry.secret_file) {
                (Some(_), Some(_)) => return Err(fail("secret and secretFile: give one".into())),
                (Some(secret), None) => Some(secret.clone()),
                (None, Some(file)) => Some(read_secret_file(file).map_err(fail)?),
                (None, None) => None,
            };
            let ttl = match &entry.ttl {
                Some(text) => crate::recorder::parse_duration(text).map_err(|e| fail(format!("ttl: {e}")))?,
                None => None,
            };
            crate::turn::TurnServer::from_parts(
                &entry.url,
                entry.user.as_deref(),
                entry.pass.as_deref(),
                secret.as_deref(),
                ttl,
            )
            .map_err(fail)
        })
        .collect()
}

/// One entry of a path's `publish:` list: a URL, or a map with the URL and
/// a bearer token (`token:` or `tokenFile:`) for a WHIP endpoint.
struct PublishEntry {
    url: String,
    token: Option<String>,
    token_file: Option<PathBuf>,
}

impl fmt::Debug for PublishEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token, a stream key in the URL or an SRTP key.
        f.debug_struct("PublishEntry")
            .field("url", &crate::publish::redact(&self.url))
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("token_file", &self.token_file)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PublishMap {
    url: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_file: Option<PathBuf>,
}

impl<'de> Deserialize<'de> for PublishEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PublishEntry, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = PublishEntry;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a target URL, or a map with url: (and token: or tokenFile:)")
            }

            fn visit_str<E: serde::de::Error>(self, url: &str) -> Result<PublishEntry, E> {
                Ok(PublishEntry { url: url.to_string(), token: None, token_file: None })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<PublishEntry, A::Error> {
                // Through the derived map type, so unknown keys are named.
                let map = PublishMap::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(PublishEntry { url: map.url, token: map.token, token_file: map.token_file })
            }
        }
        deserializer.deserialize_any(Entry)
    }
}

/// The first line of a file holding a secret (`-auth-token-file`, a TURN
/// password or shared secret, a WHIP bearer token), trimmed; never empty.
pub fn read_secret_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let secret = text.lines().next().unwrap_or("").trim().to_string();
    if secret.is_empty() {
        return Err(format!("{}: nothing on its first line", path.display()));
    }
    Ok(secret)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RecordEntry {
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    segment: Option<String>,
    #[serde(default)]
    max_bytes: Option<String>,
    #[serde(default)]
    min_free: Option<String>,
}

/// A YAML boolean, or `yes`/`no`/`on`/`off` (YAML 1.1, as mediamtx writes).
fn yes_no<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    struct YesNo;
    impl serde::de::Visitor<'_> for YesNo {
        type Value = bool;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("yes or no")
        }

        fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<bool, E> {
            Ok(value)
        }

        fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<bool, E> {
            match value.to_ascii_lowercase().as_str() {
                "yes" | "on" | "true" => Ok(true),
                "no" | "off" | "false" => Ok(false),
                _ => Err(E::invalid_value(serde::de::Unexpected::Str(value), &self)),
            }
        }
    }
    deserializer.deserialize_any(YesNo)
}

/// True if `name` may be a path name.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The paths to serve (the file's, if any, and the flags' `cam`) and the
/// file's server-wide settings.
pub fn load(file: Option<&Path>, flags: &FlagDefaults) -> Result<Config, ConfigError> {
    let Some(file) = file else {
        return Ok(Config { paths: vec![flags.legacy_path()], rtsp: RtspFileSettings::default() });
    };
    let error = |line: Option<usize>, path: Option<&str>, message: String| ConfigError {
        file: Some(file.to_path_buf()),
        line,
        path: path.map(str::to_string),
        message,
    };
    let text = std::fs::read_to_string(file).map_err(|e| error(None, None, e.to_string()))?;
    let config = parse_file(&text, flags).map_err(|(line, path, message)| error(line, path.as_deref(), message))?;
    let mut paths = config.paths;
    if flags.camera_flag_given {
        if paths.iter().any(|p| p.name == LEGACY_PATH) {
            return Err(error(
                line_of_path(&text, LEGACY_PATH),
                Some(LEGACY_PATH),
                "defined in the file and by -shm/-demo/-time-bits; drop one".into(),
            ));
        }
        paths.insert(0, flags.legacy_path());
    } else if !flags.publish.is_empty() {
        let Some(cam) = paths.iter_mut().find(|p| p.name == LEGACY_PATH) else {
            return Err(error(
                None,
                None,
                "-publish relays the path cam, which the file does not define (use publish: on a path)".into(),
            ));
        };
        cam.publish.extend(flags.publish.iter().cloned());
    }
    if paths.is_empty() {
        return Err(error(None, None, "no paths: add a `paths:` map (or a camera flag such as -shm)".into()));
    }
    Ok(Config { paths, rtsp: config.rtsp })
}

type ParseError = (Option<usize>, Option<String>, String);

/// Parses and checks a config file's paths.
pub fn parse(text: &str, flags: &FlagDefaults) -> Result<Vec<PathConfig>, ParseError> {
    parse_file(text, flags).map(|config| config.paths)
}

/// Parses and checks a config file's text: its paths and server settings.
pub fn parse_file(text: &str, flags: &FlagDefaults) -> Result<Config, ParseError> {
    let file: FileConfig = if text.trim().is_empty() {
        FileConfig::default()
    } else {
        serde_norway::from_str(text).map_err(|e| {
            // serde_norway names the field path (paths.cam.source) in its message.
            let path =
                e.to_string().strip_prefix("paths.").and_then(|s| s.split(['.', ':']).next()).map(str::to_string);
            (e.location().map(|l| l.line()), path, e.to_string())
        })?
    };
    let rtsp = rtsp_settings(text, &file)?;
    let mut out = Vec::with_capacity(file.paths.len());
    for (name, entry) in file.paths {
        let line = line_of_path(text, &name);
        let fail = |message: String| (line, Some(name.clone()), message);
        if !valid_name(&name) {
            return Err(fail("names are 1-64 of A-Z a-z 0-9 _ -".into()));
        }
        if RESERVED_NAMES.contains(&name.as_str()) {
            return Err(fail(format!("{name:?} is a top-level route; choose another name")));
        }
        let source = parse_source(&entry).map_err(&fail)?;
        let close_after = match &entry.source_on_demand_close_after {
            None => DEFAULT_CLOSE_AFTER,
            Some(text) => crate::recorder::parse_duration(text)
                .map_err(|e| fail(format!("sourceOnDemandCloseAfter: {e}")))?
                .unwrap_or(Duration::ZERO),
        };
        let mut record = flags.record_for(&name);
        if let Some(entry) = &entry.record {
            if let Some(dir) = &entry.path {
                record.dir = dir.clone();
            }
            if let Some(text) = &entry.segment {
                record.segment =
                    crate::recorder::parse_duration(text).map_err(|e| fail(format!("record.segment: {e}")))?;
            }
            if let Some(text) = &entry.max_bytes {
                record.max_bytes =
                    crate::recorder::parse_size(text).map_err(|e| fail(format!("record.maxBytes: {e}")))?;
            }
            if let Some(text) = &entry.min_free {
                record.min_free =
                    crate::recorder::parse_size(text).map_err(|e| fail(format!("record.minFree: {e}")))?;
            }
        }
        if entry.max_clients == Some(0) {
            return Err(fail("maxClients must be at least 1".into()));
        }
        let mut publish = Vec::with_capacity(entry.publish.len());
        for (index, target) in entry.publish.iter().enumerate() {
            let token = match (&target.token, &target.token_file) {
                (Some(_), Some(_)) => return Err(fail(format!("publish[{index}]: token or tokenFile, not both"))),
                (Some(token), None) => Some(token.clone()),
                (None, Some(file)) => {
                    Some(read_secret_file(file).map_err(|e| fail(format!("publish[{index}]: tokenFile {e}")))?)
                }
                (None, None) => None,
            };
            publish
                .push(crate::publish::parse(&target.url, token).map_err(|e| fail(format!("publish[{index}]: {e}")))?);
        }
        out.push(PathConfig {
            name: name.clone(),
            source,
            on_demand: entry.source_on_demand,
            on_demand_close_after: close_after,
            record,
            max_clients: entry.max_clients.unwrap_or(flags.max_clients),
            fallback: entry.fallback.clone(),
            turn: entry.turn.as_deref().map(parse_turn).transpose().map_err(&fail)?,
            publish,
        });
    }
    // A fallback names another path that exists.
    for path in &out {
        let Some(fallback) = &path.fallback else { continue };
        let fail = |message: String| (line_of_path(text, &path.name), Some(path.name.clone()), message);
        if fallback == &path.name {
            return Err(fail("fallback names the path itself".into()));
        }
        if !out.iter().any(|p| &p.name == fallback) {
            return Err(fail(format!("fallback {fallback:?} is not a path of this file")));
        }
    }
    Ok(Config { paths: out, rtsp })
}

/// `rtspAddress`, `rtspUser`, `rtspPass`, checked.
fn rtsp_settings(text: &str, file: &FileConfig) -> Result<RtspFileSettings, ParseError> {
    let fail = |key: &str, message: String| (line_of_key(text, key), None, format!("{key}: {message}"));
    let address = match file.rtsp_address.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => crate::cli::parse_listen(text).map_err(|e| fail("rtspAddress", e))?,
    };
    let credentials = match (&file.rtsp_user, &file.rtsp_pass) {
        (None, None) => None,
        (Some(user), Some(pass)) => {
            // A colon cannot be sent in Basic auth's user name; control
            // characters would break the Authorization header.
            if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
                return Err(fail("rtspUser", "1 or more characters, no colon or control characters".into()));
            }
            if pass.is_empty() || pass.chars().any(char::is_control) {
                return Err(fail("rtspPass", "1 or more characters, no control characters".into()));
            }
            Some((user.clone(), pass.clone()))
        }
        (Some(_), None) => return Err(fail("rtspUser", "needs rtspPass too".into())),
        (None, Some(_)) => return Err(fail("rtspPass", "needs rtspUser too".into())),
    };
    Ok(RtspFileSettings { address, credentials })
}

/// The line (1-based) of a top-level `key:`.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| line.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with(':')))
        .map(|i| i + 1)
}

fn parse_source(entry: &PathEntry) -> Result<SourceConfig, String> {
    let source = entry.source.trim();
    let codec = entry.codec.as_deref().map(crate::cli::parse_codec).transpose()?;
    let rtsp_only = |field: &str, given: bool| {
        if given {
            Err(format!("{field} applies to rtsp:// sources only"))
        } else {
            Ok(())
        }
    };
    if let Some(segment) = source.strip_prefix("shm:") {
        rtsp_only("user/pass", entry.user.is_some() || entry.pass.is_some())?;
        rtsp_only("rtspTransport", entry.rtsp_transport.is_some())?;
        if !segment.starts_with('/') || segment.len() < 2 || segment[1..].contains('/') || segment.contains('\0') {
            return Err(format!("source {source:?}: a segment name is shm:/NAME"));
        }
        let time_bits = match &entry.time_bits {
            None => TimeBits::Native,
            Some(text) => TimeBits::parse(text).map_err(|e| format!("timeBits: {e}"))?,
        };
        return Ok(SourceConfig::Ring { segment: segment.to_string(), time_bits, codec: codec.unwrap_or(Codec::H264) });
    }
    if entry.time_bits.is_some() {
        return Err("timeBits applies to shm: sources only".into());
    }
    if source == "demo" {
        rtsp_only("user/pass", entry.user.is_some() || entry.pass.is_some())?;
        return Ok(SourceConfig::Demo { codec: codec.unwrap_or(Codec::H264) });
    }
    if codec.is_some() {
        return Err("codec applies to shm: and demo sources (an RTSP camera's SDP says its codec)".into());
    }
    if source.starts_with("rtsp://") || source.starts_with("rtsps://") {
        let url = url::Url::parse(source).map_err(|e| format!("source: not a URL ({e})"))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err("source: the URL has no host".into());
        }
        let transport = match entry.rtsp_transport.as_deref() {
            None | Some("auto") => RtspTransport::Auto,
            Some("tcp") => RtspTransport::Tcp,
            Some("udp") => RtspTransport::Udp,
            Some(other) => return Err(format!("rtspTransport {other:?}: tcp, udp or auto")),
        };
        return Ok(SourceConfig::Rtsp(RtspSourceConfig {
            url: source.to_string(),
            user: entry.user.clone(),
            pass: entry.pass.clone(),
            transport,
        }));
    }
    Err(format!("source {:?}: expected shm:/SEGMENT, rtsp://..., rtsps://... or demo", redact_url(source)))
}

/// The line (1-based) of `name:` directly under `paths:`.
fn line_of_path(text: &str, name: &str) -> Option<usize> {
    let mut in_paths = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_end();
        if !line.starts_with([' ', '\t']) && !trimmed.is_empty() && !trimmed.starts_with('#') {
            in_paths = trimmed.starts_with("paths:");
            continue;
        }
        let key = trimmed.trim_start().trim_start_matches(['"', '\'']);
        if in_paths && key.strip_prefix(name).is_some_and(|rest| rest.trim_start_matches(['"', '\'']).starts_with(':'))
        {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> FlagDefaults {
        FlagDefaults {
            shm: "/pet_camera_stream".into(),
            time_bits: TimeBits::Native,
            demo: false,
            demo_codec: Codec::H264,
            camera_flag_given: false,
            record_path: "./recordings".into(),
            record_segment: None,
            record_max_bytes: None,
            record_min_free: None,
            max_clients: 10,
            publish: Vec::new(),
        }
    }

    #[test]
    fn without_a_file_the_flags_make_cam() {
        let paths = load(None, &flags()).unwrap().paths;
        assert_eq!(paths.len(), 1);
        assert_eq!(paths[0].name, "cam");
        assert_eq!(
            paths[0].source,
            SourceConfig::Ring {
                segment: "/pet_camera_stream".into(),
                time_bits: TimeBits::Native,
                codec: Codec::H264
            }
        );
        assert_eq!(paths[0].record.dir, PathBuf::from("./recordings"));
    }

    #[test]
    fn a_mediamtx_style_file_parses_in_order() {
        let text = r#"
paths:
  day:
    source: shm:/pet_camera_stream_day
    timeBits: "64"
  garage:
    source: rtsp://admin:secret@192.168.1.20:554/stream1
    rtspTransport: tcp
    sourceOnDemand: yes
    sourceOnDemandCloseAfter: 30s
    record:
      segment: 10m
      maxBytes: 2G
    maxClients: 4
  demo1:
    source: demo
"#;
        let paths = parse(text, &flags()).unwrap();
        let names: Vec<&str> = paths.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["day", "garage", "demo1"]);
        let bits = TimeBits::parse("64").unwrap();
        assert_eq!(
            paths[0].source,
            SourceConfig::Ring { segment: "/pet_camera_stream_day".into(), time_bits: bits, codec: Codec::H264 }
        );
        let garage = &paths[1];
        assert!(garage.on_demand);
        assert_eq!(garage.on_demand_close_after, Duration::from_secs(30));
        assert_eq!(garage.record.segment, Some(Duration::from_secs(600)));
        assert_eq!(garage.record.max_bytes, Some(2 << 30));
        assert_eq!(garage.record.dir, PathBuf::from("./recordings/garage"));
        assert_eq!(garage.max_clients, 4);
        let SourceConfig::Rtsp(rtsp) = &garage.source else { panic!() };
        assert_eq!(rtsp.transport, RtspTransport::Tcp);
        assert!(!format!("{rtsp:?}").contains("secret"));
        assert_eq!(paths[2].source, SourceConfig::Demo { codec: Codec::H264 });
        assert_eq!(paths[2].max_clients, 10, "the flag's default");
    }

    #[test]
    fn errors_name_the_line_and_the_path() {
        let cases = [
            ("paths:\n  cam:\n    source: ftp://x\n", 2, "expected shm:/SEGMENT"),
            ("paths:\n  ok:\n    source: demo\n  bad name:\n    source: demo\n", 4, "names are"),
            ("paths:\n  status:\n    source: demo\n", 2, "top-level route"),
            ("paths:\n  cam:\n    source: demo\n    sourceOnDemand: maybe\n", 4, "expected yes or no"),
            ("paths:\n  cam:\n    source: demo\n    colour: red\n", 4, "unknown field `colour`"),
            ("paths:\n  cam:\n    source: shm:/a\n    rtspTransport: tcp\n", 2, "rtsp:// sources only"),
            ("paths:\n  cam:\n    source: rtsp://cam/x\n    rtspTransport: quic\n", 2, "tcp, udp or auto"),
            ("paths:\n  cam:\n    source: demo\n    record:\n      segment: 10x\n", 2, "record.segment"),
            ("paths:\n  cam:\n    source: shm:/a\n    timeBits: 48\n", 2, "timeBits"),
            ("paths:\n  cam:\n    source: shm:/a\n    codec: vp8\n", 2, "h264 or h265"),
            ("paths:\n  cam:\n    source: rtsp://c/x\n    codec: h265\n", 2, "SDP says its codec"),
            ("paths:\n  cam:\n    source: demo\n    fallback: nope\n", 2, "not a path"),
            ("paths:\n  cam:\n    source: demo\n    turn:\n      - url: turn:t\n", 2, "turn[0]: turn:t:3478?transport=udp: no credentials"),
            (
                "paths:\n  cam:\n    source: demo\n    turn:\n      - url: turn:t\n        user: u\n        pass: p\n        secret: s\n",
                2,
                "not both",
            ),
            ("paths:\n  cam:\n    source: demo\n    turn:\n      - url: stun:t\n        secret: s\n", 2, "turn: or turns:"),
            ("paths:\n  cam:\n    source: demo\n    turn:\n      - url: turn:t\n        pass: p\n", 2, "needs a user"),
            ("paths:\n  cam: [\n", 2, "invalid type"),
        ];
        for (text, line, needle) in cases {
            let (got_line, _, message) = parse(text, &flags()).unwrap_err();
            assert_eq!(got_line, Some(line), "{text:?}: {message}");
            assert!(message.contains(needle), "{text:?}: {message}");
        }
        let error = load(Some(Path::new("/nonexistent/streams.yml")), &flags()).unwrap_err();
        assert!(error.to_string().starts_with("/nonexistent/streams.yml: "), "{error}");
    }

    #[test]
    fn flags_and_file_combine() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("streams.yml");
        std::fs::write(&file, "paths:\n  day:\n    source: demo\n").unwrap();
        let mut with_camera = flags();
        with_camera.camera_flag_given = true;
        let paths = load(Some(&file), &with_camera).unwrap().paths;
        assert_eq!(paths.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["cam", "day"]);
        assert_eq!(load(Some(&file), &flags()).unwrap().paths.len(), 1, "no camera flag: the file alone");
        std::fs::write(&file, "paths:\n  cam:\n    source: demo\n").unwrap();
        let error = load(Some(&file), &with_camera).unwrap_err();
        assert_eq!((error.line, error.path.as_deref()), (Some(2), Some("cam")), "{error}");
    }

    #[test]
    fn rtsp_server_settings_parse_and_errors_name_the_line() {
        let text = "rtspAddress: 127.0.0.1:8554\nrtspUser: nvr\nrtspPass: s3cret\npaths:\n  cam:\n    source: demo\n";
        let config = parse_file(text, &flags()).unwrap();
        assert_eq!(config.rtsp.address, Some("127.0.0.1:8554".parse().unwrap()));
        assert_eq!(config.rtsp.credentials, Some(("nvr".into(), "s3cret".into())));
        assert!(!format!("{config:?}").contains("s3cret"), "the password never shows");
        let port_only = parse_file("rtspAddress: \":8554\"\npaths:\n  cam:\n    source: demo\n", &flags()).unwrap();
        assert_eq!(port_only.rtsp.address, Some("0.0.0.0:8554".parse().unwrap()));
        let cases = [
            ("paths:\n  cam:\n    source: demo\nrtspAddress: nowhere\n", 4, "rtspAddress: bad listen address"),
            ("rtspUser: a\npaths:\n  cam:\n    source: demo\n", 1, "rtspUser: needs rtspPass"),
            ("rtspPass: a\n", 1, "rtspPass: needs rtspUser"),
            ("rtspUser: a:b\nrtspPass: c\n", 1, "no colon"),
            ("rtspAdress: :8554\n", 1, "unknown field `rtspAdress`"),
        ];
        for (text, line, needle) in cases {
            let (got_line, _, message) = parse_file(text, &flags()).unwrap_err();
            assert_eq!(got_line, Some(line), "{text:?}: {message}");
            assert!(message.contains(needle), "{text:?}: {message}");
        }
    }

    #[test]
    fn publish_lists_take_urls_and_maps_with_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "from-file\nignored\n").unwrap();
        let text = format!(
            "paths:\n  cam:\n    source: demo\n    publish:\n      - rtp://127.0.0.1:5004?pt=96\n      \
             - url: whip+https://sfu.example/whip/room\n        token: inline\n      \
             - url: whip+http://127.0.0.1:8080/whip\n        tokenFile: {}\n",
            token_file.display()
        );
        let paths = parse(&text, &flags()).unwrap();
        let publish = &paths[0].publish;
        assert_eq!(publish.len(), 3);
        assert_eq!(publish[0].kind(), "rtp");
        let token = |i: usize| match &publish[i].target {
            crate::publish::Target::Whip(w) => w.token.clone(),
            _ => None,
        };
        assert_eq!((token(1).as_deref(), token(2).as_deref()), (Some("inline"), Some("from-file")));
        assert!(!format!("{paths:?}").contains("inline"), "tokens never show in Debug");

        let cases = [
            ("paths:\n  cam:\n    source: demo\n    publish:\n      - ftp://x\n", 2, "publish[0]: "),
            ("paths:\n  cam:\n    source: demo\n    publish:\n      - rtp://h:1\n      - srtp://h:2\n", 2, "publish[1]"),
            ("paths:\n  cam:\n    source: demo\n    publish:\n      - url: rtp://h:1\n        colour: red\n", 6, "colour"),
            ("paths:\n  cam:\n    source: demo\n    publish:\n      - url: rtp://h:1\n        token: t\n", 2, "whip"),
            ("paths:\n  cam:\n    source: demo\n    publish:\n      - url: whip+http://h/w\n        token: t\n        tokenFile: /x\n", 2, "not both"),
            ("paths:\n  cam:\n    source: demo\n    publish:\n      - url: whip+http://h/w\n        tokenFile: /nonexistent/t\n", 2, "tokenFile"),
        ];
        for (text, line, needle) in cases {
            let (got_line, path, message) = parse(text, &flags()).unwrap_err();
            assert_eq!(got_line, Some(line), "{text:?}: {message}");
            assert!(message.contains(needle), "{text:?}: {message}");
            assert!(path.is_some() || needle == "colour", "{text:?}");
        }
    }

    #[test]
    fn publish_flags_relay_cam() {
        let mut with_publish = flags();
        with_publish.publish = vec![crate::publish::parse("rtp://127.0.0.1:5004", None).unwrap()];
        assert_eq!(load(None, &with_publish).unwrap().paths[0].publish.len(), 1, "the legacy cam");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("streams.yml");
        std::fs::write(&file, "paths:\n  cam:\n    source: demo\n    publish:\n      - rtp://h:6000\n").unwrap();
        assert_eq!(
            load(Some(&file), &with_publish).unwrap().paths[0].publish.len(),
            2,
            "the file's cam, plus the flag's"
        );
        std::fs::write(&file, "paths:\n  day:\n    source: demo\n").unwrap();
        let error = load(Some(&file), &with_publish).unwrap_err();
        assert!(error.to_string().contains("-publish relays the path cam"), "{error}");
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact_url("rtsp://admin:pw@cam:554/s1"), "rtsp://admin:***@cam:554/s1");
        assert_eq!(redact_url("rtsp://cam/s1"), "rtsp://cam/s1");
        assert_eq!(redact_url("rtsp://a:b:c@cam"), "rtsp://a:***@cam");
    }
}
