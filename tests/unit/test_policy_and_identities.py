"""The tenancy rules: which workspaces a namespace may target, and whose identity it acts with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from batchcompute_operator.config import ConfigError, Settings
from batchcompute_operator.credentials import CredentialsUnavailable, NamespaceIdentities
from batchcompute_operator.policy import WorkspacePolicy
from batchcompute_operator.spec import SpecError, WorkspaceRef, parse_spec

SUB = "00000000-0000-0000-0000-000000000001"
OTHER = "00000000-0000-0000-0000-000000000002"


def test_without_a_policy_everything_is_allowed() -> None:
    assert WorkspacePolicy.parse(None).denial("any", WorkspaceRef(SUB, "rg", "ws1")) is None


def test_policy_matches_namespace_then_star_case_insensitively() -> None:
    policy = WorkspacePolicy.parse(
        f'{{"team-a": ["{SUB}/ML-RG/*"], "*": ["{OTHER}/shared-rg/shared-ws"]}}')
    assert policy.denial("team-a", WorkspaceRef(SUB, "ml-rg", "ws1")) is None
    assert policy.denial("team-a", WorkspaceRef(SUB, "other-rg", "ws1")) is not None
    # team-a has its own rule, so the catch-all does not apply to it
    assert policy.denial("team-a", WorkspaceRef(OTHER, "shared-rg", "shared-ws")) is not None
    assert policy.denial("team-b", WorkspaceRef(OTHER, "shared-rg", "shared-ws")) is None
    message = policy.denial("team-b", WorkspaceRef(SUB, "ml-rg", "ws1"))
    assert message is not None
    assert "team-b" in message


def test_policy_without_catch_all_denies_unlisted_namespaces() -> None:
    policy = WorkspacePolicy.parse(f'{{"team-a": ["{SUB}/*/*"]}}')
    assert policy.denial("team-z", WorkspaceRef(SUB, "rg", "ws1")) is not None


@pytest.mark.parametrize("raw", ["not json", '["a"]', '{"ns": "x"}', '{"ns": ["only/two"]}'])
def test_malformed_policy_stops_the_operator_at_start(raw: str) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env({"BCO_WORKSPACE_POLICY": raw})


def test_policy_from_a_file(tmp_path: Any) -> None:
    path = tmp_path / "policy.json"
    path.write_text(f'{{"*": ["{SUB}/*/*"]}}')
    settings = Settings.from_env({"BCO_WORKSPACE_POLICY": f"@{path}"})
    assert settings.workspace_policy.denial("x", WorkspaceRef(SUB, "a", "bcd")) is None


BASE: dict[str, Any] = {
    "workspace": {"subscriptionId": SUB, "resourceGroup": "ml-rg", "name": "ml-ws"},
    "batchAccount": {"resourceGroup": "batch-rg", "accountName": "acct1"},
}


def test_credentials_secret_must_be_in_the_resources_namespace() -> None:
    own = parse_spec({**BASE, "credentials": {"secretRef": {"name": "azure-id"}}}, "abc", "team-a")
    assert own.credentials_secret == "azure-id"
    same = parse_spec({**BASE, "credentials": {"secretRef": {"name": "azure-id",
                                                            "namespace": "team-a"}}},
                      "abc", "team-a")
    assert same.credentials_secret == "azure-id"
    with pytest.raises(SpecError, match="own namespace"):
        parse_spec({**BASE, "credentials": {"secretRef": {"name": "azure-id",
                                                         "namespace": "team-b"}}},
                   "abc", "team-a")
    with pytest.raises(SpecError, match="secretRef"):
        parse_spec({**BASE, "credentials": {}}, "abc", "team-a")


class Reader:
    def __init__(self, secrets: Mapping[tuple[str, str], tuple[str, dict[str, str]]]) -> None:
        self.secrets = secrets
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, namespace: str, name: str) -> tuple[str, Mapping[str, str]]:
        self.calls.append((namespace, name))
        if (namespace, name) not in self.secrets:
            raise CredentialsUnavailable(f"Secret {namespace}/{name} does not exist")
        return self.secrets[(namespace, name)]


SP = {"tenantId": "t", "clientId": "client-a", "clientSecret": "s3cr3t-value"}


async def test_identities_are_per_namespace_and_follow_secret_rotation() -> None:
    reader = Reader({("team-a", "id"): ("1", SP), ("team-b", "id"): ("7", {**SP,
                                                                         "clientId": "b"})})
    identities = NamespaceIdentities(Settings(), reader)
    a1 = await identities.get("team-a", "id")
    assert await identities.get("team-a", "id") is a1
    b = await identities.get("team-b", "id")
    assert a1.key != b.key
    assert reader.calls == [("team-a", "id"), ("team-a", "id"), ("team-b", "id")]
    reader.secrets = {**reader.secrets, ("team-a", "id"): ("2", SP)}
    assert await identities.get("team-a", "id") is not a1
    await identities.close()


async def test_incomplete_secrets_are_reported_without_their_values() -> None:
    identities = NamespaceIdentities(Settings(), Reader({("ns", "id"): ("1", {
        "clientSecret": "s3cr3t-value"})}))
    with pytest.raises(CredentialsUnavailable) as err:
        await identities.get("ns", "id")
    assert "clientId" in str(err.value)
    assert "s3cr3t" not in str(err.value)


async def test_workload_identity_needs_the_operators_federated_token(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_FEDERATED_TOKEN_FILE", raising=False)
    identities = NamespaceIdentities(Settings(), Reader({("ns", "id"): ("1", {
        "tenantId": "t", "clientId": "c"})}))
    with pytest.raises(CredentialsUnavailable, match="federated token"):
        await identities.get("ns", "id")
