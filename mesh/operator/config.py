"""The `model-serving-config` ConfigMap's `config.yaml`, as modelmesh-serving users write it.

`parse_config(text)` returns a `ServingConfig` holding modelmesh-serving's defaults
(`pkg/config/config.go` `defaults()` and `config/default/config-defaults.yaml`) overridden by
the keys the text sets, and the keys meshserve does not use, so that the operator can log them
once per change of the ConfigMap. Changes apply without a restart: the operator parses the text
again when the ConfigMap changes and rebuilds what depends on it.

Keys are matched without regard to case, as upstream's viper matches them (`podsPerRuntime`,
`PodsPerRuntime`); nested keys are reported with dots (`restProxy.image`). Keys upstream knows
but meshserve has no use for (`modelMeshImage`, `modelMeshResources`, `storageHelperImage`,
`restProxy.image`, `builtInServerTypes`, `payloadProcessors`, ...) are reported as unknown
too: they are read by nothing here. A key set to null keeps its default.

Types are checked as upstream's decoder would take them, a little stricter: an integer may be
written as a decimal string (`"8033"`), a boolean as `"true"`/`"false"`, a string as a number;
anything else (a list where a number belongs, `yes` for a port, a label value that is not a
string) raises `ValueError` naming the key. Ranges are checked too (ports 1-65535,
`metrics.scheme` http|https, `tls.clientAuth` require|optional or empty, the Service name a
DNS-1035 label), because a bad value would otherwise fail later, far from its cause.

Pure: PyYAML only (no kopf, no Kubernetes client).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml

__all__ = [
    "CONFIGMAP_KEY",
    "CONFIGMAP_NAME",
    "DEFAULT_CONFIG",
    "MetricsConfig",
    "RestProxyConfig",
    "ScaleToZeroConfig",
    "ServingConfig",
    "TlsConfig",
    "parse_config",
]

#: The ConfigMap users edit, in the controller's namespace, and its one key.
CONFIGMAP_NAME = "model-serving-config"
CONFIGMAP_KEY = "config.yaml"


@dataclass(frozen=True)
class RestProxyConfig:
    """`restProxy`: the REST V2 port (8008). In meshserve the router serves REST itself."""

    enabled: bool = True
    port: int = 8008


@dataclass(frozen=True)
class MetricsConfig:
    """`metrics`: the Prometheus port of every pod, and the scheme upstream's pods serve it with."""

    enabled: bool = True
    port: int = 2112
    scheme: str = "https"


@dataclass(frozen=True)
class ScaleToZeroConfig:
    """`scaleToZero`: a runtime no Predictor needs goes to zero pods after the grace period."""

    enabled: bool = True
    grace_period_seconds: int = 60


@dataclass(frozen=True)
class TlsConfig:
    """`tls`: TLS on the inference Service when `secret_name` is set; mutual when `client_auth` is."""

    secret_name: str = ""
    client_auth: str = ""  # "", "require" or "optional"


