#!/usr/bin/env bash
# Regenerates assets/demo.h264, the clip the built-in demo camera plays:
# 6 s of 640x360 constrained-baseline H.264 at 30 fps, an IDR every second,
# AUD on every frame, two slices per frame (x264's zerolatency threads), a
# moving test pattern with a clock and frame counter (bottom right, clear of
# the viewer page's overlay). Needs ffmpeg with libx264 and drawtext.
set -euo pipefail
cd "$(dirname "$0")/.."
ffmpeg -v error -y -f lavfi -i "testsrc=size=640x360:rate=30:duration=6" \
    -vf "drawtext=text='%{pts\:hms} frame %{n}':x=w-tw-16:y=h-th-12:fontsize=24:fontcolor=white:box=1:boxcolor=black@0.6" \
    -c:v libx264 -profile:v baseline -level 3.1 -preset veryfast -tune zerolatency \
    -g 30 -keyint_min 30 -sc_threshold 0 -b:v 600k -maxrate 800k -bufsize 800k -pix_fmt yuv420p \
    -x264-params aud=1 "${1:-assets/demo.h264}"
