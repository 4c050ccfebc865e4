#!/usr/bin/env bash
# Several cameras in one server: 2 shared-memory rings (fake camera
# processes) and 2 RTSP cameras (GStreamer's RTSP server, tests/rtsp_server.py),
# all playing the same 1080p30 clip, plus one on-demand RTSP path nobody
# watches. Measures the server with nobody watching, then with N viewers of
# the built-in load client on every active path at once; checks that the
# on-demand path holds no connection to its camera. Prints one table.
#
#   scripts/bench-paths.sh [--bin PATH] [--clip FILE] [--viewers 5]
#                          [--seconds 20] [--no-build]
#
# Needs ffmpeg (to make the clip once), python3 with GStreamer's RTSP server
# (Debian: python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
bin="" clip="" viewers=5 seconds=20 build=1
while [ $# -gt 0 ]; do
    case "$1" in
    --bin) bin=${2:?}; build=0; shift ;;
    --clip) clip=${2:?}; shift ;;
    --viewers) viewers=${2:?}; shift ;;
    --seconds) seconds=${2:?}; shift ;;
    --no-build) build=0 ;;
    -h | --help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage ;;
    esac
    shift
done
bench_binary
[ -n "$clip" ] || clip=$(bench_clip h264)
bench_workdir

rtsp_server() { # NAME -> prints its port
    /usr/bin/python3 tests/rtsp_server.py --clip "$clip" --path cam >"$work/rtsp_$1.out" 2>"$work/rtsp_$1.log" &
    pids+=($!)
    for _ in $(seq 100); do
        line=$(head -1 "$work/rtsp_$1.out" 2>/dev/null || true)
        [ -n "$line" ] && { echo "$line" | sed 's|.*:\([0-9]*\)/cam|\1|'; return; }
        sleep 0.1
    done
    echo "RTSP server $1 did not start" >&2
    exit 1
}
for ring in a b; do
    "$bin" fake-camera -shm "/ss_bench_paths_$$_$ring" -file "$clip" -fps 30 2>"$work/camera_$ring.log" &
    pids+=($!)
done
port_c=$(rtsp_server c)
port_d=$(rtsp_server d)
port_idle=$(rtsp_server idle)
cat >"$work/streams.yml" <<EOF
paths:
  ring_a:
    source: shm:/ss_bench_paths_$$_a
  ring_b:
    source: shm:/ss_bench_paths_$$_b
  rtsp_c:
    source: rtsp://127.0.0.1:$port_c/cam
    rtspTransport: tcp
  rtsp_d:
    source: rtsp://127.0.0.1:$port_d/cam
    rtspTransport: tcp
  idle:
    source: rtsp://127.0.0.1:$port_idle/cam
    sourceOnDemand: yes
EOF
sleep 1
"$bin" -config "$work/streams.yml" -http 127.0.0.1:0 -metrics 127.0.0.1:0 -pprof "" -webrtc-ip 127.0.0.1 \
    -max-clients $((viewers + 2)) -record-path "$work/recordings" 2>"$work/server.log" &
server=$!
pids+=($server)
url="http://$(bench_listener "$work/server.log" http)"
ready() { curl -fs "$url/paths" | python3 -c 'import json,sys; p=json.load(sys.stdin)["paths"]; print(sum(x["state"]=="ready" for x in p))'; }
for _ in $(seq 200); do [ "$(ready)" = 4 ] && break; sleep 0.1; done
sleep 3

thread_ticks() { # thread name -> ticks
    for task in /proc/$server/task/*; do
        [ "$(cat "$task/comm")" = "$1" ] && { awk '{print $14 + $15}' "$task/stat"; return; }
    done
    echo 0
}
rss_mb() { awk -v k="$(rss_kb "$server")" 'BEGIN {printf "%.1f", k / 1024}'; }
connections() { # established TCP connections to a local port
    awk -v p="$(printf ':%04X' "$1")" 'NR > 1 && $4 == "01" && $3 ~ p"$" {n++} END {print n + 0}' /proc/net/tcp
}
measure() { # seconds -> "cpu% media_a% media_b%"
    local t0 a0 b0 t1 a1 b1
    t0=$(cpu_ticks "$server") a0=$(thread_ticks media-ring_a) b0=$(thread_ticks media-ring_b)
    sleep "$1"
    t1=$(cpu_ticks "$server") a1=$(thread_ticks media-ring_a) b1=$(thread_ticks media-ring_b)
    echo "$(cpu_percent $((t1 - t0)) "$1") $(cpu_percent $((a1 - a0)) "$1") $(cpu_percent $((b1 - b0)) "$1")"
}

echo "machine: $(nproc) cores, $(uname -m), $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)"
echo "stream: $(basename "$clip") at 30 fps on 4 paths (2 rings, 2 RTSP over TCP) + 1 idle on-demand RTSP path; $seconds s per step"
read -r cpu0 ma0 mb0 < <(measure "$seconds")
printf '%-22s %8s %8s %s\n' step "cpu%" rss_MB detail
printf '%-22s %8s %8s %s\n' "0 viewers" "$cpu0" "$(rss_mb)" "media threads ring_a $ma0%, ring_b $mb0%; idle path connections $(connections "$port_idle")"

for path in ring_a ring_b rtsp_c rtsp_d; do
    "$bin" -log-level error load-client -url "$url" -path "$path" -viewers "$viewers" \
        -seconds "$((seconds + 4))" >"$work/load_$path.json" 2>"$work/load_$path.log" &
    pids+=($!)
done
sleep 3
read -r cpu1 ma1 mb1 < <(measure "$seconds")
rss1=$(rss_mb)
sleep 2
for path in ring_a ring_b rtsp_c rtsp_d; do
    for _ in $(seq 100); do python3 -c "import json; json.load(open('$work/load_$path.json'))" 2>/dev/null && break; sleep 0.2; done
done
per_path=$(awk -v c="$cpu1" -v b="$cpu0" 'BEGIN {printf "%.2f", (c - b) / 4}')
printf '%-22s %8s %8s %s\n' "$viewers viewers x 4 paths" "$cpu1" "$rss1" \
    "media threads ring_a $ma1%, ring_b $mb1%; per path (cpu - idle) / 4 = $per_path%; idle path connections $(connections "$port_idle")"
for path in ring_a ring_b rtsp_c rtsp_d; do
    python3 - "$path" "$work/load_$path.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[2]))
f = lambda v: "-" if v is None else f"{v:.1f}"
print(f"  {sys.argv[1]:<8} connected {r['connected']}/{r['viewers']}  lost {r['lost']}  min_fps {r['min_fps']:.1f}  "
      f"first keyframe p50/max {f(r['first_keyframe_p50_ms'])}/{f(r['first_keyframe_max_ms'])} ms  "
      f"capture->receive p50/p99 {f(r['latency_p50_ms'])}/{f(r['latency_p99_ms'])} ms")
EOF
done
curl -fs "$url/paths" | python3 -c '
import json, sys
for p in json.load(sys.stdin)["paths"]:
    name, state, frames = p["name"], p["state"], p["frames_read"]
    print(f"  /paths {name:<8} {state:<15} frames_read {frames}")'
