"""The placement layer: everything that makes many runtimes one fabric.

Subpackages, each allowed to import only those below it (an import-linter `layers`
contract in `pyproject.toml` keeps it so):

- `cli`: the `meshserve` command and one module per subcommand and process kind;
- `operator`: the Kubernetes operator (Predictor/ServingRuntime -> the fabric);
- `api`: the gRPC services the fabric offers (`mmesh.ModelMesh`, `meshserve.admin.MeshAdmin`)
  and the one table that maps mesh errors to gRPC status codes;
- `control`: the cache-miss loader, the leader's background controller, the runtime SPI client;
- `instance`: the instance agent that seats one runtime in the fabric;
- `state`: registry, vmodels and the watched fabric view (records as every process sees them);
- `etcd`: the etcd adapter (client, errors, leases, watched mirrors, election, key layout);
- `domain`: pure decisions and records (placement engine, LRU victims, model status, timings, errors);
- `aio`: asyncio building blocks (owned tasks, retry backoff).

`settings` (root) holds what every process that joins a fabric reads.
May import `protos`, `puller`, and `runtimes` (only to wrap a runtime in-process for the
instance agent); never `router`.
"""
