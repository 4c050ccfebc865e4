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
root=$(pwd)

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
[ -n "$bin" ] || bin=${CARGO_TARGET_DIR:-$root/target}/release/streaming-server
if [ "$build" = 1 ]; then
    cargo build --release --quiet
fi
[ -x "$bin" ] || { echo "no binary at $bin (build it, or --bin PATH)" >&2; exit 1; }
command -v ffmpeg >/dev/null || { echo "needs ffmpeg (the RTSP clients)" >&2; exit 1; }
if [ -z "$clip" ]; then
    clip=$root/target/bench/clip_1080p30_6mbps.h264
    if [ ! -s "$clip" ]; then
        mkdir -p "$(dirname "$clip")"
        echo "making $clip with ffmpeg (once)..." >&2
        ffmpeg -v error -y -f lavfi -i testsrc2=size=1920x1080:rate=30:duration=10 \
            -c:v libx264 -profile:v high -preset veryfast -tune zerolatency \
            -g 30 -keyint_min 30 -sc_threshold 0 -b:v 6M -maxrate 6M -bufsize 2M \
            -pix_fmt yuv420p -x264-params aud=1 "$clip"
    fi
fi
codec_args=()
case "$clip" in *.h265 | *.hevc) codec_args=(-codec h265) ;; esac

work=$(mktemp -d)
shm=/ss_bench_rtsp_$$
pids=()
clients_pids=()
cleanup() {
    for pid in "${clients_pids[@]}" "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
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
url="" rtsp=""
for _ in $(seq 100); do
    line=$(grep -m1 -o 'listening: http on [0-9.:]*' "$work/server.log" || true)
    rline=$(grep -m1 -o 'listening: rtsp on [0-9.:]*' "$work/server.log" || true)
    if [ -n "$line" ] && [ -n "$rline" ]; then url="http://${line##* }"; rtsp="rtsp://${rline##* }/cam"; break; fi
    sleep 0.1
done
[ -n "$url" ] || { echo "server did not start:" >&2; cat "$work/server.log" >&2; exit 1; }
for _ in $(seq 100); do
    curl -fs "$url/health" | grep -q '"status":"ok"' && break
    sleep 0.1
done

hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$server/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$server/status"; }
# RTSP clients playing and WebRTC viewers, from /paths.
counts() {
    curl -fs "$url/paths" | python3 -c '
import json, sys
p = json.load(sys.stdin)["paths"][0]
print(p.get("rtsp_clients", 0), p.get("viewers", 0))' 2>/dev/null || echo "0 0"
}
measure() { # prints cpu% over $seconds
    local t0 t1
    t0=$(cpu_ticks)
    sleep "$seconds"
    t1=$(cpu_ticks)
    awk -v d=$((t1 - t0)) -v hz="$hz" -v s="$seconds" 'BEGIN {printf "%.2f", d / hz / s * 100}'
}

echo "machine: $(nproc) cores, $(uname -m), $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)"
echo "stream: $(basename "$clip") at 30 fps; RTSP clients: ffmpeg -rtsp_transport $transport -c copy -f null; $seconds s per step"
printf '%-8s %7s %8s %12s %7s %s\n' kind clients "cpu%" "cpu%/client" rss_MB note
base=$(measure)
printf '%-8s %7s %8s %12s %7s %s\n' idle 0 "$base" - "$(awk -v k="$(rss_kb)" 'BEGIN {printf "%.1f", k / 1024}')" ""
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
    rss=$(rss_kb)
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
    rss=$(rss_kb)
    wait "$load" || { echo "load client failed with $n viewers:" >&2; tail -5 "$work/load_$n.log" >&2; }
    connected=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["connected"])' "$work/load_$n.json" 2>/dev/null || echo "?")
    per=$(awk -v c="$cpu" -v b="$base" -v n="$n" 'BEGIN {printf "%.2f", (c - b) / n}')
    printf '%-8s %7s %8s %12s %7s %s\n' webrtc "$n" "$cpu" "$per" "$(awk -v k="$rss" 'BEGIN {printf "%.1f", k / 1024}')" \
        "$connected connected"
    for _ in $(seq 100); do read -r _ v < <(counts); [ "$v" = 0 ] && break; sleep 0.1; done
done