def _frozen_map(value: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return MappingProxyType(dict(value or {}))


@dataclass(frozen=True)
class ServingConfig:
    """One snapshot of `config.yaml` with upstream's defaults; immutable, safe to share.

    `runtime_pod_labels` and `runtime_pod_annotations` are read-only mappings (left out of the
    hash, so a `ServingConfig` can still be a dict key or be cached on).
    """

    inference_service_name: str = "modelmesh-serving"
    inference_service_port: int = 8033
    pods_per_runtime: int = 2
    headless_service: bool = True
    rest_proxy: RestProxyConfig = RestProxyConfig()
    metrics: MetricsConfig = MetricsConfig()
    scale_to_zero: ScaleToZeroConfig = ScaleToZeroConfig()
    grpc_max_message_size_bytes: int = 16 * 1024 * 1024
    tls: TlsConfig = TlsConfig()
    storage_secret_name: str = "storage-config"
    runtime_pod_labels: Mapping[str, str] = field(default_factory=_frozen_map, hash=False)
    runtime_pod_annotations: Mapping[str, str] = field(default_factory=_frozen_map, hash=False)
    allow_any_pvc: bool = False
    enable_access_logging: bool = False
    # Upstream keys outside the list above that shape the runtime pods the same way there.
    service_account_name: str = ""
    image_pull_secrets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Constructed directly with plain dicts (tests, callers): keep them read-only copies.
        for name in ("runtime_pod_labels", "runtime_pod_annotations"):
            object.__setattr__(self, name, _frozen_map(getattr(self, name)))
        object.__setattr__(self, "image_pull_secrets", tuple(self.image_pull_secrets))


DEFAULT_CONFIG = ServingConfig()

# -- value checkers: each takes (dotted key, raw value) and returns the value or raises ------

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_INT_TEXT = re.compile(r"^[+-]?[0-9]+$")


def _bad(key: str, what: str, value: Any) -> ValueError:
    return ValueError(f"{CONFIGMAP_NAME} {CONFIGMAP_KEY}: {key} must be {what}, got {value!r}")


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _bad(key, "true or false", value)


def _int(key: str, value: Any, low: int, high: int | None) -> int:
    if isinstance(value, bool):
        raise _bad(key, "an integer", value)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _INT_TEXT.match(value.strip()):
        number = int(value.strip())
    else:
        raise _bad(key, "an integer", value)
    if number < low or (high is not None and number > high):
        span = f"from {low} to {high}" if high is not None else f"{low} or more"
        raise _bad(key, f"an integer {span}", value)
    return number


def _port(key: str, value: Any) -> int:
    return _int(key, value, 1, 65535)


def _count(key: str, value: Any) -> int:
    return _int(key, value, 0, 65535)


def _positive(key: str, value: Any) -> int:
    return _int(key, value, 1, None)


def _str(key: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise _bad(key, "a string", value)


def _service_name(key: str, value: Any) -> str:
    name = _str(key, value)
    if len(name) > 63 or not _DNS1035.match(name):
        raise _bad(key, "a DNS-1035 label (lower-case letters, digits and '-', 63 at most, "
                   "starting with a letter)", value)
    return name


def _secret_name(key: str, value: Any) -> str:
    name = _str(key, value)
    if name and (len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name)):
        raise _bad(key, "a Secret name (a DNS-1123 subdomain)", value)
    return name


def _required_secret_name(key: str, value: Any) -> str:
    name = _secret_name(key, value)
    if not name:
        raise _bad(key, "a Secret name", value)
    return name


def _one_of(*choices: str) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        text = _str(key, value).strip()
        if text not in choices:
            raise _bad(key, " or ".join(repr(c) for c in choices if c) + (" or empty" if "" in choices else ""), value)
        return text
    return check


def _string_map(key: str, value: Any) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise _bad(key, "a mapping of strings to strings", value)
    result: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str):
            raise _bad(f"{key} key", "a string", k)
        if not isinstance(v, str):
            raise _bad(f"{key}.{k}", "a string (quote it)", v)
        result[k] = v
    return _frozen_map(result)


def _pull_secrets(key: str, value: Any) -> tuple[str, ...]:
    # Upstream: a list of LocalObjectReference, `[{name: my-registry}]`.
    if not isinstance(value, list):
        raise _bad(key, "a list of {name: <secret>}", value)
    names: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping) or set(item) != {"name"}:
            raise _bad(f"{key}[{i}]", "{name: <secret>}", item)
        names.append(_required_secret_name(f"{key}[{i}].name", item["name"]))
    return tuple(dict.fromkeys(names))


# -- the schema: config.yaml key -> (ServingConfig field, checker or nested section) ---------

_Checker = Callable[[str, Any], Any]


@dataclass(frozen=True)
class _Section:
    cls: type
    keys: Mapping[str, tuple[str, _Checker]]


