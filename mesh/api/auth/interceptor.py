"""`AuthInterceptor`: the `Authorizer`'s decision in front of every method of a grpc.aio server.

Installed only when auth is on (no interceptor at all otherwise, so the inference path is
unchanged). Open methods and calls whose bearer token suffices go on to the method's own
handler untouched; the client certificate's identity (subject CN and SAN DNS names from
the TLS auth context, which exists only inside the call) is looked at only when the
token did not suffice and an identity allow-list is set. A refused call is aborted with
UNAUTHENTICATED or PERMISSION_DENIED before the method runs: it changes nothing.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable

import grpc

from mesh.api.auth.authorizer import Authorizer, Refusal
from mesh.api.auth.permissions import Permission, permission_of
from mesh.api.auth.tokens import bearer_token

__all__ = ["AuthInterceptor", "peer_identities"]

log = logging.getLogger(__name__)

_IDENTITY_PROPERTIES = ("x509_common_name", "x509_subject_alternative_name")


def peer_identities(context: grpc.aio.ServicerContext) -> tuple[str, ...]:
    """The verified client certificate's subject CN and SAN names (none without mTLS)."""
    found: list[str] = []
    for key, values in (context.auth_context() or {}).items():
        name = key.decode() if isinstance(key, bytes) else key
        if name in _IDENTITY_PROPERTIES:
            found.extend(v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values)
    return tuple(found)


def _token(metadata) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            return bearer_token(value if isinstance(value, str) else value.decode("latin-1"))
    return None


Check = Callable[[grpc.aio.ServicerContext], Awaitable[None]]


def _guarded(handler: grpc.RpcMethodHandler, check: Check) -> grpc.RpcMethodHandler:
    """`handler` with `check(context)` awaited before its behaviour runs."""
    if handler.request_streaming and handler.response_streaming:
        behavior, make = handler.stream_stream, grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        behavior, make = handler.stream_unary, grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        behavior, make = handler.unary_stream, grpc.unary_stream_rpc_method_handler
    else:
        behavior, make = handler.unary_unary, grpc.unary_unary_rpc_method_handler
    if inspect.isasyncgenfunction(behavior):
        async def guarded(request, context):
            await check(context)
            async with contextlib.aclosing(behavior(request, context)) as replies:  # its cleanup runs on cancel
                async for reply in replies:
                    yield reply
    else:
        async def guarded(request, context):
            await check(context)
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
    return make(guarded, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


async def _abort(context: grpc.aio.ServicerContext, refusal: Refusal) -> None:
    await context.abort(grpc.StatusCode[refusal.code], refusal.message)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        permission = permission_of(method)
        handler = await continuation(handler_call_details)
        if handler is None or not self._authorizer.guards(permission):
            return handler  # unknown methods stay UNIMPLEMENTED
        token = _token(handler_call_details.invocation_metadata)
        refusal = self._authorizer.refusal(permission, method, token)
        if refusal is None:
            return handler
        if permission is not None and self._authorizer.management_identities:
            return _guarded(handler, self._identity_check(permission, method, token))
        log.debug("refused %s: %s", method, refusal.code)
        return _guarded(handler, lambda context: _abort(context, refusal))

    def _identity_check(self, permission: Permission, method: str, token: str | None) -> Check:
        async def check(context: grpc.aio.ServicerContext) -> None:
            refusal = self._authorizer.refusal(permission, method, token, peer_identities(context))
            if refusal is not None:
                log.debug("refused %s: %s", method, refusal.code)
                await _abort(context, refusal)
        return check
