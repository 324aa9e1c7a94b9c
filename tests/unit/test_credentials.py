"""The credential layer: a token ARM refused is replaced by a fresh one (boundedly), and
credential failures are classified (permanent or not) and described without secrets.

azure-identity is replaced by fakes that behave as its credentials do where it matters: each
instance caches the first token it gets, and every fresh instance's first token is one request
to the identity endpoint. The failure tests raise the exceptions azure-identity 1.27 raises,
with the messages it writes; the modes that need no network run azure-identity itself.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseTimeoutError,
)
from azure.identity import CredentialUnavailableError

from batchcompute_operator.config import Settings
from batchcompute_operator.credentials import (
    MESSAGE_LIMIT,
    RENEW_INTERVAL,
    CredentialsUnavailable,
    NamespaceIdentities,
    RenewableCredential,
    StaticFileCredential,
    TokenCache,
    TokenRefused,
    TokenRequestFailed,
    build_credential,
    classify,
    redact,
)
from batchcompute_operator.workspace.errors import ArmError, AuthenticationFailed

AUDIENCE = "https://management.azure.com"
JWT = ("eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL21hbmFnZW1lbnQifQ."
       "c2lnbmF0dXJlLXRoYXQtbXVzdC1uZXZlci1iZS1zaG93bg")


class Endpoint:
    """The identity endpoint: every request mints a new token, unless told to fail."""

    def __init__(self, same_token: bool = False) -> None:
        self.requests = 0
        self.fail: BaseException | None = None
        self.same_token = same_token  # like IMDS, which caches tokens on its side

    def issue(self) -> str:
        self.requests += 1
        if self.fail is not None:
            raise self.fail
        return "token-1" if self.same_token else f"token-{self.requests}"


class CachingCredential:
    """An azure-identity credential as far as caching goes: the first token is kept."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.cached: AccessToken | None = None
        self.closed = False

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        if self.cached is None:
            self.cached = AccessToken(self.endpoint.issue(), int(time.time()) + 3600)
        return self.cached

    async def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cache_for(endpoint: Endpoint, clock: Clock | None = None) -> tuple[TokenCache,
                                                                        RenewableCredential]:
    credential = RenewableCredential("ManagedIdentityCredential",
                                     lambda: CachingCredential(endpoint))
    return TokenCache(credential, AUDIENCE, monotonic=clock or Clock()), credential


# -- item 2: a refused token is replaced, at a bounded rate -------------------------------------


async def test_without_a_refusal_the_credentials_own_cache_serves_every_call() -> None:
    endpoint = Endpoint()
    tokens, _ = cache_for(endpoint)
    assert {await tokens() for _ in range(5)} == {"token-1"}
    assert endpoint.requests == 1
    assert tokens.renewals == 0


async def test_after_a_refusal_the_next_token_comes_from_the_identity_endpoint() -> None:
    endpoint = Endpoint()
    tokens, credential = cache_for(endpoint)
    first = await tokens()
    old = credential.current
    tokens.invalidate(first)
    second = await tokens()
    assert second != first
    assert endpoint.requests == 2  # not the credential's cached copy: a new request
    assert credential.instances == 2
    assert isinstance(old, CachingCredential) and old.closed
    assert tokens.renewals == 1


async def test_forced_renewals_happen_at_most_once_per_interval_per_principal() -> None:
    clock = Clock()
    endpoint = Endpoint()
    tokens, _ = cache_for(endpoint, clock)
    tokens.invalidate(await tokens())
    tokens.invalidate(await tokens())  # the fresh token is refused as well
    assert endpoint.requests == 2
    for _ in range(20):  # a persistently refused identity does not hammer the endpoint
        with pytest.raises(TokenRefused) as err:
            await tokens()
        clock.now += 1.0
    assert endpoint.requests == 2
    assert err.value.retryable and err.value.status == 0
    assert err.value.retry_after is not None and err.value.retry_after <= RENEW_INTERVAL
    assert "ARM refused the token from ManagedIdentityCredential" in err.value.message
    clock.now += RENEW_INTERVAL
    assert await tokens() == "token-3"
    assert endpoint.requests == 3
    assert tokens.renewals == 2


