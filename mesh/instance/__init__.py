"""The instance agent: one runtime's seat in the fabric.

- `agent`: `InstanceAgent`, composing the modules below around one `ModelHolder`;
- `holder`: `ModelHolder`, what the agent needs of the models it seats (the in-process
  `ModelManager` and `RemoteModels` implement it);
- `remote`: `RemoteModels`, a runtime in another process driven over the model-runtime SPI
  (`meshserve agent`), and `spi_front`: the SPI the agent serves to the fabric in front of it;
- `registration`: the instance record kept in etcd under a lease, registered again after losing it;
- `publisher`: the `InstanceRecord` snapshot (with smoothed request rates) and its coalesced publishing;
- `record_writer`: the lifecycle changes to model records and their ordered single writer;
- `room`: making room for a load by evicting least recently used idle copies;
- `metrics`: `AgentMetrics`, ModelMesh's instance metrics.
"""
