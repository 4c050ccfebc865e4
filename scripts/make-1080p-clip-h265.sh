#!/usr/bin/env bash
# Writes a 2 s 1920x1080 30 fps H.265 Main clip with large IRAPs (about
# 0.5-0.8 MB each: a static noise texture is expensive to intra-code and cheap
# to predict) for the packetizer tests. Not committed: the tests call this
# into their target directory when the file is missing.
# Usage: make-1080p-clip-h265.sh OUT.h265
set -euo pipefail
out="${1:?usage: $0 OUT.h265}"
ffmpeg -v error -y -f lavfi -i "testsrc2=size=1920x1080:rate=30:duration=2" \
    -vf "noise=alls=12:allf=u" \
    -c:v libx265 -profile:v main -preset ultrafast -pix_fmt yuv420p \
    -x265-params "log-level=error:keyint=30:min-keyint=30:scenecut=0:open-gop=0:bframes=0:aud=1:repeat-headers=1:crf=16" \
    -f hevc "$out.tmp"
mv "$out.tmp" "$out"
