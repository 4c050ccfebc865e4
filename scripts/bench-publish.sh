#!/usr/bin/env bash
# What does a publish target cost the board, next to a WebRTC viewer, and
# what does the board spend when Janus serves the viewers? Runs the real
# binary on the 1080p30 clip (the fake camera, a separate process writing the
# shared-memory ring like the daemon) and samples the server process from
# /proc over each step:
#
#   idle                 no viewer, no target
#   N viewers            the built-in load client, direct (as scripts/bench.sh)
#   N rtp / srtp         publish targets to UDP ports that are bound but never
#                        read (the kernel drops what overflows; the sends cost
#                        what they cost with a real receiver)
#   N whip               publish targets to tests/whip_endpoint.py (aiortc,
#                        decoding off), when .venv has aiortc
#   janus + V viewers    one rtp target to Debian's Janus, V load-client
#                        viewers watching through Janus: the board's cost,
#                        Janus's cost, and what the viewers got
#
#   scripts/bench-publish.sh [--bin PATH] [--clip FILE] [--seconds 20]
#                            [--targets "1 10"] [--viewers 20] [--no-build]
#                            [--steps "direct rtp srtp whip janus"]
#
# Defaults: target/release/streaming-server (built first, $CARGO_TARGET_DIR
# honoured), the 1080p30 ~6 Mbit/s clip scripts/bench.sh makes (made here with
# ffmpeg when missing), 20 s per step. aiortc takes H.264 Constrained Baseline
# only, so the WHIP step plays the same picture encoded that way (made here
# once) from a second fake camera.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
. scripts/bench-lib.sh

usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
bin="" clip="" seconds=20 targets="1 10" viewers=20 build=1 steps="direct rtp srtp whip janus"
while [ $# -gt 0 ]; do
    case "$1" in
    --bin) bin=${2:?}; build=0; shift ;;
    --clip) clip=${2:?}; shift ;;
    --seconds) seconds=${2:?}; shift ;;
    --targets) targets=${2:?}; shift ;;
    --viewers) viewers=${2:?}; shift ;;
    --no-build) build=0 ;;
    --steps) steps=${2:?}; shift ;;
    -h | --help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage ;;
    esac
    shift
done
bench_binary
[ -n "$clip" ] || clip=$(bench_clip h264)

