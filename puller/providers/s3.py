"""S3 (and S3-compatible: MinIO, Ceph, moto) through boto3.

Config fields (ModelMesh storage-config names): ``access_key_id``, ``secret_access_key``,
``session_token``, ``endpoint_url``, ``region``, ``bucket``/``default_bucket``,
``anonymous`` (unsigned requests), ``addressing_style``, ``verify_ssl`` / ``certificate``
(a CA bundle path). Environment fallback: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``/``S3_ENDPOINT``,
``AWS_REGION``/``AWS_DEFAULT_REGION``. With no keys at all, boto3's own chain applies
(instance profile, IRSA, ...).

Integrity: sizes always; the ETag as MD5 when it is one (single-part upload, no SSE-KMS or
SSE-C); ``ChecksumSHA256`` when the object has a full-object one. Ranged GETs carry
``If-Match`` so an object replaced mid-download is caught (and retried whole).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import boto3
import botocore.config
import botocore.exceptions
from botocore import UNSIGNED

from puller.errors import (
    IntegrityError,
    InvalidStorageUri,
    PullError,
    StorageAccessDenied,
    StorageNotFound,
    StorageUnavailable,
)
from puller.providers.base import ClientCache, Listing, RemoteObject
from puller.spec import Checksum, Location, S3Location, check_relative_key
from puller.storage_config import StorageEntry
from puller.transfer import FetchedFile, TransferConfig, download_to_file

__all__ = ["S3Config", "S3Provider"]

_MD5_ETAG = re.compile(r'^"?([0-9a-f]{32})"?$')
_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
           "InvalidToken", "ExpiredToken", "AccountProblem", "InvalidClientTokenId", "401"}
_TRANSIENT = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
              "InternalError", "ServiceUnavailable", "503", "500", "PreconditionFailed", "412"}


@dataclass(frozen=True)
class S3Config:
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    endpoint_url: str | None = None
    region: str | None = None
    default_bucket: str | None = None
    anonymous: bool = False
    addressing_style: str | None = None
    verify: bool | str = True


class S3Provider:
    scheme: ClassVar[str] = "s3"

    def __init__(self, *, max_pool_connections: int = 64):
        self._max_pool = max_pool_connections
        self._clients: ClientCache[S3Config, Any] = ClientCache()

    # -- config -------------------------------------------------------------------------

    def config_from_entry(self, entry: StorageEntry) -> S3Config:
        verify: bool | str = True
        if entry.get("certificate", "ca_bundle"):
            verify = str(entry.get("certificate", "ca_bundle"))
        elif str(entry.get("verify_ssl") or "true").lower() in ("false", "0", "no"):
            verify = False
        return S3Config(
            access_key_id=entry.get("access_key_id"),
            secret_access_key=entry.get("secret_access_key"),
            session_token=entry.get("session_token"),
            endpoint_url=entry.get("endpoint_url", "endpoint"),
            region=entry.get("region", "region_name"),
            default_bucket=entry.get("bucket", "default_bucket"),
            anonymous=str(entry.get("anonymous") or "false").lower() in ("true", "1", "yes"),
            addressing_style=entry.get("addressing_style"),
            verify=verify,
        )

    def config_from_env(self, env: Mapping[str, str]) -> S3Config:
        return S3Config(
            access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or env.get("S3_ENDPOINT") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
        )

    def entry_match(self, location: Location) -> Mapping[str, str | None]:
        assert isinstance(location, S3Location)
        return {"bucket": location.bucket or None, "default_bucket": location.bucket or None}

    # -- operations ---------------------------------------------------------------------

    def list(self, config: S3Config, location: Location, params: Mapping[str, Any]) -> Listing:
        assert isinstance(location, S3Location)
        bucket = self._bucket(config, location)
        display = f"s3://{bucket}/{location.key}"
        client = self._client(config)
        key = location.key
        if key and not key.endswith("/"):
            try:
                head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
            except botocore.exceptions.ClientError as exc:
                if _code(exc) not in _NOT_FOUND:
                    raise _translate(exc, display) from exc
            except Exception as exc:  # noqa: BLE001 - translated, chained
                raise _translate(exc, display) from exc
            else:
                checksums = []
                sha = head.get("ChecksumSHA256")
                if sha and "-" not in sha and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT":
                    checksums.append(Checksum("sha256", _b64_to_hex(sha)))
                obj = RemoteObject(ref=key, relative="", size=int(head["ContentLength"]),
                                   checksums=tuple(checksums), display=display, version=head.get("ETag"))
                return Listing(single=True, objects=(obj,), name=PurePosixPath(key).name)
        prefix = f"{key.rstrip('/')}/" if key else ""
        objects: list[RemoteObject] = []
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", ()):
                    name = item["Key"]
                    relative = name[len(prefix):]
                    if not relative or relative.endswith("/"):
                        if item.get("Size", 0) == 0:
                            continue  # a "folder" marker
                    where = f"s3://{bucket}/{name}"
                    relative = check_relative_key(relative, where=where)
                    objects.append(RemoteObject(ref=name, relative=relative, size=int(item["Size"]),
                                                display=where, version=item.get("ETag")))
        except PullError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc, display) from exc
        if not objects:
            raise StorageNotFound(f"{display}: no such object, and no objects under the prefix {prefix!r}",
                                  location=display)
        return Listing(single=False, objects=tuple(objects))

    def download(self, config: S3Config, location: Location, obj: RemoteObject, dest: Path, *,
                 transfer: TransferConfig, cancel: threading.Event, want_md5: bool = False) -> FetchedFile:
        assert isinstance(location, S3Location)
        bucket = self._bucket(config, location)
        client = self._client(config)
        first: dict[str, Any] = {}
        # A plain-MD5 ETag will be checked, so the MD5 is computed while downloading.
        want_md5 = want_md5 or bool(_MD5_ETAG.match(obj.version or ""))
        first_lock = threading.Lock()

        def read_range(start: int, end: int | None) -> Iterator[bytes]:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Key": obj.ref}
            if end is not None:
                kwargs["Range"] = f"bytes={start}-{end - 1}"
            with first_lock:
                if "ETag" in first:
                    kwargs["IfMatch"] = first["ETag"]
            try:
                resp = client.get_object(**kwargs)
                with first_lock:
                    first.setdefault("ETag", resp.get("ETag"))
                    first.setdefault("SSE", resp.get("ServerSideEncryption"))
                    first.setdefault("SSEC", resp.get("SSECustomerAlgorithm"))
                body = resp["Body"]
                try:
                    yield from body.iter_chunks(1024 * 1024)
                finally:
                    body.close()
            except PullError:
                raise
            except GeneratorExit:
                raise
            except Exception as exc:  # noqa: BLE001
                raise _translate(exc, obj.display) from exc

        fetched = download_to_file(dest, obj.size, read_range, where=obj.display, config=transfer, cancel=cancel,
                                   want_md5=want_md5)
        etag = first.get("ETag") or ""
        match = _MD5_ETAG.match(etag)
        if match and fetched.md5 and first.get("SSE") in (None, "AES256") and not first.get("SSEC"):
            if match.group(1) != fetched.md5:
                raise IntegrityError(f"{obj.display}: MD5 of the downloaded bytes does not match the ETag",
                                     location=obj.display)
        return fetched

    def close(self) -> None:
        self._clients.close()

    # -- helpers ------------------------------------------------------------------------

    def _bucket(self, config: S3Config, location: S3Location) -> str:
        bucket = location.bucket or config.default_bucket
        if not bucket:
            raise InvalidStorageUri(f"s3://?/{location.key}: no bucket in the model key or the storage config")
        return bucket

    def _client(self, config: S3Config) -> Any:
        return self._clients.get(config, lambda: self._new_client(config))

    def _new_client(self, config: S3Config) -> Any:
        session = boto3.session.Session()
        boto_config = botocore.config.Config(
            max_pool_connections=self._max_pool,
            retries={"total_max_attempts": 2, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
            signature_version=UNSIGNED if config.anonymous else None,
            s3={"addressing_style": config.addressing_style or ("path" if config.endpoint_url else "auto")},
        )
        return session.client(
            "s3",
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.secret_access_key,
            aws_session_token=config.session_token,
            endpoint_url=config.endpoint_url,
            region_name=config.region or "us-east-1",
            verify=config.verify,
            config=boto_config,
        )


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _translate(exc: BaseException, where: str) -> PullError:
    """botocore failure -> our error; the message has the location, code and status only."""
    if isinstance(exc, botocore.exceptions.ClientError):
        code = _code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        detail = f"{code or 'error'} (HTTP {status})"
        if code == "NoSuchBucket":
            return StorageNotFound(f"{where}: bucket does not exist: {detail}", location=where)
        if code in _NOT_FOUND:
            return StorageNotFound(f"{where}: not found: {detail}", location=where)
        if code in _DENIED:
            return StorageAccessDenied(f"{where}: access denied: {detail}", location=where)
        if code in ("InvalidBucketName",):
            return InvalidStorageUri(f"{where}: invalid bucket: {detail}", location=where)
        if code in _TRANSIENT or (isinstance(status, int) and (status >= 500 or status == 429)):
            return StorageUnavailable(f"{where}: store unavailable: {detail}", location=where)
        return PullError(f"{where}: request refused: {detail}", location=where)
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return StorageAccessDenied(f"{where}: no credentials found", location=where)
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        return InvalidStorageUri(f"{where}: invalid request parameters", location=where)
    if isinstance(exc, (botocore.exceptions.HTTPClientError, botocore.exceptions.ConnectionError,
                        botocore.exceptions.ResponseStreamingError,
                        botocore.exceptions.IncompleteReadError, OSError)):
        return StorageUnavailable(f"{where}: connection failed: {type(exc).__name__}", location=where)
    return StorageUnavailable(f"{where}: unexpected failure: {type(exc).__name__}", location=where)


def _b64_to_hex(value: str) -> str:
    import base64

    return base64.b64decode(value).hex()
