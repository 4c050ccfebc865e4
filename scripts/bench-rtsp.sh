#!/usr/bin/env bash
# What does an RTSP client cost next to a WebRTC viewer? Runs the real
# binary with the fake camera on the 1080p path (the clip bench.sh makes),
# the RTSP server on, and measures the server's CPU (from /proc) with no
# client, with N RTSP clients (real ones: `ffmpeg -rtsp_transport tcp|udp
# -i URL -c copy -f null -`, not decoding) and with N WebRTC viewers (the
# load client), one after the other; prints one table with CPU per client
# above the idle baseline.
#
#   scripts/bench-rtsp.sh [--bin PATH] [--clip FILE] [--clients "1 10"]
#                         [--seconds 20] [--transport tcp|udp] [--no-build]
#
# Defaults: target/release/streaming-server (built first), the 1080p30
# ~6 Mbit/s H.264 clip of scripts/bench.sh in target/bench/ (made once with
# ffmpeg), 20 s measured per step after the clients joined, RTSP over TCP.
# Needs ffmpeg (the RTSP clients), curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
bin="" clip="" steps="1 10" seconds=20 build=1 transport=tcp
while [ $# -gt 0 ]; do
    case "$1" in
    --bin) bin=${2:?}; build=0; shift ;;
    --clip) clip=${2:?}; shift ;;
    --clients) steps=${2:?}; shift ;;
    --seconds) seconds=${2:?}; shift ;;
    --transport) transport=${2:?}; shift ;;
    --no-build) build=0 ;;
    -h | --help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage ;;
    esac
    shift
done
bench_binary
command -v ffmpeg >/dev/null || { echo "needs ffmpeg (the RTSP clients)" >&2; exit 1; }
[ -n "$clip" ] || clip=$(bench_clip h264)
codec_args=()
case "$clip" in *.h265 | *.hevc) codec_args=(-codec h265) ;; esac

bench_workdir
shm=/ss_bench_rtsp_$$
clients_pids=()
cleanup() {
    for pid in "${clients_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    bench_cleanup
}
trap cleanup EXIT INT TERM

"$bin" fake-camera -shm "$shm" -file "$clip" -fps 30 2>"$work/camera.log" &
pids+=($!)
max=0
for n in $steps; do [ "$n" -gt "$max" ] && max=$n; done
"$bin" -shm "$shm" -http 127.0.0.1:0 -metrics 127.0.0.1:0 -pprof "" -webrtc-ip 127.0.0.1 \
    -rtsp 127.0.0.1:0 -max-clients $((max + 2)) -record-path "$work/recordings" 2>"$work/server.log" &
server=$!
pids+=($server)
url="http://$(bench_listener "$work/server.log" http)"
rtsp="rtsp://$(bench_listener "$work/server.log" rtsp)/cam"
for _ in $(seq 100); do
    curl -fs "$url/health" | grep -q '"status":"ok"' && break
    sleep 0.1
done

# RTSP clients playing and WebRTC viewers, from /paths.
counts() {
    curl -fs "$url/paths" | python3 -c '
import json, sys
p = json.load(sys.stdin)["paths"][0]
print(p.get("rtsp_clients", 0), p.get("viewers", 0))' 2>/dev/null || echo "0 0"
}
measure() { # prints cpu% over $seconds
    local t0 t1
    t0=$(cpu_ticks "$server")
    sleep "$seconds"
    t1=$(cpu_ticks "$server")
    cpu_percent $((t1 - t0)) "$seconds"
}

echo "machine: $(nproc) cores, $(uname -m), $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)"
echo "stream: $(basename "$clip") at 30 fps; RTSP clients: ffmpeg -rtsp_transport $transport -c copy -f null; $seconds s per step"
printf '%-8s %7s %8s %12s %7s %s\n' kind clients "cpu%" "cpu%/client" rss_MB note
base=$(measure)
printf '%-8s %7s %8s %12s %7s %s\n' idle 0 "$base" - "$(awk -v k="$(rss_kb "$server")" 'BEGIN {printf "%.1f", k / 1024}')" ""
for n in $steps; do
    # N RTSP clients.
    clients_pids=()
    for i in $(seq "$n"); do
        ffmpeg -nostdin -v error -rtsp_transport "$transport" -i "$rtsp" -c copy -f null - 2>"$work/ffmpeg_$i.log" &
        clients_pids+=($!)
    done
    for _ in $(seq 100); do read -r r _ < <(counts); [ "$r" = "$n" ] && break; sleep 0.1; done
    sleep 2
    cpu=$(measure)
    read -r playing _ < <(counts)
    rss=$(rss_kb "$server")
    for pid in "${clients_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait "${clients_pids[@]}" 2>/dev/null || true
    clients_pids=()
    per=$(awk -v c="$cpu" -v b="$base" -v n="$n" 'BEGIN {printf "%.2f", (c - b) / n}')
    printf '%-8s %7s %8s %12s %7s %s\n' "rtsp/$transport" "$n" "$cpu" "$per" "$(awk -v k="$rss" 'BEGIN {printf "%.1f", k / 1024}')" \
        "$playing playing at the end"
    for _ in $(seq 100); do read -r r _ < <(counts); [ "$r" = 0 ] && break; sleep 0.1; done

    # N WebRTC viewers.
    join_s=$(awk -v n="$n" 'BEGIN {print n * 0.037 + 2}')
    "$bin" -log-level error load-client -url "$url" -viewers "$n" "${codec_args[@]}" \
        -seconds "$(awk -v a="$join_s" -v b="$seconds" 'BEGIN {print a + b + 1}')" \
        >"$work/load_$n.json" 2>"$work/load_$n.log" &
    load=$!
    sleep "$join_s"
    cpu=$(measure)
    rss=$(rss_kb "$server")
    wait "$load" || { echo "load client failed with $n viewers:" >&2; tail -5 "$work/load_$n.log" >&2; }
    connected=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["connected"])' "$work/load_$n.json" 2>/dev/null || echo "?")
    per=$(awk -v c="$cpu" -v b="$base" -v n="$n" 'BEGIN {printf "%.2f", (c - b) / n}')
    printf '%-8s %7s %8s %12s %7s %s\n' webrtc "$n" "$cpu" "$per" "$(awk -v k="$rss" 'BEGIN {printf "%.1f", k / 1024}')" \
        "$connected connected"
    for _ in $(seq 100); do read -r _ v < <(counts); [ "$v" = 0 ] && break; sleep 0.1; done
done
