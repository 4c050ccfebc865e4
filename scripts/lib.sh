# Shell helpers shared by scripts/test.sh and scripts/cross-build.sh.
# Source it: . scripts/lib.sh

# Runs a command up to 4 times: package mirrors are sometimes mid-sync.
retry() {
    local n
    for n in 1 2 3 4; do
        "$@" && return 0
        echo "retry $n/4 failed: $*" >&2
        sleep $((n * 10))
    done
    return 1
}

# Runs a command as root (directly when already root, else with sudo).
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
