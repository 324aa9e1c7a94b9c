"""The CRD's CEL rules (`x-kubernetes-validations`), evaluated with cel-python.

Clusters from v1.25 evaluate these rules at the API server: exactly one Batch account form,
and an immutable workspace and computeName. Each rule is found by its message, compiled as
written in crds/batchcomputeattachments.yaml, and run against `self` (and, for transition
rules, `oldSelf`) the way kube-apiserver does: a rule that reads `oldSelf` is only evaluated
on an update, and a rule that fails to evaluate refuses the object.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "batchcomputeattachments.yaml"
SUB = "00000000-0000-0000-0000-000000000001"
WS = {"subscriptionId": SUB, "resourceGroup": "ml-rg", "name": "ml-ws"}
RID = f"/subscriptions/{SUB}/resourceGroups/batch-rg/providers/Microsoft.Batch/batchAccounts/acct1"
BY_ID = {"resourceId": RID}
BY_NAME = {"resourceGroup": "batch-rg", "accountName": "acct1"}


def _walk(schema: Mapping[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for rule in schema.get("x-kubernetes-validations", ()):
        yield path, rule
    for key, child in schema.get("properties", {}).items():
        yield from _walk(child, f"{path}.{key}" if path else key)
    if isinstance(schema.get("additionalProperties"), Mapping):
        yield from _walk(schema["additionalProperties"], f"{path}.*")
    if isinstance(schema.get("items"), Mapping):
        yield from _walk(schema["items"], f"{path}[]")


@cache
def all_rules() -> tuple[tuple[str, dict[str, Any]], ...]:
    crd = yaml.safe_load(CRD_FILE.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    return tuple(_walk(version["schema"]["openAPIV3Schema"], ""))


def rule(path: str, message_fragment: str) -> str:
    found = [r["rule"] for p, r in all_rules()
             if p == path and message_fragment in r.get("message", "")]
    assert len(found) == 1, f"one rule at {path} with message {message_fragment!r}: {found}"
    return str(found[0])


@cache
def compiled(expression: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(expression))


def admits(expression: str, new: Any, old: Any = None) -> bool:
    """kube-apiserver's verdict on `new` (an update from `old` when old is given)."""
    if old is None and "oldSelf" in expression:
        return True  # a transition rule: not evaluated on create
    program = compiled(expression)
    activation = {"self": json_to_cel(new)}
    if old is not None:
        activation["oldSelf"] = json_to_cel(old)
    try:
        result = program.evaluate(activation)
    except CELEvalError:
        return False
    if isinstance(result, CELEvalError):
        return False
    assert isinstance(result, celpy.celtypes.BoolType), f"{expression!r} gave {result!r}"
    return bool(result)


