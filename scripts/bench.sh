#!/usr/bin/env bash
# How many viewers can this machine take, what do they cost, and how much
# delay does the streamer add? Runs the real binary with the fake camera
# (a separate process writing the shared-memory ring like the daemon),
# connects 0, 1, 10, 20 and 50 non-decoding WebRTC viewers with the built-in
# load client, samples the server process from /proc, and prints one table.
# Works on a board too: copy the binary and a clip, then
#   scripts/bench.sh --bin ./streaming-server --clip clip.h264 --no-build
#
#   scripts/bench.sh [--bin PATH] [--clip FILE] [--h265] [--viewers "0 1 10 20 50"]
#                    [--seconds 20] [--no-build] [--json-dir DIR]
#
# Defaults: target/release/streaming-server (built first), a 1080p30
# ~6 Mbit/s clip with an IDR every second made once with ffmpeg in
# target/bench/ (--h265: the same picture in H.265; a .h265 --clip is H.265
# too, and the viewers then offer H.265), 20 s of measurement per step after
# the viewers joined.
# Needs python3 (to read the load client's JSON); ffmpeg only to make the clip.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
bin="" clip="" steps="0 1 10 20 50" seconds=20 build=1 json_dir="" h265=0
while [ $# -gt 0 ]; do
    case "$1" in
    --bin) bin=${2:?}; build=0; shift ;;
    --clip) clip=${2:?}; shift ;;
    --h265) h265=1 ;;
    --viewers) steps=${2:?}; shift ;;
    --seconds) seconds=${2:?}; shift ;;
    --no-build) build=0 ;;
    --json-dir) json_dir=${2:?}; shift ;;
    -h | --help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage ;;
    esac
    shift
done
bench_binary
if [ -z "$clip" ]; then
    if [ "$h265" = 1 ]; then clip=$(bench_clip h265); else clip=$(bench_clip h264); fi
fi

# Viewers offer the clip's codec (-codec is left out for H.264, so older
# binaries without it run too).
codec_args=()
case "$clip" in *.h265 | *.hevc) codec_args=(-codec h265) ;; esac

bench_workdir
shm=/ss_bench_$$

"$bin" fake-camera -shm "$shm" -file "$clip" -fps 30 2>"$work/camera.log" &
pids+=($!)
max_viewers=0
for n in $steps; do [ "$n" -gt "$max_viewers" ] && max_viewers=$n; done
"$bin" -shm "$shm" -http 127.0.0.1:0 -metrics 127.0.0.1:0 -pprof "" -webrtc-ip 127.0.0.1 \
    -max-clients $((max_viewers + 2)) -record-path "$work/recordings" 2>"$work/server.log" &
server=$!
pids+=($server)
url="http://$(bench_listener "$work/server.log" http)"
metrics_url="http://$(bench_listener "$work/server.log" metrics)/metrics"
bench_wait_healthy "$url"

threads() { awk '/^Threads/ {print $2}' "/proc/$server/status"; }
fds() { ls "/proc/$server/fd" | wc -l; }
# The server's own view: loss its viewers' RTCP receiver reports state, and
# the capture -> last packet handed to a viewer histogram.
scrape() { curl -fs "$metrics_url" | grep -E '^streaming_(webrtc_packets_lost_total|capture_to_sent_ms_(bucket|count))' || true; }
clients() { curl -fs "$url/health" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("webrtc_clients", 0))' 2>/dev/null || echo 0; }

echo "machine: $(nproc) cores, $(uname -m), $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)"
echo "stream: $(basename "$clip") at 30 fps; $seconds s measured per step after the viewers joined"
printf '%7s %8s %10s %7s %7s %5s %6s %7s %7s %15s %17s %12s\n' \
    viewers "cpu%" "cpu%/view" "rss_MB" threads fds lost rr_lost min_fps "ttff_p50/max" "latency_p50/p99" "sent_p99"
base_cpu=""
for n in $steps; do
    report=$work/load_$n.json
    # The previous step's viewers must be gone (their slots freed) first.
    for _ in $(seq 100); do [ "$(clients)" = 0 ] && break; sleep 0.1; done
    scrape >"$work/before_$n.txt"
    if [ "$n" -gt 0 ]; then
        join_s=$(awk -v n="$n" 'BEGIN {print n * 0.037 + 2}')
        "$bin" -log-level error load-client -url "$url" -viewers "$n" "${codec_args[@]}" \
            -seconds "$(awk -v a="$join_s" -v b="$seconds" 'BEGIN {print a + b + 1}')" \
            >"$report" 2>"$work/load_$n.log" &
        load=$!
        sleep "$join_s"
    fi
    t0=$(cpu_ticks "$server")
    sleep "$seconds"
    t1=$(cpu_ticks "$server")
    rss=$(rss_kb "$server") th=$(threads) fd=$(fds)
    cpu=$(cpu_percent $((t1 - t0)) "$seconds")
    if [ "$n" -gt 0 ]; then
        wait "$load" || { echo "load client failed with $n viewers:" >&2; tail -5 "$work/load_$n.log" >&2; }
        [ -n "$json_dir" ] && mkdir -p "$json_dir" && cp "$report" "$json_dir/"
        scrape >"$work/after_$n.txt"
        read -r lost rrlost minfps ttff lat sent < <(python3 - "$report" "$work/before_$n.txt" "$work/after_$n.txt" <<'EOF'
import json, re, sys
r = json.load(open(sys.argv[1]))
def metrics(path):
    out = {}
    for line in open(path):
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out
before, after = metrics(sys.argv[2]), metrics(sys.argv[3])
delta = {k: v - before.get(k, 0) for k, v in after.items()}
rr_lost = int(delta.get("streaming_webrtc_packets_lost_total", 0))
# p99 of capture -> sent over this step, as the histogram bucket it falls in.
buckets = sorted((float(re.search(r'le="([^"]+)"', k).group(1)), v) for k, v in delta.items() if "_bucket" in k)
total = delta.get("streaming_capture_to_sent_ms_count", 0)
sent = next((f"<={le:g}ms" for le, c in buckets if total and c >= 0.99 * total), "-")
f = lambda v: "-" if v is None else f"{v:.0f}" if v >= 10 else f"{v:.1f}"
print(r["lost"], rr_lost, f"{r['min_fps']:.1f}", f"{f(r['first_keyframe_p50_ms'])}/{f(r['first_keyframe_max_ms'])}ms",
      f"{f(r['latency_p50_ms'])}/{f(r['latency_p99_ms'])}ms", sent)
EOF
        )
        per=$(awk -v c="$cpu" -v b="${base_cpu:-0}" -v n="$n" 'BEGIN {printf "%.2f", (c - b) / n}')
    else
        base_cpu=$cpu lost=- rrlost=- minfps=- ttff=- lat=- per=- sent=-
    fi
    printf '%7s %8s %10s %7s %7s %5s %6s %7s %7s %15s %17s %12s\n' \
        "$n" "$cpu" "$per" "$(awk -v k="$rss" 'BEGIN {printf "%.1f", k / 1024}')" "$th" "$fd" "$lost" "$rrlost" \
        "$minfps" "$ttff" "$lat" "$sent"
done
