"""Protocol definitions: `.proto` sources and their generated Python modules.

- `grpc_service.proto`, `model_config.proto`: KServe V2 inference with Triton's
  extensions (package `inference`), wire-compatible with tritonclient.
- `model_runtime.proto`: ModelMesh's model-runtime SPI (`mmesh.ModelRuntime`).
- `model_mesh.proto`: ModelMesh's management API (`mmesh.ModelMesh`).
- `meshserve_stream.proto`: meshserve's internal data-plane stream
  (`meshserve.stream.v1.InferenceStream`): a router's ModelInfer calls to a runtime
  multiplexed on one stream, raw bytes under correlation ids.
- `mesh_admin.proto`: meshserve's admin API (`meshserve.admin.MeshAdmin`): model
  listing and fabric capacity, which ModelMesh's API has no call for.

Imports nothing from the other meshserve packages. Regenerate with
`python -m protos.generate`; the generated modules are committed.
"""

from importlib import metadata as _metadata


def meshserve_version() -> str:
    """The installed meshserve version, which every server reports (ServerMetadata,
    runtimeStatus, instance records); protos is the one package all of them import."""
    try:
        return _metadata.version("meshserve")
    except _metadata.PackageNotFoundError:
        return "0.0.0+unknown"
