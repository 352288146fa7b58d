"""The front door: V2 gRPC (and REST) router and its routing table.

May import: `protos` and `mesh`. Never imports `runtimes`: it neither loads nor runs models.

Modules, by job:
- `wire`: the model name (field 1) of a serialized request, read and replaced without decoding (pure);
- `policy`: which loaded copy takes a call, `choose()` over in-flight counts (pure);
- `errors`: what can go wrong, each with the gRPC code it stands for (pure);
- `routing`: the machinery (`Router`): candidates from the watched `FabricView`, in-flight
  counts, one channel per instance, the cache miss through a `Loader`, retries, deadlines;
- `instance_stream`: ModelInfer calls multiplexed on one long-lived stream per instance
  (`meshserve.stream.v1`), unary for instances without it;
- `dataplane`: names (headers, vmodels) to model ids, then `Router.call` (transport-free);
- `grpc_front`: `inference.GRPCInferenceService` as bytes in, bytes out; `stream_front`: its
  ModelStreamInfer, each message forwarded as a ModelInfer; `call_metadata`: the caller's
  headers and deadline as both pass them on (pure);
- `rest`, `rest_codec`: KServe V2 REST/JSON on aiohttp, onto the same data plane;
- `rest_v1`, `rest_v1_codec`: KServe V1 REST (`instances` -> `predictions`) on the same app, as V2 inference;
- `traffic`: running totals of the calls and misses this router saw, for in-process readers;
- `dashboard/`: the built-in web dashboard at `/dashboard` on the REST port (live, offline);
- `metrics`, `settings`, `server`: Prometheus metrics, settings, the `meshserve router` process.
"""
