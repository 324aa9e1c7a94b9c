"""Azure credentials via azure-identity: one token cache per principal, a fresh token after ARM
refuses one, and credential failures classified and described without secrets.

Modes (BCO_CREDENTIAL): `default` (DefaultAzureCredential: environment, workload identity,
managed identity, developer logins), `managed-identity`, `workload-identity`, `environment`, and
`static-file`, which reads a token from a mounted file on every refresh (local development
against the emulator).

A token ARM refused (401) is never sent again. azure-identity caches tokens inside each
credential instance (for managed identity, one msal TokenCache per `ManagedIdentityClientBase`;
for service principals and workload identity, one per `AadClient`), and keeps returning a cached
token until it expires. So after a 401 the token cache replaces the credential with a fresh
instance (`RenewableCredential.renew`), whose first token comes from the identity endpoint.
`get_token(claims=...)` would also skip that cache, but it sends the claims to Microsoft Entra ID
as a claims challenge and the developer-login credentials refuse it, so it is left for real
claims challenges. Forced renewals are bounded: at most one per principal (one `TokenCache`)
every RENEW_INTERVAL seconds. In between, if the credential can only offer the refused token,
the call fails here (`TokenRefused`, with `retry_after` set to when a renewal is allowed) and ARM
is not asked again.

Failures are classified once, in `classify`:

- `CredentialsUnavailable`, retryable=False: the credential cannot be built or lacks its
  configuration (azure-identity's CredentialUnavailableError that no network failure caused, or
  a construction error), or DefaultAzureCredential found no usable credential in its whole
  chain. Waiting does not help: the resource is Stalled with reason CredentialsUnavailable.
- `TokenRequestFailed`, retryable: the identity endpoint answered with an error, timed out or
  could not be reached, or the token file cannot be read. Refusals by the identity provider
  (4xx) are here too: they also come from clock skew, identity propagation or an expiring
  federated token, and recover without anyone's help.
- `TokenRefused`, retryable: ARM refused the token, and no other may be had yet.

Messages name the credential and the reason. Identity-endpoint answers are summarised (HTTP
status, and the body's error code and description fields, bounded), never copied; tokens,
assertions, client secrets and URL query strings are scrubbed. azure-identity logs each failed
request at WARNING with the endpoint's response text, so its logger is raised to ERROR (unless
configured otherwise): these failures are reported by the operator, summarised.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from azure.core.exceptions import (
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)

from batchcompute_operator.config import Settings
from batchcompute_operator.workspace.errors import ArmError, AuthenticationFailed

log = logging.getLogger(__name__)

REFRESH_MARGIN = 300.0  # seconds before expiry at which a cached token is renewed
# At most one forced renewal (a token request that bypasses azure-identity's cache) per
# principal in this many seconds; azure-identity itself waits 30 s between refresh attempts
# of a still-valid token (DEFAULT_TOKEN_REFRESH_RETRY_DELAY).
RENEW_INTERVAL = 30.0
MESSAGE_LIMIT = 960  # a whole credential message; Kubernetes events keep 1024 characters
REASON_LIMIT = 240  # one chained credential's reason
DETAIL_LIMIT = 120  # an identity-endpoint error description
REFUSED_KEPT = 8  # digests of refused tokens remembered per principal


class AsyncCredential(Protocol):
    async def get_token(self, *scopes: str, **kwargs: Any) -> Any: ...
    async def close(self) -> None: ...


# -- errors ------------------------------------------------------------------------------------


class CredentialsUnavailable(ArmError):
    """No token can be had until someone changes the configuration.

    `credential` names what failed (an azure-identity credential, DefaultAzureCredential, or a
    namespace's Secret) and `reason` says why; the message holds both. The credential layer
    raises it with retryable=False (see `unavailable`): the resource is Stalled with reason
    CredentialsUnavailable. A caller that expects the condition to clear by itself (a Secret
    that may yet be created) may raise it with retryable=True.
    """

    def __init__(self, message: str, *, retryable: bool = True, credential: str = "",
                 reason: str = "") -> None:
        super().__init__(0, "CredentialsUnavailable", message, retryable=retryable)
        self.credential = credential
        self.reason = reason or message
        self.origin = "configuration"


def unavailable(credential: str, reason: str) -> CredentialsUnavailable:
    """The permanent error for `credential`, with a bounded message."""
    return CredentialsUnavailable(_bounded(f"{credential}: {reason}", MESSAGE_LIMIT),
                                  retryable=False, credential=credential, reason=reason)


class TokenRequestFailed(AuthenticationFailed):
    """The credential could not get a token this time; waiting can fix it (retryable).

    Not an answer from ARM: `status` is 0, and `origin` says where it failed ("identity
    endpoint", "token file" or "credential").
    """

    def __init__(self, credential: str, reason: str, *, origin: str = "identity endpoint") -> None:
        super().__init__(_bounded(f"{credential}: {reason}", MESSAGE_LIMIT), status=0,
                         code="TokenRequestFailed")
        self.credential = credential
        self.reason = reason
        self.origin = origin


class TokenRefused(AuthenticationFailed):
    """ARM refused this principal's token and the credential offers no other yet (retryable).

    Raised without calling ARM. `retry_after` is the time until a fresh token may be requested
    (None when the credential is read again on every attempt, as a token file is).
    """

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message, status=0, code="TokenRefused")
        self.retry_after = retry_after
        self.origin = "credential"


# -- credentials -------------------------------------------------------------------------------


class StaticFileCredential:
    """A bearer token from a file; the file is re-read so it can be rotated in place."""

    def __init__(self, path: str, lifetime: float = 600.0) -> None:
        self._path = Path(path)
        self._lifetime = lifetime
        self.name = f"token file {path}"

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        try:
            text = await asyncio.to_thread(self._path.read_text)
        except (OSError, ValueError) as exc:
            raise TokenRequestFailed(self.name, f"cannot be read ({type(exc).__name__})",
                                     origin="token file") from None
        token = text.strip()
        if not token:
            raise TokenRequestFailed(self.name, "the file is empty", origin="token file")
        return AccessToken(token, int(time.time() + self._lifetime))

    async def close(self) -> None:
        return None


class RenewableCredential:
    """An azure-identity credential that `renew()` replaces with a fresh instance.

    Each instance has its own token cache, so a fresh instance's first token comes from the
    identity endpoint. If building one fails (missing settings), `get_token` raises
    CredentialsUnavailable naming the credential and the reason.
    """

    def __init__(self, name: str, factory: Callable[[], AsyncCredential]) -> None:
        self.name = name
        self._factory = factory
        self.current: AsyncCredential | None = None
        self._broken = ""  # why the last build failed
        self.instances = 0  # built so far
        self._build()

    def _build(self) -> None:
        try:
            self.current = self._factory()
        except Exception as exc:
            self.current = None
            self._broken = f"cannot be built: {describe(exc)}{_hint(self.name)}"
        else:
            self._broken = ""
            self.instances += 1

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        if self.current is None:
            raise unavailable(self.name, self._broken)
        return await self.current.get_token(*scopes, **kwargs)

    async def renew(self) -> None:
        old = self.current
        self._build()
        if old is not None:
            await old.close()

    async def close(self) -> None:
        if self.current is not None:
            await self.current.close()


def quiet_identity_logging() -> None:
    """azure-identity logs each failed token request at WARNING with the endpoint's answer in
    it; the operator reports those failures itself, summarised and scrubbed."""
    logger = logging.getLogger("azure.identity")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)


def build_credential(settings: Settings) -> AsyncCredential:
    """The credential BCO_CREDENTIAL names. It never raises: a credential that cannot be built
    raises CredentialsUnavailable when asked for a token, so each resource reports it."""
    quiet_identity_logging()
    mode = settings.credential
    if mode == "static-file":
        assert settings.static_token_file is not None
        return StaticFileCredential(settings.static_token_file)
    from azure.identity import aio

    # A private CA (sovereign clouds, proxies, the emulator) is trusted for tokens too.
    transport: dict[str, Any] = {"connection_verify": settings.ca_bundle} \
        if settings.ca_bundle else {}
    client_id = settings.managed_identity_client_id
    if mode == "managed-identity":
        return RenewableCredential("ManagedIdentityCredential",
                                   lambda: aio.ManagedIdentityCredential(client_id=client_id,
                                                                         **transport))
    if mode == "workload-identity":
        return RenewableCredential("WorkloadIdentityCredential",
                                   lambda: aio.WorkloadIdentityCredential(**transport))
    if mode == "environment":
        return RenewableCredential("EnvironmentCredential",
                                   lambda: aio.EnvironmentCredential(**transport))
    return RenewableCredential("DefaultAzureCredential", lambda: aio.DefaultAzureCredential(
        managed_identity_client_id=client_id, **transport))


# -- classification and messages ---------------------------------------------------------------


def classify(exc: BaseException, credential: object, label: str,
             secrets: Sequence[str] = ()) -> ArmError:
    """The operator's error for a failed token request: permanent or transient, described.

    `credential` is the azure-identity instance that failed (a chain is read from its message
    and its `credentials`), `label` what messages call it.
    """
    from azure.identity import CredentialUnavailableError

    if isinstance(exc, ArmError):
        return exc
    chain = getattr(credential, "credentials", None)
    if isinstance(chain, Sequence):
        chained = _chain_failure(exc, len(chain), label, secrets)
        if chained is not None:
            return chained
    reason = describe(exc, secrets)
    status = _status(exc)
    transient_status = status is not None and (status >= 500 or status in (408, 429))
    if isinstance(exc, CredentialUnavailableError) and not transient_status \
            and _unreachable(exc) is None:
        return unavailable(label, reason + _hint(type(credential).__name__))
    if isinstance(exc, ValueError | TypeError | ImportError):
        return unavailable(label, reason)  # rejected by azure-identity before any request
    origin = "identity endpoint" if status is not None or _unreachable(exc) else "credential"
    return TokenRequestFailed(label, reason, origin=origin)


def describe(exc: BaseException, secrets: Sequence[str] = ()) -> str:
    """Why `exc` happened, in one bounded line with no secret and no verbatim endpoint text."""
    own = ""
    if getattr(exc, "response", None) is None:
        # azure-identity's own words; an error with a response has the response's text in it.
        own = _condense(getattr(exc, "message", None) or str(exc), REASON_LIMIT, secrets)
    found = _answer(exc, secrets) or _unreachable(exc)
    parts = [part for part in (own, found) if part]
    return _bounded("; ".join(parts) or type(exc).__name__, MESSAGE_LIMIT)


def _chain_failure(exc: BaseException, length: int, label: str,
                   secrets: Sequence[str]) -> ArmError | None:
    """DefaultAzureCredential's failure: every chained credential's reason, condensed.

    The chain moves on past credentials that are unavailable and stops at the first one that
    tried and failed, so a complete list of attempts means nothing in it is usable.
    """
    text = getattr(exc, "message", None) or str(exc)
    _, found, attempts = text.partition("Attempted credentials:")
    if not found:
        return None
    entries: list[str] = []
    last_name, last_why = "", ""
    for raw in attempts.split("\nTo mitigate", 1)[0].split("\n\t"):
        raw = raw.strip()
        if not raw:
            continue
        name, sep, why = raw.partition(": ")
        if not sep or " " in name:
            name, why = raw.split()[0], ""
        last_name, last_why = name, _condense(why, REASON_LIMIT, secrets)
        entries.append(f"{name}: {last_why}" if last_why else name)
    if not entries:
        return None
    if len(entries) >= length:
        return unavailable(label, "no credential in the chain can be used. " + "; ".join(entries))
    before = "; ".join(entries[:-1])
    reason = f"{last_name} failed: {last_why or 'no reason given'}" + \
        (f" (not usable before it: {before})" if before else "")
    return TokenRequestFailed(label, reason, origin="credential")


_CODE_PREFIX = re.compile(r"^\([^)]*\)\s*")  # azure-core puts "(code) " before a response message
_UNAVAILABLE = re.compile(r"^\w*Credential authentication unavailable[.,]?\s*")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _condense(text: str, limit: int, secrets: Sequence[str] = ()) -> str:
    """azure-identity's explanation on one line: no links, no echoed response, bounded."""
    text = text.strip()
    for marker in ("\nContent:", "\nCode:", "\nMessage:", "\nTo mitigate", "\nVisit "):
        text = text.split(marker, 1)[0]
    lines = text.splitlines()
    line = _CODE_PREFIX.sub("", lines[0].strip()) if lines else ""
    if line.startswith("Unexpected response"):
        return "unexpected response from the identity endpoint"
    line = line.split(" Error: ", 1)[0]  # IMDS failures append the endpoint's message
    stripped = _UNAVAILABLE.sub("", line)
    if stripped != line and stripped:
        stripped = stripped[0].lower() + stripped[1:]
    kept = [s for s in _SENTENCE.split(stripped) if "://" not in s and "troubleshoot" not in s]
    return _bounded(redact(" ".join(kept).strip().rstrip("."), secrets), limit)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _status(exc: BaseException) -> int | None:
    for cause in _causes(exc):
        status = getattr(getattr(cause, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
    return None


def _answer(exc: BaseException, secrets: Sequence[str]) -> str:
    """"the identity endpoint answered HTTP 400 (code: description)", from the response."""
    for cause in _causes(exc):
        response = getattr(cause, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int):
            fields = _error_fields(response, secrets)
            return f"the identity endpoint answered HTTP {status} ({fields})"
    return ""


def _error_fields(response: Any, secrets: Sequence[str]) -> str:
    """The error code and description of an OAuth, IMDS, App Service or ARM-shaped body."""
    try:
        body = json.loads(response.text())
    except Exception:
        return "not JSON"
    if not isinstance(body, dict):
        return "no error details"
    error = body.get("error")
    code: object = error
    description: object = body.get("error_description") or body.get("message")
    if isinstance(error, dict):
        code, description = error.get("code"), error.get("message")
    parts = []
    if isinstance(code, str) and code.strip():
        parts.append(_bounded(redact(code.strip().split()[0], secrets), 64))
    if isinstance(description, str) and description.strip():
        first = description.strip().splitlines()[0].split(" Trace ID:", 1)[0]
        parts.append(_bounded(redact(first, secrets), DETAIL_LIMIT))
    return ": ".join(parts) or "no error details"


def _unreachable(exc: BaseException) -> str | None:
    for cause in _causes(exc):
        name = type(cause).__name__
        if isinstance(cause, ServiceRequestTimeoutError | ServiceResponseTimeoutError
                      | TimeoutError):
            return f"the identity endpoint did not answer in time ({name})"
        if isinstance(cause, ServiceRequestError | ServiceResponseError | ConnectionError):
            return f"the identity endpoint could not be reached ({name})"
    return None


_HINTS = {
    "EnvironmentCredential": "it needs AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET "
                             "or AZURE_CLIENT_CERTIFICATE_PATH",
    "WorkloadIdentityCredential": "AZURE_TENANT_ID, AZURE_CLIENT_ID and "
                                  "AZURE_FEDERATED_TOKEN_FILE are set by the workload identity "
                                  "webhook for pods labelled azure.workload.identity/use=true",
}


def _hint(name: str) -> str:
    hint = _HINTS.get(name)
    return f" ({hint})" if hint else ""


# Values that are secret wherever they appear; their names are azure-identity's.
_SECRET_ENV = ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_PASSWORD",
               "IDENTITY_HEADER", "MSI_SECRET")
_QUERY = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s?#\"'<>]*)\?[^\s\"'<>]*")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+")
_KEYED = re.compile(r"(?i)\b(client_secret|client_assertion|assertion|access_token|refresh_token"
                    r"|id_token|password|x-identity-header)([\"']?\s*[=:]\s*[\"']?)"
                    r"[^\s\"'&,;}]+")
_RUN = re.compile(r"[A-Za-z0-9_~.+/=-]{20,}")
_GUID = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
REDACTED = "[redacted]"


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """`text` without tokens, assertions, client secrets or URL query strings.

    Known secret values (`secrets`, and the secret variables azure-identity reads) are removed
    wherever they appear; so are JWTs and other long runs of token characters with letters and
    digits (GUIDs and paths stay, they name things and are not secret).
    """
    for value in (*secrets, *(os.environ.get(name, "") for name in _SECRET_ENV)):
        if len(value) >= 4:
            text = text.replace(value, REDACTED)
    text = _QUERY.sub(r"\1?[query redacted]", text)
    text = _BEARER.sub(r"\1" + REDACTED, text)
    text = _KEYED.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    return _RUN.sub(_token_like, text)


def _token_like(match: re.Match[str]) -> str:
    run = match.group(0)
    if run.startswith("/") or _GUID.fullmatch(run):
        return run
    digits = any(c.isdigit() for c in run)
    letters = any(c.isalpha() for c in run)
    return REDACTED if (digits and letters) or len(run) >= 40 else run


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


# -- the token cache ---------------------------------------------------------------------------


class TokenCache:
    """One principal's token for the ARM audience, renewed ahead of expiry, fetched by one
    caller at a time, and replaced by a fresh one from the identity endpoint after ARM refuses
    it (at most one forced renewal per `renew_interval` seconds)."""

    def __init__(self, credential: AsyncCredential, audience: str, key: str = "operator", *,
                 label: str | None = None, secrets: Sequence[str] = (),
                 renew_interval: float = RENEW_INTERVAL,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.key = key  # names the principal: ARM paces per principal, caches are kept apart
        self.label = label or str(getattr(credential, "name", type(credential).__name__))
        self._credential = credential
        self._scope = f"{audience}/.default"
        self._secrets = tuple(secrets)
        self._renew_interval = renew_interval
        self._clock = clock
        self._monotonic = monotonic
        self._token: str | None = None
        self._expires = 0.0
        self._refused: collections.deque[bytes] = collections.deque(maxlen=REFUSED_KEPT)
        self._stale = False  # ARM refused a token since the last good fetch
        self._renew_after = float("-inf")
        self._lock = asyncio.Lock()
        self.renewals = 0  # forced renewals so far

    def _fresh(self) -> bool:
        return self._token is not None and self._clock() < self._expires - REFRESH_MARGIN

    async def __call__(self) -> str:
        if self._fresh():
            assert self._token is not None
            return self._token
        async with self._lock:
            if not self._fresh():
                await self._fetch()
            assert self._token is not None
            return self._token

    async def _fetch(self) -> None:
        renew: Callable[[], Awaitable[None]] | None = getattr(self._credential, "renew", None)
        if self._stale and renew is not None and self._monotonic() >= self._renew_after:
            self._renew_after = self._monotonic() + self._renew_interval
            self.renewals += 1
            log.info("%s: ARM refused its token; renewing %s for a fresh one",
                     self.key, self.label)
            await renew()
        try:
            access = await self._credential.get_token(self._scope)
        except Exception as exc:
            inner = getattr(self._credential, "current", None) or self._credential
            raise classify(exc, inner, self.label, self._secrets) from None
        token = str(access.token)
        if _digest(token) in self._refused:
            raise self._still_refused(renew is not None)
        self._stale = False
        self._token, self._expires = token, float(access.expires_on)

    def _still_refused(self, renewable: bool) -> TokenRefused:
        if not renewable:
            return TokenRefused(f"{self.label} still holds the token ARM refused; it is read "
                                "again on the next attempt", None)
        wait = max(0.0, self._renew_after - self._monotonic())
        return TokenRefused(
            f"ARM refused the token from {self.label}, which offers no other yet; a fresh one "
            f"is requested in {wait:.0f}s (at most one every {self._renew_interval:.0f}s)", wait)

    def invalidate(self, token: str | None = None) -> None:
        """ARM refused `token` (default: the current one): it is never sent again, and the next
        fetch asks a fresh credential instance. A token older than the current one is ignored:
        the request that carried it was sent before the current token was fetched."""
        if token is None:
            token = self._token
        elif self._token is not None and token != self._token:
            return
        if token is not None:
            self._refused.append(_digest(token))
            self._stale = True
        self._token = None

    async def close(self) -> None:
        await self._credential.close()


# -- per-namespace identities ------------------------------------------------------------------

SecretData = tuple[str, Mapping[str, str]]  # (resourceVersion, decoded data)
SecretReader = Callable[[str, str], Awaitable[SecretData]]


class NamespaceIdentities:
    """Token caches for identities that namespaces bring in a Secret of their own.

    Secret keys: `clientId` and `tenantId`, plus either `clientSecret` (a service principal) or
    nothing more (workload identity: the operator's projected ServiceAccount token is exchanged
    for that client id, so the identity's federated credential must trust the operator). A
    Secret is only ever read from the namespace of the resource that names it. Each identity's
    cache renews its credential after ARM refuses a token, as the operator's own does.
    """

    def __init__(self, settings: Settings, read_secret: SecretReader) -> None:
        quiet_identity_logging()
        self._settings = settings
        self._read = read_secret
        self._caches: dict[tuple[str, str], tuple[str, TokenCache]] = {}

    async def get(self, namespace: str, secret_name: str) -> TokenCache:
        version, data = await self._read(namespace, secret_name)
        cached = self._caches.get((namespace, secret_name))
        if cached is not None and cached[0] == version:
            return cached[1]
        credential = self._credential(namespace, secret_name, data)
        tokens = TokenCache(credential, self._settings.arm_audience,
                            key=f"{namespace}/{secret_name}/{data.get('clientId', '')}",
                            label=f"Secret {namespace}/{secret_name} ({credential.name})",
                            secrets=[v for k, v in data.items() if k == "clientSecret"])
        if cached is not None:
            await cached[1].close()
        self._caches[(namespace, secret_name)] = (version, tokens)
        return tokens

    def _credential(self, namespace: str, name: str,
                    data: Mapping[str, str]) -> RenewableCredential:
        from azure.identity import aio

        secret = f"Secret {namespace}/{name}"
        missing = [k for k in ("clientId", "tenantId") if not data.get(k)]
        if missing:
            raise unavailable(secret, f"lacks {', '.join(missing)}")
        transport: dict[str, Any] = {"connection_verify": self._settings.ca_bundle} \
            if self._settings.ca_bundle else {}
        tenant, client = data["tenantId"], data["clientId"]
        client_secret = data.get("clientSecret")
        if client_secret:
            return RenewableCredential("ClientSecretCredential", lambda: aio.ClientSecretCredential(
                tenant, client, client_secret, **transport))
        token_file = os.environ.get("AZURE_FEDERATED_TOKEN_FILE")
        if not token_file:
            raise unavailable(secret, "it has no clientSecret, and the operator has no federated "
                              "token (workload identity) to exchange for that client id")
        return RenewableCredential("WorkloadIdentityCredential",
                                   lambda: aio.WorkloadIdentityCredential(
                                       tenant_id=tenant, client_id=client,
                                       token_file_path=token_file, **transport))

    async def close(self) -> None:
        for _, tokens in self._caches.values():
            await tokens.close()
        self._caches.clear()
