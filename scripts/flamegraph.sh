#!/usr/bin/env bash
# Records a CPU flamegraph of a running streaming-server and saves the SVG.
#
#   scripts/flamegraph.sh HOST[:PORT] [SECONDS] [-o FILE]
#
# HOST[:PORT]  the server's -pprof listener (port 6060 when left out)
# SECONDS      how long to sample (default 30)
# -o FILE      where to save (default flamegraph-HOST-YYYYmmdd-HHMMSS.svg)
#
# Fetches /debug/pprof/flamegraph?seconds=N; open the SVG in a browser
# (it is interactive: click to zoom, Ctrl-F to search). For `go tool pprof`
# or `pprof -http`, fetch /debug/pprof/profile?seconds=N instead.
set -euo pipefail

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
host="" seconds=30 out=""
while [ $# -gt 0 ]; do
    case "$1" in
    -o) out=${2:?-o needs a file}; shift ;;
    -h | --help) usage 0 ;;
    -*) echo "unknown option: $1" >&2; usage ;;
    *)
        if [ -z "$host" ]; then host=$1
        elif [[ "$1" =~ ^[0-9]+$ ]]; then seconds=$1
        else usage
        fi
        ;;
    esac
    shift
done
[ -n "$host" ] || usage
[[ "$host" == *:* ]] || host="$host:6060"
out=${out:-flamegraph-${host%%:*}-$(date +%Y%m%d-%H%M%S).svg}
url="http://$host/debug/pprof/flamegraph?seconds=$seconds"

echo "sampling $url for $seconds s ..." >&2
tmp="$out.part"
trap 'rm -f "$tmp"' EXIT
# The server answers when sampling ends: allow that plus time to render.
status=$(curl -sS --connect-timeout 5 --max-time $((seconds + 60)) -o "$tmp" -w '%{http_code}' "$url") || {
    echo "could not fetch $url (is the server running with -pprof $host?)" >&2
    exit 1
}
if [ "$status" != 200 ]; then
    echo "$url answered HTTP $status: $(head -c 300 "$tmp")" >&2
    exit 1
fi
if ! head -c 4096 "$tmp" | grep -q '<svg'; then
    echo "$url did not return an SVG" >&2
    exit 1
fi
mv "$tmp" "$out"
echo "flamegraph saved: $out ($(stat -c %s "$out") bytes); open it in a browser" >&2
echo "$out"
