"""Pure decisions and records of the fabric: records, the placement engine, LRU victim choice,
model status, fabric timings and the mesh error base.

No aetcd, grpc, prometheus_client, kopf or boto3 here (an import-linter contract checks it);
time is passed in, never read.
"""
