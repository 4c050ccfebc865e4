#!/usr/bin/env python3
"""A small RTSP server for tests: serves an Annex-B clip in a loop.

Uses GStreamer's RTSP server (gst-rtsp-server 1.22 through python3-gi) on
127.0.0.1. Each client session gets its own media (not shared): the clip's
access units are pushed through `appsrc` from the clip's first access unit,
one per 1/fps seconds of wall time, with PTS = n/fps continuing across
loops, so RTP timestamps never jump and the exact bytes sent are known.
Pushing starts when the media is made (DESCRIBE); the server holds the
stream until PLAY, so a client gets access unit 0 first and the ones queued
meanwhile in a short burst.

Prints `listening rtsp://127.0.0.1:PORT/PATH` on stdout (flushed) once the
socket is bound. Exits 0 on SIGTERM/SIGINT.

Modes (see --help): basic/digest auth, SDP without sprop-parameter-sets
(parameter sets only in band), clip without in-band parameter sets (only in
the SDP), an audio-only mount, stopping after N frames with the session
kept open, TCP-only or UDP-only transports, a short session timeout
(enforced), a fixed port for restarts.
"""

import argparse
import base64
import os
import signal
import sys
import threading
import time
import warnings

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

# NAL unit types.
H264_SLICE, H264_IDR, H264_SEI, H264_SPS, H264_PPS, H264_AUD = 1, 5, 6, 7, 8, 9
H265_VPS, H265_SPS, H265_PPS, H265_AUD, H265_PREFIX_SEI = 32, 33, 34, 35, 39


def split_nals(data):
    """(start_code_offset, payload_offset, end) for each NAL unit; trailing
    zero bytes before the next start code are not part of a NAL unit."""
    starts = []
    i = 0
    while True:
        j = data.find(b"\x00\x00\x01", i)
        if j < 0:
            break
        sc = j - 1 if j > 0 and data[j - 1] == 0 else j
        starts.append((sc, j + 3))
        i = j + 3
    nals = []
    for k, (sc, payload) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(data)
        while end > payload and data[end - 1] == 0:
            end -= 1
        if end > payload:
            nals.append((sc, payload, end))
    return nals


def nal_type(codec, first_byte):
    return (first_byte >> 1) & 0x3F if codec == "h265" else first_byte & 0x1F


def is_vcl(codec, t):
    return t < 32 if codec == "h265" else 1 <= t <= 5


def first_slice_of_picture(codec, data, payload):
    """first_mb_in_slice == 0 (H.264) / first_slice_segment_in_pic_flag (H.265):
    the first bit after the NAL header, which is 1 for ue(v) value 0."""
    hdr = 2 if codec == "h265" else 1
    return payload + hdr < len(data) and data[payload + hdr] & 0x80 != 0


def starts_access_unit(codec, t):
    """Non-VCL NAL units that begin a new access unit when they follow a slice."""
    if codec == "h265":
        return t in (H265_VPS, H265_SPS, H265_PPS, H265_AUD, H265_PREFIX_SEI) or 41 <= t <= 44 or 48 <= t <= 55
    return t in (H264_SEI, H264_SPS, H264_PPS, H264_AUD) or 14 <= t <= 18


def split_access_units(codec, data):
    """Groups a byte stream into access units: a new one starts at an
    AUD/parameter set/SEI after a slice, or at a slice that begins a
    picture after a slice. Each unit is the exact bytes of the file."""
    units = []
    start = None
    seen_slice = False
    for sc, payload, end in split_nals(data):
        t = nal_type(codec, data[payload])
        if is_vcl(codec, t):
            new = seen_slice and first_slice_of_picture(codec, data, payload)
            if start is not None and new:
                units.append((start, sc))
                start = None
            seen_slice = True
        elif starts_access_unit(codec, t) and seen_slice:
            units.append((start, sc))
            start = None
            seen_slice = False
        if start is None:
            start = sc
    if start is not None:
        units.append((start, len(data)))
    return [data[a:b] for a, b in units]


