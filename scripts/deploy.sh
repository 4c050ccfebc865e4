#!/usr/bin/env bash
# Deploys streaming-server to a board over ssh: copies the cross-built
# binary and the systemd unit, creates the service user on first install,
# reloads systemd and restarts the service.
#
#   scripts/deploy.sh [--dry-run] [--target TARGET | --binary PATH] BOARD
#
# BOARD    ssh destination: pi@camera.local, or a Host from ~/.ssh/config.
#          The ssh user needs sudo on the board.
# --target aarch64-unknown-linux-gnu (default) or armv7-unknown-linux-gnueabihf:
#          deploys target/cross/TARGET/release/streaming-server
#          (build it with scripts/cross-build.sh TARGET).
# --binary deploy this file instead.
# --dry-run  print the commands instead of running them.
# SSH and SCP in the environment replace the ssh/scp commands (e.g.
# SSH="ssh -p 2222").
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
dry_run=0 target=aarch64-unknown-linux-gnu binary="" board=""
while [ $# -gt 0 ]; do
    case "$1" in
    --dry-run) dry_run=1 ;;
    --target) target=${2:?--target needs a value}; shift ;;
    --binary) binary=${2:?--binary needs a value}; shift ;;
    -h | --help) usage 0 ;;
    -*) echo "unknown option: $1" >&2; usage ;;
    *) [ -z "$board" ] || usage; board=$1 ;;
    esac
    shift
done
[ -n "$board" ] || usage
binary=${binary:-target/cross/$target/release/streaming-server}
unit=systemd/streaming-server.service
read -r -a ssh <<<"${SSH:-ssh}"
read -r -a scp <<<"${SCP:-scp}"

[ -f "$binary" ] || { echo "no binary at $binary (run scripts/cross-build.sh $target)" >&2; exit 1; }
[ -f "$unit" ] || { echo "no unit at $unit" >&2; exit 1; }

# ELF e_machine (2 bytes at offset 18): catch a PC binary on its way to a board.
machine=$(od -An -tx1 -j18 -N2 "$binary" | tr -d ' \n')
case "$machine" in
b700) arch="aarch64" ;;
2800) arch="32-bit ARM" ;;
3e00) arch="x86-64" ;;
*) arch="unknown (e_machine $machine)" ;;
esac
echo "deploying $binary ($arch, $(stat -c %s "$binary") bytes) and $unit to $board"
case "$arch" in
aarch64 | "32-bit ARM") ;;
*)
    if [ $dry_run = 1 ]; then
        echo "warning: $binary is $arch, not an ARM binary" >&2
    else
        echo "refusing to deploy a $arch binary to a board (use --binary for an ARM one)" >&2
        exit 1
    fi
    ;;
esac

# Shell-quotes one word for the dry-run listing (readable, and pastable).
quote() {
    case "$1" in
    *[!A-Za-z0-9_./:@=+-]* | "") printf "'%s'" "${1//\'/\'\\\'\'}" ;;
    *) printf '%s' "$1" ;;
    esac
}
run() {
    if [ $dry_run = 1 ]; then
        local word line=""
        for word in "$@"; do line+="$(quote "$word") "; done
        echo "${line% }"
    else
        "$@"
    fi
}

# The remote script, run with sudo: idempotent, and it stops at the first
# failure. install(1) writes a new inode, so the running binary is untouched
# until the restart.
remote='set -e
id -u streaming-server >/dev/null 2>&1 ||
    useradd --system --user-group --no-create-home --home-dir /var/lib/streaming-server --shell /usr/sbin/nologin streaming-server
install -m 0755 /tmp/streaming-server.new /usr/local/bin/streaming-server
install -m 0644 /tmp/streaming-server.service.new /etc/systemd/system/streaming-server.service
rm -f /tmp/streaming-server.new /tmp/streaming-server.service.new
systemctl daemon-reload
systemctl enable streaming-server.service
systemctl restart streaming-server.service
systemctl is-active streaming-server.service'

run "${scp[@]}" "$binary" "$board:/tmp/streaming-server.new"
run "${scp[@]}" "$unit" "$board:/tmp/streaming-server.service.new"
# The script goes over stdin (sudo needs no password prompt on Raspberry Pi
# OS; elsewhere deploy as root@BOARD or allow it in sudoers).
if [ $dry_run = 1 ]; then
    echo "$(run "${ssh[@]}" "$board" "sudo sh -s") <<'EOF'"
    echo "$remote"
    echo "EOF"
else
    printf '%s\n' "$remote" | "${ssh[@]}" "$board" "sudo sh -s"
fi
run "${ssh[@]}" "$board" "systemctl status --no-pager --lines=5 streaming-server.service"
[ $dry_run = 1 ] || echo "deployed: http://${board#*@}:8081/"
