"""The runtime server: many models in one process behind KServe V2 gRPC and
ModelMesh's model-runtime SPI.

Layers, from the pure core out:
- `datatypes`, `model_type`, `sizes`, `errors`: pure definitions (numpy only).
- `backends`: one class per model format (ONNX Runtime, PyTorch, scikit-learn, XGBoost,
  LightGBM) behind `Backend`, and Triton model folders read around them.
- `lifecycle`: what every holder of models shares: capacity accounting (loads in
  progress count), per-model ordering of load/unload, the room-maker and observer hooks.
- `model_manager`: the models of this process on that lifecycle: pulling, backends,
  in-flight tracking, concurrency limits.
- `dataplane`: the V2 inference service (transport-free).
- `converters`: every protobuf <-> domain mapping.
- `grpc_servicers`, `server`: thin gRPC adapters and the process entry point;
  `stream_servicer`: `meshserve.stream.v1.InferenceStream`, routers' ModelInfer calls
  multiplexed on one stream, through the same inference path.

May import: `protos`, `puller`. Never imports `mesh` or `router`, so a
ModelMesh-style runtime written by someone else plugs in the same way.
"""
