"""Tests of mesh.operator.config: model-serving-config's config.yaml with upstream's defaults."""

from __future__ import annotations

import dataclasses

import pytest

from mesh.operator.config import (
    DEFAULT_CONFIG,
    MetricsConfig,
    RestProxyConfig,
    ScaleToZeroConfig,
    ServingConfig,
    TlsConfig,
    parse_config,
)

# -- defaults ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [None, "", "   \n", "# nothing set yet\n", "~\n"])
def test_empty_text_gives_the_defaults(text: str | None) -> None:
    assert parse_config(text) == (DEFAULT_CONFIG, [])


def test_defaults_are_upstreams() -> None:
    c = DEFAULT_CONFIG
    assert c.inference_service_name == "modelmesh-serving"
    assert c.inference_service_port == 8033
    assert c.pods_per_runtime == 2
    assert c.headless_service is True
    assert c.rest_proxy == RestProxyConfig(enabled=True, port=8008)
    assert c.metrics == MetricsConfig(enabled=True, port=2112, scheme="https")
    assert c.scale_to_zero == ScaleToZeroConfig(enabled=True, grace_period_seconds=60)
    assert c.grpc_max_message_size_bytes == 16777216
    assert c.tls == TlsConfig(secret_name="", client_auth="")
    assert c.storage_secret_name == "storage-config"
    assert dict(c.runtime_pod_labels) == {} and dict(c.runtime_pod_annotations) == {}
    assert c.allow_any_pvc is False
    assert c.enable_access_logging is False
    assert c.service_account_name == "" and c.image_pull_secrets == ()


# -- overrides -----------------------------------------------------------------------------

FULL = """
inferenceServiceName: my-serving
inferenceServicePort: 9033
podsPerRuntime: 3
headlessService: false
restProxy:
  enabled: false
  port: 9008
metrics:
  enabled: false
  port: 9112
  scheme: http
scaleToZero:
  enabled: false
  gracePeriodSeconds: 120
grpcMaxMessageSizeBytes: 33554432
tls:
  secretName: serving-tls
  clientAuth: require
storageSecretName: my-storage
runtimePodLabels:
  team: ml
runtimePodAnnotations:
  sidecar.istio.io/inject: "false"
allowAnyPVC: true
enableAccessLogging: true
serviceAccountName: runtime-sa
imagePullSecrets:
  - name: registry-a
  - name: registry-b
"""


def test_every_key_overrides_its_default() -> None:
    config, unknown = parse_config(FULL)
    assert unknown == []
    assert config == ServingConfig(
        inference_service_name="my-serving",
        inference_service_port=9033,
        pods_per_runtime=3,
        headless_service=False,
        rest_proxy=RestProxyConfig(enabled=False, port=9008),
        metrics=MetricsConfig(enabled=False, port=9112, scheme="http"),
        scale_to_zero=ScaleToZeroConfig(enabled=False, grace_period_seconds=120),
        grpc_max_message_size_bytes=33554432,
        tls=TlsConfig(secret_name="serving-tls", client_auth="require"),
        storage_secret_name="my-storage",
        runtime_pod_labels={"team": "ml"},
        runtime_pod_annotations={"sidecar.istio.io/inject": "false"},
        allow_any_pvc=True,
        enable_access_logging=True,
        service_account_name="runtime-sa",
        image_pull_secrets=("registry-a", "registry-b"),
    )


def test_a_partial_section_keeps_the_other_defaults() -> None:
    config, _ = parse_config("restProxy:\n  port: 9008\nscaleToZero:\n  gracePeriodSeconds: 5\n")
    assert config.rest_proxy == RestProxyConfig(enabled=True, port=9008)
    assert config.scale_to_zero == ScaleToZeroConfig(enabled=True, grace_period_seconds=5)
    assert config.metrics == DEFAULT_CONFIG.metrics


def test_keys_match_regardless_of_case_as_upstreams_viper() -> None:
    config, unknown = parse_config("PodsPerRuntime: 4\nRESTPROXY:\n  Enabled: false\n")
    assert unknown == []
    assert config.pods_per_runtime == 4
    assert config.rest_proxy.enabled is False


def test_null_keeps_the_default() -> None:
    config, unknown = parse_config("podsPerRuntime:\ntls:\nrestProxy:\n  port: ~\n")
    assert unknown == []
    assert config == DEFAULT_CONFIG


