#!/usr/bin/env bash
# Cross-compiles streaming-server for an ARM board on a plain Debian 12 PC
# (no Docker, no rustup targets), and optionally proves the result under qemu.
#
#   scripts/cross-build.sh TARGET [--test] [--smoke] [--time-bits native|64]
#
# TARGET: aarch64-unknown-linux-gnu (64-bit Raspberry Pi OS, Debian arm64)
#         armv7-unknown-linux-gnueabihf (32-bit Raspberry Pi OS, Debian armhf)
# --test   run tests/abi_layout.rs for TARGET under qemu: the Rust layout of
#          the camera segment against the target C compiler's offsetof, for
#          native time_t and -D_TIME_BITS=64 -D_FILE_OFFSET_BITS=64.
# --smoke  run the ARM binary under qemu with its own fake camera: /metrics
#          shows frames flowing, a recording made through /start and /stop
#          decodes with ffprobe. On armv7 both time_t layouts are run.
#
# Output: target/cross/TARGET/release/streaming-server (size printed). With
# --test it is built together with the test (one build instead of two), with
# the few extra dependency features the tests enable; build without --test
# for the exact binary to ship.
# How: Debian's rustc-web/cargo-web (the same release for the host and the
# target), the target's std unpacked from Debian's libstd-rust-web-dev .deb
# into /usr/lib/rustlib/TARGET (not installed as a multiarch package: that
# pulls libc6:arm64, whose loader qemu then mixes with the cross sysroot's),
# gcc-<triple> to link and to compile ring's and our C, qemu-user to run.
#
# Exit status: 0 done, 1 failed, 77 the toolchain could not be installed
# (no apt, no network, mirror broken); a "SKIPPED: <reason>" line says why.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
target=${1:-}
[ -n "$target" ] || usage
shift
run_test=0 run_smoke=0
while [ $# -gt 0 ]; do
    case "$1" in
    --test) run_test=1 ;;
    --smoke) run_smoke=1 ;;
    -h | --help) usage 0 ;;
    *) echo "unknown option: $1" >&2; usage ;;
    esac
    shift
done

case "$target" in
aarch64-unknown-linux-gnu) deb_arch=arm64 gnu=aarch64-linux-gnu qemu=qemu-aarch64 ;;
armv7-unknown-linux-gnueabihf) deb_arch=armhf gnu=arm-linux-gnueabihf qemu=qemu-arm ;;
*) echo "unsupported target $target (aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf)" >&2; exit 2 ;;
esac
sysroot=/usr/$gnu
upper=$(echo "$target" | tr 'a-z-' 'A-Z_')
lower=$(echo "$target" | tr '-' '_')

skip() { echo "SKIPPED: cross $target: $*"; exit 77; }
. scripts/lib.sh # retry, as_root
apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "== installing: ${missing[*]}"
    retry as_root apt-get update -q || return 1
    retry as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}
phase_start=$SECONDS
phase() { echo "== [$((SECONDS - phase_start)) s] $*"; }

command -v apt-get >/dev/null || skip "no apt-get (this script needs Debian 12 or similar)"
phase "toolchain for $target"
apt_install rustc-web cargo-web "gcc-$gnu" "libc6-dev-$deb_arch-cross" qemu-user ||
    skip "apt could not install rustc-web cargo-web gcc-$gnu libc6-dev-$deb_arch-cross qemu-user"

