//! Paths: what routes, metrics and the dashboard talk about. A path is a
//! name, its configuration, its [`Stream`], and the outputs that consume
//! it: its WebRTC [`Viewers`], its [`Recorder`], its [`Publishers`] and its
//! [`Hls`]. [`Paths`] holds them in configuration order and knows which one the legacy routes mean (`cam`,
//! else the first).
//!
//! Built once at start-up from [`PathConfig`]s; each path's source is
//! started by [`crate::source::start`], its publish targets by
//! [`Paths::start_publishers`]. Nothing here is on the media path:
//! `/paths` reads snapshots.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::config::{PathConfig, LEGACY_PATH};
use crate::health::Health;
use crate::hls::{Hls, HlsConfig};
use crate::metrics::Metrics;
use crate::publish::Publishers;
use crate::recorder::Recorder;
use crate::shutdown::Shutdown;
use crate::stream::Stream;
use crate::tasks::TaskSet;
use crate::webrtc::{Viewers, WebrtcConfig};

/// One path and its outputs.
pub struct Path {
    pub config: PathConfig,
    pub stream: Stream,
    pub viewers: Viewers,
    pub recorder: Recorder,
    pub publishers: Publishers,
    pub hls: Hls,
}

impl Path {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The path as `/paths` shows it: no URL, no credentials.
    pub fn summary(&self, health: &Health) -> Value {
        let source = &self.stream.source;
        let state = source.state();
        let recording = self.recorder.status();
        let fps = if state.label() == "ready" { (health.fps(self.name()) * 10.0).round() / 10.0 } else { 0.0 };
        let (width, height) = (source.width.load(Ordering::Relaxed), source.height.load(Ordering::Relaxed));
        let codec = self.stream.hub.parameter_sets().map(|ps| codec_json(&ps.info));
        let mut summary = json!({
            "name": self.name(),
            "source": self.config.source.kind(),
            "on_demand": self.config.on_demand,
            "state": state.label(),
            "codec": codec,
            "width": width,
            "height": height,
            "fps": fps,
            "viewers": self.viewers.count(),
            "rtsp_clients": self.stream.metrics.rtsp_clients.get(),
            "max_clients": self.config.max_clients,
            "recording": recording.recording,
            "hls": self.hls.summary(),
            "frames_read": source.frames_read.load(Ordering::Relaxed),
            "last_frame_age_ms": source.last_frame_age().map(|a| a.as_millis() as u64),
        });
        if let crate::stream::SourceState::Error(error) = state {
            summary["error"] = json!(error);
        }
        summary["publish"] = json!(self.publishers.summary());
        summary
    }
}

/// A stream's codec as `/paths` shows it: name, a description people read,
/// and what SDP calls its profile and level.
pub fn codec_json(info: &crate::codec::VideoInfo) -> Value {
    match info {
        crate::codec::VideoInfo::H264(sps) => json!({
            "name": "H.264",
            "description": info.describe(),
            "profile_level_id": sps.profile_level_id(),
        }),
        crate::codec::VideoInfo::H265(sps) => {
            let ptl = sps.profile_tier_level();
            json!({
                "name": "H.265",
                "description": info.describe(),
                "profile_id": ptl.profile_id,
                "tier_flag": ptl.tier_flag,
                "level_id": ptl.level_id,
            })
        }
    }
}

/// Every configured path.
pub struct Paths {
    list: Vec<Arc<Path>>,
    legacy: usize,
}

impl Paths {
    /// Builds each path's stream and outputs (sources are not started yet).
    /// `webrtc` is the common WebRTC configuration; each path sets its own
    /// client limit.
    pub fn new(
        configs: Vec<PathConfig>,
        metrics: &Arc<Metrics>,
        webrtc: &WebrtcConfig,
        hls: HlsConfig,
        runtime: &tokio::runtime::Handle,
        shutdown: &Shutdown,
    ) -> Result<Paths, String> {
        let mut list = Vec::with_capacity(configs.len());
        for config in configs {
            let stream = Stream::new(&config.name, metrics);
            let mut viewer_config = webrtc.clone();
            viewer_config.max_clients = config.max_clients;
            viewer_config.on_demand = config.on_demand;
            if let Some(turn) = &config.turn {
                viewer_config.turn = turn.clone();
            }
            let viewers = Viewers::new(viewer_config.clone(), stream.clone(), shutdown.clone(), runtime.clone())?;
            let publishers = Publishers::new(config.publish.clone(), stream.clone(), viewer_config);
            let recorder = Recorder::with_config(config.record.clone(), stream.clone());
            let hls = Hls::new(stream.clone(), hls.clone(), runtime.clone(), shutdown.clone());
            list.push(Arc::new(Path { config, stream, viewers, recorder, publishers, hls }));
        }
        if list.is_empty() {
            return Err("no paths to serve".into());
        }
        let legacy = list.iter().position(|p| p.name() == LEGACY_PATH).unwrap_or(0);
        metrics.set_legacy_path(list[legacy].name());
        Ok(Paths { list, legacy })
    }

    /// Starts every path's source under `tasks`.
    pub fn start_sources(&self, runtime: &tokio::runtime::Handle, tasks: &TaskSet, shutdown: &Shutdown) {
        for path in &self.list {
            crate::source::start(path.config.clone(), path.stream.clone(), runtime, tasks, shutdown.clone());
        }
    }

    /// Starts every path's publish targets (each runs until `shutdown`).
    pub fn start_publishers(&self, runtime: &tokio::runtime::Handle, shutdown: &Shutdown) {
        for path in &self.list {
            path.publishers.start(runtime, shutdown);
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Path>> {
        self.list.iter().find(|p| p.name() == name)
    }

    /// The path the legacy routes and metrics mean.
    pub fn legacy(&self) -> &Arc<Path> {
        &self.list[self.legacy]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Path>> {
        self.list.iter()
    }

    /// Ends the WHEP session `id` on whichever path has it.
    pub fn close_session(&self, id: &str) -> bool {
        self.list.iter().any(|p| p.viewers.close(id))
    }
}
