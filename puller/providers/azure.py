"""Azure Blob Storage through ``azure-storage-blob`` (the synchronous client, in threads).

Config fields (storage-config entry of type ``azure``): ``connection_string``, or
``account_name`` with ``account_key`` or ``sas_token`` (or neither: anonymous, for public
containers); ``endpoint_url`` to point at another endpoint (Azurite, sovereign clouds);
``container``. Environment fallback: ``AZURE_STORAGE_CONNECTION_STRING``, or
``AZURE_STORAGE_ACCOUNT`` with ``AZURE_STORAGE_KEY`` / ``AZURE_STORAGE_SAS_TOKEN``.

Integrity: sizes; ``Content-MD5`` when the blob has one. Ranged reads are conditional on
the ETag seen at listing, so a blob replaced mid-download is caught and retried whole.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from azure.core import MatchConditions
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobServiceClient

from puller.errors import (
    InvalidStorageUri,
    PullError,
    StorageAccessDenied,
    StorageNotFound,
    StorageUnavailable,
)
from puller.providers.base import ClientCache, Listing, RemoteObject
from puller.spec import AzureLocation, Checksum, Location, check_relative_key
from puller.storage_config import StorageEntry
from puller.transfer import FetchedFile, TransferConfig, download_to_file

__all__ = ["AzureConfig", "AzureProvider"]


@dataclass(frozen=True)
class AzureConfig:
    account_name: str | None = None
    account_key: str | None = field(default=None, repr=False)
    sas_token: str | None = field(default=None, repr=False)
    connection_string: str | None = field(default=None, repr=False)
    endpoint_url: str | None = None
    container: str | None = None


class AzureProvider:
    scheme: ClassVar[str] = "azure"

    def __init__(self) -> None:
        self._clients: ClientCache[tuple[AzureConfig, str | None], BlobServiceClient] = ClientCache()

    def config_from_entry(self, entry: StorageEntry) -> AzureConfig:
        return AzureConfig(
            account_name=entry.get("account_name", "storage_account"),
            account_key=entry.get("account_key"),
            sas_token=entry.get("sas_token"),
            connection_string=entry.get("connection_string"),
            endpoint_url=entry.get("endpoint_url", "blob_endpoint"),
            container=entry.get("container", "bucket", "default_bucket"),
        )

    def config_from_env(self, env: Mapping[str, str]) -> AzureConfig:
        return AzureConfig(
            account_name=env.get("AZURE_STORAGE_ACCOUNT") or None,
            account_key=env.get("AZURE_STORAGE_KEY") or None,
            sas_token=env.get("AZURE_STORAGE_SAS_TOKEN") or None,
            connection_string=env.get("AZURE_STORAGE_CONNECTION_STRING") or None,
        )

    def entry_match(self, location: Location) -> Mapping[str, str | None]:
        assert isinstance(location, AzureLocation)
        return {"account_name": location.account}

    # -- operations ---------------------------------------------------------------------

    def list(self, config: AzureConfig, location: Location, params: Mapping[str, Any]) -> Listing:
        assert isinstance(location, AzureLocation)
        container = self._container(config, location)
        display = _display(config, location, container, location.path)
        service = self._service(config, location)
        container_client = service.get_container_client(container)
        path = location.path
        try:
            if path and not path.endswith("/"):
                try:
                    props = container_client.get_blob_client(path).get_blob_properties()
                except ResourceNotFoundError as exc:
                    if (exc.error_code or "") == "ContainerNotFound":
                        raise
                else:
                    obj = RemoteObject(ref=f"{path}|{props.etag}", relative="", size=int(props.size),
                                       checksums=_md5(props), display=display)
                    return Listing(single=True, objects=(obj,), name=PurePosixPath(path).name)
            prefix = f"{path.rstrip('/')}/" if path else ""
            objects = []
            for blob in container_client.list_blobs(name_starts_with=prefix or None):
                relative = blob.name[len(prefix):]
                if not relative or relative.endswith("/"):
                    if not blob.size:
                        continue  # a "folder" marker
                where = _display(config, location, container, blob.name)
                relative = check_relative_key(relative, where=where)
                objects.append(RemoteObject(ref=f"{blob.name}|{blob.etag}", relative=relative, size=int(blob.size),
                                            checksums=_md5(blob), display=where))
        except PullError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc, display) from exc
        if not objects:
            raise StorageNotFound(f"{display}: no such blob, and no blobs under the prefix {prefix!r}",
                                  location=display)
        return Listing(single=False, objects=tuple(objects))

    def download(self, config: AzureConfig, location: Location, obj: RemoteObject, dest: Path, *,
                 transfer: TransferConfig, cancel: threading.Event, want_md5: bool = False) -> FetchedFile:
        assert isinstance(location, AzureLocation)
        name, _, etag = obj.ref.rpartition("|")
        blob = self._service(config, location).get_container_client(
            self._container(config, location)).get_blob_client(name)

        def read_range(start: int, end: int | None) -> Iterator[bytes]:
            kwargs: dict[str, Any] = {"max_concurrency": 1}
            if etag:
                kwargs.update(etag=etag, match_condition=MatchConditions.IfNotModified)
            if end is not None:
                kwargs.update(offset=start, length=end - start)
            try:
                yield from blob.download_blob(**kwargs).chunks()
            except PullError:
                raise
            except GeneratorExit:
                raise
            except Exception as exc:  # noqa: BLE001
                raise _translate(exc, obj.display) from exc

        return download_to_file(dest, obj.size, read_range, where=obj.display, config=transfer, cancel=cancel,
                                want_md5=want_md5)

    def close(self) -> None:
        self._clients.close()

    # -- helpers ------------------------------------------------------------------------

    def _container(self, config: AzureConfig, location: AzureLocation) -> str:
        container = location.container or config.container
        if not container:
            raise InvalidStorageUri(f"{location.display}: no container in the model key or the storage config")
        return container

    def _service(self, config: AzureConfig, location: AzureLocation) -> BlobServiceClient:
        return self._clients.get((config, location.account), lambda: self._new_service(config, location))

    def _new_service(self, config: AzureConfig, location: AzureLocation) -> BlobServiceClient:
        # Our puller retries with backoff; the SDK's own long retry loop would hide that.
        options: dict[str, Any] = {"retry_total": 1, "connection_timeout": 10, "read_timeout": 60,
                                   "max_single_get_size": 8 * 1024 * 1024,
                                   "max_chunk_get_size": 4 * 1024 * 1024}
        try:
            if config.connection_string:
                client = BlobServiceClient.from_connection_string(config.connection_string, **options)
            else:
                account = config.account_name or location.account
                if not account and not config.endpoint_url:
                    raise InvalidStorageUri(f"{location.display}: no Azure storage account configured")
                url = config.endpoint_url or f"https://{account}.blob.core.windows.net"
                credential: Any = None
                if config.account_key:
                    credential = {"account_name": account, "account_key": config.account_key}
                elif config.sas_token:
                    credential = config.sas_token
                client = BlobServiceClient(account_url=url, credential=credential, **options)
        except PullError:
            raise
        except Exception:  # noqa: BLE001 - the SDK's message may quote the connection string
            raise InvalidStorageUri(f"{location.display}: the Azure storage config is malformed") from None
        return client


def _display(config: AzureConfig, location: AzureLocation, container: str, path: str) -> str:
    account = location.account or config.account_name
    host = f"{account}.blob.core.windows.net" if account else "azure-blob"
    return f"https://{host}/{container}/{path}"


def _md5(props: Any) -> tuple[Checksum, ...]:
    settings = getattr(props, "content_settings", None)
    md5 = getattr(settings, "content_md5", None) if settings else None
    return (Checksum("md5", bytes(md5).hex()),) if md5 else ()


def _translate(exc: BaseException, where: str) -> PullError:
    code = getattr(exc, "error_code", None) or ""
    status = getattr(exc, "status_code", None)
    detail = f"{code or type(exc).__name__}" + (f" (HTTP {status})" if status else "")
    if isinstance(exc, ResourceNotFoundError):
        what = "container does not exist" if code == "ContainerNotFound" else "not found"
        return StorageNotFound(f"{where}: {what}: {detail}", location=where)
    if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
        return StorageAccessDenied(f"{where}: access denied: {detail}", location=where)
    if isinstance(exc, ResourceModifiedError):
        return StorageUnavailable(f"{where}: blob changed during download: {detail}", location=where)
    if isinstance(exc, (ServiceRequestError, ServiceResponseError, OSError)):
        return StorageUnavailable(f"{where}: connection failed: {type(exc).__name__}", location=where)
    if isinstance(exc, HttpResponseError):
        if status is not None and (status >= 500 or status in (408, 429)):
            return StorageUnavailable(f"{where}: store unavailable: {detail}", location=where)
        if code == "InvalidResourceName":
            return InvalidStorageUri(f"{where}: invalid container or blob name: {detail}", location=where)
        return PullError(f"{where}: request refused: {detail}", location=where)
    return StorageUnavailable(f"{where}: unexpected failure: {type(exc).__name__}", location=where)
