"""The operator end to end: kopf against an emulated Kubernetes API (kmock; no API server can
run here), a real etcd, real `meshserve` processes standing in for the runtime pods the
operator's Deployments describe (tests/support/pods.py), a real controller and router, a
real S3 (moto) holding the models, and tritonclient calling by the Predictor's name.

Manifests are the modelmesh-serving samples in shared/data/kserve-samples (Apache-2.0),
applied unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml

from mesh.operator import crds
from mesh.operator.predictor import mesh_model
from mesh.cli import controller as controller_cli
from mesh.settings import etcd_connection_values
from router import server as router_server
from tests.support import models
from tests.support.fabric import REPO, Fabric
from tests.support.kube_api import KubeApi
from tests.support.moto_server import MotoServer
from tests.support.pods import StandInPods
from tests.support.shared_data import shared_dir
from tests.support.waiting import wait_until

NAMESPACE = "modelmesh-serving"
BUCKET = "modelmesh-example-models"
SAMPLES = shared_dir() / "data" / "kserve-samples"
PREDICTORS = "serving.kserve.io/v1alpha1/predictors"
ISVCS = "serving.kserve.io/v1beta1/inferenceservices"
CSR = "serving.kserve.io/v1alpha1/clusterservingruntimes"
K8S_VERSION = "1.37.0"
WAIT = 90

#: meshserve's own runtime as a ClusterServingRuntime (what the chart installs by default).
MESHSERVE_RUNTIME = {
    "apiVersion": "serving.kserve.io/v1alpha1", "kind": "ClusterServingRuntime",
    "metadata": {"name": "meshserve-1.x"},
    "spec": {"multiModel": True, "grpcEndpoint": "port:8085", "grpcDataEndpoint": "port:8085",
             "protocolVersions": ["grpc-v2"],
             "supportedModelFormats": [{"name": "onnx", "version": "1", "autoSelect": True},
                                       {"name": "pytorch", "version": "1", "autoSelect": True},
                                       {"name": "sklearn", "version": "0", "autoSelect": True},
                                       {"name": "xgboost", "version": "1", "autoSelect": True},
                                       {"name": "lightgbm", "version": "3", "autoSelect": True}],
             "containers": [{"name": "meshserve", "image": "meshserve:latest",
                             "resources": {"limits": {"cpu": "1", "memory": "512Mi"}}}]},
}


def sample(name: str) -> dict:
    return yaml.safe_load((SAMPLES / name).read_text())


@pytest.fixture(scope="module")
def moto():
    with MotoServer() as server:
        s3 = server.client()
        s3.create_bucket(Bucket=BUCKET)
        yield server


class World:
    """Everything one test needs, started in order and stopped in reverse."""

    def __init__(self, tmp_path: Path, etcd_server, moto: MotoServer) -> None:
        self.tmp_path = tmp_path
        self.fabric = Fabric(tmp_path, etcd=etcd_server)
        self.moto = moto
        self.api = KubeApi(tmp_path, NAMESPACE)
        self.operator: subprocess.Popen | None = None
        self.operator_log = tmp_path / "operator.log"
        storage = tmp_path / "storage-config"
        storage.mkdir()
        (storage / "localMinIO").write_text(json.dumps({
            "type": "s3", "access_key_id": "test", "secret_access_key": "test",
            "endpoint_url": moto.endpoint_url, "bucket": BUCKET, "region": "us-east-1"}))
        self.pods = StandInPods(self.api, NAMESPACE, tmp_path, etcd_endpoint=etcd_server.endpoint,
                                storage_config_dir=storage)

    def start_operator(self, log_path: Path | None = None) -> subprocess.Popen:
        """An operator replica; the first one is `self.operator`, logging to `self.operator_log`."""
        argv = [sys.executable, "-m", "mesh.cli", "operator", *self.fabric.fabric_flags, "--namespace", NAMESPACE,
                "--resync-s", "1", "--log-level", os.environ.get("MESHSERVE_TEST_OPERATOR_LOG", "INFO")]
        with open(log_path or self.operator_log, "ab") as log_file:
            process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO,
                                       env={**os.environ, "KUBECONFIG": str(self.api.kubeconfig),
                                            "PYTHONUNBUFFERED": "1"})
        if log_path is None:
            self.operator = process
        return process

    def stop_operator(self) -> None:
        if self.operator is not None and self.operator.poll() is None:
            self.operator.terminate()
            try:
                self.operator.wait(30)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait(10)
                raise AssertionError(f"the operator did not stop on SIGTERM:\n{self.log()[-3000:]}") from None

    def log(self) -> str:
        return self.operator_log.read_text(errors="replace")

    def object(self, resource: str, name: str) -> dict | None:
        return self.api.get(resource, NAMESPACE, name)

    def status(self, resource: str, name: str) -> dict:
        return (self.object(resource, name) or {}).get("status") or {}

    async def create(self, resource: str, obj: dict) -> None:
        import aiohttp

        group_version, plural = resource.rsplit("/", 1)
        base = f"/apis/{group_version}" if "/" in group_version else f"/api/{group_version}"
        namespaced = obj["kind"] not in ("ClusterServingRuntime", "Namespace")
        path = f"{base}/namespaces/{NAMESPACE}/{plural}" if namespaced else f"{base}/{plural}"
        if namespaced:
            obj.setdefault("metadata", {})["namespace"] = NAMESPACE
        async with aiohttp.ClientSession() as session:
            async with session.post(self.api.url + path, json=obj) as response:
                assert response.status < 300, await response.text()

    async def patch(self, resource: str, name: str, patch: dict) -> None:
        import aiohttp

        group_version, plural = resource.rsplit("/", 1)
        path = f"/apis/{group_version}/namespaces/{NAMESPACE}/{plural}/{name}"
        async with aiohttp.ClientSession() as session:
            async with session.patch(self.api.url + path, json=patch,
                                     headers={"Content-Type": "application/merge-patch+json"}) as response:
                assert response.status < 300, await response.text()

    async def patch_core(self, plural: str, name: str, patch: dict) -> None:
        import aiohttp

        path = f"/api/v1/namespaces/{NAMESPACE}/{plural}/{name}"
        async with aiohttp.ClientSession() as session:
            async with session.patch(self.api.url + path, json=patch,
                                     headers={"Content-Type": "application/merge-patch+json"}) as response:
                assert response.status < 300, await response.text()

    async def patch_namespace(self, name: str, patch: dict) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.patch(self.api.url + f"/api/v1/namespaces/{name}", json=patch,
                                     headers={"Content-Type": "application/merge-patch+json"}) as response:
                assert response.status < 300, await response.text()

    async def delete(self, resource: str, name: str) -> None:
        import aiohttp

        group_version, plural = resource.rsplit("/", 1)
        path = f"/apis/{group_version}/namespaces/{NAMESPACE}/{plural}/{name}"
        async with aiohttp.ClientSession() as session:
            async with session.delete(self.api.url + path) as response:
                assert response.status < 300, await response.text()

    async def until(self, condition, what: str, timeout: float = WAIT):
        """Poll `condition` (and start stand-in pods for new Deployments) until it holds."""
        def check():
            if self.operator is not None and self.operator.poll() is not None:
                raise AssertionError(f"operator exited {self.operator.returncode}:\n{self.log()[-4000:]}")
            self.pods.sync()
            return condition()

        try:
            return await asyncio.to_thread(wait_until, check, timeout, what)
        except AssertionError:
            print(self.log()[-6000:])
            for (resource, namespace, name), obj in self.api.emulator.objects.items():
                if resource.plural in ("predictors", "inferenceservices", "deployments") and not obj.deleted:
                    print(f"--- {resource.plural} {name}: status {json.dumps(obj.raw.get('status'))[:1500]}")
            for pod in self.pods.pods.values():
                print(f"--- {pod.deployment}\n{pod.log()[-3000:]}")
            raise


@pytest.fixture
async def world(tmp_path, etcd_server, moto):
    async for world in _world(tmp_path, etcd_server, moto):
        yield world


async def _world(tmp_path, etcd, moto):
    world = World(tmp_path, etcd, moto)
    async with world.api:
        await asyncio.to_thread(world.fabric.add_controller)
        await asyncio.to_thread(world.fabric.add_router)
        world.api.put(CSR, None, copy.deepcopy(MESHSERVE_RUNTIME))
        world.start_operator()
        try:
            yield world
        finally:
            # In threads: the emulated API server runs on this event loop, and a stopping
            # operator still talks to it.
            try:
                await asyncio.to_thread(world.stop_operator)
            finally:
                await asyncio.to_thread(world.pods.close)
                await asyncio.to_thread(world.fabric.close)


def put_model(moto: MotoServer, key: str, offset: float = 1.0) -> None:
    path = models.add_onnx(Path("/tmp") / f"meshserve-operator-{os.getpid()}" / key, offset=offset)
    moto.client().upload_file(str(path), BUCKET, key)


def infer(router_port: int, name: str, x: np.ndarray) -> tuple[str, np.ndarray]:
    client = triton.InferenceServerClient(f"127.0.0.1:{router_port}")
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(name, [tensor], client_timeout=30)
    return result.get_response().model_name, result.as_numpy("y")


def loaded(status: dict) -> bool:
    return status.get("activeModelState") == "Loaded" and status.get("transitionStatus") == "UpToDate"


async def test_a_sample_predictor_loads_from_s3_and_answers_through_the_router_by_name(world, moto):
    manifest = sample("example-onnx-mnist-predictor.yaml")
    put_model(moto, manifest["spec"]["path"], offset=1.0)
    model_id = mesh_model("Predictor", NAMESPACE, manifest["metadata"]["name"], manifest).model_id
    assert model_id == "example-onnx-mnist__ksp-0dbc77db1a"  # modelmesh-serving's id for this manifest

    await world.create(PREDICTORS, manifest)
    await world.until(lambda: loaded(world.status(PREDICTORS, "example-onnx-mnist")), "the predictor to load")

    status = world.status(PREDICTORS, "example-onnx-mnist")
    crds.validate_status("Predictor", status)
    assert status["available"] is True and status["totalCopies"] >= 1 and status["failedCopies"] == 0
    assert status["grpcEndpoint"] == f"grpc://modelmesh-serving.{NAMESPACE}:8033"
    assert "lastFailureInfo" not in status

    router = world.fabric.routers[0]
    name, y = await asyncio.to_thread(infer, router.port, "example-onnx-mnist", np.ones((1, 4), np.float32))
    assert name == model_id
    np.testing.assert_allclose(y, np.full((1, 4), 2.0, np.float32))

    deployments = world.pods.deployments()
    assert set(deployments) == {"modelmesh-serving-meshserve-1.x"}
    service = world.object("v1/services", "modelmesh-serving")
    for obj in (*deployments.values(), service):
        kubernetes_validate.validate(_without_server_fields(obj), K8S_VERSION, strict=True)


def _without_server_fields(obj: dict) -> dict:
    obj = copy.deepcopy(obj)
    for key in ("uid", "resourceVersion", "generation", "creationTimestamp"):
        obj["metadata"].pop(key, None)
    return obj


def etcd_keys(world: World, prefix: str) -> set[str]:
    """Record names under one of the fabric's collections, read through etcd's JSON gateway."""
    collection = {"models": world.fabric.keys.models, "vmodels": world.fabric.keys.vmodels}[prefix]
    return set(world.fabric._get_prefix(collection))


async def test_a_changed_spec_moves_to_a_new_model_without_downtime_and_delete_leaves_nothing(world, moto):
    manifest = sample("example-onnx-mnist-predictor.yaml")
    put_model(moto, "onnx/mnist.onnx", offset=1.0)
    put_model(moto, "onnx/mnist-v2.onnx", offset=2.0)
    name = manifest["metadata"]["name"]
    old_id = mesh_model("Predictor", NAMESPACE, name, manifest).model_id
    await world.create(PREDICTORS, manifest)
    await world.until(lambda: loaded(world.status(PREDICTORS, name)), "the first model to load")

    changed = copy.deepcopy(manifest)
    changed["spec"]["path"] = "onnx/mnist-v2.onnx"
    new_id = mesh_model("Predictor", NAMESPACE, name, changed).model_id
    assert new_id != old_id
    await world.patch(PREDICTORS, name, {"spec": {"path": "onnx/mnist-v2.onnx"}})

    # Every call during the move is answered, by the old model or the new one, never both wrong.
    router = world.fabric.routers[0]
    answers: list[tuple[str, float]] = []

    def moved() -> bool:
        served, y = infer(router.port, name, np.ones((1, 4), np.float32))
        answers.append((served, float(y[0, 0])))
        return served == new_id and loaded(world.status(PREDICTORS, name))

    await world.until(moved, "the vmodel to move to the new model")
    assert all((served, y) in ((old_id, 2.0), (new_id, 3.0)) for served, y in answers), answers
    await world.until(lambda: old_id not in etcd_keys(world, "models"), "the old model to be auto-deleted")
    crds.validate_status("Predictor", world.status(PREDICTORS, name))

    await world.delete(PREDICTORS, name)
    await world.until(lambda: world.object(PREDICTORS, name) is None, "the finalizer to release the predictor")
    assert name not in etcd_keys(world, "vmodels")
    await world.until(lambda: new_id not in etcd_keys(world, "models"), "its model to be unregistered")


def failure(status: dict) -> str:
    return (status.get("lastFailureInfo") or {}).get("reason", "")


async def test_failures_carry_upstreams_reasons_and_untouched_resources_stay_untouched(world, moto):
    missing = sample("onnx-predictor-withschema.yaml")
    missing["metadata"]["name"] = "onnx-missing"
    missing["spec"]["path"] = "fvt/onnx/not-uploaded"  # nothing there (the sample's own path loads elsewhere)
    unknown_runtime = copy.deepcopy(sample("example-onnx-mnist-predictor.yaml"))
    unknown_runtime["metadata"]["name"] = "needs-a-runtime-nobody-has"
    unknown_runtime["spec"]["runtime"] = {"name": "no-such-runtime"}
    unsupported = sample("predictor_mlserver.yaml")  # model type "mlserver": no runtime here serves it
    invalid = copy.deepcopy(sample("example-onnx-mnist-predictor.yaml"))
    invalid["metadata"]["name"] = "two-paths"
    invalid["spec"]["storage"]["path"] = "onnx/other.onnx"  # beside the top-level path
    plain_isvc = copy.deepcopy(sample("example-triton-xgboost-isvc.yaml"))
    plain_isvc["metadata"]["name"] = "serverless-isvc"
    del plain_isvc["metadata"]["annotations"]
    for manifest in (missing, unknown_runtime, unsupported, invalid):
        await world.create(PREDICTORS, manifest)
    await world.create(ISVCS, sample("example-triton-xgboost-isvc.yaml"))
    await world.create(ISVCS, plain_isvc)

    expected = {
        "onnx-missing": ("FailedToLoad", "ModelLoadFailed"),
        "needs-a-runtime-nobody-has": ("FailedToLoad", "RuntimeNotRecognized"),
        "minimal-mlserver-predictor": ("FailedToLoad", "NoSupportingRuntime"),
    }

    def reported() -> bool:
        return all((world.status(PREDICTORS, n).get("activeModelState"), failure(world.status(PREDICTORS, n)))
                   == want for n, want in expected.items()) and world.status(PREDICTORS, "two-paths")
    await world.until(reported, "every predictor's failure to be reported")

    loader = world.status(PREDICTORS, "onnx-missing")["lastFailureInfo"]
    assert loader["location"] and loader["modelId"].startswith("onnx-missing__ksp-")
    assert "fvt/onnx/not-uploaded" in loader["message"] or "not found" in loader["message"].lower(), loader
    two_paths = world.status(PREDICTORS, "two-paths")
    assert two_paths["transitionStatus"] == "InvalidSpec" and failure(two_paths) == "InvalidPredictorSpec"
    assert "path" in two_paths["lastFailureInfo"]["message"]
    for name in (*expected, "two-paths"):
        crds.validate_status("Predictor", world.status(PREDICTORS, name))

    isvc = "example-xgboost-mushroom-fil"
    await world.until(lambda: failure(world.status(ISVCS, isvc).get("modelStatus", {})) == "RuntimeNotRecognized",
                      "the InferenceService naming triton-2.x to report that runtime missing")
    crds.validate_status("InferenceService", world.status(ISVCS, isvc))
    untouched = world.object(ISVCS, "serverless-isvc")
    assert "status" not in untouched and not untouched["metadata"].get("finalizers")
    assert "serverless-isvc" not in etcd_keys(world, "vmodels")


def put_files(moto: MotoServer, folder: Path, prefix: str) -> None:
    """Every file below `folder`, under `prefix` in the bucket (a model folder, as a user uploads one)."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        moto.client().upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")


