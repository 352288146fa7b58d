"""The dashboard's routes on the router's REST app (aiohttp).

  GET /dashboard                  the page (static HTML; it builds itself from the JSON)
  GET /dashboard/static/<file>    its script and style sheet (package data, nothing external)
  GET /dashboard/api/snapshot     the JSON document (`router.dashboard.snapshot`), for scripts
  GET /dashboard/api/events       server-sent events: `event: snapshot` with the same document,
                                  at once and after every change of the watched fabric

Every response carries a Content-Security-Policy that allows scripts, styles and
connections from this origin only and no inline script, so a model name that reached the
page as markup could not run even if the page had a bug (it builds its DOM with
`textContent`). 503 with `{"error": ...}` while the router has not read the fabric yet.

`attach_dashboard` ties the dashboard to the app's life: started by the runner's setup,
closed on its shutdown, which also ends open event streams so the server stops at once.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from mesh.etcd.errors import StoreUnavailable
from mesh.state.fabric_view import FabricView
from router.dashboard.service import Dashboard, DashboardClosed, StatusSource
from router.traffic import TrafficCounters

__all__ = ["CONTENT_SECURITY_POLICY", "DASHBOARD_PATH", "attach_dashboard"]

DASHBOARD_PATH = "/dashboard"
STATIC = Path(__file__).with_name("static")
#: The only files served from STATIC, with their types (no directory listing, no traversal).
_FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
#: A comment line this often keeps proxies from closing an idle stream and finds dead clients.
KEEPALIVE_S = 15.0


def attach_dashboard(app: web.Application, view: FabricView, source: StatusSource, traffic: TrafficCounters, *,
                     sample_s: float, min_push_s: float = 0.25) -> Dashboard:
    """Add the dashboard's routes to `app` (before it is set up) and return the dashboard."""
    dashboard = Dashboard(view, source, traffic, sample_s=sample_s, min_push_s=min_push_s)
    page = (STATIC / "index.html").read_bytes()
    files = {name: (STATIC / name).read_bytes() for name in _FILES}

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8", headers=_HEADERS)

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in files:
            raise web.HTTPNotFound(text=f"no such dashboard file: {name}", headers=_HEADERS)
        return web.Response(body=files[name], content_type=_FILES[name], charset="utf-8", headers=_HEADERS)

    async def snapshot(request: web.Request) -> web.Response:
        try:
            _, body = dashboard.current()
        except StoreUnavailable as error:
            return web.json_response({"error": str(error)}, status=503, headers=_HEADERS)
        return web.Response(body=body, content_type="application/json", headers=_HEADERS)

    async def events(request: web.Request) -> web.StreamResponse:
        if not view.is_ready():  # the page retries the stream itself (EventSource gives up on a 503)
            return web.json_response({"error": "this router has not read the fabric from etcd yet"},
                                     status=503, headers=_HEADERS)
        response = web.StreamResponse(headers={**_HEADERS, "Content-Type": "text/event-stream",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n")  # EventSource reconnects after 2 s if the router goes
        version, body = dashboard.current()
        try:
            while True:
                await response.write(b"event: snapshot\ndata: " + body + b"\n\n")
                while (newer := await dashboard.next_document(version, KEEPALIVE_S)) is None:
                    await response.write(b": keep-alive\n\n")
                version, body = newer
        except (DashboardClosed, ConnectionResetError):
            pass
        return response

    async def start(app: web.Application) -> None:
        await dashboard.start()

    async def stop(app: web.Application) -> None:
        await dashboard.close()

    app.router.add_get(DASHBOARD_PATH, index)
    app.router.add_get(DASHBOARD_PATH + "/", index)
    app.router.add_get(DASHBOARD_PATH + "/static/{name}", static)
    app.router.add_get(DASHBOARD_PATH + "/api/snapshot", snapshot)
    app.router.add_get(DASHBOARD_PATH + "/api/events", events)
    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return dashboard
