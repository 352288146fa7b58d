"""The decision: may a caller with this token (and these client identities) call a method
that needs this permission? Pure of any transport; the gRPC interceptor and the REST
middleware both ask it.

- HEALTH is always open.
- INFERENCE needs a credential only when an inference token file is set; then an
  inference token, a management token or an allowed client identity will do.
- MANAGEMENT needs a credential when a management token file or a client identity
  allow-list is set; then only a management token or an allowed identity will do.
- A method no table classifies (`permission` None) is refused.

A refusal is UNAUTHENTICATED when the caller brought no credential the server knows, and
PERMISSION_DENIED when it did (a valid inference token, a verified client certificate not
on the list) but that credential lacks the permission.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mesh.api.auth.permissions import Permission
from mesh.api.auth.tokens import TokenFile

__all__ = ["Authorizer", "Refusal"]


@dataclass(frozen=True)
class Refusal:
    code: str  # a grpc.StatusCode name: UNAUTHENTICATED or PERMISSION_DENIED
    message: str


class Authorizer:
    def __init__(self, *, management: TokenFile | None = None, inference: TokenFile | None = None,
                 management_identities: Iterable[str] = ()) -> None:
        self._management = management
        self._inference = inference
        self.management_identities = frozenset(management_identities)

    @property
    def enabled(self) -> bool:
        return self.guards(Permission.MANAGEMENT) or self.guards(Permission.INFERENCE)

    def guards(self, permission: Permission | None) -> bool:
        """Whether a call needing `permission` must bring a credential at all."""
        if permission is Permission.HEALTH:
            return False
        if permission is Permission.INFERENCE:
            return self._inference is not None
        if permission is Permission.MANAGEMENT:
            return self._management is not None or bool(self.management_identities)
        return True  # not classified: refused

    def refusal(self, permission: Permission | None, method: str, token: str | None,
                identities: Sequence[str] = ()) -> Refusal | None:
        """None when the call may go ahead; else why not."""
        if not self.guards(permission):
            return None
        # Inference callers are the many: their token is tried against the inference file first.
        inference = permission is Permission.INFERENCE and self._matches(self._inference, token)
        if inference:
            return None
        management = self._matches(self._management, token) or not self.management_identities.isdisjoint(identities)
        if management and permission is not None:
            return None
        if permission is not Permission.INFERENCE:
            inference = self._matches(self._inference, token)  # only to tell a known token from a guess
        if permission is None:
            return Refusal("PERMISSION_DENIED", f"{method} is not classified for authorization; refused")
        known = management or inference or bool(identities)  # a verified certificate is known
        if not known:
            hint = "no credential" if token is None else "an unknown token"
            return Refusal("UNAUTHENTICATED", f"{method} needs the {permission.value} permission and the call "
                                              f"brought {hint} (send 'authorization: Bearer <token>')")
        return Refusal("PERMISSION_DENIED", f"{method} needs the {permission.value} permission, which the "
                                            "call's credential does not have")

    @staticmethod
    def _matches(tokens: TokenFile | None, token: str | None) -> bool:
        return token is not None and tokens is not None and tokens.matches(token)
