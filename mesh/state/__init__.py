"""The fabric's state as every process reads and writes it: the registry of models, vmodels,
and the watched `FabricView` (records decoded from etcd mirrors, with dynamic fabric config).
"""