rustc=/usr/bin/rustc
std_works() { # the unpacked std must be from exactly this rustc's build
    # Output into a scratch dir: rustc replaces its -o file by renaming, and
    # run as root with -o /dev/null that turns /dev/null into a plain file.
    local scratch status=0
    scratch=$(mktemp -d)
    echo 'pub fn f() -> String { std::env::args().collect() }' |
        "$rustc" --target "$target" --crate-type lib --emit metadata --out-dir "$scratch" - 2>"$scratch/err" || status=$?
    rm -rf "$scratch"
    return $status
}
if ! std_works; then
    version=$(dpkg-query -W -f='${Version}' rustc-web)
    echo "== unpacking libstd-rust-web-dev:$deb_arch=$version into /usr/lib/rustlib/$target"
    added_arch=0
    if ! dpkg --print-foreign-architectures | grep -qx "$deb_arch"; then
        as_root dpkg --add-architecture "$deb_arch"
        added_arch=1
    fi
    debs=$(mktemp -d)
    fetched=0
    # apt-get download only fetches; nothing of $deb_arch gets installed.
    if retry as_root apt-get update -q &&
        (cd "$debs" && retry as_root apt-get download -q "libstd-rust-web-dev:$deb_arch=$version"); then
        fetched=1
    fi
    if [ $added_arch = 1 ]; then # leave the machine's apt as it was
        as_root dpkg --remove-architecture "$deb_arch"
        as_root apt-get update -q >/dev/null 2>&1 || true
    fi
    [ $fetched = 1 ] || skip "could not download libstd-rust-web-dev:$deb_arch=$version"
    dpkg-deb -x "$debs"/libstd-rust-web-dev_*.deb "$debs/x"
    as_root rm -rf "/usr/lib/rustlib/$target"
    as_root cp -a "$debs/x/usr/lib/rustlib/$target" /usr/lib/rustlib/
    rm -rf "$debs"
    std_works || { echo "the unpacked std for $target does not work with $rustc" >&2; exit 1; }
fi

# Cargo from rustc-web with its rustc (rustup's cargo/rustc come first on
# PATH and have no std for these targets).
export RUSTC=$rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_DIR="$root/target/cross"
export "CARGO_TARGET_${upper}_LINKER=$gnu-gcc"
export "CC_${lower}=$gnu-gcc" "AR_${lower}=$gnu-ar"
# -E LD_LIBRARY_PATH keeps the guest on the cross sysroot's libraries even
# where multiarch libc6:$deb_arch is installed (mixed loaders hang threads).
runner="$qemu -L $sysroot -E LD_LIBRARY_PATH=$sysroot/lib"
export "CARGO_TARGET_${upper}_RUNNER=$runner"
cargo=(nice -n 19 /usr/bin/cargo)

bin="$CARGO_TARGET_DIR/$target/release/streaming-server"
if [ $run_test = 1 ]; then
    # One build for both: the integration test makes cargo build the binary
    # too, in the same release profile. (A separate `cargo build` would
    # compile every dependency again, since dev-dependencies add features.)
    # The test runs under qemu right after the build, in the same command
    # (two commands would rebuild whenever the tree changed in between).
    phase "release build and ABI layout test under $qemu ($("$rustc" --version))"
    "${cargo[@]}" test --locked --release --target "$target" --test abi_layout -- --nocapture
    note=" (with dev-dependency features, as built for the tests)"
else
    phase "release build ($("$rustc" --version))"
    "${cargo[@]}" build --locked --release --target "$target" --bin streaming-server
    note=""