async def test_the_sklearn_and_xgboost_fil_samples_load_on_meshserve_and_on_a_triton_pool_behind_the_agent(
        world, moto, tmp_path):
    """The samples that need formats beyond ONNX. `no-storage-predictor.yaml` (sklearn) places on
    meshserve's own runtime and fails there as upstream's FVT expects of a Predictor without
    `storage` (no path reaches the loader); the same spec with a storage key loads. The
    xgboost-fil Predictor and InferenceService name modelmesh-serving's `triton-2.x`
    ClusterServingRuntime (the sample itself). No Triton image can run here: its pool's pod
    is the operator's `mm-agent` container (the real `meshserve agent`) beside a plain
    `meshserve runtime` standing in for the Triton container (tests/support/pods.py), which
    serves the FIL folder as Triton's FIL backend would."""
    classic_models = pytest.importorskip("tests.support.classic_models")
    pytest.importorskip("xgboost")
    sklearn_file, estimator = classic_models.sklearn_logistic(tmp_path / "mnist-svm" / "model.joblib")
    moto.client().upload_file(str(sklearn_file), BUCKET, "fvt/sklearn/mnist-svm/model.joblib")
    fil_folder, booster = classic_models.fil_xgboost_classifier(tmp_path / "mushroom-fil")
    put_files(moto, fil_folder, "fvt/xgboost/mushroom-fil")
    put_files(moto, fil_folder, "xgboost/mushroom-fil")
    put_model(moto, "fvt/onnx/onnx-withschema/model.onnx", offset=3.0)  # ONNX carries its signature: schemaPath unused
    with_storage = sample("no-storage-predictor.yaml")
    with_storage["metadata"]["name"] = "sklearn-mnist-svm"
    with_storage["spec"]["storage"] = {"key": "localMinIO"}
    await world.create(CSR, sample("triton-2.x.yaml"))
    for manifest in (sample("no-storage-predictor.yaml"), with_storage, sample("xgboost-fil-predictor.yaml"),
                     sample("onnx-predictor-withschema.yaml")):
        await world.create(PREDICTORS, manifest)
    await world.create(ISVCS, sample("example-triton-xgboost-isvc.yaml"))

    def isvc_ready() -> bool:
        conditions = {c["type"]: c["status"] for c in world.status(ISVCS, "example-xgboost-mushroom-fil").get("conditions", [])}
        return conditions.get("Ready") == "True"

    def settled() -> bool:
        no_storage = world.status(PREDICTORS, "minimal-sklearn-predictor-no-storage")
        return (all(loaded(world.status(PREDICTORS, n)) for n in ("sklearn-mnist-svm", "xgboost-fil-mushroom",
                                                                   "onnx-withschema"))
                and isvc_ready() and failure(no_storage) == "ModelLoadFailed")

    await world.until(settled, "the sklearn and xgboost-fil samples to load (and the one without storage to fail)")
    for name in ("minimal-sklearn-predictor-no-storage", "sklearn-mnist-svm", "xgboost-fil-mushroom", "onnx-withschema"):
        crds.validate_status("Predictor", world.status(PREDICTORS, name))
    crds.validate_status("InferenceService", world.status(ISVCS, "example-xgboost-mushroom-fil"))
    no_storage = world.status(PREDICTORS, "minimal-sklearn-predictor-no-storage")
    assert no_storage["activeModelState"] == "FailedToLoad"
    assert no_storage["lastFailureInfo"]["location"].startswith("modelmesh-serving-meshserve-1.x")
    assert "path is empty" in no_storage["lastFailureInfo"]["message"]

    _, y = await asyncio.to_thread(infer, world.fabric.routers[0].port, "onnx-withschema", np.ones((1, 4), np.float32))
    np.testing.assert_allclose(y, np.full((1, 4), 4.0, np.float32))
    router = triton.InferenceServerClient(f"127.0.0.1:{world.fabric.routers[0].port}")
    x, _ = classic_models.data(rows=6, seed=21)
    features = triton.InferInput("predict", list(x.shape), "FP64")  # ModelMesh's sklearn sample names it so
    features.set_data_from_numpy(x)
    reply = await asyncio.to_thread(router.infer, "sklearn-mnist-svm", [features], client_timeout=30)
    np.testing.assert_array_equal(reply.as_numpy("predict"), estimator.predict(x))
    rows = (np.random.default_rng(3).random((5, booster.num_features())) < 0.3).astype(np.float32)
    positive = booster.inplace_predict(rows)
    for name in ("xgboost-fil-mushroom", "example-xgboost-mushroom-fil"):
        tensor = triton.InferInput("input__0", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        reply = await asyncio.to_thread(router.infer, name, [tensor], client_timeout=30)
        np.testing.assert_allclose(reply.as_numpy("output__0"), np.stack([1 - positive, positive], axis=1), rtol=1e-6)

    deployments = world.pods.deployments()
    assert set(deployments) == {"modelmesh-serving-meshserve-1.x", "modelmesh-serving-triton-2.x"}
    triton_pod = deployments["modelmesh-serving-triton-2.x"]["spec"]["template"]["spec"]
    assert [c["name"] for c in triton_pod["containers"]] == ["triton", "mm-agent"]
    for obj in deployments.values():
        kubernetes_validate.validate(_without_server_fields(obj), K8S_VERSION, strict=True)
    fil_id = mesh_model("Predictor", NAMESPACE, "xgboost-fil-mushroom", sample("xgboost-fil-predictor.yaml")).model_id
    sklearn_id = mesh_model("Predictor", NAMESPACE, "sklearn-mnist-svm", with_storage).model_id
    # Each where its runtime is: the FIL model on the Triton pool's instance, sklearn on meshserve's.
    assert world.fabric.holders(fil_id) and all(
        h.startswith("modelmesh-serving-triton-2.x") for h in world.fabric.holders(fil_id)), world.fabric.holders(fil_id)
    assert world.fabric.holders(sklearn_id) and all(
        h.startswith("modelmesh-serving-meshserve-1.x") for h in world.fabric.holders(sklearn_id))


async def test_a_second_replica_takes_over_without_rewriting_any_status(world, moto):
    put_model(moto, "onnx/mnist.onnx")
    await world.create(PREDICTORS, sample("example-onnx-mnist-predictor.yaml"))
    await world.until(lambda: loaded(world.status(PREDICTORS, "example-onnx-mnist")), "the predictor to load")
    await world.until(lambda: "first round done" in world.log(), "the first operator's first round")
    writes = dict(world.api.emulator.status_writes)
    status = world.status(PREDICTORS, "example-onnx-mnist")

    second_log = world.tmp_path / "operator-2.log"
    second = world.start_operator(second_log)
    await world.until(lambda: "namespace scope" in second_log.read_text(), "the second replica to start")
    assert "leading" not in second_log.read_text()  # the first still leads: the second only campaigns
    await asyncio.to_thread(world.stop_operator)
    world.operator, world.operator_log = second, second_log  # stopped at teardown
    await world.until(lambda: "first round done" in world.log(), "the second replica to lead a round")
    assert dict(world.api.emulator.status_writes) == writes, "a status was rewritten on takeover"
    assert world.status(PREDICTORS, "example-onnx-mnist") == status


@pytest.fixture
async def world_on_private_etcd(tmp_path, private_etcd, moto):
    async for world in _world(tmp_path, private_etcd, moto):
        yield world


async def test_an_etcd_outage_rewrites_no_status_and_new_predictors_catch_up_after(world_on_private_etcd, moto):
    world = world_on_private_etcd
    put_model(moto, "onnx/mnist.onnx")
    await world.create(PREDICTORS, sample("example-onnx-mnist-predictor.yaml"))
    await world.until(lambda: loaded(world.status(PREDICTORS, "example-onnx-mnist")), "the predictor to load")
    writes = world.api.emulator.status_writes[(NAMESPACE, "example-onnx-mnist")]

    etcd = world.fabric.etcd
    await asyncio.to_thread(etcd.stop)
    later = copy.deepcopy(sample("example-onnx-mnist-predictor.yaml"))
    later["metadata"]["name"] = "registered-during-the-outage"
    await world.create(PREDICTORS, later)
    await world.until(lambda: "out of sync" in world.log(), "the operator to notice the outage")
    await asyncio.to_thread(etcd.start)
    await world.until(lambda: "back in sync" in world.log(), "the operator to catch up with etcd")
    assert world.api.emulator.status_writes[(NAMESPACE, "example-onnx-mnist")] == writes
    assert loaded(world.status(PREDICTORS, "example-onnx-mnist"))
    await world.until(lambda: loaded(world.status(PREDICTORS, "registered-during-the-outage")),
                      "the predictor created during the outage to load")


async def test_model_serving_config_applies_without_a_restart_and_an_hpa_follows_its_annotations(world, moto):
    put_model(moto, "onnx/mnist.onnx")
    await world.create(PREDICTORS, sample("example-onnx-mnist-predictor.yaml"))
    deployment = "modelmesh-serving-meshserve-1.x"
    await world.until(lambda: (world.object("apps/v1/deployments", deployment) or {}).get("spec", {})
                      .get("replicas") == 2, "the pool at podsPerRuntime's default of 2")

    world.api.put("v1/configmaps", NAMESPACE, {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "model-serving-config", "namespace": NAMESPACE},
        "data": {"config.yaml": "podsPerRuntime: 1\nscaleToZero:\n  gracePeriodSeconds: 1\nnoSuchKey: true\n"}})
    # A stored object is not an event: touch it through the API so the operator's watch sees it.
    await world.patch_core("configmaps", "model-serving-config", {"metadata": {"labels": {"edited": "yes"}}})
    await world.until(lambda: world.object("apps/v1/deployments", deployment)["spec"]["replicas"] == 1,
                      "the pool to follow podsPerRuntime: 1")
    assert "unknown key noSuchKey" in world.log()

    await world.delete(PREDICTORS, "example-onnx-mnist")
    await world.until(lambda: world.object("apps/v1/deployments", deployment)["spec"]["replicas"] == 0,
                      "the pool to scale to zero once no Predictor needs it (grace period 1 s)")

    runtime = copy.deepcopy(MESHSERVE_RUNTIME)
    runtime["metadata"] = {"name": "meshserve-autoscaled", "annotations": {
        "serving.kserve.io/autoscalerClass": "hpa", "serving.kserve.io/min-scale": "1",
        "serving.kserve.io/max-scale": "4", "serving.kserve.io/metrics": "memory"}}
    await world.create(CSR, runtime)
    hpa = "modelmesh-serving-meshserve-autoscaled"
    await world.until(lambda: world.object("autoscaling/v2/horizontalpodautoscalers", hpa) is not None,
                      "the HPA from the runtime's annotations")
    scaler = world.object("autoscaling/v2/horizontalpodautoscalers", hpa)
    assert scaler["spec"]["minReplicas"] == 1 and scaler["spec"]["maxReplicas"] == 4
    assert scaler["spec"]["metrics"][0]["resource"]["name"] == "memory"
    kubernetes_validate.validate(_without_server_fields(scaler), K8S_VERSION, strict=True)


