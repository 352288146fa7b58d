"""The instance agent: one runtime process's seat in the fabric.

- `agent`: `InstanceAgent`, composing the modules below around one `ModelManager`;
- `registration`: the instance record kept in etcd under a lease, registered again after losing it;
- `publisher`: the `InstanceRecord` snapshot (with smoothed request rates) and its coalesced publishing;
- `record_writer`: the lifecycle changes to model records and their ordered single writer;
- `room`: making room for a load by evicting least recently used idle copies;
- `metrics`: `AgentMetrics`, ModelMesh's instance metrics.
"""
