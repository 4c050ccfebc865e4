#!/usr/bin/env bash
# Runs every test of the project on a fresh Debian 12 machine with only the
# Rust toolchain: installs what the tests need (ffmpeg for ffprobe, Chromium
# and playwright-core for browser tests, GStreamer's RTSP server for RTSP
# cameras, coturn for TURN, Janus for publishing to an SFU, Flask and aiortc
# in a venv), then runs the Rust test suite, rustfmt and clippy. .ci/run runs
# exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

. scripts/lib.sh # retry, as_root


# What the tests run, and the Debian package that provides it when missing.
# Checked by command, not by package: a machine may already have, e.g.,
# Node.js with its own npm from another package, and Debian's npm package
# conflicts with that.
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("${@:2}"); }
need ffprobe ffmpeg                 # recordings checked with ffprobe/ffmpeg
need chromium chromium              # browser tests (playwright-core drives it)
need node nodejs
need npm npm
need systemd-analyze systemd        # the unit file test
need curl curl                      # scripts/flamegraph.sh, README examples, cross smoke run
need turnserver coturn              # TURN relay for viewers without a path to the board
need ip iproute2                    # network namespaces for the TURN and Janus tests
need patch patch                    # scripts/check-vendored.sh applies the recorded patches
need janus janus                    # publish tests: Janus's streaming plugin as the SFU
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
# RTSP cameras in the tests: GStreamer's RTSP server through Debian's own
# Python (tests/rtsp_server.py runs under /usr/bin/python3, which has gi).
need gst-launch-1.0 gstreamer1.0-tools
/usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0"); from gi.repository import GstRtspServer' \
    2>/dev/null || missing+=(python3 python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base \
    gstreamer1.0-plugins-good gstreamer1.0-plugins-bad)
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing: ${missing[*]}"
    retry as_root apt-get update
    retry as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

echo "== Python venv with Flask (scripts/requirements.txt) and aiortc (tests/requirements.txt)"
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
retry .venv/bin/pip install -q -r scripts/requirements.txt -r tests/requirements.txt
export STREAMING_TEST_PYTHON="$root/.venv/bin/python"

echo "== playwright-core for browser tests"
if [ ! -d tests/browser/node_modules/playwright-core ]; then
    (cd tests/browser && retry npm install --no-audit --no-fund --silent)
fi
export STREAMING_TEST_CHROMIUM=/usr/bin/chromium

echo "== vendored crates equal their crates.io release plus the recorded patch"
vendored_status=0
bash scripts/check-vendored.sh || vendored_status=$?
case $vendored_status in
0) ;;
77) echo "SKIPPED: vendored-crate check (crates.io unreachable); the rest of the suite runs" ;;
*) exit "$vendored_status" ;;
esac

echo "== rustfmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --all-targets -- -D warnings
echo "== tests"
test_log=$(mktemp)
trap 'rm -f "$test_log"' EXIT
cargo test --all-targets -- --test-threads=2 2>&1 | tee "$test_log"

# The ARM release binary, its ABI layout test and a smoke run under qemu,
# for aarch64 by default; STREAMING_CROSS_TARGETS="aarch64-unknown-linux-gnu
# armv7-unknown-linux-gnueabihf" adds 32-bit ARM (about as long again).
# Exit 77 means the toolchain could not be installed: the core suite above
# has run, so that is reported loudly and not fatal.
if [ "${STREAMING_SKIP_CROSS:-0}" = 1 ]; then
    echo "SKIPPED: cross step (STREAMING_SKIP_CROSS=1)"
else
    for cross_target in ${STREAMING_CROSS_TARGETS:-aarch64-unknown-linux-gnu}; do
        echo "== cross: $cross_target under qemu (scripts/cross-build.sh)"
        cross_start=$SECONDS
        cross_status=0
        bash scripts/cross-build.sh "$cross_target" --test --smoke || cross_status=$?
        echo "== cross step $cross_target took $((SECONDS - cross_start)) s"
        case $cross_status in
        0) ;;
        77) echo "SKIPPED: cross step $cross_target: toolchain not installable here (reason above); the core suite ran" ;;
        *) exit "$cross_status" ;;
        esac
    done
fi

# One closing line for the whole suite (the cross step prints after cargo's).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$test_log"
