"""loadModel with a storage location: the runtime pulls from a real S3 server (moto) and serves it."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.support import models
from tests.support.moto_server import MotoServer
from tests.support.runtime_process import start_runtime_process

BUCKET = "models"


@pytest.fixture(scope="module")
def s3_runtime(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3-load")
    with MotoServer(auth=True) as server:
        s3 = server.client()
        s3.create_bucket(Bucket=BUCKET)
        model_file = models.add_onnx(root / "src" / "model.onnx", offset=5.0)
        s3.upload_file(str(model_file), BUCKET, "team-a/add/1/model.onnx")
        config = root / "storage-config"
        config.mkdir()
        (config / "default").write_text(json.dumps({
            "type": "s3", "access_key_id": server.access_key_id, "secret_access_key": server.secret_access_key,
            "endpoint_url": server.endpoint_url, "region": server.region, "default_bucket": BUCKET,
        }))
        runtime = start_runtime_process(root / "rt", "--storage-config-dir", str(config), capacity="256MiB")
        try:
            yield runtime, server
        finally:
            assert runtime.stop() == 0
    log = runtime.log()
    assert server.secret_access_key not in log, "a credential reached the runtime's log"


def test_model_from_s3_loads_and_answers(s3_runtime):
    runtime, _ = s3_runtime
    key = json.dumps({"storage_key": "default", "storage_params": {"type": "s3", "bucket": BUCKET}})
    assert runtime.load("s3-add", "team-a/add", "onnx", key=key).sizeInBytes > 0
    with grpcclient.InferenceServerClient(runtime.address) as client:
        tensor = grpcclient.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 4), np.float32))
        assert client.infer("s3-add", [tensor]).as_numpy("y").tolist() == [[5.0] * 4]


def test_s3_uri_form_loads(s3_runtime):
    runtime, _ = s3_runtime
    assert runtime.load("s3-uri", f"s3://{BUCKET}/team-a/add", "onnx").sizeInBytes > 0


def test_missing_object_fails_naming_the_location(s3_runtime):
    runtime, server = s3_runtime
    with pytest.raises(grpc.RpcError) as caught:
        runtime.load("ghost", f"s3://{BUCKET}/no/such/prefix", "onnx")
    assert caught.value.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)
    assert "no/such/prefix" in caught.value.details()
    assert server.secret_access_key not in caught.value.details()


def test_unknown_scheme_is_invalid_argument(s3_runtime):
    runtime, _ = s3_runtime
    with pytest.raises(grpc.RpcError) as caught:
        runtime.load("ftp", "ftp://example/model", "onnx")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ftp" in caught.value.details()
