"""The Kubernetes operator (kopf): Predictor, InferenceService, ServingRuntime and
ClusterServingRuntime resources into the fabric. Not built yet.
"""
