#!/usr/bin/env bash
# Regenerates assets/demo.h265, the H.265 twin of assets/demo.h264: 6 s of
# 640x360 Main-profile H.265 (tier Main, level 3.1) at 30 fps, an IDR every
# 30 frames (closed GOP, no scene cuts), AUD on every frame, two slices per
# frame, no B-frames (zerolatency: WebRTC receivers expect no reordering),
# the same moving test pattern with a clock and frame counter.
#
# VPS/SPS/PPS appear once, in the first access unit. The camera-daemon
# contract only promises them "before IRAP pictures as the encoder emits
# them", and headers-once is the case the processor repairs
# (prepend_parameter_sets), so the demo exercises it. ffmpeg's libx265
# wrapper forces repeat-headers=1 for raw output (repeat-headers=0 yields a
# stream with no parameter sets at all), so the repeats are stripped
# afterwards: a VPS/SPS/PPS byte-identical to the previous one of its type is
# dropped, a changed one would be kept.
#
# Level 3.1 (level-id=93) is what Chrome and Safari offer by default.
# Needs ffmpeg with libx265 and drawtext, and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-assets/demo.h265}"
tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
ffmpeg -v error -y -f lavfi -i "testsrc=size=640x360:rate=30:duration=6" \
    -vf "drawtext=text='%{pts\:hms} frame %{n}':x=w-tw-16:y=h-th-12:fontsize=24:fontcolor=white:box=1:boxcolor=black@0.6" \
    -c:v libx265 -profile:v main -preset veryfast -tune zerolatency -pix_fmt yuv420p \
    -b:v 500k -maxrate 650k -bufsize 650k \
    -x265-params "log-level=error:level-idc=31:keyint=30:min-keyint=30:scenecut=0:open-gop=0:bframes=0:aud=1:slices=2" \
    -f hevc "$tmp"
python3 - "$tmp" "$out" <<'PY'
import re, sys
data = open(sys.argv[1], "rb").read()
starts = [m.start() for m in re.finditer(b"\x00\x00\x01", data)]
out, last = bytearray(), {}
for i, s in enumerate(starts):
    end = starts[i + 1] if i + 1 < len(starts) else len(data)
    begin = s - 1 if s > 0 and data[s - 1] == 0 else s  # 4-byte start code
    if i + 1 < len(starts) and data[end - 1] == 0:
        end -= 1  # the next NAL's 4-byte start code
    nal = data[s + 3:end]
    kind = (nal[0] >> 1) & 0x3F
    if kind in (32, 33, 34):  # VPS, SPS, PPS
        if last.get(kind) == nal:
            continue
        last[kind] = nal
    out += data[begin:end]
open(sys.argv[2], "wb").write(out)
PY
