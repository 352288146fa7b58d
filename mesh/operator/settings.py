"""Settings of `meshserve operator` (flags override `MESHSERVE_OPERATOR_*` override these)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from protos.tls import TlsSettings

__all__ = ["OperatorSettings"]


class OperatorSettings(TlsSettings):
    """What the operator serves and how it builds runtime pools; its TLS fields are for its calls
    to runtimes (cache-miss loads) in a fabric with TLS."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_OPERATOR_", extra="forbid")

    namespace: str = Field("", description="The operator's own namespace; empty: POD_NAMESPACE, else the "
                           "kubeconfig's namespace, else default.")
    cluster_scope: bool = Field(False, description="Serve every namespace labelled modelmesh-enabled=\"true\" "
                                "(each its own fabric, named after the namespace) besides the operator's own; "
                                "off: only the operator's namespace, as the configured fabric.")
    etcd_secret: str = Field("model-serving-etcd", description="Secret whose etcd_connection JSON says how to reach "
                             "etcd, when --etcd is not given; also mounted into runtime pods.")
    image: str = Field("meshserve:latest", description="Container image of meshserve's own runtime, agent and router.")
    resync_s: float = Field(10.0, gt=0, description="Seconds between re-checks of runtime pools (scale to zero, "
                            "replica counts) when nothing changes.")
    replica_id: str = Field("", description="Name of this replica in the leader record; default host-pid.")
    log_level: str = Field("INFO", description="Python logging level.")
