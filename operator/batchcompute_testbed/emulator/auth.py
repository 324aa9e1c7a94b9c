"""Bearer tokens for the ARM endpoints and the managed-identity token endpoint that issues them.

Minted tokens are JWTs shaped like Entra ID's v1 access tokens (`aud`, `iss`, `iat`, `nbf`,
`exp`, `oid`, `appid`, `tid`), because clients such as SDK v1 decode them for their expiry and
tenant. The emulator itself never trusts a token's claims: it accepts only tokens it issued (or
was given as static tokens), and keeps only their SHA-256 digests, so nothing that could be
replayed is stored or logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .arm import ArmError, iso_from_epoch
from .config import DEFAULT_TENANT_ID

ARM_AUDIENCES = frozenset({"https://management.azure.com", "https://management.core.windows.net"})
IDENTITY_API_VERSION = "2019-08-01"
_AUTHORITY = 'Bearer authorization_uri="https://login.microsoftonline.com/common"'


# Object and application ids are derived from the principal's name, so a principal keeps its
# ids across emulator restarts, as a real identity does.
_PRINCIPAL_IDS = uuid.UUID("0b6f3c2a-54d1-4f5e-8f0e-2a7c9d41b6e8")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def principal_ids(principal: str) -> tuple[str, str]:
    """The (object id, application id) that tokens for `principal` carry."""
    return (
        str(uuid.uuid5(_PRINCIPAL_IDS, f"object:{principal}")),
        str(uuid.uuid5(_PRINCIPAL_IDS, f"application:{principal}")),
    )


def normalize_audience(value: str) -> str:
    """`https://management.azure.com/.default` and `.../` name the same audience."""
    value = value.strip()
    if value.endswith("/.default"):
        value = value[: -len("/.default")]
    return value.rstrip("/").lower()


@dataclass(frozen=True)
class IssuedToken:
    principal: str
    audience: str
    source: str  # static | minted | identity
    expires_on: float | None  # None: never expires


@dataclass(frozen=True)
class AuthOutcome:
    """`state` is recorded in the request log: none, malformed, valid, invalid, expired."""

    state: str
    principal: str | None = None
    error: ArmError | None = None


def _unauthorized(code: str, message: str) -> ArmError:
    header = f'{_AUTHORITY}, error="invalid_token", error_description="{message}"'
    return ArmError(401, code, message, {"WWW-Authenticate": header})


class TokenStore:
    def __init__(
        self,
        static_tokens: tuple[str, ...] = (),
        clock: Callable[[], float] = time.time,
        tenant_id: str = DEFAULT_TENANT_ID,
    ) -> None:
        self._clock = clock
        self.tenant_id = tenant_id
        self._signing_key = secrets.token_bytes(32)
        self._tokens: dict[str, IssuedToken] = {}
        self.audiences: set[str] = set(ARM_AUDIENCES)
        for token in static_tokens:
            self._tokens[_digest(token)] = IssuedToken(
                "static", "https://management.azure.com", "static", None
            )

    def mint(
        self, principal: str, expires_in: float, audience: str, source: str
    ) -> tuple[str, int]:
        now = self._clock()
        expires_on = int(now + expires_in)
        token = self._jwt(principal, audience, int(min(now, expires_on - 1)), expires_on)
        self._tokens[_digest(token)] = IssuedToken(
            principal, normalize_audience(audience), source, expires_on
        )
        return token, expires_on

    def _jwt(self, principal: str, audience: str, issued_at: int, expires_on: int) -> str:
        """An Entra ID v1-style access token, signed with this store's own key (HS256)."""
        object_id, app_id = principal_ids(principal)
        aud = audience.strip()
        if aud.endswith("/.default"):
            aud = aud[: -len("/.default")]
        claims = {
            "aud": aud,
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": issued_at,
            "nbf": issued_at,
            "exp": expires_on,
            "appid": app_id,
            "appidacr": "2",
            "idtyp": "app",
            "oid": object_id,
            "sub": object_id,
            "tid": self.tenant_id,
            "uti": secrets.token_urlsafe(16),  # unique per token, as Entra ID's
            "ver": "1.0",
        }
        header = {"typ": "JWT", "alg": "HS256"}
        signing_input = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        signature = hmac.new(self._signing_key, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64url(signature)}"

    def revoke(self, sources: frozenset[str] = frozenset({"minted", "identity"})) -> int:
        doomed = [k for k, t in self._tokens.items() if t.source in sources]
        for key in doomed:
            del self._tokens[key]
        return len(doomed)

    def count(self, source: str) -> int:
        return sum(1 for t in self._tokens.values() if t.source == source)

    def check(self, authorization: str | None) -> AuthOutcome:
        if not authorization:
            return AuthOutcome(
                "none",
                error=_unauthorized(
                    "AuthenticationFailed",
                    "Authentication failed. The 'Authorization' header is missing.",
                ),
            )
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return AuthOutcome(
                "malformed",
                error=_unauthorized(
                    "AuthenticationFailed",
                    "Authentication failed. The 'Authorization' header is provided in an invalid "
                    "format.",
                ),
            )
        issued = self._tokens.get(_digest(token.strip()))
        if issued is None:
            return AuthOutcome(
                "invalid",
                error=_unauthorized("InvalidAuthenticationToken", "The access token is invalid."),
            )
        now = self._clock()
        if issued.expires_on is not None and issued.expires_on <= now:
            return AuthOutcome(
                "expired",
                issued.principal,
                _unauthorized(
                    "ExpiredAuthenticationToken",
                    f"The access token expiry UTC time '{iso_from_epoch(issued.expires_on)}' is "
                    f"earlier than current UTC time '{iso_from_epoch(now)}'.",
                ),
            )
        if issued.audience not in self.audiences:
            return AuthOutcome(
                "invalid",
                issued.principal,
                _unauthorized(
                    "InvalidAuthenticationTokenAudience",
                    "The access token has been obtained for wrong audience or resource "
                    f"'{issued.audience}'.",
                ),
            )
        return AuthOutcome("valid", issued.principal)


