"""Auth settings of a process that serves the management API or inference (router, controller).

Flags override `MESHSERVE_*` variables override these defaults; all empty: auth is off
and no interceptor or middleware is installed.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.api.auth.authorizer import Authorizer
from mesh.api.auth.tokens import TokenFile

__all__ = ["AuthSettings", "build_authorizer"]


class AuthSettings(BaseSettings):
    """Who may call the management API and inference."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_", extra="forbid")

    management_token_file: str = Field(
        "", description="File of bearer tokens (one per line, re-read when it changes) that grant the management "
        "API (mmesh.ModelMesh, meshserve.admin.MeshAdmin, the dashboard) and inference; set: management needs a "
        "credential.")
    inference_token_file: str = Field(
        "", description="File of bearer tokens that grant inference only; set: inference needs a credential (an "
        "inference or management token); empty: inference is open.")
    management_client_identities: str = Field(
        "", description="Comma-separated client certificate names (subject CN or SAN DNS name, verified by mTLS) "
        "that grant management and inference like a management token.")

    @field_validator("management_client_identities")
    @classmethod
    def _identities(cls, value: str) -> str:
        return ",".join(name.strip() for name in value.split(",") if name.strip())

    @model_validator(mode="after")
    def _management_guarded_too(self) -> AuthSettings:
        # Guarding inference but not management would leave the more powerful API open.
        if self.inference_token_file and not (self.management_token_file or self.management_client_identities):
            raise ValueError("inference_token_file is set but the management API would stay open: set "
                             "management_token_file or management_client_identities too")
        return self

    def identities(self) -> tuple[str, ...]:
        return tuple(self.management_client_identities.split(",")) if self.management_client_identities else ()


def build_authorizer(settings: AuthSettings) -> Authorizer | None:
    """The authorizer `settings` ask for; None when auth is off. TokenFileError (a ValueError)
    when a token file cannot be read or holds no token."""
    authorizer = Authorizer(
        management=TokenFile(settings.management_token_file) if settings.management_token_file else None,
        inference=TokenFile(settings.inference_token_file) if settings.inference_token_file else None,
        management_identities=settings.identities())
    return authorizer if authorizer.enabled else None
