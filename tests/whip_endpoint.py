#!/usr/bin/env python3
"""A WHIP endpoint (RFC 9725) on aiortc, an independent WebRTC stack, for
tests/publish_whip.rs: it answers WHIP offers, receives the video track and
reports what arrived.

    whip_endpoint.py --port 0 --record-dir DIR [--token T] [--host 127.0.0.1]
                     [--drop-every N] [--no-decode] [--tls]

Prints "listening on HOST:PORT" once it serves. Routes:

- POST /whip: an SDP offer (Content-Type application/sdp) -> 201 with the
  answer and Location /whip/session/<id>; 401 without the bearer token
  (when --token is given), 415 for another content type.
- POST /moved: 307 to /whip (a load balancer sending the client on).
- DELETE /whip/session/<id>: ends that session -> 200; 404 if unknown.
- POST /whip/session/<id>/pli: aiortc sends the sender a PLI, as an SFU does
  when a subscriber needs a keyframe.
- GET /stats: JSON, per session: id, connection state, RTP packets and bytes
  received, packets dropped on purpose, frames decoded by aiortc (PyAV),
  whether it was deleted.

With --drop-every N the first arrival of every Nth RTP packet (by sequence
number) is dropped as it comes off the ICE transport, before SRTP, as a lossy
link would: aiortc's NACK asks for it again and the retransmission is what
gets recorded.

Every RTP packet of a session's video track, as aiortc hands it to its
depacketizer (after SRTP), is appended to DIR/<id>.rtp as records of
sequence number (u16), marker (u8), payload length (u32), big-endian, then
the payload: the test checks them byte for byte against the clip. ICE runs
on --host only (aioice leaves loopback out by default).
"""

import argparse
import asyncio
import datetime
import ipaddress
import os
import ssl
import struct
import sys
import uuid

import aioice.ice
import aiortc.codecs.h264
from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtcrtpreceiver import RTCRtpReceiver

SESSIONS = {}

_handle_rtp_packet = RTCRtpReceiver._handle_rtp_packet


async def _recording_handle_rtp_packet(self, packet, arrival_time_ms):
    session = getattr(self, "_whip_session", None)
    if session is not None:
        session["ssrc"] = packet.ssrc
        session["packets"] += 1
        session["bytes"] += len(packet.payload)
        session["record"].write(
            struct.pack(">HBI", packet.sequence_number, int(packet.marker), len(packet.payload))
        )
        session["record"].write(packet.payload)
        session["record"].flush()
    await _handle_rtp_packet(self, packet, arrival_time_ms)


RTCRtpReceiver._handle_rtp_packet = _recording_handle_rtp_packet


def make_lossy(ice_transport, session):
    """Drops the first arrival of every Nth SRTP packet before aiortc reads it."""
    receive = ice_transport._recv

    async def lossy_receive():
        while True:
            data = await receive()
            every = session["drop_every"]
            # SRTP (not SRTCP): version 2, payload type byte outside 192-223.
            if every and len(data) >= 4 and 127 < data[0] < 192 and not 192 <= data[1] <= 223:
                seq = int.from_bytes(data[2:4], "big")
                if seq % every == 0 and seq not in session["dropped_seqs"]:
                    session["dropped_seqs"].add(seq)
                    session["dropped"] += 1
                    continue
            return data

    ice_transport._recv = lossy_receive


def authorized(request, token):
    return token is None or request.headers.get("Authorization") == f"Bearer {token}"


async def decode(session, track):
    """Counts the frames aiortc decodes (PyAV's H.264 decoder)."""
    try:
        while True:
            await track.recv()
            session["frames_decoded"] += 1
    except Exception:  # the track ended
        pass


async def post_whip(request):
    args = request.app["args"]
    if not authorized(request, args.token):
        return web.Response(status=401, text="missing or wrong bearer token")
    if request.content_type != "application/sdp":
        return web.Response(status=415, text="WHIP offers are application/sdp")
    offer = await request.text()
    session_id = uuid.uuid4().hex
    pc = RTCPeerConnection()
    session = {
        "id": session_id,
        "pc": pc,
        "packets": 0,
        "bytes": 0,
        "frames_decoded": 0,
        "deleted": False,
        "drop_every": args.drop_every,
        "dropped_seqs": set(),
        "dropped": 0,
        "ssrc": None,
        "receiver": None,
        "record": open(os.path.join(args.record_dir, f"{session_id}.rtp"), "wb"),
        "tasks": [],
    }
    SESSIONS[session_id] = session

    @pc.on("track")
    def on_track(track):
        for receiver in pc.getReceivers():
            if receiver.track is track:
                receiver._whip_session = session
                session["receiver"] = receiver
                make_lossy(receiver.transport.transport, session)
        session["tasks"].append(asyncio.ensure_future(decode(session, track)))

    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    return web.Response(
        status=201,
        content_type="application/sdp",
        text=pc.localDescription.sdp,
        headers={"Location": f"/whip/session/{session_id}"},
    )


async def moved(request):
    return web.Response(status=307, headers={"Location": "/whip"})


async def delete_session(request):
    if not authorized(request, request.app["args"].token):
        return web.Response(status=401)
    session = SESSIONS.get(request.match_info["id"])
    if session is None or session["deleted"]:
        return web.Response(status=404)
    session["deleted"] = True
    await session["pc"].close()
    return web.Response(status=200)


async def send_pli(request):
    session = SESSIONS.get(request.match_info["id"])
    if session is None or session["receiver"] is None or session["ssrc"] is None:
        return web.Response(status=404)
    await session["receiver"]._send_rtcp_pli(session["ssrc"])
    return web.Response(status=200)


async def stats(request):
    out = []
    for session in SESSIONS.values():
        out.append(
            {
                "id": session["id"],
                "state": session["pc"].connectionState,
                "packets": session["packets"],
                "bytes": session["bytes"],
                "dropped": session["dropped"],
                "frames_decoded": session["frames_decoded"],
                "deleted": session["deleted"],
            }
        )
    return web.json_response({"sessions": out})


def self_signed_context(directory):
    """An SSL context with a fresh self-signed certificate for 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "whip-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token")
    parser.add_argument("--record-dir", required=True)
    parser.add_argument("--drop-every", type=int, default=0)
    parser.add_argument("--no-decode", action="store_true")
    parser.add_argument("--tls", action="store_true")
    args = parser.parse_args()
    host = args.host
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [host]
    if args.no_decode:
        aiortc.codecs.h264.H264Decoder.decode = lambda self, encoded_frame: []

    app = web.Application()
    app["args"] = args
    app.router.add_post("/whip", post_whip)
    app.router.add_post("/moved", moved)
    app.router.add_delete("/whip/session/{id}", delete_session)
    app.router.add_post("/whip/session/{id}/pli", send_pli)
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app)
    await runner.setup()
    context = self_signed_context(args.record_dir) if args.tls else None
    site = web.TCPSite(runner, args.host, args.port, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"listening on {args.host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        for session in SESSIONS.values():
            await session["pc"].close()
        await runner.cleanup()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
