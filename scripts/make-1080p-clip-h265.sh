#!/usr/bin/env bash
# Writes a 2 s 1920x1080 30 fps H.265 Main clip with large IRAPs: a noise
# texture is expensive to intra-code and cheap to predict. CRF 16 (the
# default) gives IRAPs of 0.5-0.8 MB at ~29 Mbit/s for the packetizer tests;
# CRF 24 a camera-like stream, ~10 Mbit/s with IRAPs of 110-270 KB, for the
# end-to-end tests and benchmarks. Not committed: the tests call this into
# their target directory when the file is missing.
# Usage: make-1080p-clip-h265.sh OUT.h265 [CRF]
set -euo pipefail
out="${1:?usage: $0 OUT.h265 [CRF]}"
crf="${2:-16}"
ffmpeg -v error -y -f lavfi -i "testsrc2=size=1920x1080:rate=30:duration=2" \
    -vf "noise=alls=12:allf=u" \
    -c:v libx265 -profile:v main -preset ultrafast -pix_fmt yuv420p \
    -x265-params "log-level=error:keyint=30:min-keyint=30:scenecut=0:open-gop=0:bframes=0:aud=1:repeat-headers=1:crf=$crf" \
    -f hevc "$out.tmp"
mv "$out.tmp" "$out"