async def test_cluster_scope_serves_labelled_namespaces_each_as_its_own_fabric(tmp_path, etcd_server, moto):
    """No runtime pods here: this checks scoping (which namespaces, which etcd prefix)."""
    api = KubeApi(tmp_path, NAMESPACE)
    async with api:
        world = World(tmp_path, etcd_server, moto)
        world.api = api
        for namespace, labels in (("team-a", {"modelmesh-enabled": "true"}), ("team-b", {})):
            api.put("v1/namespaces", None, {"apiVersion": "v1", "kind": "Namespace",
                                             "metadata": {"name": namespace, "labels": labels}})
        argv = [sys.executable, "-m", "mesh.cli", "operator", "--etcd", etcd_server.endpoint, "--fabric", "home",
                "--namespace", NAMESPACE, "--cluster-scope", "--resync-s", "1", "--lease-ttl-s", "3"]
        with open(world.operator_log, "ab") as log_file:
            world.operator = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO,
                                              env={**os.environ, "KUBECONFIG": str(api.kubeconfig)})
        try:
            for namespace in ("team-a", "team-b"):
                manifest = sample("example-onnx-mnist-predictor.yaml")
                manifest["metadata"]["namespace"] = namespace
                api.put(PREDICTORS, namespace, manifest)

            def vmodels_of(fabric: str) -> set[str]:
                world.fabric.keys = world.fabric.keys.__class__(fabric)
                return etcd_keys(world, "vmodels")

            await world.until(lambda: "example-onnx-mnist" in vmodels_of("team-a"), "team-a's fabric to get the vmodel")
            # Cluster scope: each served namespace gets its own Service, router and controller.
            await world.until(lambda: all(api.get(resource, "team-a", name) is not None for resource, name in (
                ("v1/services", "modelmesh-serving"), ("apps/v1/deployments", "modelmesh-serving-router"),
                ("apps/v1/deployments", "modelmesh-serving-controller"))), "team-a's Service, router and controller")
            router = api.get("apps/v1/deployments", "team-a", "modelmesh-serving-router")
            kubernetes_validate.validate(_without_server_fields(router), K8S_VERSION, strict=True)
            args = router["spec"]["template"]["spec"]["containers"][0]["args"]
            parsed = router_server.build_parser().parse_args(args[1:])  # meshserve's own parser takes them
            assert parsed.fabric == "team-a" and parsed.port == 8033
            controller = api.get("apps/v1/deployments", "team-a", "modelmesh-serving-controller")
            kubernetes_validate.validate(_without_server_fields(controller), K8S_VERSION, strict=True)
            args = controller["spec"]["template"]["spec"]["containers"][0]["args"]
            assert controller_cli.build_parser().parse_args(args[1:]).fabric == "team-a"
            # Those pods mount team-a's model-serving-etcd, which the operator writes from its own connection.
            secret = api.get("v1/secrets", "team-a", "model-serving-etcd")
            kubernetes_validate.validate(_without_server_fields(secret), K8S_VERSION, strict=True)
            connection = etcd_connection_values(base64.b64decode(secret["data"]["etcd_connection"]).decode())
            assert connection["etcd"] == etcd_server.endpoint.split("://")[-1]
            assert api.get("v1/secrets", "team-b", "model-serving-etcd") is None
            assert "example-onnx-mnist" not in vmodels_of("team-b")
            assert "status" not in api.get(PREDICTORS, "team-b", "example-onnx-mnist")
            assert not api.get(PREDICTORS, "team-b", "example-onnx-mnist")["metadata"].get("finalizers")

            await world.patch_namespace("team-b", {"metadata": {"labels": {"modelmesh-enabled": "true"}}})
            await world.until(lambda: "example-onnx-mnist" in vmodels_of("team-b"),
                              "team-b's predictor to be served once the namespace is labelled")
        finally:
            await asyncio.to_thread(world.stop_operator)


