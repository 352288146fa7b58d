"""The `meshserve` commands that drive a running fabric through its router (issue #6):
`register`, `unregister`, `list`, `status`, `vmodel`, `infer`, `top`.

Each command is a module with `main(argv)` (so `mesh/cli.py` imports only the one chosen)
that talks gRPC to `--router HOST:PORT` (env `MESHSERVE_ROUTER`, default 127.0.0.1:8033):
`mmesh.ModelMesh` for registration and status, `meshserve.admin.MeshAdmin` for listings
and capacity, V2 `inference.GRPCInferenceService` for `infer`. A controller's port serves
the first two as well. They never touch etcd.

- `common`: settings, the connection, and the one place errors become one line on stderr
  and a non-zero exit (no tracebacks);
- `render`, `tensors`: pure formatting and V2 tensor encoding (no gRPC, no I/O).

May import `protos`, `grpc`, numpy and the pure parts of `mesh`; imports nothing that
opens etcd, and never `router` or `runtimes`.
"""
