"""API-key authentication shared by the REST and gRPC doors.

A key may arrive as `X-API-Key: <key>` or as `Authorization: Bearer <key>` (gRPC metadata:
`x-api-key`, `authorization`), so both API-gateway styles and plain bearer clients work.
Keys are compared as SHA-256 digests with `hmac.compare_digest`, and every configured key
is compared every time: neither the length of a guess nor the position of the matching key
changes how long a check takes. No keys configured means the doors are open (local runs);
`create_app` logs that loudly.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

from pydantic import SecretStr

from services.router.schemas import RouterError

REALM = "anomaly-router"
CHALLENGE = {"WWW-Authenticate": f'Bearer realm="{REALM}", ApiKey header="X-API-Key"'}
"""Sent with every 401 (RFC 9110 requires the challenge)."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` value (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class ApiKeys:
    """The configured keys, kept only as digests."""

    def __init__(self, keys: Sequence[SecretStr]) -> None:
        self._digests = [_digest(k.get_secret_value()) for k in keys]

    @property
    def enabled(self) -> bool:
        """Whether requests must present a key."""
        return bool(self._digests)

    def accepts(self, candidate: str | None) -> bool:
        """Whether `candidate` is one of the keys, in time independent of which one."""
        if candidate is None:
            return False
        digest = _digest(candidate)
        found = False
        for ref in self._digests:
            found |= hmac.compare_digest(digest, ref)
        return found

    def check(self, *, api_key: str | None, bearer: str | None) -> None:
        """Raise a 401 `RouterError` (with the challenge header) unless a presented
        credential (API key, or bearer token) is a configured key; does nothing when no keys
        are configured."""
        if not self.enabled:
            return
        # Both are checked (no short-circuit), so timing does not tell which one matched.
        ok = self.accepts(api_key) | self.accepts(bearer)
        if ok:
            return
        if api_key is None and bearer is None:
            message = "authentication required: send X-API-Key or Authorization: Bearer"
        else:
            message = "invalid API key or bearer token"
        raise RouterError(message, 401, headers=CHALLENGE)

    def check_metadata(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
        """`check` for gRPC invocation metadata (keys are lower-case there)."""
        found: dict[str, str] = {}
        for key, value in metadata or ():
            if key in ("x-api-key", "authorization") and isinstance(value, str):
                found.setdefault(key, value)
        self.check(api_key=found.get("x-api-key"), bearer=bearer_token(found.get("authorization")))
