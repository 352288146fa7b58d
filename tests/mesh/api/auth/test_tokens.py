"""Token files and the authorizer's decision (pure: files in tmp_path, a manual clock)."""

from __future__ import annotations

import pytest

from mesh.api.auth.authorizer import Authorizer
from mesh.api.auth.permissions import Permission
from mesh.api.auth.settings import AuthSettings, build_authorizer
from mesh.api.auth.tokens import TokenFile, TokenFileError, bearer_token


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bearer_headers():
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    for header in (None, "", "Bearer ", "Basic YTpi", "abc"):
        assert bearer_token(header) is None, header


def test_a_token_file_holds_several_tokens_and_is_re_read_when_it_changes(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# rotation: old first\nold-token\n\n  new-token  \n")
    clock = Clock()
    tokens = TokenFile(path, recheck_s=1.0, clock=clock)
    assert tokens.matches("old-token") and tokens.matches("new-token")
    assert not tokens.matches("# rotation: old first") and not tokens.matches("") and not tokens.matches("new")
    path.write_text("new-token\n")  # the old one is retired
    assert tokens.matches("old-token")  # not looked at again before recheck_s
    clock.now = 1.0
    assert not tokens.matches("old-token") and tokens.matches("new-token")
    path.write_text("")  # a half-written rotation keeps what was there
    clock.now = 2.0
    assert tokens.matches("new-token")
    path.unlink()
    clock.now = 3.0
    assert tokens.matches("new-token")


@pytest.mark.parametrize("content, why", [(None, "cannot read token file"), ("# only a comment\n\n", "holds no token")])
def test_a_token_file_that_cannot_serve_is_refused_at_start(tmp_path, content, why):
    path = tmp_path / "tokens"
    if content is not None:
        path.write_text(content)
    with pytest.raises(TokenFileError, match=why):
        TokenFile(path)


def _tokens(tmp_path, name: str, *tokens: str) -> TokenFile:
    path = tmp_path / name
    path.write_text("\n".join(tokens) + "\n")
    return TokenFile(path)


def test_management_implies_inference_and_inference_is_only_inference(tmp_path):
    authorizer = Authorizer(management=_tokens(tmp_path, "m", "m-token"), inference=_tokens(tmp_path, "i", "i-token"),
                            management_identities=["ops.example.com"])
    allowed = [(Permission.MANAGEMENT, "m-token", ()), (Permission.INFERENCE, "m-token", ()),
               (Permission.INFERENCE, "i-token", ()), (Permission.HEALTH, None, ()),
               (Permission.MANAGEMENT, None, ("ops.example.com",)), (Permission.INFERENCE, None, ("ops.example.com",))]
    for permission, token, identities in allowed:
        assert authorizer.refusal(permission, "/s/M", token, identities) is None, (permission, token, identities)
    refused = [(Permission.MANAGEMENT, None, (), "UNAUTHENTICATED"), (Permission.MANAGEMENT, "guess", (), "UNAUTHENTICATED"),
               (Permission.INFERENCE, None, (), "UNAUTHENTICATED"), (Permission.INFERENCE, "guess", (), "UNAUTHENTICATED"),
               (Permission.MANAGEMENT, "i-token", (), "PERMISSION_DENIED"),
               (Permission.MANAGEMENT, None, ("intruder.example.com",), "PERMISSION_DENIED"),
               (None, "m-token", (), "PERMISSION_DENIED")]  # a method no table classifies: fail closed
    for permission, token, identities, code in refused:
        refusal = authorizer.refusal(permission, "/s/M", token, identities)
        assert refusal is not None and refusal.code == code, (permission, token, identities, refusal)
        assert "/s/M" in refusal.message


def test_without_an_inference_token_file_inference_is_open(tmp_path):
    authorizer = Authorizer(management=_tokens(tmp_path, "m", "m-token"))
    assert not authorizer.guards(Permission.INFERENCE) and authorizer.guards(Permission.MANAGEMENT)
    assert authorizer.refusal(Permission.INFERENCE, "/s/M", None) is None
    assert authorizer.refusal(Permission.MANAGEMENT, "/s/M", None).code == "UNAUTHENTICATED"


def test_settings_turn_auth_on_only_when_asked_and_never_guard_inference_alone(tmp_path):
    assert build_authorizer(AuthSettings()) is None  # off: no interceptor, no middleware
    (tmp_path / "m").write_text("m-token\n")
    on = build_authorizer(AuthSettings(management_token_file=str(tmp_path / "m")))
    assert on is not None and on.guards(Permission.MANAGEMENT)
    only_identities = build_authorizer(AuthSettings(management_client_identities=" ops , ci.example.com,"))
    assert only_identities.management_identities == {"ops", "ci.example.com"}
    with pytest.raises(ValueError, match="management API would stay open"):
        AuthSettings(inference_token_file=str(tmp_path / "m"))
