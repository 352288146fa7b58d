"""The Kubernetes operator (kopf): Predictor, InferenceService (ModelMesh mode), ServingRuntime
and ClusterServingRuntime resources into the fabric, and their status back from it.

The top layer but the CLI: it may import `api`, `control`, `instance`, `state`, `etcd`,
`domain` and `aio`. Translation from resources to mesh records, and from fabric state to
resource status, is pure (no kopf, no etcd) and tested on its own.
"""