async def test_a_modelmesh_inference_service_loads_from_its_storage_uri_and_answers_by_name(world, moto):
    put_model(moto, "isvc/onnx-add/model.onnx", offset=5.0)
    isvc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "onnx-add", "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh",
                                                             "serving.kserve.io/secretKey": "localMinIO"}},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"},
                                             "storageUri": f"s3://{BUCKET}/isvc/onnx-add/model.onnx"}}}}
    model_id = mesh_model("InferenceService", NAMESPACE, "onnx-add", isvc).model_id
    assert model_id.startswith("onnx-add__isvc-")
    await world.create(ISVCS, isvc)

    def ready() -> bool:
        conditions = {c["type"]: c["status"] for c in world.status(ISVCS, "onnx-add").get("conditions", [])}
        return conditions.get("Ready") == "True" and conditions.get("PredictorReady") == "True"

    await world.until(ready, "the InferenceService to be Ready")
    status = world.status(ISVCS, "onnx-add")
    crds.validate_status("InferenceService", status)
    assert status["modelStatus"]["states"]["activeModelState"] == "Loaded"
    assert status["url"] == f"grpc://modelmesh-serving.{NAMESPACE}:8033"
    name, y = await asyncio.to_thread(infer, world.fabric.routers[0].port, "onnx-add", np.ones((1, 4), np.float32))
    assert name == model_id
    np.testing.assert_allclose(y, np.full((1, 4), 6.0, np.float32))


