"""Flask companion for streaming-server: recording control and the live view.

The board's Flask web app (usually on :8080) talks to the streamer (on :8081)
in two ways, and this module is both, ready to run or to mount:

* ``/api/recording/start`` (POST), ``/api/recording/stop`` (POST) and
  ``/api/recording/status`` (GET) are proxied to the streamer's ``/start``,
  ``/stop`` and ``/status``. The streamer's status code, JSON body and
  Content-Type pass through unchanged (a 409 stays a 409). When the streamer
  cannot be reached the answer is 502, when it does not answer in time 504,
  both as ``{"success": false, "error": "..."}``; a request never hangs.
* ``/`` is a page with the live view and record/stop buttons. The browser
  speaks WebRTC straight to the streamer (``POST /offer`` across origins, so
  the streamer's ``-cors-origin`` must name this app's origin); video never
  passes through Flask.

Run it standalone::

    STREAMER_URL=http://127.0.0.1:8081 python3 scripts/companion/app.py --port 8080

or mount the blueprint in an existing app::

    from app import recording_blueprint
    flask_app.register_blueprint(recording_blueprint(streamer_url="http://127.0.0.1:8081"))

Settings (arguments of ``create_app`` / ``recording_blueprint``, or the
environment for the standalone app):

``STREAMER_URL``         where Flask reaches the streamer (default http://127.0.0.1:8081)
``STREAMER_PUBLIC_URL``  where browsers reach it (default: this page's host, port 8081)
``STREAMER_TIMEOUT``     seconds to wait for an answer (default 10; /stop fsyncs)
``STREAMER_TOKEN_FILE``  the streamer's ``-auth-token-file``, when it requires one: the
                         token is added to proxied requests, and the page then sends its
                         WebRTC offer through ``/api/offer`` (the media still flows
                         straight from the streamer) so the token never reaches browsers
"""

from __future__ import annotations

import argparse
import os
import sys

import requests
from flask import Blueprint, Flask, Response, jsonify, render_template, request

DEFAULT_STREAMER_URL = "http://127.0.0.1:8081"
#: Seconds to open the TCP connection: the streamer is on the same board, so
#: anything slower means it is down or wedged.
CONNECT_TIMEOUT = 2.0
#: Seconds to wait for the answer; /stop answers after flush + fsync, which
#: on a slow SD card can take a few seconds.
DEFAULT_TIMEOUT = 10.0

# Streamer route for each companion route, with the method both use.
ROUTES = {
    "start": ("POST", "/start"),
    "stop": ("POST", "/stop"),
    "status": ("GET", "/status"),
}


def _error(status: int, message: str) -> Response:
    response = jsonify({"success": False, "error": message})
    response.status_code = status
    return response


#: Largest offer body forwarded (the streamer's own limit is similar).
MAX_OFFER_BYTES = 64 * 1024


def proxy(
    session: requests.Session,
    streamer_url: str,
    timeout: float,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Forwards one request and hands the streamer's answer back unchanged."""
    url = streamer_url.rstrip("/") + path
    try:
        upstream = session.request(
            method, url, data=body, headers=headers, timeout=(min(CONNECT_TIMEOUT, timeout), timeout)
        )
    except requests.Timeout:
        return _error(504, f"streamer at {streamer_url} did not answer {method} {path} within {timeout:g} s")
    except requests.ConnectionError as error:
        return _error(502, f"streamer at {streamer_url} is unreachable: {type(error).__name__}")
    except requests.RequestException as error:
        return _error(502, f"request to the streamer failed: {error}")
    content_type = upstream.headers.get("Content-Type", "application/json")
    return Response(upstream.content, status=upstream.status_code, content_type=content_type)


def recording_blueprint(
    streamer_url: str = DEFAULT_STREAMER_URL,
    public_streamer_url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    token: str | None = None,
) -> Blueprint:
    """The companion's routes, to register on any Flask app. ``token`` is the
    streamer's bearer token, if it requires one."""
    blueprint = Blueprint(
        "streaming_companion",
        __name__,
        template_folder=os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates"),
    )
    # One pooled session: keep-alive to the streamer, no proxy from the
    # environment (the streamer is local, a corporate proxy must not see it).
    session = requests.Session()
    session.trust_env = False
    auth = {"Authorization": f"Bearer {token}"} if token else {}

    def make_view(name: str, method: str, path: str):
        def view() -> Response:
            return proxy(session, streamer_url, timeout, method, path, headers=auth)

        view.__name__ = f"recording_{name}"
        return view

    for name, (method, path) in ROUTES.items():
        blueprint.add_url_rule(f"/api/recording/{name}", view_func=make_view(name, method, path), methods=[method])

    @blueprint.post("/api/offer")
    def offer() -> Response:
        # Signalling only, for a streamer that wants a token; the browser's
        # media still comes straight from the streamer.
        body = request.get_data(cache=False)
        if len(body) > MAX_OFFER_BYTES:
            return _error(413, f"offer larger than {MAX_OFFER_BYTES} bytes")
        headers = {"Content-Type": request.content_type or "application/json", **auth}
        return proxy(session, streamer_url, timeout, "POST", "/offer", body=body, headers=headers)

    @blueprint.get("/")
    def index() -> str:
        return render_template(
            "companion.html", public_streamer_url=public_streamer_url or "", signal_via_companion=bool(token)
        )

    return blueprint


def create_app(
    streamer_url: str | None = None,
    public_streamer_url: str | None = None,
    timeout: float | None = None,
) -> Flask:
    """A standalone companion app; unset arguments come from the environment."""
    token = None
    token_file = os.environ.get("STREAMER_TOKEN_FILE")
    if token_file:
        with open(token_file, encoding="utf-8") as f:
            token = f.read().strip()
    app = Flask(__name__)
    app.register_blueprint(
        recording_blueprint(
            streamer_url=streamer_url or os.environ.get("STREAMER_URL", DEFAULT_STREAMER_URL),
            public_streamer_url=public_streamer_url or os.environ.get("STREAMER_PUBLIC_URL"),
            timeout=timeout or float(os.environ.get("STREAMER_TIMEOUT", DEFAULT_TIMEOUT)),
            token=token,
        )
    )
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="streaming-server's Flask companion")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    parser.add_argument("--fd", type=int, help="serve on this already listening socket (for tests)")
    args = parser.parse_args(argv)

    from werkzeug.serving import make_server

    server = make_server(args.host, args.port, create_app(), threaded=True, fd=args.fd)
    host, port = server.socket.getsockname()[:2]
    # The same line format as the streamer, so scripts and tests find the port.
    print(f"listening: companion on {host}:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