async def test_the_refused_token_is_never_handed_out_again() -> None:
    endpoint = Endpoint(same_token=True)  # the endpoint answers with the token it cached
    tokens, _ = cache_for(endpoint)
    tokens.invalidate(await tokens())
    with pytest.raises(TokenRefused) as err:
        await tokens()
    assert endpoint.requests == 2  # it was asked, and gave the same token back
    assert isinstance(err.value, AuthenticationFailed)
    assert err.value.retry_after == pytest.approx(RENEW_INTERVAL)


async def test_a_late_refusal_of_an_older_token_keeps_the_current_one() -> None:
    endpoint = Endpoint()
    tokens, _ = cache_for(endpoint)
    first = await tokens()
    tokens.invalidate(first)
    second = await tokens()
    tokens.invalidate(first)  # a request sent with the first token came back 401 later
    assert await tokens() == second
    assert endpoint.requests == 2


async def test_concurrent_callers_after_a_refusal_share_one_renewal() -> None:
    endpoint = Endpoint()
    tokens, _ = cache_for(endpoint)
    tokens.invalidate(await tokens())
    got = await asyncio.gather(*(tokens() for _ in range(10)))
    assert set(got) == {"token-2"}
    assert endpoint.requests == 2


async def test_a_token_file_holding_the_refused_token_fails_until_it_is_rewritten(
        tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("file-token-a\n")
    tokens = TokenCache(StaticFileCredential(str(path)), AUDIENCE)
    tokens.invalidate(await tokens())
    with pytest.raises(TokenRefused) as err:
        await tokens()
    assert err.value.retry_after is None
    assert f"token file {path}" in err.value.message
    path.write_text("file-token-b\n")
    assert await tokens() == "file-token-b"


class FakeClientSecretCredential(CachingCredential):
    endpoint = Endpoint()
    built = 0

    def __init__(self, tenant_id: str, client_id: str, client_secret: str,
                 **kwargs: Any) -> None:
        super().__init__(FakeClientSecretCredential.endpoint)
        FakeClientSecretCredential.built += 1


async def test_namespace_identities_renew_after_a_refusal_as_well(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.identity import aio

    monkeypatch.setattr(aio, "ClientSecretCredential", FakeClientSecretCredential)

    async def read(namespace: str, name: str) -> tuple[str, dict[str, str]]:
        return "1", {"tenantId": "t", "clientId": "c", "clientSecret": "s3cr3t-value"}

    identities = NamespaceIdentities(Settings(), read)
    tokens = await identities.get("team-a", "id")
    first = await tokens()
    tokens.invalidate(first)
    assert await tokens() != first
    assert FakeClientSecretCredential.built == 2
    assert FakeClientSecretCredential.endpoint.requests == 2
    assert tokens.label == "Secret team-a/id (ClientSecretCredential)"
    await identities.close()


# -- item 6: permanent failures, per mode -------------------------------------------------------


@pytest.fixture
def bare_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No Azure configuration at all, and no developer tools or logins to find."""
    import os

    for name in list(os.environ):
        if name.startswith(("AZURE_", "IDENTITY_", "MSI_", "IMDS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(tmp_path / "az"))


async def token_error(settings: Settings) -> ArmError:
    tokens = TokenCache(build_credential(settings), AUDIENCE)
    try:
        with pytest.raises(ArmError) as err:
            await tokens()
    finally:
        await tokens.close()
    return err.value


@pytest.mark.usefixtures("bare_env")
async def test_environment_mode_without_variables_is_permanent() -> None:
    err = await token_error(Settings(credential="environment"))
    assert isinstance(err, CredentialsUnavailable)
    assert not err.retryable
    assert err.credential == "EnvironmentCredential"
    assert err.message.startswith("EnvironmentCredential: environment variables are not fully "
                                  "configured")
    assert "AZURE_CLIENT_ID" in err.message  # what to set
    assert "https://" not in err.message and "\n" not in err.message
    assert "ARM" not in err.message and err.origin != "ARM"


@pytest.mark.usefixtures("bare_env")
async def test_workload_identity_mode_that_cannot_be_built_is_permanent() -> None:
    credential = build_credential(Settings(credential="workload-identity"))  # does not raise
    err = await token_error(Settings(credential="workload-identity"))
    await credential.close()
    assert isinstance(err, CredentialsUnavailable)
    assert not err.retryable
    assert err.message.startswith("WorkloadIdentityCredential: cannot be built: the workload "
                                  "options are not fully configured")
    assert "'tenant_id', 'client_id', 'token_file_path'" in err.message
    assert "AZURE_FEDERATED_TOKEN_FILE" in err.message


@pytest.mark.usefixtures("bare_env")
async def test_default_mode_with_nothing_configured_keeps_every_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The real DefaultAzureCredential chain; only managed identity is left out, since it
    would ask the network (its reason is covered with the chain's own text below)."""
    from azure.identity import aio

    monkeypatch.setattr(aio, "DefaultAzureCredential", functools.partial(
        aio.DefaultAzureCredential, exclude_managed_identity_credential=True))
    err = await token_error(Settings(credential="default"))
    assert isinstance(err, CredentialsUnavailable)
    assert not err.retryable
    assert err.message.startswith("DefaultAzureCredential: no credential in the chain can be "
                                  "used. EnvironmentCredential: environment variables are not "
                                  "fully configured; WorkloadIdentityCredential: ")
    for name in ("EnvironmentCredential", "WorkloadIdentityCredential",
                 "SharedTokenCacheCredential", "VisualStudioCodeCredential",
                 "AzureCliCredential", "AzurePowerShellCredential",
                 "AzureDeveloperCliCredential"):
        assert f"{name}: " in err.message
    assert "Missing required arguments" in err.message
    assert "Azure CLI not found on path" in err.message
    assert "https://" not in err.message and "\n" not in err.message
    assert len(err.message) <= MESSAGE_LIMIT


class Chain:
    """What `classify` reads of a DefaultAzureCredential: its chained credentials."""

    def __init__(self, length: int) -> None:
        self.credentials = [object()] * length


DAC_HEAD = "DefaultAzureCredential failed to retrieve a token from the included credentials."
DAC_TAIL = ("\nTo mitigate this issue, please refer to the troubleshooting guidelines here at "
            "https://aka.ms/azsdk/python/identity/defaultazurecredential/troubleshoot.")
DAC_ENTRIES = [
    "EnvironmentCredential: EnvironmentCredential authentication unavailable. Environment "
    "variables are not fully configured.\nVisit https://aka.ms/azsdk/python/identity/"
    "environmentcredential/troubleshoot to troubleshoot this issue.",
    "WorkloadIdentityCredential: WorkloadIdentityCredential authentication unavailable. The "
    "workload options are not fully configured. See the troubleshooting guide for more "
    "information: https://aka.ms/azsdk/python/identity/workloadidentitycredential/troubleshoot. "
    "Missing required arguments: 'tenant_id', 'client_id', 'token_file_path'.",
    "ManagedIdentityCredential: ManagedIdentityCredential authentication unavailable, no "
    "response from the IMDS endpoint.",
    "SharedTokenCacheCredential: SharedTokenCacheCredential authentication unavailable. No "
    "accounts were found in the cache.",
    "VisualStudioCodeCredential: VisualStudioCodeCredential requires the "
    "'azure-identity-broker' package to be installed. You must also ensure you have the Azure "
    "Resources extension installed and have signed in to Azure via Visual Studio Code.",
    "AzureCliCredential: Azure CLI not found on path",
    "AzurePowerShellCredential: PowerShell is not installed",
    "AzureDeveloperCliCredential: Azure Developer CLI could not be found. Please visit "
    "https://aka.ms/azure-dev for installation instructions and then,once installed, "
    "authenticate to your Azure account using 'azd auth login'.",
]


def dac_error(entries: list[str]) -> ClientAuthenticationError:
    return ClientAuthenticationError(
        message=DAC_HEAD + "\nAttempted credentials:\n\t" + "\n\t".join(entries) + DAC_TAIL)


def test_a_whole_unusable_chain_is_permanent_and_every_reason_is_kept() -> None:
    err = classify(dac_error(DAC_ENTRIES), Chain(8), "DefaultAzureCredential")
    assert isinstance(err, CredentialsUnavailable) and not err.retryable
    assert err.message == (
        "DefaultAzureCredential: no credential in the chain can be used. "
        "EnvironmentCredential: environment variables are not fully configured; "
        "WorkloadIdentityCredential: the workload options are not fully configured. Missing "
        "required arguments: 'tenant_id', 'client_id', 'token_file_path'; "
        "ManagedIdentityCredential: no response from the IMDS endpoint; "
        "SharedTokenCacheCredential: no accounts were found in the cache; "
        "VisualStudioCodeCredential: VisualStudioCodeCredential requires the "
        "'azure-identity-broker' package to be installed. You must also ensure you have the "
        "Azure Resources extension installed and have signed in to Azure via Visual Studio "
        "Code; AzureCliCredential: Azure CLI not found on path; AzurePowerShellCredential: "
        "PowerShell is not installed; AzureDeveloperCliCredential: Azure Developer CLI could "
        "not be found")


def test_a_chain_that_stopped_at_a_failing_credential_is_transient() -> None:
    """The chain stops at the first credential that tried and failed: here the managed
    identity endpoint answered 500, with its own text, which is summarised."""
    entries = [*DAC_ENTRIES[:2],
               "ManagedIdentityCredential: (None) Upstream exploded with " + JWT +
               "\nCode: None\nMessage: Upstream exploded with " + JWT]
    err = classify(dac_error(entries), Chain(8), "DefaultAzureCredential")
    assert isinstance(err, TokenRequestFailed) and err.retryable
    assert err.message.startswith("DefaultAzureCredential: ManagedIdentityCredential failed: ")
    assert "not usable before it: EnvironmentCredential: " in err.message
    assert "eyJ" not in err.message and "Code:" not in err.message


# -- classification of single credentials' failures ---------------------------------------------


class Response:
    """Enough of an azure-core HTTP response for HttpResponseError."""

    def __init__(self, status: int, body: str) -> None:
        self.status_code = status
        self.reason = "reason"
        self.headers: dict[str, str] = {}
        self.content_type = "application/json"
        self._body = body

    def text(self, encoding: str | None = None) -> str:
        return self._body


def from_cause(error: BaseException, cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except type(cause) as exc:
            raise error from exc
    except type(error) as raised:
        return raised


def test_identity_not_assigned_is_permanent_and_the_answer_is_summarised() -> None:
    answer = HttpResponseError(message="raw", response=Response(
        400, '{"error": "invalid_request", "error_description": "Identity not found"}'))
    exc = from_cause(CredentialUnavailableError(
        message="ManagedIdentityCredential authentication unavailable. The requested identity "
                "has not been assigned to this resource. Error: raw endpoint text"), answer)
    err = classify(exc, object(), "ManagedIdentityCredential")
    assert isinstance(err, CredentialsUnavailable) and not err.retryable
    assert err.message == ("ManagedIdentityCredential: the requested identity has not been "
                           "assigned to this resource; the identity endpoint answered HTTP 400 "
                           "(invalid_request: Identity not found)")


def test_no_answer_from_imds_is_transient() -> None:
    exc = from_cause(CredentialUnavailableError(
        message="ManagedIdentityCredential authentication unavailable, no response from the "
                "IMDS endpoint."), ServiceRequestError("Cannot connect to host 169.254.169.254"))
    err = classify(exc, object(), "ManagedIdentityCredential")
    assert isinstance(err, TokenRequestFailed) and err.retryable
    assert err.origin == "identity endpoint"
    assert "could not be reached (ServiceRequestError)" in err.message


@pytest.mark.parametrize("status", [500, 503, 429, 408])
def test_identity_endpoint_errors_are_transient_and_not_copied(status: int) -> None:
    body = json.dumps({"statusCode": status, "message": "The managed identity endpoint "
                       "failed. header X-IDENTITY-HEADER=hdr-9f8e7d6c5b4a39281706 token " + JWT})
    exc = ClientAuthenticationError(message="(None) whatever", response=Response(status, body))
    err = classify(exc, object(), "ManagedIdentityCredential")
    assert isinstance(err, TokenRequestFailed) and err.retryable
    assert not isinstance(err, CredentialsUnavailable)
    assert err.status == 0 and err.origin == "identity endpoint"
    assert err.message.startswith(f"ManagedIdentityCredential: the identity endpoint answered "
                                  f"HTTP {status} (The managed identity endpoint failed.")
    assert "eyJ" not in err.message and "hdr-9f8e" not in err.message
    assert "ARM" not in err.message


def test_a_non_json_answer_is_reduced_to_its_status() -> None:
    exc = ClientAuthenticationError(message='Unexpected response "<html>secret stuff</html>"',
                                    response=Response(502, "<html>secret stuff</html>"))
    err = classify(exc, object(), "ManagedIdentityCredential")
    assert err.message == ("ManagedIdentityCredential: the identity endpoint answered HTTP 502 "
                           "(not JSON)")


def test_timeouts_are_transient() -> None:
    err = classify(ServiceResponseTimeoutError("Timeout on reading data from socket"), object(),
                   "ManagedIdentityCredential")
    assert isinstance(err, TokenRequestFailed) and err.retryable
    assert err.message == ("ManagedIdentityCredential: Timeout on reading data from socket; the "
                           "identity endpoint did not answer in time "
                           "(ServiceResponseTimeoutError)")


def test_a_refused_client_secret_keeps_code_and_description_but_not_the_trace() -> None:
    body = ('{"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client '
            'secret provided.\\r\\nTrace ID: 0d2b\\r\\nCorrelation ID: 77\\r\\nTimestamp: now",'
            ' "error_codes": [7000215]}')
    exc = ClientAuthenticationError(message="Authentication failed: " + body,
                                    response=Response(401, body))
    err = classify(exc, object(), "Secret team-a/id (ClientSecretCredential)",
                   secrets=["s3cr3t-value"])
    assert isinstance(err, TokenRequestFailed) and err.retryable
    assert err.message == ("Secret team-a/id (ClientSecretCredential): the identity endpoint "
                           "answered HTTP 401 (invalid_client: AADSTS7000215: Invalid client "
                           "secret provided.)")


def test_a_configuration_rejected_before_any_request_is_permanent() -> None:
    err = classify(ValueError("Invalid tenant ID provided. You can locate your tenant ID by "
                              "following the instructions listed here: https://aka.ms/tenant"),
                   object(), "ClientSecretCredential")
    assert isinstance(err, CredentialsUnavailable) and not err.retryable
    assert err.message == "ClientSecretCredential: Invalid tenant ID provided"


async def test_an_unreadable_token_file_is_transient_and_not_worded_as_arms(
        tmp_path: Path) -> None:
    path = tmp_path / "missing"
    tokens = TokenCache(StaticFileCredential(str(path)), AUDIENCE)
    with pytest.raises(TokenRequestFailed) as err:
        await tokens()
    assert err.value.retryable and err.value.origin == "token file"
    assert err.value.message == f"token file {path}: cannot be read (FileNotFoundError)"


# -- secrets never reach a message or a log line ------------------------------------------------


def test_redact_removes_tokens_assertions_secrets_and_query_strings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "Qx8~client.secret_value")
    monkeypatch.setenv("IDENTITY_HEADER", "identity-header-value")
    text = (f"Bearer {JWT} and access_token: plain-token-value client_assertion=abc.def.ghi "
            "secret Qx8~client.secret_value header identity-header-value "
            "https://login.example/tenant/oauth2/token?client_secret=xyz&code=1 "
            "urlsafe rWm3bT4kHSk1qGkq8s0Vw6uZ3q7r2k9xYzAbCdEfGhI own s3cr3t-value "
            "kept: 00000000-0000-0000-0000-0000000000aa /var/run/secrets/tokens/azure-identity-1")
    out = redact(text, ["s3cr3t-value"])
    for secret in ("eyJ", "plain-token-value", "abc.def.ghi", "Qx8~", "identity-header-value",
                   "client_secret=xyz", "rWm3bT4k", "s3cr3t-value"):
        assert secret not in out, out
    assert "00000000-0000-0000-0000-0000000000aa" in out
    assert "/var/run/secrets/tokens/azure-identity-1" in out
    assert "https://login.example/tenant/oauth2/token?[query redacted]" in out


async def test_a_failure_message_never_carries_a_secret_and_is_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDENTITY_HEADER", "identity-header-value")
    body = json.dumps({"error": "x" * 500, "error_description":
                       ("bad token " + JWT + " header identity-header-value ") * 40})
    endpoint = Endpoint()
    endpoint.fail = ClientAuthenticationError(message=body, response=Response(400, body))
    tokens, _ = cache_for(endpoint)
    with pytest.raises(TokenRequestFailed) as err:
        await tokens()
    message = str(err.value)
    assert "eyJ" not in message and "identity-header-value" not in message
    assert len(err.value.message) <= 300


async def test_azure_identity_does_not_log_the_endpoints_answer(
        caplog: pytest.LogCaptureFixture, bare_env: None) -> None:
    caplog.set_level(logging.DEBUG, logger="batchcompute_operator")
    await token_error(Settings(credential="environment"))
    assert [r for r in caplog.records if r.name.startswith("azure.identity")] == []
    assert logging.getLogger("azure.identity").getEffectiveLevel() >= logging.ERROR