wants() { case " $steps " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

bench_workdir
shm=/ss_bench_publish_$$

"$bin" fake-camera -shm "$shm" -file "$clip" -fps 30 2>"$work/camera.log" &
pids+=($!)
sleep 1

rss_mb() { awk -v k="$(rss_kb "$1")" 'BEGIN {printf "%.1f", k / 1024}'; }
free_udp_port() { python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Starts the server with extra flags; sets $server and $url.
start_server() {
    "$bin" -shm "${server_shm:-$shm}" -http 127.0.0.1:0 -metrics "" -pprof "" -webrtc-ip 127.0.0.1 -max-clients 64 \
        -record-path "$work/recordings" "$@" 2>"$work/server.log" &
    server=$!
    pids+=($server)
    url="http://$(bench_listener "$work/server.log" http)"
    bench_wait_healthy "$url"
}
stop_server() { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; }

# CPU% of process $1 over $seconds (one core = 100).
sample() {
    local t0 t1
    t0=$(cpu_ticks "$1")
    sleep "$seconds"
    t1=$(cpu_ticks "$1")
    cpu_percent $((t1 - t0)) "$seconds"
}
# Frames sent to each publish target over the step, from /paths.
# What the load client's viewers got, for the notes column.
load_notes() {
    python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
first = r["first_keyframe_max_ms"]
late = sum(v["late"] for v in r["per_viewer"])
print(f"{r['connected']}/{r['viewers']} viewers, min_fps {r['min_fps']:.1f}, lost {r['lost']} (late {late}), "
      f"first keyframe max {first if first is None else round(first)} ms")
PY
}
publish_frames() {
    curl -fs "$url/paths" | python3 -c 'import json, sys; print(" ".join(str(t["frames_sent"]) for t in json.load(sys.stdin)["paths"][0]["publish"]))'
}

echo "machine: $(nproc) cores, $(uname -m), $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)"
echo "stream: $(basename "$clip") at 30 fps; $seconds s measured per step"
printf '%-26s %8s %10s %7s  %s\n' step "cpu%" "cpu%/unit" rss_MB notes
row() { printf '%-26s %8s %10s %7s  %s\n' "$@"; }

start_server
sleep 3
idle=$(sample "$server")
row "idle" "$idle" - "$(rss_mb "$server")" ""
stop_server

per() { awk -v c="$1" -v b="$idle" -v n="$2" 'BEGIN {printf "%.2f", (c - b) / n}'; }

# Direct WebRTC viewers, for comparison on the same machine and minute.
wants direct && for n in 10 "$viewers"; do
    start_server
    join_s=$(awk -v n="$n" 'BEGIN {print n * 0.037 + 2}')
    "$bin" -log-level error load-client -url "$url" -viewers "$n" \
        -seconds "$(awk -v a="$join_s" -v b="$seconds" 'BEGIN {print a + b + 1}')" >"$work/direct_$n.json" 2>/dev/null &
    load=$!
    sleep "$join_s"
    cpu=$(sample "$server")
    rss=$(rss_mb "$server")
    wait "$load" || true
    notes=$(load_notes "$work/direct_$n.json")
    row "$n viewers (direct)" "$cpu" "$(per "$cpu" "$n")" "$rss" "$notes"
    stop_server
done

# RTP and SRTP targets to bound, never-read UDP ports.
key=$(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(30)).decode())')
for kind in rtp srtp; do
    wants "$kind" || continue
    for n in $targets; do
        ports=()
        args=()
        for _ in $(seq "$n"); do
            port=$(free_udp_port)
            ports+=("$port")
            query="pt=96&rtcpport=0"
            [ "$kind" = srtp ] && query="$query&key=$key"
            args+=(-publish "$kind://127.0.0.1:$port?$query")
        done
        python3 -c '
import socket, sys, time
socks = []
for port in sys.argv[1:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", int(port))); socks.append(s)
time.sleep(3600)' "${ports[@]}" &
        sink=$!
        pids+=($sink)
        sleep 0.3
        start_server "${args[@]}"
        sleep 3
        before=$(publish_frames)
        cpu=$(sample "$server")
        after=$(publish_frames)
        rss=$(rss_mb "$server")
        frames=$(python3 -c 'import sys; b, a = sys.argv[1].split(), sys.argv[2].split(); print(min(int(y) - int(x) for x, y in zip(b, a)))' "$before" "$after")
        row "$n $kind targets" "$cpu" "$(per "$cpu" "$n")" "$rss" "each target sent >= $frames frames"
        stop_server
        kill "$sink" 2>/dev/null || true
    done
done

# WHIP targets to aiortc endpoints (decoding off), when the venv has aiortc.
python=$root/.venv/bin/python
if ! wants whip; then
    :
elif [ -x "$python" ] && "$python" -c 'import aiortc' 2>/dev/null; then
    baseline=$(bench_clip h264-baseline)
    "$bin" fake-camera -shm "${shm}_baseline" -file "$baseline" -fps 30 2>"$work/camera_baseline.log" &
    pids+=($!)
    sleep 1
    server_shm=${shm}_baseline
    start_server
    sleep 3
    idle_baseline=$(sample "$server")
    stop_server
    row "idle (baseline clip)" "$idle_baseline" - - ""
    for n in 1 2; do
        args=()
        endpoints=()
        for i in $(seq "$n"); do
            mkdir -p "$work/whip_$i"
            "$python" tests/whip_endpoint.py --port 0 --record-dir "$work/whip_$i" --no-decode >"$work/whip_$i.log" 2>&1 &
            endpoints+=($!)
            pids+=($!)
        done
        for i in $(seq "$n"); do
            for _ in $(seq 100); do grep -q "listening on" "$work/whip_$i.log" && break; sleep 0.1; done
            port=$(grep -o 'listening on [0-9.:]*' "$work/whip_$i.log" | awk -F: '{print $NF}')
            args+=(-publish "whip+http://127.0.0.1:$port/whip")
        done
        start_server "${args[@]}"
        sleep 4
        before=$(publish_frames)
        cpu=$(sample "$server")
        after=$(publish_frames)
        rss=$(rss_mb "$server")
        frames=$(python3 -c 'import sys; b, a = sys.argv[1].split(), sys.argv[2].split(); print(min(int(y) - int(x) for x, y in zip(b, a)))' "$before" "$after")
        row "$n whip targets (aiortc)" "$cpu" "$(awk -v c="$cpu" -v b="$idle_baseline" -v n="$n" 'BEGIN {printf "%.2f", (c - b) / n}')" "$rss" "each target sent >= $frames frames (baseline clip)"
        stop_server
        for pid in "${endpoints[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
        for i in $(seq "$n"); do rm -rf "$work/whip_$i"; done
    done
    server_shm=""
else
    echo "(no aiortc in $python: WHIP step skipped; scripts/test.sh installs it)"
fi

# One rtp target to Janus, $viewers viewers through Janus.
if ! wants janus; then
    :
elif command -v janus >/dev/null; then
    lib=$(dirname "$(dirname "$(find /usr/lib -name libjanus_streaming.so -print -quit)")")
    jdir=$work/janus
    mkdir -p "$jdir"
    rtp=$(free_udp_port) rtcp=$(free_udp_port)
    http=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    skip() { (cd "$lib/$1" && ls ./*.so | sed 's|^\./||' | grep -v "^$2\$" | paste -sd, -); }
    cat >"$jdir/janus.jcfg" <<EOF
general: { configs_folder = "$jdir", plugins_folder = "$lib/plugins", transports_folder = "$lib/transports",
  events_folder = "$lib/events", loggers_folder = "$lib/loggers", debug_level = 4 }
media: { rtp_port_range = "20000-60000" }
plugins: { disable = "$(skip plugins libjanus_streaming.so)" }
transports: { disable = "$(skip transports libjanus_http.so)" }
events: { broadcast = false, disable = "$(skip events none)" }
loggers: { disable = "$(skip loggers none)" }
EOF
    cat >"$jdir/janus.transport.http.jcfg" <<EOF
general: { json = "compact", base_path = "/janus", http = true, port = $http, ip = "127.0.0.1", https = false }
admin: { admin_http = false }
EOF
    cat >"$jdir/janus.plugin.streaming.jcfg" <<EOF
general: { }
cam: { type = "rtp", id = 1, audio = false, video = true, videoport = $rtp, videortcpport = $rtcp,
  videopt = 96, videocodec = "h264", videofmtp = "profile-level-id=640028;packetization-mode=1" }
EOF
    janus -F "$jdir" -C "$jdir/janus.jcfg" >"$work/janus.log" 2>&1 &
    janus_pid=$!
    pids+=($janus_pid)
    for _ in $(seq 100); do grep -q "HTTP webserver started" "$work/janus.log" && break; sleep 0.1; done
    # libnice never offers loopback: viewers use the address Janus announces.
    media_ip=$(grep -o 'Using [0-9a-f.:]* as local IP' "$work/janus.log" | awk '{print $2}' || true)
    [ -n "$media_ip" ] || { echo "Janus did not start:" >&2; tail -20 "$work/janus.log" >&2; exit 1; }
    start_server -publish "rtp://127.0.0.1:$rtp?pt=96&rtcpport=$rtcp"
    join_s=$(awk -v n="$viewers" 'BEGIN {print n * 0.15 + 3}')
    "$bin" -log-level error load-client -url "http://127.0.0.1:$http/janus" -janus-mountpoint 1 \
        -viewers "$viewers" -stagger-ms 150 -local-ip "$media_ip" \
        -seconds "$(awk -v a="$join_s" -v b="$seconds" 'BEGIN {print a + b + 1}')" >"$work/janus_load.json" 2>/dev/null &
    load=$!
    sleep "$join_s"
    j0=$(cpu_ticks "$janus_pid")
    cpu=$(sample "$server")
    j1=$(cpu_ticks "$janus_pid")
    rss=$(rss_mb "$server")
    janus_cpu=$(cpu_percent $((j1 - j0)) "$seconds")
    wait "$load" || true
    notes="janus ${janus_cpu}%, $(load_notes "$work/janus_load.json")"
    row "janus + $viewers viewers" "$cpu" - "$rss" "$notes; board: 1 stream out, $(curl -fs "$url/health" | python3 -c 'import json, sys; print(json.load(sys.stdin)["webrtc_clients"])') viewers of its own"
    stop_server
else
    echo "(janus not installed: the Janus step skipped)"
fi