async def test_a_runtime_with_reserved_names_is_refused_with_an_event_and_gets_no_pool(world):
    bad = copy.deepcopy(MESHSERVE_RUNTIME)
    bad["metadata"] = {"name": "uses-reserved-names"}
    bad["spec"]["containers"][0]["name"] = "mm"
    await world.create(CSR, bad)

    def warned() -> list[dict]:
        return [obj.raw for (resource, _, _), obj in world.api.emulator.objects.items()
                if resource.plural == "events" and not obj.deleted
                and obj.raw.get("reason") == "InvalidRuntime"
                and obj.raw.get("involvedObject", {}).get("name") == "uses-reserved-names"]

    await world.until(warned, "an InvalidRuntime event on the runtime")
    assert "mm" in warned()[0]["message"]
    assert world.object("apps/v1/deployments", "modelmesh-serving-uses-reserved-names") is None


async def test_without_etcd_flags_the_operator_reads_the_model_serving_etcd_secret(tmp_path, etcd_server, moto):
    import base64

    async with KubeApi(tmp_path, NAMESPACE) as api:
        connection = json.dumps({"endpoints": f"http://{etcd_server.endpoint}", "root_prefix": "from-the-secret"})
        api.put("v1/secrets", NAMESPACE, {"apiVersion": "v1", "kind": "Secret",
                                          "metadata": {"name": "model-serving-etcd", "namespace": NAMESPACE},
                                          "data": {"etcd_connection": base64.b64encode(connection.encode()).decode()}})
        world = World(tmp_path, etcd_server, moto)
        world.api = api
        argv = [sys.executable, "-m", "mesh.cli", "operator", "--namespace", NAMESPACE, "--fabric", "secret-test",
                "--lease-ttl-s", "3"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESHSERVE_")}
        with open(world.operator_log, "ab") as log_file:
            world.operator = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO,
                                              env={**env, "KUBECONFIG": str(api.kubeconfig)})
        try:
            await world.until(lambda: "leading (/from-the-secret/secret-test/operator-leader)" in world.log(),
                              "the operator to lead through the etcd the secret names")
        finally:
            await asyncio.to_thread(world.stop_operator)