_SCHEMA: Mapping[str, tuple[str, _Checker | _Section]] = {
    "inferenceServiceName": ("inference_service_name", _service_name),
    "inferenceServicePort": ("inference_service_port", _port),
    "podsPerRuntime": ("pods_per_runtime", _count),
    "headlessService": ("headless_service", _bool),
    "restProxy": ("rest_proxy", _Section(RestProxyConfig, {
        "enabled": ("enabled", _bool),
        "port": ("port", _port),
    })),
    "metrics": ("metrics", _Section(MetricsConfig, {
        "enabled": ("enabled", _bool),
        "port": ("port", _port),
        "scheme": ("scheme", _one_of("http", "https")),
    })),
    "scaleToZero": ("scale_to_zero", _Section(ScaleToZeroConfig, {
        "enabled": ("enabled", _bool),
        "gracePeriodSeconds": ("grace_period_seconds", _count),
    })),
    "grpcMaxMessageSizeBytes": ("grpc_max_message_size_bytes", _positive),
    "tls": ("tls", _Section(TlsConfig, {
        "secretName": ("secret_name", _secret_name),
        "clientAuth": ("client_auth", _one_of("", "require", "optional")),
    })),
    "storageSecretName": ("storage_secret_name", _required_secret_name),
    "runtimePodLabels": ("runtime_pod_labels", _string_map),
    "runtimePodAnnotations": ("runtime_pod_annotations", _string_map),
    "allowAnyPVC": ("allow_any_pvc", _bool),
    "enableAccessLogging": ("enable_access_logging", _bool),
    "serviceAccountName": ("service_account_name", _str),
    "imagePullSecrets": ("image_pull_secrets", _pull_secrets),
}


def _read(data: Mapping[Any, Any], schema: Mapping[str, tuple[str, Any]], prefix: str,
          unknown: list[str]) -> dict[str, Any]:
    """The fields `data` sets, checked; keys are matched case-insensitively, and those the schema
    lacks go to `unknown` (dotted with `prefix`) in the text's order."""
    by_lower = {name.lower(): name for name in schema}
    seen: dict[str, str] = {}
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key)
        canonical = by_lower.get(key.lower())
        if canonical is None:
            unknown.append(prefix + key)
            continue
        if canonical in seen:
            raise ValueError(f"{CONFIGMAP_NAME} {CONFIGMAP_KEY}: {prefix}{canonical} is given twice "
                             f"({seen[canonical]!r} and {key!r}; keys are matched regardless of case)")
        seen[canonical] = key
        if value is None:
            continue  # null keeps the default
        attr, check = schema[canonical]
        if isinstance(check, _Section):
            if not isinstance(value, Mapping):
                raise _bad(prefix + key, "a mapping", value)
            values[attr] = check.cls(**_read(value, check.keys, f"{prefix}{key}.", unknown))
        else:
            values[attr] = check(prefix + key, value)
    return values


def parse_config(text: str | None) -> tuple[ServingConfig, list[str]]:
    """`config.yaml` -> (its `ServingConfig`, the keys meshserve does not use, dotted, as written).

    Empty or missing text gives the defaults. Raises `ValueError` naming the key for a value of
    the wrong type or out of range, and for text that is not a YAML mapping.
    """
    if text is None or not text.strip():
        return DEFAULT_CONFIG, []
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{CONFIGMAP_NAME} {CONFIGMAP_KEY} is not valid YAML: {exc}") from exc
    if data is None:
        return DEFAULT_CONFIG, []
    if not isinstance(data, Mapping):
        raise ValueError(f"{CONFIGMAP_NAME} {CONFIGMAP_KEY} must be a mapping of settings, "
                         f"got {type(data).__name__}")
    unknown: list[str] = []
    config = ServingConfig(**_read(data, _SCHEMA, "", unknown))
    return config, unknown
