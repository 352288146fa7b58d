"""KServe V1 REST on the router's REST app, beside V2, mapped onto V2 inference.

Routes (KServe's V1 data plane):
- GET /v1/models -> `{"models": [names]}`: every model the router can see: registered
  models, vmodels, and models with a copy on an instance;
- GET /v1/models/{name} -> `{"name", "ready": true}` (200) when a copy is loaded; 503
  `{"error", "name", "ready": false}` when the model is known but no copy is loaded (its
  first predict loads one); 404 when the router knows no such model. Read from the
  watched fabric view: a readiness probe never causes a load;
- POST /v1/models/{name}:predict: `{"instances": [...]}` -> one V2 ModelInfer of the same
  model through `DataPlane.forward` (a model not loaded yet loads, within the call's
  deadline) -> `{"predictions": [...]}` (`router.rest_v1_codec` says how);
- POST /v1/models/{name}:explain -> 501: the fabric serves predictors, not explainers.

V1 has no datatypes or shapes, so a predict needs the model's V2 metadata: one
ModelMetadata call, kept in `SignatureCache` while the model's registration stays the
same; a body a kept signature refuses is checked once more against fresh metadata
before it is answered 400, and an instance refusing a request (INVALID_ARGUMENT) drops
the entry, so a model replaced under the same registration is not served a stale shape.

Errors are `{"error": "..."}` with the status of `router.rest.HTTP_STATUS`, like V2 (the
REST app's middleware maps them).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from aiohttp import web

from mesh.state.fabric_view import FabricView
from protos import grpc_service_pb2 as pb
from router.dataplane import DataPlane, method_path
from router.errors import Unimplemented, UpstreamError
from router.rest_codec import BadTensor
from router.rest_v1_codec import Signature, predict_request, predictions_json, read_instances

__all__ = ["SignatureCache", "add_v1_routes", "model_names"]

_INFER = method_path("ModelInfer")
_METADATA = method_path("ModelMetadata")


class SignatureCache:
    """V1 signatures by concrete model id (bounded, least recently used dropped first).

    An entry holds while the model's registration (type, path, storage key) is the one it
    was read under: a model id unregistered and registered again elsewhere is asked
    again. A vmodel moving to another model is another id, so another entry. The caller
    drops an entry when the model refuses a request built from it (`drop`)."""

    def __init__(self, view: FabricView, max_entries: int = 1024) -> None:
        self._view = view
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[tuple | None, Signature]] = OrderedDict()

    def _registration(self, model_id: str) -> tuple | None:
        record = self._view.model(model_id)
        return None if record is None else (record.model_type, record.storage_path, record.storage_key)

    def get(self, model_id: str) -> Signature | None:
        found = self._entries.get(model_id)
        if found is None or found[0] != self._registration(model_id):
            return None
        self._entries.move_to_end(model_id)
        return found[1]

    def put(self, model_id: str, signature: Signature) -> None:
        self._entries[model_id] = (self._registration(model_id), signature)
        self._entries.move_to_end(model_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def drop(self, model_id: str) -> None:
        self._entries.pop(model_id, None)


def model_names(view: FabricView) -> list[str]:
    """Registered models, vmodels and models held by an instance, sorted (not for the hot path)."""
    names = set(view.model_ids()) | set(view.vmodel_ids())
    for record in view.all_instances().values():
        names.update(record.copies)
    return sorted(names)


def add_v1_routes(app: web.Application, dataplane: DataPlane, signatures: SignatureCache | None = None) -> None:
    """Serve V1 on `app` (the V2 REST app: its middleware turns errors into V1's shape)."""
    view = dataplane.view
    cache = signatures or SignatureCache(view)

    async def list_models(request: web.Request) -> web.Response:
        return web.json_response({"models": model_names(view)})

    async def model_ready(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        model_id = dataplane.target(name)
        if view.loaded_on(model_id):
            return web.json_response({"name": name, "ready": True})
        if view.model(model_id) is None and view.vmodel(name) is None and not view.copies_of(model_id):
            return web.json_response({"error": f"model '{name}' is not registered"}, status=404)
        return web.json_response({"error": f"model '{name}' is not ready: no loaded copy (a predict loads one)",
                                  "name": name, "ready": False}, status=503)

    async def predict(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        instances = read_instances(await request.read())  # a malformed body is refused before any load
        loop = asyncio.get_running_loop()
        deadline = loop.time() + dataplane.default_deadline_s
        model_id = dataplane.target(name)  # requests name the concrete id: signature and call agree

        async def fetch() -> Signature:
            reply = await dataplane.forward(_METADATA, pb.ModelMetadataRequest(name=model_id).SerializeToString(),
                                            None, max(deadline - loop.time(), 0.0))
            fetched = Signature.from_metadata(reply.body)
            cache.put(model_id, fetched)
            return fetched

        cached = cache.get(model_id)
        signature = cached or await fetch()
        try:
            infer_request = predict_request(model_id, instances, signature)
        except BadTensor:
            if cached is None:
                raise
            # Refused by a kept signature: ask the model once more before blaming the caller
            # (the model may have been replaced under the same registration).
            signature = await fetch()
            infer_request = predict_request(model_id, instances, signature)
        body = infer_request.SerializeToString()
        try:
            reply = await dataplane.forward(_INFER, body, None, max(deadline - loop.time(), 0.0))
        except UpstreamError as error:
            if error.code == "INVALID_ARGUMENT":
                cache.drop(model_id)  # the model may have changed under the same registration
            raise
        return web.Response(body=predictions_json(reply.body, signature), content_type="application/json")

    async def explain(request: web.Request) -> web.Response:
        raise Unimplemented("V1 :explain is not implemented: meshserve serves predictors, not explainers; "
                            "use :predict")

    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/models/{name}:predict", predict)
    app.router.add_post("/v1/models/{name}:explain", explain)
    app.router.add_get("/v1/models/{name}", model_ready)
