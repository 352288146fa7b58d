"""Storage providers, one per storage type, behind :class:`puller.providers.base.Provider`.

Only these modules import storage SDKs: :mod:`.s3` (boto3), :mod:`.azure`
(azure-storage-blob), :mod:`.http` (urllib). Each is imported lazily by the puller, so a
missing SDK disables only its own scheme.
"""
