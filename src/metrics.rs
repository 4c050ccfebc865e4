//! Prometheus metrics: the names `../shared/API.md` promises, in one registry.
//!
//! Stages hold an `Arc<Metrics>` and bump counters (one atomic add each);
//! nothing here does I/O or takes a lock on the media path. The `/metrics`
//! listener only encodes the registry.

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric the streamer exports.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    /// Frames copied out of shared memory intact.
    pub frames_read: IntCounter,
    /// Frames the H.264 processor accepted and handed to the hub.
    pub frames_processed: IntCounter,
    /// Frames lost before the hub: reader overruns, torn slots, gaps.
    pub frames_dropped: IntCounter,
    /// Malformed frames from shared memory.
    pub read_errors: IntCounter,
    /// Frames the H.264 processor refused.
    pub process_errors: IntCounter,
    /// Both of the above by stage (`read`, `process`) and reason; the two
    /// counters above stay unlabelled because dashboards sum them as is.
    pub frame_errors: IntCounterVec,
    /// Gaps in the camera stream (overrun, camera restart), by reason.
    pub stream_gaps: IntCounterVec,
    /// Frames a hub consumer lost because its queue was full (or while it
    /// waited for the next IDR after that), by consumer kind.
    pub consumer_frames_dropped: IntCounterVec,
    pub webrtc_frames_sent: IntCounter,
    pub webrtc_frames_dropped: IntCounter,
    pub webrtc_errors: IntCounter,
    /// Capture (daemon's CLOCK_MONOTONIC stamp) to frame available in the hub.
    pub frame_latency_ms: Histogram,
    /// Time spent in the H.264 processor and hub per frame.
    pub process_latency_ms: Histogram,
    /// Capture (CLOCK_MONOTONIC) to the last packet of a live frame handed to
    /// a viewer's connection, per viewer and frame.
    pub capture_to_sent_ms: Histogram,
    pub webrtc_buffer_usage_percent: IntGauge,
    pub recorder_buffer_usage_percent: IntGauge,
    pub active_clients: IntGauge,
    pub total_clients: IntCounter,
    pub recording_active: IntGauge,
    pub recording_bytes: IntGauge,
    pub recording_frames: IntGauge,
    /// 1 while the camera's segment is mapped.
    pub camera_attached: IntGauge,
    pub camera_restarts: IntCounter,
    /// From viewers' RTCP receiver reports (sampled every 2 s per viewer).
    pub webrtc_rtt_ms: Histogram,
    pub webrtc_jitter_ms: Histogram,
    pub webrtc_packets_lost: IntCounter,
    /// PLI/FIR received from viewers (each may restart that viewer from the
    /// cached IDR, rate limited).
    pub webrtc_keyframe_requests: IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("metric names are static and valid");
    registry.register(Box::new(metric.clone())).expect("each metric is registered once");
    metric
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), &[label]).expect("metric names are static and valid");
    registry.register(Box::new(metric.clone())).expect("each metric is registered once");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("metric names are static and valid");
    registry.register(Box::new(metric.clone())).expect("each metric is registered once");
    metric
}

fn latency_histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    // 0.05 ms .. ~1.6 s, doubling.
    let buckets = exponential_buckets(0.05, 2.0, 16).expect("static bucket layout is valid");
    let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("metric names are static and valid");
    registry.register(Box::new(metric.clone())).expect("each metric is registered once");
    metric
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        Metrics {
            frames_read: counter(&r, "streaming_frames_read_total", "Frames copied out of shared memory"),
            frames_processed: counter(&r, "streaming_frames_processed_total", "Frames accepted by the H.264 processor"),
            frames_dropped: counter(&r, "streaming_frames_dropped_total", "Camera frames lost before the hub"),
            read_errors: counter(&r, "streaming_read_errors_total", "Malformed frames in shared memory"),
            process_errors: counter(&r, "streaming_process_errors_total", "Frames refused by the H.264 processor"),
            frame_errors: {
                let opts = Opts::new("streaming_frame_errors_total", "Refused frames by stage and reason");
                let metric = IntCounterVec::new(opts, &["stage", "reason"]).expect("static names are valid");
                r.register(Box::new(metric.clone())).expect("each metric is registered once");
                metric
            },
            stream_gaps: counter_vec(&r, "streaming_stream_gaps_total", "Gaps in the camera stream", "reason"),
            consumer_frames_dropped: counter_vec(
                &r,
                "streaming_consumer_frames_dropped_total",
                "Frames a slow consumer lost (queue full, then until the next IDR)",
                "consumer",
            ),
            webrtc_frames_sent: counter(&r, "streaming_webrtc_frames_sent_total", "Frames sent to WebRTC viewers"),
            webrtc_frames_dropped: counter(&r, "streaming_webrtc_frames_dropped_total", "Frames WebRTC viewers lost"),
            webrtc_errors: counter(&r, "streaming_webrtc_errors_total", "WebRTC errors"),
            frame_latency_ms: latency_histogram(
                &r,
                "streaming_frame_latency_ms",
                "Capture (CLOCK_MONOTONIC) to frame available to consumers, ms",
            ),
            process_latency_ms: latency_histogram(
                &r,
                "streaming_process_latency_ms",
                "H.264 processing and fan-out per frame, ms",
            ),
            capture_to_sent_ms: {
                // Finer than the doubling layout around the 5 ms target.
                let buckets = vec![0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 20.0, 50.0, 100.0, 250.0, 1000.0];
                let opts = HistogramOpts::new(
                    "streaming_capture_to_sent_ms",
                    "Capture (CLOCK_MONOTONIC) to the last packet of a live frame handed to a viewer's connection, ms",
                );
                let metric = Histogram::with_opts(opts.buckets(buckets)).expect("static bucket layout is valid");
                r.register(Box::new(metric.clone())).expect("each metric is registered once");
                metric
            },
            webrtc_buffer_usage_percent: gauge(
                &r,
                "streaming_webrtc_buffer_usage_percent",
                "Fullest WebRTC viewer queue, percent",
            ),
            recorder_buffer_usage_percent: gauge(
                &r,
                "streaming_recorder_buffer_usage_percent",
                "Recorder queue fill, percent",
            ),
            active_clients: gauge(&r, "streaming_active_clients", "WebRTC viewers connected now"),
            total_clients: counter(&r, "streaming_total_clients", "WebRTC viewers since start"),
            recording_active: gauge(&r, "streaming_recording_active", "1 while recording"),
            recording_bytes: gauge(&r, "streaming_recording_bytes", "Bytes written to the current recording"),
            recording_frames: gauge(&r, "streaming_recording_frames", "Frames written to the current recording"),
            camera_attached: gauge(&r, "streaming_camera_attached", "1 while the camera's segment is mapped"),
            camera_restarts: counter(&r, "streaming_camera_restarts_total", "Camera segment re-attachments"),
            webrtc_rtt_ms: latency_histogram(&r, "streaming_webrtc_rtt_ms", "Viewer round-trip time from RTCP, ms"),
            webrtc_jitter_ms: latency_histogram(&r, "streaming_webrtc_jitter_ms", "Viewer interarrival jitter, ms"),
            webrtc_packets_lost: counter(
                &r,
                "streaming_webrtc_packets_lost_total",
                "RTP packets viewers reported lost",
            ),
            webrtc_keyframe_requests: counter(
                &r,
                "streaming_webrtc_keyframe_requests_total",
                "PLI/FIR keyframe requests from viewers",
            ),
            registry: r,
        }
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        // Encoding into a Vec cannot fail for well-formed registered metrics.
        let _ = encoder.encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