def strip_parameter_sets(codec, au):
    """The access unit without VPS/SPS/PPS NAL units."""
    drop = (H265_VPS, H265_SPS, H265_PPS) if codec == "h265" else (H264_SPS, H264_PPS)
    out = bytearray()
    for sc, payload, end in split_nals(au):
        if nal_type(codec, au[payload]) not in drop:
            out += au[sc:end]
    return bytes(out)


def parameter_sets(codec, au):
    """{nal_type: NAL unit bytes} of the access unit's VPS/SPS/PPS."""
    keep = (H265_VPS, H265_SPS, H265_PPS) if codec == "h265" else (H264_SPS, H264_PPS)
    found = {}
    for _sc, payload, end in split_nals(au):
        t = nal_type(codec, au[payload])
        if t in keep:
            found.setdefault(t, au[payload:end])
    return found


def sprop_fields(codec, params):
    """Caps fields for the SDP's fmtp (RFC 6184 / RFC 7798), base64."""
    b64 = lambda nal: base64.b64encode(nal).decode()  # noqa: E731
    if codec == "h265":
        return ",".join(
            f'{name}=(string)"{b64(params[t])}"'
            for name, t in (("sprop-vps", H265_VPS), ("sprop-sps", H265_SPS), ("sprop-pps", H265_PPS))
        )
    return f'sprop-parameter-sets=(string)"{b64(params[H264_SPS])},{b64(params[H264_PPS])}"'


