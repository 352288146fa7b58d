"""The `Authorizer`'s decision in front of the router's REST app (aiohttp middleware).

Installed only when auth is on. Permissions by path, most specific first, anything else
the strictest:
- `/v2/health/...`: health, open (probes);
- `/dashboard...`: management; the dashboard shows every model, instance and address of
  the fabric, which is the management API's read side (`meshserve.admin.MeshAdmin`);
- `/v2...` and `/v1/...` (V2 and V1 inference, server and model metadata): inference;
- any other path: management (fail closed; they are 404 anyway).

Credentials: `Authorization: Bearer <token>`. The dashboard also takes HTTP Basic with the
token as the password (any user name): a browser asks for it once on the 401 and then sends
it with every fetch and event stream of the page, which cannot set headers themselves.
Refusals are `{"error": ...}` with 401 (UNAUTHENTICATED) or 403 (PERMISSION_DENIED).
"""

from __future__ import annotations

import base64
import binascii

from aiohttp import web

from mesh.api.auth.authorizer import Authorizer
from mesh.api.auth.permissions import Permission
from mesh.api.auth.tokens import bearer_token
from router.dashboard.web import DASHBOARD_PATH

__all__ = ["auth_middleware", "path_permission"]

_PREFIXES = (("/v2/health/", Permission.HEALTH), (DASHBOARD_PATH, Permission.MANAGEMENT),
             ("/v2", Permission.INFERENCE), ("/v1/", Permission.INFERENCE))
_STATUS = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}


def path_permission(path: str) -> Permission:
    for prefix, permission in _PREFIXES:
        if path.startswith(prefix):
            return permission
    return Permission.MANAGEMENT


def _basic_password(header: str) -> str | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        _user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return password or None if sep else None


def _token(request: web.Request, permission: Permission) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    token = bearer_token(header)
    if token is None and permission is Permission.MANAGEMENT:
        token = _basic_password(header)
    return token


def auth_middleware(authorizer: Authorizer):
    @web.middleware
    async def authorize(request: web.Request, handler):
        permission = path_permission(request.path)
        if not authorizer.guards(permission):
            return await handler(request)
        refusal = authorizer.refusal(permission, f"{request.method} {request.path}", _token(request, permission))
        if refusal is None:
            return await handler(request)
        status = _STATUS[refusal.code]
        headers = {}
        if status == 401:
            dashboard = request.path.startswith(DASHBOARD_PATH)
            headers["WWW-Authenticate"] = 'Basic realm="meshserve dashboard"' if dashboard else "Bearer"
        return web.json_response({"error": refusal.message}, status=status, headers=headers)
    return authorize
