"""The placement layer: etcd store, registry, instance agent, placement engine,
controller, management API, Kubernetes operator and the `meshserve` CLI.

May import: `protos`, and `runtimes` (only to wrap a runtime in-process for the
instance agent). Never imports `router`.
Inside `mesh`, the placement engine and the LRU are pure modules: no aetcd, grpc or I/O.
"""
