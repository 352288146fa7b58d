"""`meshserve operator`: Predictor, InferenceService (ModelMesh mode), ServingRuntime and
ClusterServingRuntime resources into the fabric, with kopf.

Kubernetes access through the normal resolution (in-cluster service account, else
`KUBECONFIG` / `~/.kube/config`). etcd from `--etcd` (or `MESHSERVE_ETCD`), else from the
`model-serving-etcd` secret's `etcd_connection` JSON in the operator's namespace.

Any number of replicas may run: they campaign for the home fabric's `operator-leader` key
in etcd and only the leader runs kopf (standalone, so no KopfPeering resource is needed);
when it dies another replica takes over within the lease TTL.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import socket

import kopf

from mesh.aio.tasks import TaskSupervisor
from mesh.cli.process import StartupError, configure_logging, parse_settings, run_server, settings_parser
from mesh.control.leadership import Leadership
from mesh.operator.kube import KubeClient, object_path
from mesh.operator.term import OperatorTerm
from mesh.operator.settings import OperatorSettings
from mesh.settings import FabricSettings, etcd_connection_values

__all__ = ["build_parser", "main", "start_operator"]

log = logging.getLogger(__name__)

RESIGN_GRACE_S = 5.0
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def build_parser() -> argparse.ArgumentParser:
    return settings_parser("meshserve operator", "Kubernetes operator: Predictors and ServingRuntimes into the fabric.", FabricSettings, OperatorSettings)


def _connection_info() -> kopf.ConnectionInfo:
    """The credentials kopf itself would use: in-cluster first, then the kubeconfig."""
    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise StartupError("no Kubernetes credentials: not in a pod, and no kubeconfig (KUBECONFIG or ~/.kube/config)")
    return info


def _home_namespace(settings: OperatorSettings, info: kopf.ConnectionInfo) -> str:
    if settings.namespace:
        return settings.namespace
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    with contextlib.suppress(OSError):
        with open(SERVICE_ACCOUNT_NAMESPACE) as file:
            return file.read().strip()
    return info.default_namespace or "default"


async def _fabric_from_secret(kube: KubeClient, namespace: str, settings: OperatorSettings,
                              fabric: FabricSettings) -> FabricSettings:
    """`fabric` with etcd from the `model-serving-etcd` secret when no endpoint was given."""
    if fabric.etcd_endpoints:
        return fabric
    secret = await kube.get(object_path("v1", "Secret", namespace, settings.etcd_secret))
    encoded = (secret or {}).get("data", {}).get("etcd_connection")
    if not encoded:
        raise StartupError(f"--etcd is not given and secret {namespace}/{settings.etcd_secret} has no "
                           "etcd_connection")
    try:
        values = etcd_connection_values(base64.b64decode(encoded).decode())
    except ValueError as error:
        raise StartupError(f"secret {namespace}/{settings.etcd_secret}: {error}") from None
    return fabric.model_copy(update=values)


async def start_operator(stack: contextlib.AsyncExitStack, settings: OperatorSettings, fabric: FabricSettings,
                         stop: asyncio.Event) -> None:
    info = _connection_info()
    namespace = _home_namespace(settings, info)
    kube = await stack.enter_async_context(KubeClient(info))
    fabric = await _fabric_from_secret(kube, namespace, settings, fabric)
    client = await stack.enter_async_context(fabric.etcd_client())
    replica_id = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"
    leadership = Leadership(
        client, fabric.keys().operator_leader, replica_id=replica_id, address=replica_id,
        lease_ttl_s=fabric.lease_ttl_s, name="operator",
        make_term=lambda: OperatorTerm(settings, fabric, client, kube, info, namespace, stop))
    tasks = await stack.enter_async_context(TaskSupervisor("operator-main"))
    leading = tasks.spawn(leadership.run(stop), name="leadership")
    log.info("operator %s: namespace %s, %s scope, fabric %s", replica_id, namespace,
             "cluster" if settings.cluster_scope else "namespace", fabric.fabric)

    async def let_the_leader_resign() -> None:
        await asyncio.wait([leading], timeout=RESIGN_GRACE_S)

    stack.push_async_callback(let_the_leader_resign)


def main(argv: list[str] | None = None) -> int:
    settings, fabric = parse_settings(build_parser(), argv, "operator", OperatorSettings, FabricSettings)
    configure_logging(settings.log_level)
    stop = asyncio.Event()
    return run_server("operator", lambda stack: start_operator(stack, settings, fabric, stop), stop=stop)
