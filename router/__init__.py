"""The front door: V2 gRPC (and REST) router and its routing table.

May import: `protos` and `mesh`. Never imports `runtimes`: it neither loads nor runs models.
"""
