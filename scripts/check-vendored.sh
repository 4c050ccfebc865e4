#!/usr/bin/env bash
# Checks that every vendored crate (vendor/NAME) is exactly its crates.io
# release plus the patch recorded beside it (vendor/NAME/streaming-server.patch),
# so drift is visible: the release is downloaded (or taken from cargo's
# cache), the files the copy keeps (Cargo.toml, README.md, LICENSE-*, src/)
# are patched, and the result must equal vendor/NAME byte for byte.
# Then the same for the JavaScript the server serves from its binary:
# assets/hls.js/ must hold exactly the npm release of hls.js named by its
# package.json (dist/hls.light.min.js, LICENSE, package.json), fetched with
# `npm pack`.
#
# Exit status: 0 equal, 1 different (the diff is printed), 77 a release
# could not be downloaded (a loud SKIPPED line says so).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
. scripts/lib.sh # retry

status=0
for dir in vendor/*/; do
    dir=${dir%/}
    name=$(sed -n 's/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -1)
    version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -1)
    patch_file="$dir/streaming-server.patch"
    [ -f "$patch_file" ] || { echo "FAIL: $dir has no streaming-server.patch"; status=1; continue; }
    cache="$root/target/vendor-check"
    mkdir -p "$cache"
    crate="$cache/$name-$version.crate"
    if [ ! -s "$crate" ]; then
        cached=$(ls ~/.cargo/registry/cache/*/"$name-$version.crate" 2>/dev/null | head -1 || true)
        if [ -n "$cached" ]; then
            cp "$cached" "$crate"
        elif ! retry curl -sSfL -o "$crate" "https://static.crates.io/crates/$name/$name-$version.crate"; then
            rm -f "$crate"
            echo "SKIPPED: vendored-crate check for $name $version: cannot download it from crates.io"
            exit 77
        fi
    fi
    work=$(mktemp -d)
    tar xzf "$crate" -C "$work"
    mkdir "$work/expected"
    (cd "$work/$name-$version" && cp -r Cargo.toml README.md LICENSE-* src "$work/expected/")
    (cd "$work/expected" && patch -s -p1 <"$root/$patch_file")
    if diff -r -x PATCHES.md -x streaming-server.patch "$work/expected" "$dir" >"$work/diff"; then
        echo "vendored $name $version = crates.io release + $patch_file"
    else
        echo "FAIL: vendored $name $version differs from crates.io + $patch_file:"
        cat "$work/diff"
        status=1
    fi
    rm -rf "$work"
done

# hls.js, as npm publishes it.
hls_dir=assets/hls.js
hls_version=$(sed -n 's/^  "version": "\([^"]*\)".*/\1/p' "$hls_dir/package.json" | head -1)
[ -n "$hls_version" ] || { echo "FAIL: no version in $hls_dir/package.json"; exit 1; }
cache="$root/target/vendor-check"
mkdir -p "$cache"
tarball="$cache/hls.js-$hls_version.tgz"
if [ ! -s "$tarball" ]; then
    if ! (cd "$cache" && retry npm pack --silent "hls.js@$hls_version" >/dev/null 2>&1) || [ ! -s "$tarball" ]; then
        rm -f "$tarball"
        echo "SKIPPED: vendored hls.js $hls_version check: cannot fetch it from npm"
        exit 77
    fi
fi
work=$(mktemp -d)
tar xzf "$tarball" -C "$work"
for pair in dist/hls.light.min.js:hls.light.min.js LICENSE:LICENSE package.json:package.json; do
    if ! cmp -s "$work/package/${pair%%:*}" "$hls_dir/${pair##*:}"; then
        echo "FAIL: $hls_dir/${pair##*:} differs from hls.js $hls_version's ${pair%%:*} on npm"
        status=1
    fi
done
[ "$status" = 0 ] && echo "vendored hls.js $hls_version = npm release (dist/hls.light.min.js, LICENSE, package.json)"
rm -rf "$work"
exit $status