class Feeder:
    """Pushes the clip into one media's appsrc in real time, from a thread."""

    def __init__(self, appsrc, aus, fps, stop_after):
        self.appsrc = appsrc
        self.aus = aus
        self.fps = fps
        self.duration = Gst.SECOND // fps
        self.period = 1.0 / fps
        self.stop_after = stop_after
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self):
        self.thread.start()

    def stop(self, *_args):
        self.stopped.set()

    def run(self):
        t0 = time.monotonic()
        n = 0
        while not self.stopped.is_set():
            if self.stop_after is not None and n >= self.stop_after:
                # Keep the session (and its TCP connection) open, send nothing.
                self.stopped.wait()
                return
            delay = t0 + n * self.period - time.monotonic()
            if delay > 0 and self.stopped.wait(delay):
                return
            buf = Gst.Buffer.new_wrapped(self.aus[n % len(self.aus)])
            # PTS n/fps, rounded up to the nanosecond so that the payloader's
            # 90 kHz conversion (which rounds down) gives exactly n*90000/fps:
            # no jump when the clip loops, no 2999/3001 jitter.
            buf.pts = -(-n * Gst.SECOND // self.fps)
            buf.dts = buf.pts
            buf.duration = self.duration
            ret = self.appsrc.emit("push-buffer", buf)
            if ret != Gst.FlowReturn.OK:
                return  # flushing / EOS: the media went away
            n += 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", help="Annex-B elementary stream (.h264/.h265)")
    p.add_argument("--codec", choices=["h264", "h265"], default="h264")
    p.add_argument("--path", default="cam", help="mount point name, without leading /")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--user")
    p.add_argument("--pass", dest="password")
    p.add_argument("--auth", choices=["basic", "digest"], default="basic")
    p.add_argument("--no-sprop", action="store_true", help="SDP without sprop-parameter-sets/sprop-vps/sps/pps")
    p.add_argument(
        "--no-inband-params",
        action="store_true",
        help="strip VPS/SPS/PPS from the clip: parameter sets only in the SDP (none at all with --no-sprop)",
    )
    p.add_argument("--no-video", action="store_true", help="mount with one PCMU audio stream only")
    p.add_argument("--stop-after-frames", type=int, help="stop sending after N frames, session kept open")
    p.add_argument("--protocols", choices=["tcp", "udp", "both"], default="both")
    p.add_argument("--session-timeout", type=int, help="session timeout in seconds announced in SETUP (default 60)")
    p.add_argument("--port", type=int, default=0, help="0: pick a free one")
    p.add_argument("--host", default="127.0.0.1")
    args = p.parse_args()
    if not args.no_video and not args.clip:
        p.error("--clip is required unless --no-video")

    Gst.init(None)
    # The RTSP server reads "pt" from the pay0 element; capssetter has none
    # (the payload type is in its caps instead).
    warnings.filterwarnings("ignore", message=".*has no property named 'pt'")

    aus = []
    if not args.no_video:
        with open(args.clip, "rb") as f:
            data = f.read()
        aus = split_access_units(args.codec, data)
        if not aus:
            p.error(f"no access units in {args.clip}")
        params = parameter_sets(args.codec, aus[0])
        if args.no_inband_params:
            if not params:
                p.error("--no-inband-params needs parameter sets in the clip's first access unit")
            aus = [strip_parameter_sets(args.codec, au) for au in aus]
        elif args.no_sprop and strip_parameter_sets(args.codec, aus[0]) == aus[0]:
            p.error("--no-sprop needs a clip with parameter sets in band (its first access unit has none)")

    pay = "rtph265pay" if args.codec == "h265" else "rtph264pay"
    enc = "H265" if args.codec == "h265" else "H264"
    caps = f"video/x-{args.codec},stream-format=byte-stream,alignment=au"
    if args.no_video:
        launch = (
            "( audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! "
            "audio/x-raw,rate=8000,channels=1 ! mulawenc ! rtppcmupay name=pay0 pt=0 )"
        )
    else:
        # config-interval=0 in every mode: the payloader sends exactly the
        # clip's NAL units (parameter sets where the clip has them, none
        # added). -1 would insert SPS/PPS in front of *each* IDR slice NAL of
        # a multi-slice picture (seen with 1.22), i.e. between two slices.
        launch = f'( appsrc name=src is-live=true format=time caps="{caps}" ! {pay} config-interval=0 pt=96'
        rtp_caps = f"application/x-rtp,media=video,clock-rate=90000,encoding-name={enc},payload=96"
        if args.codec == "h264":
            rtp_caps += ",packetization-mode=(string)1"
        if args.no_sprop:
            # The SDP is made from the payloader's caps, which carry the
            # sprop-* fields: capssetter replaces them with caps without.
            launch += f' ! capssetter name=pay0 replace=true caps="{rtp_caps}" )'
        elif args.no_inband_params:
            # The payloader learns parameter sets only from the stream, which
            # has none now: put the clip's into the caps (and so the SDP).
            launch += f" ! capssetter name=pay0 replace=true caps=\"{rtp_caps},{sprop_fields(args.codec, params)}\" )"
        else:
            launch = launch.replace(f"{pay} ", f"{pay} name=pay0 ", 1) + " )"

    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(False)
    factory.set_protocols(
        {
            "tcp": GstRtsp.RTSPLowerTrans.TCP,
            "udp": GstRtsp.RTSPLowerTrans.UDP,
            "both": GstRtsp.RTSPLowerTrans.TCP | GstRtsp.RTSPLowerTrans.UDP,
        }[args.protocols]
    )

    def on_media_configure(_factory, media):
        if args.no_video:
            return
        appsrc = media.get_element().get_by_name("src")
        feeder = Feeder(appsrc, aus, args.fps, args.stop_after_frames)
        media.connect("unprepared", feeder.stop)
        feeder.start()

    factory.connect("media-configure", on_media_configure)

    if args.user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", args.user)
        if args.auth == "digest":
            auth.add_digest(args.user, args.password or "", token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        else:
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password or ""), token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
        server.set_auth(auth)
        role = Gst.Structure.new_from_string(
            f"{args.user}, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
        )
        factory.add_role_from_structure(role)

    if args.session_timeout is not None:

        def on_session(_client, session):
            session.set_timeout(args.session_timeout)
            # No grace period (5 s by default) after the timeout.
            session.set_property("extra-timeout", 0)

        def on_client(_server, client):
            client.connect("new-session", on_session)

        server.connect("client-connected", on_client)
        # The server does not expire sessions by itself: do it every 0.5 s,
        # so that a client without keep-alives loses its session.
        pool = server.get_session_pool()
        GLib.timeout_add(500, lambda: pool.cleanup() >= 0)

    server.get_mount_points().add_factory("/" + args.path, factory)
    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        print(f"cannot bind {args.host}:{args.port}", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"listening rtsp://{args.host}:{server.get_bound_port()}/{args.path}", flush=True)
    loop.run()
    sys.stdout.flush()
    # Skip tearing down the media pipelines: the process ends here anyway.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
