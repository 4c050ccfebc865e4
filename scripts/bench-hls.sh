#!/usr/bin/env bash
# LL-HLS beside WebRTC on one 1080p30 path: what do HLS clients cost the
# server, and do WebRTC viewers lose anything while HLS clients come and go?
# Runs the real binary with the fake camera (a separate process writing the
# shared-memory ring) and the built-in load client:
#   1. VIEWERS WebRTC viewers alone (SECONDS s);
#   2. the same viewers stay while WAVES waves of HLS clients (CLIENTS
#      LL-HLS clients each: blocking playlist reloads, every part fetched)
#      join for SECONDS s and leave for 3 s;
# sampling the server from /proc, and prints one table: server CPU and RSS
# per phase, the HLS clients' parts, errors, parts missed and capture ->
# part received, the server's capture -> part available (histogram), and
# the WebRTC viewers' losses over the whole run (every NAL unit checked
# byte for byte against the clip with -verify).
#
#   scripts/bench-hls.sh [--bin PATH] [--clip FILE] [--viewers 5] [--clients 20]
#                        [--waves 3] [--seconds 20] [--no-build]
#
# Defaults: ${CARGO_TARGET_DIR:-target}/release/streaming-server (built first),
# the 1080p30 ~6 Mbit/s H.264 clip of scripts/bench.sh (made once with ffmpeg
# in target/bench/). Needs python3 and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
bin="" clip="" viewers=5 clients=20 waves=3 seconds=20 build=1
while [ $# -gt 0 ]; do
    case "$1" in
    --bin) bin=${2:?}; build=0; shift ;;
    --clip) clip=${2:?}; shift ;;
    --viewers) viewers=${2:?}; shift ;;
    --clients) clients=${2:?}; shift ;;
    --waves) waves=${2:?}; shift ;;
    --seconds) seconds=${2:?}; shift ;;
    --no-build) build=0 ;;
    -h | --help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage ;;
    esac
    shift
done
bench_binary
[ -n "$clip" ] || clip=$(bench_clip h264)
codec_args=()
case "$clip" in *.h265 | *.hevc) codec_args=(-codec h265) ;; esac

bench_workdir
shm=/ss_bench_hls_$$

"$bin" fake-camera -shm "$shm" -file "$clip" -fps 30 2>"$work/camera.log" &
pids+=($!)
"$bin" -shm "$shm" -http 127.0.0.1:0 -metrics 127.0.0.1:0 -pprof "" -webrtc-ip 127.0.0.1 \
    -max-clients $((viewers + 2)) -record-path "$work/recordings" 2>"$work/server.log" &
server=$!
pids+=($server)
url="http://$(bench_listener "$work/server.log" http)"
metrics_url="http://$(bench_listener "$work/server.log" metrics)/metrics"
bench_wait_healthy "$url"

# CPU% and peak RSS (MB) of the server over `seconds`, sampled every second.
measure() {
    local t0 t1 peak=0 rss
    t0=$(cpu_ticks "$server")
    for _ in $(seq "$1"); do
        sleep 1
        rss=$(rss_kb "$server")
        [ "$rss" -gt "$peak" ] && peak=$rss
    done
    t1=$(cpu_ticks "$server")
    echo "$(cpu_percent $((t1 - t0)) "$1") $(awk -v p="$peak" 'BEGIN {printf "%.1f", p / 1024}')"
}

echo "machine: $(nproc) cores, $(uname -m), $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)"
echo "stream: $(basename "$clip") at 30 fps; $viewers WebRTC viewers throughout, $waves waves of $clients HLS clients ($seconds s each, 3 s apart)"
total=$((seconds + 3 + waves * (seconds + 6) + 5))
"$bin" -log-level error load-client -url "$url" -viewers "$viewers" "${codec_args[@]}" -verify "$clip" \
    -seconds "$total" >"$work/webrtc.json" 2>"$work/webrtc.log" &
webrtc=$!
sleep 3
read -r cpu rss < <(measure "$seconds")
printf '%-26s %6s %7s %7s %7s %7s %9s %19s\n' phase "cpu%" rss_MB hls_ok parts errors missed "part_recv_p50/p99"
printf '%-26s %6s %7s %7s %7s %7s %9s %19s\n' "$viewers webrtc" "$cpu" "$rss" - - - - -
curl -fs "$metrics_url" | grep -E '^streaming_hls_capture_to_part_ms_(bucket|count)' >"$work/hist_before.txt" || true
for wave in $(seq "$waves"); do
    "$bin" -log-level error load-client -url "$url" -viewers 0 -hls "$clients" -stagger-ms 50 \
        -seconds "$seconds" >"$work/hls_$wave.json" 2>"$work/hls_$wave.log" &
    hls=$!
    sleep 2
    read -r cpu rss < <(measure $((seconds - 3)))
    wait "$hls" || { echo "HLS wave $wave failed:" >&2; tail -3 "$work/hls_$wave.log" >&2; }
    read -r ok parts errors missed lat < <(python3 - "$work/hls_$wave.json" <<'PY'
import json, sys
h = json.load(open(sys.argv[1]))["hls"]
f = lambda v: "-" if v is None else f"{v:.0f}"
print(f"{h['receiving']}/{h['clients']}", h["parts"], h["errors"], h["parts_missed"],
      f"{f(h['latency_p50_ms'])}/{f(h['latency_p99_ms'])}ms")
PY
    )
    printf '%-26s %6s %7s %7s %7s %7s %9s %19s\n' "$viewers webrtc + $clients hls (#$wave)" "$cpu" "$rss" "$ok" "$parts" \
        "$errors" "$missed" "$lat"
    sleep 3
done
wait "$webrtc" || { echo "WebRTC load client failed:" >&2; tail -3 "$work/webrtc.log" >&2; }
curl -fs "$metrics_url" | grep -E '^streaming_(hls_capture_to_part_ms_(bucket|count)|webrtc_packets_lost_total|consumer_frames_dropped_total)' >"$work/after.txt" || true
python3 - "$work/webrtc.json" "$work/hist_before.txt" "$work/after.txt" <<'PY'
import json, re, sys
r = json.load(open(sys.argv[1]))
def metrics(path):
    out = {}
    for line in open(path):
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out
before, after = metrics(sys.argv[2]), metrics(sys.argv[3])
delta = {k: v - before.get(k, 0) for k, v in after.items() if "capture_to_part" in k}
total = delta.get("streaming_hls_capture_to_part_ms_count", 0)
buckets = sorted((float(re.search(r'le="([^"]+)"', k).group(1)), v) for k, v in delta.items() if "_bucket" in k)
at = lambda q: next((f"<={le:g}ms" for le, c in buckets if total and c >= q * total), "-")
print(f"server capture -> part available: p50 {at(0.5)}, p99 {at(0.99)} over {total:.0f} parts")
print(f"WebRTC viewers over the whole run: {r['connected']}/{r['viewers']} connected, {r['frames']} frames, "
      f"lost {r['lost']} (sequence gaps), min fps {r['min_fps']:.1f}, "
      f"NAL units matching the clip {r.get('clip_nal_units_matched')}, differing {r.get('clip_nal_units_mismatched')}, "
      f"receiver-reported loss {after.get('streaming_webrtc_packets_lost_total', 0):.0f}, "
      f"hub drops: {', '.join(f'{k.split(chr(34))[1]} {v:.0f}' for k, v in after.items() if k.startswith('streaming_consumer_frames_dropped_total'))}")
PY
