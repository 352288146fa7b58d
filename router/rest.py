"""The V2 REST front (KServe's HTTP/JSON protocol) on aiohttp.

Handlers only convert: JSON -> a V2 protobuf request (`router.rest_codec`), then the same
`DataPlane.forward` as gRPC, then the reply -> JSON. Errors are `{"error": "..."}`
with the HTTP status of their gRPC code (one table, `HTTP_STATUS`), except a request over
the router's `max_message_bytes` (the body as sent, or the V2 request it makes): 413.

Routes: GET /v2/health/live, /v2/health/ready, /v2, /v2/models/{name}[/versions/{v}],
/v2/models/{name}[/versions/{v}]/ready; POST /v2/models/{name}[/versions/{v}]/infer.
KServe V1 (/v1/models...) is served beside them by `router.rest_v1`, through the same middleware.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from aiohttp import web

from protos import grpc_service_pb2 as pb
from router.dataplane import LIMIT_SETTING, DataPlane, method_path
from router.errors import MessageTooLarge, RouterError
from router.rest_codec import BadTensor, metadata_to_json, request_from_json, response_to_json
from router.rest_v1 import add_v1_routes

__all__ = ["HTTP_STATUS", "make_app"]

log = logging.getLogger(__name__)

HTTP_STATUS = {
    "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400, "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "UNAUTHENTICATED": 401, "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499, "UNIMPLEMENTED": 501, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
}
HEADER_LENGTH = "Inference-Header-Content-Length"
_INFER = method_path("ModelInfer")
_METADATA = method_path("ModelMetadata")
_READY = method_path("ModelReady")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def make_app(dataplane: DataPlane, *, ready: Callable[[], bool], version: str,
             max_body_bytes: int = 16 << 20, middlewares=()) -> web.Application:
    """The REST app; `middlewares` run outside its error mapping (the auth check, when on)."""
    async def live(request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def server_ready(request: web.Request) -> web.Response:
        is_ready = ready()
        return web.json_response({"ready": is_ready}, status=200 if is_ready else 503)

    async def server_metadata(request: web.Request) -> web.Response:
        return web.json_response({"name": "meshserve", "version": version, "extensions": ["model_configuration", "statistics"]})

    async def model_metadata(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        reply = await dataplane.forward(_METADATA, pb.ModelMetadataRequest(name=name).SerializeToString(), None, None)
        return web.json_response(metadata_to_json(reply.body))

    async def model_ready(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        reply = await dataplane.forward(_READY, pb.ModelReadyRequest(name=name).SerializeToString(), None, None)
        is_ready = pb.ModelReadyResponse.FromString(reply.body).ready
        return web.json_response({"name": name, "ready": is_ready}, status=200 if is_ready else 503)

    async def infer(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        data = await request.read()
        header_length = request.headers.get(HEADER_LENGTH)
        if header_length is not None:
            # isascii too: str.isdigit() is true of '²', which int() refuses.
            if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(data):
                raise BadTensor(f"{HEADER_LENGTH} {header_length!r} does not fit a body of {len(data)} bytes")
            split = int(header_length)
            decoded = request_from_json(name, data[:split], data[split:])
        else:
            decoded = request_from_json(name, data)
        if "version" in request.match_info:
            decoded.request.model_version = request.match_info["version"]
        reply = await dataplane.forward(_INFER, decoded.request.SerializeToString(), None, None)
        body, tail = response_to_json(reply.body, decoded.binary_outputs, decoded.all_binary)
        if not tail:
            return web.Response(body=body, content_type="application/json")
        return web.Response(body=body + tail, content_type="application/octet-stream",
                            headers={HEADER_LENGTH: str(len(body))})

    @web.middleware
    async def errors(request: web.Request, handler):
        try:
            return await handler(request)
        except BadTensor as error:
            return _error(400, str(error))
        except MessageTooLarge as error:
            return _error(413 if error.request else HTTP_STATUS[error.code], str(error))
        except web.HTTPRequestEntityTooLarge:  # the body, as it came, before it is read
            return _error(413, f"the request body is larger than max ({max_body_bytes} bytes), the router's "
                          f"{LIMIT_SETTING}")
        except RouterError as error:
            return _error(HTTP_STATUS.get(error.code, 500), str(error))
        except web.HTTPException:
            raise
        except Exception:
            error_id = uuid.uuid4().hex[:12]
            log.exception("internal error %s in %s %s", error_id, request.method, request.path)
            return _error(500, f"internal error (id {error_id}); see the router's log")

    app = web.Application(middlewares=[*middlewares, errors], client_max_size=max_body_bytes)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", server_ready)
    app.router.add_get("/v2", server_metadata)
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.router.add_get(prefix, model_metadata)
        app.router.add_get(prefix + "/ready", model_ready)
        app.router.add_post(prefix + "/infer", infer)
    add_v1_routes(app, dataplane)
    return app
