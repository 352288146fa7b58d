"""The etcd adapter: client with failover and retries, error translation, lease sessions,
watched mirrors of prefixes, leader election and the fabric's key layout.

The only subpackage that imports aetcd. `mesh.etcd.store` re-exports its pieces in one import.
"""