fi
size=$(stat -c %s "$bin")
glibc=$("$gnu-objdump" -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
phase "built $bin"
echo "binary size $target: $size bytes ($((size / 1024)) KiB)$note, needs ${glibc/_/ >= }"

if [ $run_smoke = 1 ]; then
    apt_install ffmpeg || skip "apt could not install ffmpeg (ffprobe)"
    tmp=$(mktemp -d)
    pids=()
    cleanup() {
        local p
        for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
        wait 2>/dev/null || true
        rm -rf "$tmp"
    }
    trap cleanup EXIT
    json() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {"d": d}))' "$1"; }
    wait_line() { # FILE NEEDLE SECONDS
        local i
        for ((i = 0; i < $3 * 10; i++)); do
            grep -m1 -- "$2" "$1" 2>/dev/null && return 0
            sleep 0.1
        done
        echo "no '$2' in $1 after $3 s:" >&2
        cat "$1" >&2
        return 1
    }
    frames_read() { curl -sf "http://$metrics/metrics" | awk '$1 == "streaming_frames_read_total" {print $2}'; }
    smoke() { # TIME_BITS
        local bits=$1 shm="/ss_cross_smoke_$$_$1" server camera
        phase "smoke: $target binary under $qemu, -time-bits $bits"
        # shellcheck disable=SC2086 # $runner is a command line
        $runner "$bin" fake-camera -shm "$shm" -time-bits "$bits" 2>"$tmp/camera-$bits.log" &
        camera=$!
        pids+=("$camera")
        wait_line "$tmp/camera-$bits.log" "fake camera: writing" 30 >/dev/null
        # shellcheck disable=SC2086
        $runner "$bin" -shm "$shm" -time-bits "$bits" -http 127.0.0.1:0 -metrics 127.0.0.1:0 -pprof "" \
            -record-path "$tmp/rec-$bits" 2>"$tmp/server-$bits.log" &
        server=$!
        pids+=("$server")
        http=$(wait_line "$tmp/server-$bits.log" "listening: http on " 60 | sed 's/.*listening: http on \([^ ]*\).*/\1/')
        metrics=$(wait_line "$tmp/server-$bits.log" "listening: metrics on " 60 |
            sed 's/.*listening: metrics on \([^ ]*\).*/\1/')
        local first second i
        for ((i = 0; i < 100; i++)); do
            first=$(frames_read || true)
            [ "${first:-0}" -gt 0 ] 2>/dev/null && break
            sleep 0.2
        done
        sleep 1
        second=$(frames_read)
        echo "frames read: $first, one second later $second"
        [ "${second:-0}" -gt "${first:-0}" ] || { echo "frames are not flowing" >&2; cat "$tmp/server-$bits.log" >&2; return 1; }
        echo "health: $(curl -sf "http://$http/health")"
        curl -sf -X POST "http://$http/start" | json 'd["success"]' | grep -qx True
        sleep 3
        local stop file
        stop=$(curl -sf -X POST "http://$http/stop")
        file="$tmp/rec-$bits/$(echo "$stop" | json 'd["status"]["filename"]')"
        local probe
        probe=$(ffprobe -v error -count_frames -select_streams v:0 \
            -show_entries stream=codec_name,width,height,nb_read_frames -of csv=p=0 "$file")
        echo "recording $(basename "$file"): $(stat -c %s "$file") bytes, ffprobe: $probe"
        case "$probe" in
        h264,640,360,*) [ "${probe##*,}" -ge 30 ] || { echo "too few frames decoded" >&2; return 1; } ;;
        *) echo "recording does not decode as 640x360 H.264" >&2; return 1 ;;
        esac
        kill -TERM "$server"
        local status=0
        wait "$server" || status=$?
        [ $status = 0 ] || { echo "server exited with $status after SIGTERM" >&2; cat "$tmp/server-$bits.log" >&2; return 1; }
        kill -TERM "$camera"
        wait "$camera" || true
        pids=()
    }
    smoke native
    if [ "$target" = armv7-unknown-linux-gnueabihf ]; then
        smoke 64
        # The wrong layout is refused with the message docs/deploying.md
        # tells people to look for, not misread.
        phase "smoke: a 64-bit time_t camera read with the default layout is refused"
        shm="/ss_cross_smoke_$$_mismatch"
        # shellcheck disable=SC2086
        $runner "$bin" fake-camera -shm "$shm" -time-bits 64 2>"$tmp/camera-mismatch.log" &
        pids+=($!)
        wait_line "$tmp/camera-mismatch.log" "fake camera: writing" 30 >/dev/null
        # shellcheck disable=SC2086
        $runner "$bin" -shm "$shm" -http 127.0.0.1:0 -metrics "" -pprof "" -record-path "$tmp/rec-mismatch" \
            2>"$tmp/server-mismatch.log" &
        pids+=($!)
        wait_line "$tmp/server-mismatch.log" "see -time-bits" 30
    fi
fi
phase "cross $target done"
