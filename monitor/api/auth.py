"""Bearer-token checks shared by every route (REST, websocket, WHIP)."""

from __future__ import annotations

import hmac


def _token_from(authorization: str | None, query_token: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return query_token


def token_given(authorization: str | None, query_token: str | None) -> bool:
    """Whether the request carries a bearer token at all (a Basic header, or "Bearer" with
    nothing after it, carries none): 401 and a challenge without one, 403 for a wrong one."""
    return bool(_token_from(authorization, query_token))


def token_ok(expected: str | None, authorization: str | None, query_token: str | None) -> bool:
    if expected is None:
        return True
    got = _token_from(authorization, query_token)
    return got is not None and hmac.compare_digest(got.encode(), expected.encode())
