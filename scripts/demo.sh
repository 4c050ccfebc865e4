#!/usr/bin/env bash
# Runs the whole thing on a PC with no camera: the fake camera (a separate
# process writing the daemon's shared-memory ring, like the real daemon),
# the streamer, and optionally the Flask companion. Prints the URLs to open;
# Ctrl-C stops everything.
#
#   scripts/demo.sh [--release] [--no-build] [--companion] [--file CLIP.h264] [--fps N]
#                   [--http ADDR] [--metrics ADDR] [--pprof ADDR] [--companion-port PORT]
#
# Defaults: the built-in 640x360 clip at 30 fps, -http 127.0.0.1:8081,
# -metrics 127.0.0.1:9090, -pprof 127.0.0.1:6060, companion on :8080, debug
# build (--release for the optimised one). A port of 0 picks a free one.
# Recordings go to ./recordings.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
profile=debug build=1 companion=0 file="" fps=30
http=127.0.0.1:8081 metrics=127.0.0.1:9090 pprof=127.0.0.1:6060 companion_port=8080
while [ $# -gt 0 ]; do
    case "$1" in
    --release) profile=release ;;
    --no-build) build=0 ;;
    --companion) companion=1 ;;
    --file) file=${2:?}; shift ;;
    --fps) fps=${2:?}; shift ;;
    --http) http=${2?}; shift ;;
    --metrics) metrics=${2?}; shift ;;
    --pprof) pprof=${2?}; shift ;;
    --companion-port) companion_port=${2:?}; shift ;;
    -h | --help) usage 0 ;;
    *) echo "unknown option: $1" >&2; usage ;;
    esac
    shift
done

bin=${STREAMING_SERVER_BIN:-$root/target/$profile/streaming-server}
if [ $build = 1 ]; then
    if [ $profile = release ]; then cargo build --release --bin streaming-server; else cargo build --bin streaming-server; fi
fi
[ -x "$bin" ] || { echo "no binary at $bin (drop --no-build)" >&2; exit 1; }

logs=$(mktemp -d)
pids=()
stop() {
    trap - INT TERM EXIT
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$logs"
}
trap stop EXIT
trap 'exit 130' INT TERM

wait_line() { # FILE NEEDLE: prints the first matching line, fails after 30 s
    local i
    for ((i = 0; i < 300; i++)); do
        grep -m1 -- "$2" "$1" && return 0
        sleep 0.1
    done
    echo "no '$2' after 30 s; log:" >&2
    cat "$1" >&2
    return 1
}
addr_of() { sed 's/.*listening: [a-z]* on \([^ ]*\).*/\1/'; }

shm="/streaming_demo_$$"
camera_args=(fake-camera -shm "$shm" -fps "$fps")
[ -z "$file" ] || camera_args+=(-file "$file")
"$bin" "${camera_args[@]}" 2>"$logs/camera.log" &
pids+=($!)
wait_line "$logs/camera.log" "fake camera: writing" >/dev/null

server_args=(-shm "$shm" -http "$http" -metrics "$metrics" -pprof "$pprof" -record-path "$root/recordings")
if [ $companion = 1 ]; then
    # The companion page calls /offer from its own origin.
    if [ "$companion_port" = 0 ]; then origin='*'; else origin="http://127.0.0.1:$companion_port"; fi
    server_args+=(-cors-origin "$origin")
fi
"$bin" "${server_args[@]}" 2>"$logs/server.log" &
pids+=($!)
tail -n +1 -f "$logs/server.log" >&2 &
pids+=($!)
viewer=$(wait_line "$logs/server.log" "listening: http on " | addr_of)
echo "viewer:    http://$viewer/"
[ -z "$metrics" ] || echo "metrics:   http://$(wait_line "$logs/server.log" "listening: metrics on " | addr_of)/metrics"
[ -z "$pprof" ] || echo "profiling: http://$(wait_line "$logs/server.log" "listening: pprof on " | addr_of)/debug/pprof/"

if [ $companion = 1 ]; then
    python=${STREAMING_TEST_PYTHON:-$root/.venv/bin/python}
    if [ ! -x "$python" ]; then
        python3 -m venv "$root/.venv"
        "$root/.venv/bin/pip" install -q -r scripts/requirements.txt
        python=$root/.venv/bin/python
    fi
    STREAMER_URL="http://$viewer" STREAMER_PUBLIC_URL="http://$viewer" \
        "$python" scripts/companion/app.py --host 127.0.0.1 --port "$companion_port" 2>"$logs/companion.log" &
    pids+=($!)
    echo "companion: http://$(wait_line "$logs/companion.log" "listening: companion on " | addr_of)/"
fi
echo "demo running; Ctrl-C stops it"
wait "${pids[@]}"
