"""etcd over TLS: aetcd 1.0 dials plaintext only, so the client here opens its channel with
TLS credentials (the CA, a client certificate for etcd's `--client-cert-auth`, a name to
check in etcd's certificate) and otherwise behaves as aetcd's own.

The material is held as bytes (read once at start-up, `mesh.settings.FabricSettings`); a
client built after the files change (a failover to the next endpoint) uses what was read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aetcd
import grpc
from aetcd import exceptions, rpc, watcher

__all__ = ["EtcdTls", "TlsEtcdClient"]


@dataclass(frozen=True)
class EtcdTls:
    """PEM bytes to dial etcd with; `key` never shows in a repr."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = field(default=None, repr=False)
    server_name: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert)

    def channel_options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


class TlsEtcdClient(aetcd.Client):
    """`aetcd.Client` whose channel is a TLS one; authenticates (user and password) over it."""

    def __init__(self, *args: Any, tls: EtcdTls, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tls = tls
        self._connect_lock = asyncio.Lock()

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        async with self._connect_lock:
            if self._connected.is_set():
                return
            try:
                await self._open()
            except rpc.AioRpcError as error:
                exceptions._handle_exception(error)  # aetcd's own error types, as its connect raises

    async def _open(self) -> None:
        options = [*self._options.items(), *self._tls.channel_options()]
        channel = grpc.aio.secure_channel(f"{self._host}:{self._port}", self._tls.credentials(), options=options)
        metadata = None
        try:
            if self._username is not None and self._password is not None:
                auth = rpc.AuthStub(channel)
                reply = await auth.Authenticate(rpc.AuthenticateRequest(name=self._username, password=self._password),
                                                timeout=self._timeout)
                metadata = (("token", reply.token),)
                self.auth_stub = auth
        except BaseException:
            await channel.close()
            raise
        self.channel, self.metadata = channel, metadata
        self.kvstub = rpc.KVStub(channel)
        self.clusterstub = rpc.ClusterStub(channel)
        self.leasestub = rpc.LeaseStub(channel)
        self.maintenancestub = rpc.MaintenanceStub(channel)
        self._watcher = watcher.Watcher(rpc.WatchStub(channel), timeout=self._timeout, metadata=metadata)
        self._connected.set()