class IdentityEndpoint:
    """The App Service managed-identity protocol (api-version 2019-08-01) as azure-identity
    speaks it: GET with `resource`, header `X-IDENTITY-HEADER`, answer with `expires_on` as a
    string of epoch seconds."""

    def __init__(self, tokens: TokenStore, secret: str, lifetime: Callable[[], int]) -> None:
        self.tokens = tokens
        self.secret = secret
        self._lifetime = lifetime
        self.fail_status: int | None = None
        self.fail_body: Any = None
        self.fail_remaining: int | None = None
        self.principal = "managed-identity"

    def configure(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise ValueError("identity settings must be a JSON object")
        if "fail" in data:
            if not isinstance(data["fail"], bool):
                raise ValueError("fail must be true or false")
            status = data.get("status", 500)
            if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
                raise ValueError("status must be an HTTP error status")
            count = data.get("count")
            if count is not None and (
                isinstance(count, bool) or not isinstance(count, int) or count < 1
            ):
                raise ValueError("count must be a positive integer or null")
            self.fail_status = status if data["fail"] else None
            self.fail_body = data.get("body")
            self.fail_remaining = count if data["fail"] else None
        if "principal" in data:
            if not isinstance(data["principal"], str):
                raise ValueError("principal must be a string")
            self.principal = data["principal"]
        if data.get("revoke"):
            self.tokens.revoke(frozenset({"identity"}))

    def to_json(self) -> dict[str, Any]:
        return {
            "fail": self.fail_status is not None,
            "status": self.fail_status,
            "remaining": self.fail_remaining,
            "principal": self.principal,
            "issued": self.tokens.count("identity"),
        }

    def answer(self, query: Mapping[str, str], headers: Mapping[str, str]) -> tuple[int, Any]:
        presented = headers.get("X-IDENTITY-HEADER", "")
        if not hmac.compare_digest(presented.encode(), self.secret.encode()):
            return 401, {"statusCode": 401, "message": "X-IDENTITY-HEADER is missing or wrong."}
        if self.fail_status is not None:
            status, body = self.fail_status, self.fail_body
            if self.fail_remaining is not None:
                self.fail_remaining -= 1
                if self.fail_remaining <= 0:
                    self.fail_status, self.fail_remaining = None, None
            return status, body if body is not None else {
                "statusCode": status,
                "message": "The managed identity endpoint failed (injected).",
            }
        if query.get("api-version") != IDENTITY_API_VERSION:
            return 400, {
                "statusCode": 400,
                "message": f"api-version must be {IDENTITY_API_VERSION}.",
            }
        resource = query.get("resource") or query.get("scope")
        if not resource:
            return 400, {"statusCode": 400, "message": "resource is required."}
        token, expires_on = self.tokens.mint(self.principal, self._lifetime(), resource, "identity")
        return 200, {
            "access_token": token,
            "expires_on": str(expires_on),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": query.get("client_id", "00000000-0000-0000-0000-000000000000"),
        }
