"""The router's one data-plane service: a name in, a forwarded call out (transport-free).

Both fronts (`router.grpc_front` for V2 gRPC, `router.rest` for V2 REST) convert their
request, call `DataPlane.forward`, and convert the reply or the `RouterError`.

Naming (ModelMesh's rules): the `mm-vmodel-id` header names a vmodel (NOT_FOUND if it is
not defined), `mm-model-id` a concrete model (not both); without either, the request's
own model name (field 1), which may be a vmodel or a model. When the model the call goes
to differs from the name in the request, the request is re-pointed at it
(`router.wire.with_model_name`) and the instance gets `mm-model-id` as well.

Size: a request over `max_message_bytes` is refused (MessageTooLarge, RESOURCE_EXHAUSTED
naming the limit and its setting) before anything is forwarded, and so is a reply over it.
"""

from __future__ import annotations

from collections.abc import Sequence

from mesh.state.fabric_view import FabricView
from protos.limits import DEFAULT_MAX_MESSAGE_BYTES
from router.errors import InvalidRequest, MessageTooLarge, ModelNotFound, RouterError
from router.routing import Reply, Router
from router.wire import MalformedRequest, read_model_name, with_model_name

__all__ = ["DataPlane", "LIMIT_SETTING", "MODEL_HEADER", "TRIED_HEADER", "VMODEL_HEADER", "method_path"]

MODEL_HEADER = "mm-model-id"
VMODEL_HEADER = "mm-vmodel-id"
#: Set by the native front (`router.native_front`) on a call it handed over after the copy it
#: chose answered UNAVAILABLE or NOT_FOUND: "<unavailable|not_found> <inference address>".
TRIED_HEADER = "meshserve-tried"
SERVICE = "inference.GRPCInferenceService"


def method_path(name: str) -> str:
    return f"/{SERVICE}/{name}"


_READY = method_path("ModelReady")
#: `ModelReadyResponse(ready=False)`, serialized: proto3 leaves a false bool out, so it is empty.
_NOT_READY = Reply(b"", (), ())


#: How the message limit is set, for the errors that name it.
LIMIT_SETTING = ("max_message_bytes (--max-message-bytes, MESHSERVE_ROUTER_MAX_MESSAGE_BYTES; "
                 "grpcMaxMessageSizeBytes in model-serving-config)")


class DataPlane:
    def __init__(self, router: Router, view: FabricView, default_deadline_s: float,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.router = router
        self.view = view
        self.default_deadline_s = default_deadline_s
        self.max_message_bytes = max_message_bytes

    def check_size(self, what: str, size: int, *, request: bool) -> None:
        """MessageTooLarge naming the limit and its setting when `size` is over it."""
        if size > self.max_message_bytes:
            raise MessageTooLarge(f"{what} of {size} bytes is larger than max ({self.max_message_bytes} bytes), "
                                  f"the router's {LIMIT_SETTING}", request=request)

    def target(self, name: str, model_header: str | None = None, vmodel_header: str | None = None) -> str:
        """The concrete model id a call is for; InvalidRequest or ModelNotFound."""
        if vmodel_header is not None:
            if model_header is not None:
                raise InvalidRequest(f"give either {MODEL_HEADER} or {VMODEL_HEADER}, not both")
            vmodel = self.view.vmodel(vmodel_header)
            if vmodel is None:
                raise ModelNotFound(f"vmodel '{vmodel_header}' is not defined")
            return vmodel.active_model_id
        if model_header is not None:
            if not model_header:
                raise InvalidRequest(f"the {MODEL_HEADER} header is empty")
            return model_header
        if not name:
            raise InvalidRequest(f"no model name in the request and no {MODEL_HEADER} or {VMODEL_HEADER} header")
        return self.view.resolve(name)

    def call_labels(self, body: bytes, model_header: str | None, vmodel_header: str | None) -> tuple[str, str]:
        """(modelId, vModelId) of a call, for per-model metrics: the model it went to and the
        vmodel the caller named ("" when none, or when the request names nothing valid)."""
        try:
            name = read_model_name(body)
            model_id = self.target(name, model_header, vmodel_header)
        except (MalformedRequest, RouterError):
            return "", vmodel_header or ""
        if vmodel_header is not None:
            return model_id, vmodel_header
        if model_header is None and name != model_id:
            return model_id, name  # the request's own name was a vmodel
        return model_id, ""

    async def forward(self, method: str, body: bytes, metadata: Sequence[tuple[str, str | bytes]] | None,
                      timeout: float | None, model_header: str | None = None,
                      vmodel_header: str | None = None, tried: str | None = None) -> Reply:
        """Forward a serialized request (`method`: full path) and return the instance's reply.
        ModelReady of a model (or vmodel) that is not registered answers `ready: false`, as
        Triton and the runtime do, so that tritonclient's `is_model_ready` returns False.
        `tried`: the native front's failed attempt (TRIED_HEADER), counted as this call's first."""
        self.check_size("the request", len(body), request=True)  # before anything is forwarded
        try:
            name = read_model_name(body)
        except MalformedRequest as error:
            raise InvalidRequest(f"malformed request: {error}") from None
        try:
            model_id = self.target(name, model_header, vmodel_header)
            if model_id != name:
                body = with_model_name(body, model_id)
            if model_header is not None or vmodel_header is not None:
                metadata = (*(metadata or ()), (MODEL_HEADER, model_id))
            reply = await self.router.call(method, body, model_id, metadata,
                                           self.default_deadline_s if timeout is None else timeout, tried=tried)
        except ModelNotFound:
            if method == _READY:
                return _NOT_READY
            raise
        self.check_size(f"the reply of model '{model_id}'", len(reply.body), request=False)
        return reply