def test_numbers_and_booleans_may_be_quoted() -> None:
    config, _ = parse_config('inferenceServicePort: "9033"\nheadlessService: "False"\nserviceAccountName: 42\n')
    assert config.inference_service_port == 9033
    assert config.headless_service is False
    assert config.service_account_name == "42"


def test_unknown_keys_are_reported_dotted_in_order() -> None:
    text = """
podsPerRuntime: 1
modelMeshImage:
  name: kserve/modelmesh
  tag: latest
restProxy:
  enabled: true
  image:
    name: kserve/rest-proxy
metrics:
  disablePrometheusOperatorSupport: true
builtInServerTypes: [triton]
bogus: 1
"""
    config, unknown = parse_config(text)
    assert unknown == ["modelMeshImage", "restProxy.image", "metrics.disablePrometheusOperatorSupport",
                       "builtInServerTypes", "bogus"]
    assert config.pods_per_runtime == 1


def test_a_key_given_twice_in_different_case_is_refused() -> None:
    with pytest.raises(ValueError, match="podsPerRuntime is given twice"):
        parse_config("podsPerRuntime: 1\nPodsPerRuntime: 2\n")


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "key"), [
    ("podsPerRuntime: [1]", "podsPerRuntime"),
    ("podsPerRuntime: -1", "podsPerRuntime"),
    ("podsPerRuntime: true", "podsPerRuntime"),
    ("podsPerRuntime: 2.5", "podsPerRuntime"),
    ("inferenceServicePort: 0", "inferenceServicePort"),
    ("inferenceServicePort: 70000", "inferenceServicePort"),
    ("inferenceServiceName: Bad_Name", "inferenceServiceName"),
    ("inferenceServiceName: [a]", "inferenceServiceName"),
    ("headlessService: 3", "headlessService"),
    ("headlessService: maybe", "headlessService"),
    ("restProxy: 5", "restProxy"),
    ("restProxy:\n  port: abc", "restProxy.port"),
    ("restProxy:\n  enabled: {}", "restProxy.enabled"),
    ("metrics:\n  scheme: ftp", "metrics.scheme"),
    ("scaleToZero:\n  gracePeriodSeconds: -5", "scaleToZero.gracePeriodSeconds"),
    ("grpcMaxMessageSizeBytes: 0", "grpcMaxMessageSizeBytes"),
    ("tls:\n  clientAuth: always", "tls.clientAuth"),
    ("tls:\n  secretName: Not/A/Secret", "tls.secretName"),
    ("storageSecretName: ''", "storageSecretName"),
    ("runtimePodLabels: [a, b]", "runtimePodLabels"),
    ("runtimePodLabels:\n  version: 2", "runtimePodLabels.version"),
    ("runtimePodAnnotations:\n  flag: true", "runtimePodAnnotations.flag"),
    ("allowAnyPVC: 1", "allowAnyPVC"),
    ("enableAccessLogging: []", "enableAccessLogging"),
    ("imagePullSecrets: registry", "imagePullSecrets"),
    ("imagePullSecrets:\n  - registry", "imagePullSecrets[0]"),
])
def test_a_wrong_type_or_range_is_refused_naming_the_key(text: str, key: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_config(text)
    assert f" {key} must be" in str(caught.value)


def test_keys_are_named_as_written() -> None:
    with pytest.raises(ValueError, match=r" PODSPERRUNTIME must be an integer"):
        parse_config("PODSPERRUNTIME: many")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text", "42"])
def test_text_that_is_not_a_mapping_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="must be a mapping"):
        parse_config(text)


def test_invalid_yaml_is_refused() -> None:
    with pytest.raises(ValueError, match="not valid YAML"):
        parse_config("podsPerRuntime: [1\n")


# -- immutability --------------------------------------------------------------------------


def test_the_config_is_frozen_and_hashable() -> None:
    config, _ = parse_config("runtimePodLabels:\n  team: ml\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.pods_per_runtime = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.runtime_pod_labels["team"] = "other"  # type: ignore[index]
    assert hash(config) == hash(parse_config("runtimePodLabels:\n  team: ml\n")[0])
    assert config == parse_config("runtimePodLabels:\n  team: ml\n")[0]
    assert config != DEFAULT_CONFIG