def spec(account: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    return {"workspace": dict(WS), "batchAccount": dict(account), **extra}


@pytest.mark.parametrize(("path", "entry"), all_rules(), ids=lambda v: str(v)[:60])
def test_every_rule_compiles_and_has_a_message(path: str, entry: dict[str, Any]) -> None:
    env = celpy.Environment()
    env.program(env.compile(entry["rule"]))
    assert entry.get("message"), f"rule at {path} has no message for the user"


# -- exactly one Batch account form ----------------------------------------------------------

ONE_FORM = ("spec", "exactly one form")


@pytest.mark.parametrize(("account", "ok"), [
    (BY_ID, True),
    (BY_NAME, True),
    ({**BY_ID, **BY_NAME}, False),
    ({**BY_ID, "resourceGroup": "batch-rg"}, False),
    ({**BY_ID, "accountName": "acct1"}, False),
    ({}, False),
    ({"resourceGroup": "batch-rg"}, False),
    ({"accountName": "acct1"}, False),
    ({"resourceId": ""}, True),  # present, if empty: the schema's pattern refuses it instead
], ids=["resourceId", "group+account", "both", "id+group", "id+account", "neither",
        "group-only", "account-only", "empty-id"])
def test_batch_account_takes_exactly_one_form(account: dict[str, Any], ok: bool) -> None:
    expression = rule(*ONE_FORM)
    assert admits(expression, spec(account)) is ok
    # The rule reads only the new object: it holds on updates just the same.
    assert admits(expression, spec(account), spec(BY_ID)) is ok


# -- immutability ------------------------------------------------------------------------------

def test_workspace_may_stay_the_same() -> None:
    expression = rule("spec.workspace", "immutable")
    assert admits(expression, dict(WS), dict(WS))
    assert admits(expression, dict(WS))  # create: nothing to compare with


@pytest.mark.parametrize("change", [
    {"name": "other-ws"},
    {"resourceGroup": "other-rg"},
    {"subscriptionId": SUB.replace("1", "2")},
    {"name": "ML-WS"},  # ARM would call this the same workspace; the rule is stricter
])
def test_workspace_may_not_change(change: dict[str, str]) -> None:
    expression = rule("spec.workspace", "immutable")
    assert not admits(expression, {**WS, **change}, dict(WS))


COMPUTE_NAME = ("spec", "computeName is immutable")


@pytest.mark.parametrize(("old", "new", "ok"), [
    (None, None, True),
    ("batch-a", "batch-a", True),
    ("batch-a", "batch-b", False),
    (None, "batch-a", False),
    ("batch-a", None, False),
    ("batch-a", "Batch-A", False),
], ids=["unset-unset", "same", "changed", "unset-to-set", "set-to-unset", "case-changed"])
def test_compute_name_is_immutable(old: str | None, new: str | None, ok: bool) -> None:
    def with_name(name: str | None) -> dict[str, Any]:
        return spec(BY_ID) if name is None else spec(BY_ID, computeName=name)

    expression = rule(*COMPUTE_NAME)
    assert admits(expression, with_name(new), with_name(old)) is ok


def test_compute_name_may_be_set_on_create() -> None:
    assert admits(rule(*COMPUTE_NAME), spec(BY_ID, computeName="batch-a"))


def test_other_spec_changes_pass_both_spec_rules() -> None:
    old = spec(BY_NAME, computeName="batch-a", description="x")
    new = spec(BY_ID, computeName="batch-a", description="y", tags={"team": "ml"})
    for expression in (rule(*ONE_FORM), rule(*COMPUTE_NAME)):
        assert admits(expression, new, old)


# -- metadata.name, the default compute name ---------------------------------------------------

NAME_RULE = ("", "metadata.name is not a valid compute name")


def resource(name: str, spec_: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "batchcompute.azureml.dev/v1alpha1", "kind": "BatchComputeAttachment",
            "metadata": {"name": name}, "spec": spec_}


@pytest.mark.parametrize(("name", "compute_name", "ok"), [
    ("mybatch", None, True),
    ("a" * 24, None, True),
    ("team-a-batch-attachment-prod", None, False),  # 28 characters: the workspace API refuses it
    ("team-a-batch-attachment-prod", "team-a-prod", True),
    ("my.batch", None, False),
    ("1batch", None, False),
    ("ab", None, False),
    ("my.batch", "my-batch", True),
])
def test_metadata_name_must_be_a_compute_name_when_compute_name_is_absent(
        name: str, compute_name: str | None, ok: bool) -> None:
    extra = {} if compute_name is None else {"computeName": compute_name}
    expression = rule(*NAME_RULE)
    assert admits(expression, resource(name, spec(BY_ID, **extra))) is ok
    # metadata.name cannot change, so the rule gives the same verdict on every update.
    assert admits(expression, resource(name, spec(BY_ID, **extra)),
                  resource(name, spec(BY_ID, **extra))) is ok


# -- tag names -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("tags", "ok"), [
    ({}, True),
    ({"team": "ml", "cost-center": "42", "b\u00e4r": "x"}, True),
    ({"k" * 512: "x"}, True),
    ({"k" * 513: "x"}, False),
    ({"": "x"}, False),
    *[({f"a{c}b": "x"}, False) for c in "<>%&\\?/"],
])
def test_tag_names_are_checked_as_the_operator_checks_them(tags: dict[str, str], ok: bool) -> None:
    assert admits(rule("spec.tags", "tag names are 1-512 characters"), tags) is ok


@pytest.mark.parametrize(("name", "ok"), [
    ("batchcompute-operator.owner", False),
    ("BatchCompute-Operator.Owner-UID", False),
    ("batchcompute-operator.", False),
    ("batchcompute-operator", True),
    ("x-batchcompute-operator.owner", True),
    ("batchcompute-operatorXowner", True),
])
def test_the_owner_tag_names_are_reserved(name: str, ok: bool) -> None:
    assert admits(rule("spec.tags", "reserved"), {name: "x"}) is ok


@pytest.mark.parametrize(("description", "ok"), [("", False), (" ", True), ("x" * 1024, True)])
def test_an_empty_description_is_refused_as_the_operator_refuses_it(description: str,
                                                                     ok: bool) -> None:
    assert admits(rule("spec.description", "must not be empty"), description) is ok
