//! Prometheus metrics: every stream metric per path, and the names
//! `../shared/API.md` promises for the legacy path.
//!
//! The rule: each stream metric is registered once as
//! `streaming_path_NAME{path="..."}` (plus its own labels); `/metrics` also
//! shows it as the unlabelled `streaming_NAME` of API.md for the legacy path
//! (`cam`, or the first path when there is no `cam`), derived at scrape
//! time. So `streaming_frames_read_total` keeps its meaning for dashboards
//! built for one camera, and `streaming_path_frames_read_total{path="day"}`
//! is the day camera's.
//!
//! Stages hold a [`StreamMetrics`] (handles already bound to their path) and
//! bump counters (one atomic add each); nothing here does I/O or takes a
//! lock on the media path. The `/metrics` listener only encodes.

use std::sync::{Arc, Mutex};

use prometheus::proto::{LabelPair, MetricFamily};
use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The per-path families, registered once.
#[derive(Clone, Debug)]
struct Families {
    counters: Vec<(&'static str, IntCounterVec)>,
    gauges: Vec<(&'static str, IntGaugeVec)>,
    histograms: Vec<(&'static str, HistogramVec)>,
}

/// The process's registry and its per-path families.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    families: Families,
    /// The path whose series also appear under API.md's unlabelled names.
    legacy: Mutex<String>,
    /// 1 while a TURN server gives allocations (`crate::turn`), by URL.
    pub turn_up: IntGaugeVec,
}

/// One path's metrics: handles bound to `path="NAME"`.
#[derive(Clone, Debug)]
pub struct StreamMetrics {
    pub path: String,
    /// Frames the source delivered intact (read out of shared memory, or
    /// received whole over RTSP).
    pub frames_read: IntCounter,
    /// Frames the codec processor accepted and handed to the hub.
    pub frames_processed: IntCounter,
    /// Frames lost before the hub: reader overruns, torn slots, RTP loss.
    pub frames_dropped: IntCounter,
    /// Malformed frames from the source.
    pub read_errors: IntCounter,
    /// Frames the codec processor refused.
    pub process_errors: IntCounter,
    frame_errors: IntCounterVec,
    stream_gaps: IntCounterVec,
    consumer_frames_dropped: IntCounterVec,
    pub webrtc_frames_sent: IntCounter,
    pub webrtc_frames_dropped: IntCounter,
    pub webrtc_errors: IntCounter,
    /// Capture to frame available in the hub.
    pub frame_latency_ms: Histogram,
    /// Time spent in the codec processor and hub per frame.
    pub process_latency_ms: Histogram,
    /// Capture to the last packet of a live frame handed to a viewer's
    /// connection, per viewer and frame.
    pub capture_to_sent_ms: Histogram,
    pub webrtc_buffer_usage_percent: IntGauge,
    pub recorder_buffer_usage_percent: IntGauge,
    pub active_clients: IntGauge,
    pub total_clients: IntCounter,
    pub recording_active: IntGauge,
    pub recording_bytes: IntGauge,
    pub recording_frames: IntGauge,
    /// 1 while the source delivers (segment mapped, RTSP session playing).
    pub camera_attached: IntGauge,
    pub camera_restarts: IntCounter,
    pub webrtc_rtt_ms: Histogram,
    pub webrtc_jitter_ms: Histogram,
    pub webrtc_packets_lost: IntCounter,
    pub webrtc_keyframe_requests: IntCounter,
    recording_errors: IntCounterVec,
    codec_info: IntGaugeVec,
    pub recordings: IntCounter,
    pub recording_files_deleted: IntCounter,
    /// RTSP clients playing this path now.
    pub rtsp_clients: IntGauge,
    /// RTSP sessions that started playing.
    pub rtsp_sessions: IntCounter,
    pub rtsp_frames_sent: IntCounter,
    /// Frames RTSP clients lost (queue full, then until the next keyframe).
    pub rtsp_frames_dropped: IntCounter,
    /// RTP and RTCP bytes sent to RTSP clients (interleaved framing included).
    pub rtsp_bytes_sent: IntCounter,
    /// RTSP clients dropped because they stopped reading.
    pub rtsp_clients_stuck: IntCounter,
    publish: Vec<(&'static str, IntCounterVec)>,
    publish_up: IntGaugeVec,
    hls_requests: IntCounterVec,
    hls_request_errors: IntCounterVec,
    /// 1 while the path's HLS muxer runs (someone asked within the idle time).
    pub hls_muxing: IntGauge,
    /// HLS requests waiting now (blocking playlist reloads, hinted parts).
    pub hls_held_requests: IntGauge,
    /// Bytes the HLS window holds (parts and init segments).
    pub hls_window_bytes: IntGauge,
    pub hls_parts: IntCounter,
    pub hls_segments: IntCounter,
    /// Capture of a part's first frame to the part being available.
    pub hls_capture_to_part_ms: Histogram,
}

/// One publish target's metrics: handles bound to `path` and `target`.
#[derive(Clone, Debug)]
pub struct PublishMetrics {
    pub bytes: IntCounter,
    pub packets: IntCounter,
    pub frames: IntCounter,
    pub frames_dropped: IntCounter,
    pub reconnects: IntCounter,
    pub errors: IntCounter,
    pub keyframe_requests: IntCounter,
    pub up: IntGauge,
}

fn latency_buckets() -> Vec<f64> {
    // 0.05 ms .. ~1.6 s, doubling.
    exponential_buckets(0.05, 2.0, 16).expect("static bucket layout is valid")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &'static str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(format!("streaming_path_{name}"), help), labels)
                .expect("metric names are static and valid");
            registry.register(Box::new(metric.clone())).expect("each metric is registered once");
            (name, metric)
        };
        let gauge_with = |name: &'static str, help: &str, labels: &[&str]| {
            let metric = IntGaugeVec::new(Opts::new(format!("streaming_path_{name}"), help), labels)
                .expect("metric names are static and valid");
            registry.register(Box::new(metric.clone())).expect("each metric is registered once");
            (name, metric)
        };
        let gauge = |name: &'static str, help: &str| gauge_with(name, help, &["path"]);
        let histogram = |name: &'static str, help: &str, buckets: Vec<f64>| {
            let opts = HistogramOpts::new(format!("streaming_path_{name}"), help).buckets(buckets);
            let metric = HistogramVec::new(opts, &["path"]).expect("metric names are static and valid");
            registry.register(Box::new(metric.clone())).expect("each metric is registered once");
            (name, metric)
        };
        let p = &["path"];
        let pt = &["path", "target"];
        let families = Families {
            counters: vec![
                counter("frames_read_total", "Frames the source delivered intact", p),
                counter("frames_processed_total", "Frames accepted by the codec processor", p),
                counter("frames_dropped_total", "Frames lost before the hub", p),
                counter("read_errors_total", "Malformed frames from the source", p),
                counter("process_errors_total", "Frames refused by the codec processor", p),
                counter("frame_errors_total", "Refused frames by stage and reason", &["path", "stage", "reason"]),
                counter("stream_gaps_total", "Gaps in the stream, by reason", &["path", "reason"]),
                counter(
                    "consumer_frames_dropped_total",
                    "Frames a slow consumer lost (queue full, then until the next IDR)",
                    &["path", "consumer"],
                ),
                counter("webrtc_frames_sent_total", "Frames sent to WebRTC viewers", p),
                counter("webrtc_frames_dropped_total", "Frames WebRTC viewers lost", p),
                counter("webrtc_errors_total", "WebRTC errors", p),
                counter("total_clients", "WebRTC viewers since start", p),
                counter("camera_restarts_total", "Source re-attachments and reconnections", p),
                counter("webrtc_packets_lost_total", "RTP packets viewers reported lost", p),
                counter("webrtc_keyframe_requests_total", "PLI/FIR keyframe requests from viewers", p),
                counter("recording_errors_total", "Recordings ended by an I/O error, by operation", &["path", "op"]),
                counter("recordings_total", "Recordings started", p),
                counter("recording_files_deleted_total", "Old recordings deleted by retention", p),
                counter("rtsp_sessions_total", "RTSP sessions that started playing", p),
                counter("rtsp_frames_sent_total", "Frames sent to RTSP clients", p),
                counter("rtsp_frames_dropped_total", "Frames RTSP clients lost (slow reader)", p),
                counter("rtsp_bytes_sent_total", "RTP/RTCP bytes sent to RTSP clients", p),
                counter("rtsp_clients_stuck_total", "RTSP clients dropped for not reading", p),
                counter("publish_bytes_total", "RTP bytes (headers and payloads) sent to a publish target", pt),
                counter("publish_packets_total", "RTP packets sent to a publish target", pt),
                counter("publish_frames_total", "Frames sent to a publish target", pt),
                counter(
                    "publish_frames_dropped_total",
                    "Frames a publish target lost (queue full, then until the next keyframe)",
                    pt,
                ),
                counter("publish_reconnects_total", "New sessions with a publish target after a failed one", pt),
                counter(
                    "publish_errors_total",
                    "Failed sessions and frames that could not be sent to a publish target",
                    pt,
                ),
                counter("publish_keyframe_requests_total", "PLI/FIR keyframe requests from a publish target", pt),
                counter(
                    "hls_requests_total",
                    "HLS requests by kind (playlist, blocking_playlist, part, segment, init)",
                    &["path", "kind"],
                ),
                counter(
                    "hls_request_errors_total",
                    "HLS requests refused, by reason (too_far, timeout, not_found, bad_query, not_ready)",
                    &["path", "reason"],
                ),
                counter("hls_parts_total", "LL-HLS parts made", p),
                counter("hls_segments_total", "HLS segments completed", p),
            ],
            gauges: vec![
                gauge("webrtc_buffer_usage_percent", "Fullest WebRTC viewer queue, percent"),
                gauge("recorder_buffer_usage_percent", "Recorder queue fill, percent"),
                gauge("active_clients", "WebRTC viewers connected now"),
                gauge("recording_active", "1 while recording"),
                gauge("recording_bytes", "Bytes written to the current recording"),
                gauge("recording_frames", "Frames written to the current recording"),
                gauge("camera_attached", "1 while the source delivers"),
                gauge("rtsp_clients", "RTSP clients playing now"),
                gauge_with("codec_info", "1 for the codec the stream carries now (h264, h265)", &["path", "codec"]),
                gauge_with("publish_up", "1 while a publish target's session is up", pt),
                gauge("hls_muxing", "1 while the HLS muxer runs"),
                gauge("hls_held_requests", "HLS requests waiting for a part or playlist now"),
                gauge("hls_window_bytes", "Bytes the HLS window holds"),
            ],
            histograms: vec![
                histogram(
                    "frame_latency_ms",
                    "Capture (CLOCK_MONOTONIC) to frame available to consumers, ms",
                    latency_buckets(),
                ),
                histogram("process_latency_ms", "Codec processing and fan-out per frame, ms", latency_buckets()),
                histogram(
                    "capture_to_sent_ms",
                    "Capture (CLOCK_MONOTONIC) to the last packet of a live frame handed to a viewer's connection, ms",
                    // Finer than the doubling layout around the 5 ms target.
                    vec![0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 20.0, 50.0, 100.0, 250.0, 1000.0],
                ),
                histogram("webrtc_rtt_ms", "Viewer round-trip time from RTCP, ms", latency_buckets()),
                histogram("webrtc_jitter_ms", "Viewer interarrival jitter, ms", latency_buckets()),
                histogram(
                    "hls_capture_to_part_ms",
                    "Capture (CLOCK_MONOTONIC) of an LL-HLS part's first frame to the part being available, ms",
                    vec![50.0, 100.0, 150.0, 200.0, 250.0, 300.0, 400.0, 500.0, 750.0, 1000.0, 2000.0, 5000.0],
                ),
            ],
        };
        let turn_up = IntGaugeVec::new(
            Opts::new("streaming_turn_up", "1 while the TURN server gives relay allocations"),
            &["url"],
        )
        .expect("metric names are static and valid");
        registry.register(Box::new(turn_up.clone())).expect("each metric is registered once");
        Metrics { registry, families, legacy: Mutex::new(crate::config::LEGACY_PATH.to_string()), turn_up }
    }

    /// Sets the path whose series also appear under the unlabelled names.
    pub fn set_legacy_path(&self, path: &str) {
        *self.legacy.lock().unwrap_or_else(|e| e.into_inner()) = path.to_string();
    }

    fn counter(&self, name: &str) -> &IntCounterVec {
        // Names are the static ones registered in `new`.
        &self.families.counters.iter().find(|(n, _)| *n == name).expect("a registered counter").1
    }

    fn gauge(&self, name: &str) -> &IntGaugeVec {
        &self.families.gauges.iter().find(|(n, _)| *n == name).expect("a registered gauge").1
    }

    fn histogram(&self, name: &str) -> &HistogramVec {
        &self.families.histograms.iter().find(|(n, _)| *n == name).expect("a registered histogram").1
    }

    /// The handles of one path (cheap: each is an `Arc`).
    pub fn stream(self: &Arc<Self>, path: &str) -> StreamMetrics {
        let c = |name: &str| self.counter(name).with_label_values(&[path]);
        let g = |name: &str| self.gauge(name).with_label_values(&[path]);
        let h = |name: &str| self.histogram(name).with_label_values(&[path]);
        let metrics = StreamMetrics {
            path: path.to_string(),
            frames_read: c("frames_read_total"),
            frames_processed: c("frames_processed_total"),
            frames_dropped: c("frames_dropped_total"),
            read_errors: c("read_errors_total"),
            process_errors: c("process_errors_total"),
            frame_errors: self.counter("frame_errors_total").clone(),
            stream_gaps: self.counter("stream_gaps_total").clone(),
            consumer_frames_dropped: self.counter("consumer_frames_dropped_total").clone(),
            webrtc_frames_sent: c("webrtc_frames_sent_total"),
            webrtc_frames_dropped: c("webrtc_frames_dropped_total"),
            webrtc_errors: c("webrtc_errors_total"),
            frame_latency_ms: h("frame_latency_ms"),
            process_latency_ms: h("process_latency_ms"),
            capture_to_sent_ms: h("capture_to_sent_ms"),
            webrtc_buffer_usage_percent: g("webrtc_buffer_usage_percent"),
            recorder_buffer_usage_percent: g("recorder_buffer_usage_percent"),
            active_clients: g("active_clients"),
            total_clients: c("total_clients"),
            recording_active: g("recording_active"),
            recording_bytes: g("recording_bytes"),
            recording_frames: g("recording_frames"),
            camera_attached: g("camera_attached"),
            camera_restarts: c("camera_restarts_total"),
            webrtc_rtt_ms: h("webrtc_rtt_ms"),
            webrtc_jitter_ms: h("webrtc_jitter_ms"),
            webrtc_packets_lost: c("webrtc_packets_lost_total"),
            webrtc_keyframe_requests: c("webrtc_keyframe_requests_total"),
            recording_errors: self.counter("recording_errors_total").clone(),
            codec_info: self.gauge("codec_info").clone(),
            recordings: c("recordings_total"),
            recording_files_deleted: c("recording_files_deleted_total"),
            rtsp_clients: g("rtsp_clients"),
            rtsp_sessions: c("rtsp_sessions_total"),
            rtsp_frames_sent: c("rtsp_frames_sent_total"),
            rtsp_frames_dropped: c("rtsp_frames_dropped_total"),
            rtsp_bytes_sent: c("rtsp_bytes_sent_total"),
            rtsp_clients_stuck: c("rtsp_clients_stuck_total"),
            publish: self
                .families
                .counters
                .iter()
                .filter(|(name, _)| name.starts_with("publish_"))
                .map(|(name, family)| (*name, family.clone()))
                .collect(),
            publish_up: self.gauge("publish_up").clone(),
            hls_requests: self.counter("hls_requests_total").clone(),
            hls_request_errors: self.counter("hls_request_errors_total").clone(),
            hls_muxing: g("hls_muxing"),
            hls_held_requests: g("hls_held_requests"),
            hls_window_bytes: g("hls_window_bytes"),
            hls_parts: c("hls_parts_total"),
            hls_segments: c("hls_segments_total"),
            hls_capture_to_part_ms: h("hls_capture_to_part_ms"),
        };
        // Export zeros from the start, so dashboards and alerts see the series.
        for op in ["write", "fdatasync", "fsync", "fsync directory", "create"] {
            metrics.recording_errors.with_label_values(&[path, op]);
        }
        metrics.consumer_frames_dropped.with_label_values(&[path, "recorder"]);
        metrics
    }

    /// The registry in Prometheus text format, with the legacy path's
    /// series also under API.md's unlabelled names.
    pub fn encode(&self) -> String {
        let legacy = self.legacy.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut families = self.registry.gather();
        families.retain(|family| !family.get_metric().is_empty());
        let derived: Vec<MetricFamily> = families.iter().filter_map(|family| legacy_twin(family, &legacy)).collect();
        families.extend(derived);
        families.sort_by(|a, b| a.get_name().cmp(b.get_name()));
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// `streaming_path_X{path=legacy,...}` as `streaming_X{...}`.
fn legacy_twin(family: &MetricFamily, legacy: &str) -> Option<MetricFamily> {
    let rest = family.get_name().strip_prefix("streaming_path_")?;
    let mut twin = family.clone();
    twin.set_name(format!("streaming_{rest}"));
    let metrics: Vec<_> = family
        .get_metric()
        .iter()
        .filter(|m| m.get_label().iter().any(|l| l.get_name() == "path" && l.get_value() == legacy))
        .map(|m| {
            let mut m = m.clone();
            let labels: Vec<LabelPair> = m.get_label().iter().filter(|l| l.get_name() != "path").cloned().collect();
            m.set_label(labels);
            m
        })
        .collect();
    // An empty family would stop the text encoder: leave it out.
    if metrics.is_empty() {
        return None;
    }
    twin.set_metric(metrics);
    Some(twin)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl StreamMetrics {
    /// A frame refused at `stage` (`read`, `process`) for `reason`.
    pub fn frame_error(&self, stage: &str, reason: &str) {
        self.frame_errors.with_label_values(&[&self.path, stage, reason]).inc();
    }

    /// A gap in the stream, by reason.
    pub fn gap(&self, reason: &str) {
        self.stream_gaps.with_label_values(&[&self.path, reason]).inc();
    }

    /// The frames-lost counter of one kind of consumer (`recorder`, ...).
    pub fn consumer_dropped(&self, consumer: &str) -> IntCounter {
        self.consumer_frames_dropped.with_label_values(&[&self.path, consumer])
    }

    /// An HLS request of `kind` (`playlist`, `blocking_playlist`, `part`,
    /// `segment`, `init`).
    pub fn hls_request(&self, kind: &str) {
        self.hls_requests.with_label_values(&[&self.path, kind]).inc();
    }

    /// An HLS request refused for `reason`.
    pub fn hls_request_error(&self, reason: &str) {
        self.hls_request_errors.with_label_values(&[&self.path, reason]).inc();
    }

    /// A recording ended by an I/O error in `op`.
    pub fn recording_error(&self, op: &str) {
        self.recording_errors.with_label_values(&[&self.path, op]).inc();
    }

    /// The stream carries `codec` now: its info series is 1, the others 0.
    pub fn set_codec(&self, codec: crate::codec::Codec) {
        for other in crate::codec::Codec::ALL {
            self.codec_info.with_label_values(&[&self.path, other.extension()]).set(i64::from(other == codec));
        }
    }

    /// The handles of one publish target, labelled `target` (a URL without
    /// secrets, see `publish`).
    pub fn publish(&self, target: &str) -> PublishMetrics {
        let labels = [self.path.as_str(), target];
        let c = |name: &str| {
            // Names are the static ones registered in `Metrics::new`.
            self.publish
                .iter()
                .find(|(n, _)| *n == name)
                .expect("a registered publish counter")
                .1
                .with_label_values(&labels)
        };
        PublishMetrics {
            bytes: c("publish_bytes_total"),
            packets: c("publish_packets_total"),
            frames: c("publish_frames_total"),
            frames_dropped: c("publish_frames_dropped_total"),
            reconnects: c("publish_reconnects_total"),
            errors: c("publish_errors_total"),
            keyframe_requests: c("publish_keyframe_requests_total"),
            up: self.publish_up.with_label_values(&labels),
        }
    }

    /// The frame-errors count of one stage and reason (tests, `/health`).
    pub fn frame_errors(&self, stage: &str, reason: &str) -> u64 {
        self.frame_errors.with_label_values(&[&self.path, stage, reason]).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_metric_has_a_legacy_twin_for_the_legacy_path_only() {
        let metrics = Arc::new(Metrics::new());
        let cam = metrics.stream("cam");
        let day = metrics.stream("day");
        cam.frames_read.inc_by(5);
        day.frames_read.inc_by(7);
        cam.frame_error("read", "empty");
        cam.frame_latency_ms.observe(1.0);
        let text = metrics.encode();
        assert!(text.contains("\nstreaming_frames_read_total 5\n"), "{text}");
        assert!(text.contains("streaming_path_frames_read_total{path=\"cam\"} 5"), "{text}");
        assert!(text.contains("streaming_path_frames_read_total{path=\"day\"} 7"), "{text}");
        assert!(text.contains("streaming_frame_errors_total{reason=\"empty\",stage=\"read\"} 1"), "{text}");
        assert!(text.contains("streaming_frame_latency_ms_count 1"), "{text}");
        assert!(!text.contains("streaming_frames_read_total 7"), "{text}");
        assert_eq!(text.matches("# TYPE streaming_frames_read_total counter").count(), 1);
        day.set_codec(crate::codec::Codec::H265);
        let text = metrics.encode();
        assert!(text.contains("streaming_path_codec_info{codec=\"h265\",path=\"day\"} 1"), "{text}");
        assert!(text.contains("streaming_path_codec_info{codec=\"h264\",path=\"day\"} 0"), "{text}");
        assert!(!text.contains("streaming_codec_info{"), "{text}");
        let publish = cam.publish("rtp://h:5004?pt=96");
        publish.bytes.inc_by(1200);
        publish.up.set(1);
        let text = metrics.encode();
        assert!(
            text.contains("streaming_path_publish_bytes_total{path=\"cam\",target=\"rtp://h:5004?pt=96\"} 1200"),
            "{text}"
        );
        assert!(text.contains("streaming_publish_bytes_total{target=\"rtp://h:5004?pt=96\"} 1200"), "{text}");
        assert!(text.contains("streaming_publish_up{target=\"rtp://h:5004?pt=96\"} 1"), "{text}");
        metrics.set_legacy_path("day");
        let text = metrics.encode();
        assert!(text.contains("\nstreaming_frames_read_total 7\n"), "{text}");
    }
}