async def test_a_predictor_and_an_inference_service_of_one_name_conflict_and_the_loser_deletes_cleanly(world, moto):
    put_model(moto, "onnx/mnist.onnx")
    predictor = sample("example-onnx-mnist-predictor.yaml")
    await world.create(PREDICTORS, predictor)
    await world.until(lambda: loaded(world.status(PREDICTORS, "example-onnx-mnist")), "the predictor to load")
    clash = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
             "metadata": {"name": "example-onnx-mnist",
                          "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh",
                                          "serving.kserve.io/secretKey": "localMinIO"}},
             "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"},
                                              "storageUri": f"s3://{BUCKET}/onnx/mnist.onnx"}}}}
    await world.create(ISVCS, clash)
    await world.until(lambda: (world.status(ISVCS, "example-onnx-mnist").get("modelStatus", {})
                               .get("lastFailureInfo", {}).get("message", "")).startswith("Predictor already exists"),
                      "the InferenceService to report the name taken by another source")
    crds.validate_status("InferenceService", world.status(ISVCS, "example-onnx-mnist"))

    await world.delete(ISVCS, "example-onnx-mnist")
    await world.until(lambda: world.object(ISVCS, "example-onnx-mnist") is None,
                      "the InferenceService's finalizer to be released")
    assert "example-onnx-mnist" in etcd_keys(world, "vmodels"), "the Predictor's vmodel must stay"
    assert loaded(world.status(PREDICTORS, "example-onnx-mnist"))
