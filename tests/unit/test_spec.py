"""The SDK v1 attach_configuration rules, and the URL-safety of everything that passes them."""

from __future__ import annotations

from typing import Any

import pytest

from batchcompute_operator.spec import SpecError, parse_spec

SUB = "00000000-0000-0000-0000-000000000001"
WS = {"subscriptionId": SUB, "resourceGroup": "ml-rg", "name": "ml-ws"}
RID = f"/subscriptions/{SUB}/resourceGroups/batch-rg/providers/Microsoft.Batch/batchAccounts/acct1"


def spec(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"workspace": WS, "batchAccount": {"resourceId": RID}}
    base.update(kw)
    return base


def problems(raw: dict[str, Any], name: str = "mybatch") -> str:
    with pytest.raises(SpecError) as err:
        parse_spec(raw, name)
    return str(err.value)


def test_resource_id_form() -> None:
    parsed = parse_spec(spec(), "mybatch")
    assert parsed.batch_account_id == RID
    assert parsed.compute_name == "mybatch"
    assert parsed.compute_id.endswith("/workspaces/ml-ws/computes/mybatch")
    assert parsed.deletion_policy == "Detach"


def test_resource_group_and_account_form_uses_the_workspace_subscription() -> None:
    parsed = parse_spec(spec(batchAccount={"resourceGroup": "batch-rg", "accountName": "acct1"}),
                        "xyz")
    assert parsed.batch_account_id == RID
    assert parsed.compute_name == "xyz"


def test_both_forms_are_refused_with_the_sdk_message() -> None:
    text = problems(spec(batchAccount={"resourceId": RID, "resourceGroup": "r",
                                       "accountName": "acct1"}))
    assert "Since resource_id" in text
    assert "do not provide" in text


def test_neither_form() -> None:
    assert "Please provide resource_group" in problems(spec(batchAccount={}))
    assert "Please provide resource_group" in problems(spec(batchAccount={"accountName": "ab1"}))


@pytest.mark.parametrize("rid", [
    RID.replace("Microsoft.Batch", "Microsoft.Storage"),
    RID.rsplit("/", 1)[0],  # 8 parts
    RID + "/pools",  # 10 parts
    RID.replace("acct1", "ACCT1"),
    RID.replace("acct1", "a"),
    RID.replace("acct1", "acct1%2F.."),
    RID.replace("batch-rg", "batch-rg/.."),
    RID.replace("batch-rg", "b\u0430tch-rg"),  # Cyrillic a: a look-alike
    "",
])
def test_bad_resource_ids(rid: str) -> None:
    problems(spec(batchAccount={"resourceId": rid}))


@pytest.mark.parametrize(("field", "value"), [
    ("subscriptionId", "not-a-guid"),
    ("resourceGroup", "ends-with-dot."),
    ("resourceGroup", "x" * 91),
    ("resourceGroup", "a/b"),
    ("resourceGroup", "a?b"),
    ("name", "ab"),
    ("name", "w" * 34),
    ("name", "ws#frag"),
    ("name", ""),
])
def test_bad_workspace_fields(field: str, value: str) -> None:
    text = problems(spec(workspace={**WS, field: value}))
    assert f"workspace.{field}" in text


@pytest.mark.parametrize("name", ["1abc", "ab", "a" * 25, "a_b_c", "a.b", "ab/..", "abc%2e"])
def test_bad_compute_names(name: str) -> None:
    assert "computeName" in problems(spec(computeName=name))


def test_limits_on_description_and_tags() -> None:
    assert "description" in problems(spec(description="d" * 1025))
    assert "at most 48" in problems(spec(tags={f"k{i}": "v" for i in range(49)}))
    assert len(parse_spec(spec(tags={f"k{i}": "v" for i in range(48)}), "mybatch").tags) == 48
    assert "longer than 256" in problems(spec(tags={"k": "v" * 257}))
    assert "reserved" in problems(spec(tags={"batchcompute-operator.owner": "me"}))
    assert "invalid" in problems(spec(tags={"a/b": "v"}))


def test_every_problem_is_reported_at_once() -> None:
    text = problems({"workspace": {"subscriptionId": "x"}, "batchAccount": {}})
    assert "workspace.subscriptionId" in text
    assert "workspace.resourceGroup is required" in text
    assert "Please provide resource_group" in text


def test_deletion_policy() -> None:
    assert parse_spec(spec(deletionPolicy="Orphan"), "abc").deletion_policy == "Orphan"
    assert "deletionPolicy" in problems(spec(deletionPolicy="Delete"))
