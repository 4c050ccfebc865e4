# Shell helpers shared by the scripts/bench*.sh scripts: the binary under
# test, the 1080p bench clips, a scratch folder whose processes end with the
# script, the server's listeners, and /proc samples.
# Source it from the repository root: . scripts/bench-lib.sh

bench_target_dir=${CARGO_TARGET_DIR:-$PWD/target}
bench_hz=$(getconf CLK_TCK)

# Settles $bin: the release build when empty (built first unless $build is
# 0), and it must be executable.
bench_binary() {
    [ -n "$bin" ] || bin=$bench_target_dir/release/streaming-server
    if [ "$build" = 1 ]; then cargo build --release --quiet; fi
    [ -x "$bin" ] || { echo "no binary at $bin (build it, or --bin PATH)" >&2; exit 1; }
}

# Prints the path of a 1080p30 ~6 Mbit/s clip with an IDR every second,
# made once with ffmpeg in target/bench/: h264 (High profile), h264-baseline
# (Constrained Baseline, what aiortc takes) or h265. Every script measures
# the same picture.
bench_clip() {
    local clip encoder
    case "$1" in
    h264)
        clip=$bench_target_dir/bench/clip_1080p30_6mbps.h264
        encoder=(-c:v libx264 -profile:v high -g 30 -keyint_min 30 -sc_threshold 0 -x264-params aud=1)
        ;;
    h264-baseline)
        clip=$bench_target_dir/bench/clip_1080p30_6mbps_baseline.h264
        encoder=(-c:v libx264 -profile:v baseline -g 30 -keyint_min 30 -sc_threshold 0 -x264-params aud=1)
        ;;
    h265)
        clip=$bench_target_dir/bench/clip_1080p30_6mbps.h265
        encoder=(-c:v libx265 -profile:v main -f hevc
            -x265-params log-level=error:keyint=30:min-keyint=30:scenecut=0:open-gop=0:bframes=0:aud=1)
        ;;
    *) echo "bench_clip: no clip kind $1" >&2; return 1 ;;
    esac
    if [ ! -s "$clip" ]; then
        mkdir -p "$(dirname "$clip")"
        echo "making $clip with ffmpeg (once)..." >&2
        ffmpeg -v error -y -f lavfi -i testsrc2=size=1920x1080:rate=30:duration=10 -preset veryfast \
            -tune zerolatency -b:v 6M -maxrate 6M -bufsize 2M -pix_fmt yuv420p "${encoder[@]}" "$clip" >&2
    fi
    echo "$clip"
}

# A scratch folder in $work and the processes to end with the script in
# $pids; both go when the script exits, however it exits.
bench_workdir() {
    work=$(mktemp -d)
    pids=()
    trap bench_cleanup EXIT INT TERM
}
bench_cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}

# Waits for the server log $1 to say "listening: $2 on ADDR" (http,
# metrics, rtsp) and prints ADDR; fails showing the log if it never does.
bench_listener() {
    local line
    for _ in $(seq 100); do
        line=$(grep -m1 -o "listening: $2 on [0-9.:]*" "$1" || true)
        if [ -n "$line" ]; then echo "${line##* }"; return 0; fi
        sleep 0.1
    done
    echo "server did not start its $2 listener:" >&2
    cat "$1" >&2
    return 1
}

# Waits up to 10 s for URL/health to answer 200.
bench_wait_healthy() {
    for _ in $(seq 100); do
        curl -fs "$1/health" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
}

# Process PID's CPU time in clock ticks (user + system), and its RSS in KiB.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# TICKS of CPU over SECONDS as a percentage of one core.
cpu_percent() { awk -v d="$1" -v hz="$bench_hz" -v s="$2" 'BEGIN {printf "%.2f", d / hz / s * 100}'; }
