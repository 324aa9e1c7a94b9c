"""The CRD on a modern API server (apiextensions-apiserver v1.36): its CEL rules compile
within the cost budget, refuse with their own messages, and agree with spec.py.

The test bed's kube-apiserver is v1.20, which ignores `x-kubernetes-validations`; cel-python
(tests/unit/test_crd_cel.py) evaluates the rules but neither compiles them as Kubernetes does
nor estimates their cost. Here the server does both when crds/ is installed as shipped, and
then judges generated specs (the strategies of tests/unit/test_spec_properties.py):

* whatever spec.py accepts, the server accepts (the operator never acts on a spec that a
  modern cluster refuses);
* whatever the server stores, spec.py accepts, except where spec.py legitimately checks
  more (`spec_py_checks_more` names each case): a `credentials.secretRef.namespace` naming
  another namespace (CEL sees a resource's metadata.name and generateName, never its
  namespace, so only the operator can refuse it), and a `batchAccount.resourceId` whose
  keywords contain a letter that RE2's case folding in the schema's pattern lets through
  (LATIN SMALL LETTER LONG S for "s") but spec.py's ASCII comparison refuses;
* where the schema alone would pass a spec, the server's verdict is cel-python's verdict on
  the rules;
* on updates, the transition rules (immutability) give the server's verdict, cel-python's
  and the plain rule "workspace and computeName never change" alike.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from tests.unit.test_crd_cel import admits, all_rules, compiled
from tests.unit.test_spec_properties import (
    base_specs,
    compute_names,
    crd_errors,
    guids,
    object_names,
    specs,
)

from batchcompute_operator.spec import SpecError, parse_spec
from batchcompute_testbed.controlplane import CrdRefused, ExtensionsServer
from batchcompute_testbed.controlplane.extensions import Response

CRD_FILE = Path(__file__).resolve().parents[3] / "crds" / "batchcomputeattachments.yaml"
API_VERSION = "batchcompute.azureml.dev/v1alpha1"
PLURAL = "batchcomputeattachments"
NAMESPACE = "default"  # exists on the core server from the start
SUB = "00000000-0000-0000-0000-000000000001"
WS = {"subscriptionId": SUB, "resourceGroup": "ml-rg", "name": "ml-ws"}
RID = f"/subscriptions/{SUB}/resourceGroups/batch-rg/providers/Microsoft.Batch/batchAccounts/acct1"
# Kubernetes object names (a DNS-1123 subdomain): what the API server lets through at all.
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# RE2 folds LATIN SMALL LETTER LONG S into s and KELVIN SIGN into k; Python's str.lower() does not.
RE2_ONLY_FOLDS = ("\u017f", "\u212a")

AGREEMENT = settings(max_examples=300, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                            HealthCheck.function_scoped_fixture])
UPDATES = settings(AGREEMENT, max_examples=60)
UPDATE_NAME = "u0123456789ab"


def resource(name: str, spec: Any, **metadata: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "BatchComputeAttachment",
            "metadata": {"name": name, **metadata}, "spec": spec}


def spec_of(account: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    return {"workspace": dict(WS), "batchAccount": dict(account), **extra}


def spec_py(spec: Any, name: str) -> list[str]:
    """spec.py's problems with `spec` for a resource `name` in NAMESPACE ([] = accepted)."""
    try:
        parse_spec(spec, name, NAMESPACE)
    except SpecError as err:
        return err.problems
    return []


def spec_py_checks_more(spec: Mapping[str, Any]) -> str | None:
    """Why spec.py may refuse a spec the API server stored (None: it must accept it).

    Each is a check CEL cannot make or that the schema's RE2 patterns make differently.
    """
    ref = (spec.get("credentials") or {}).get("secretRef") or {}
    if ref.get("namespace") not in (None, "", NAMESPACE):
        # A root rule sees metadata.name and generateName, never metadata.namespace.
        return "secretRef.namespace names another namespace (CEL cannot see the namespace)"
    rid = (spec.get("batchAccount") or {}).get("resourceId")
    if isinstance(rid, str) and any(c in rid for c in RE2_ONLY_FOLDS):
        # The pattern's (?i:subscriptions) and friends fold these as RE2 does; spec.py
        # compares ASCII-lowered segments and refuses them.
        return "resourceId folds a non-ASCII letter into a keyword (RE2 case folding)"
    return None


@cache
def create_rules() -> tuple[tuple[str, str], ...]:
    """(path, rule) of every rule the server evaluates on a create (no oldSelf)."""
    return tuple((path, str(entry["rule"])) for path, entry in all_rules()
                 if "oldSelf" not in entry["rule"])


def at(obj: Any, path: str) -> tuple[bool, Any]:
    """The value at a dotted path of all_rules() ("" is the object itself)."""
    for key in filter(None, path.split(".")):
        if not isinstance(obj, Mapping) or key not in obj:
            return False, None
        obj = obj[key]
    return True, obj


def pruned(value: Any) -> Any:
    """`value` without null map entries, as the server prunes them (no field is nullable)."""
    if isinstance(value, Mapping):
        return {k: pruned(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [pruned(v) for v in value]
    return value


def cel_python_admits(obj: Mapping[str, Any]) -> bool:
    obj = pruned(obj)
    for path, expression in create_rules():
        present, value = at(obj, path)
        if present and value is not None and not admits(expression, value):
            return False
    return True


def normalized(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module", autouse=True)
def _rules_compiled_by_cel_python(apiextensions: ExtensionsServer) -> None:
    """Compile before any test runs: cel-python's parser raises the recursion limit once."""
    for _, entry in all_rules():
        compiled(entry["rule"])


# -- the rules compile within the cost budget -------------------------------------------------


def test_the_server_is_one_that_evaluates_cel(crd_server: ExtensionsServer) -> None:
    version = crd_server.version()
    assert (int(version["major"]), int(version["minor"].rstrip("+"))) >= (1, 36), version


def test_every_rule_in_crds_compiles_within_the_cost_budget(crd_server: ExtensionsServer
                                                             ) -> None:
    """Installing crds/ as shipped compiled and cost-checked every rule; the server kept all."""
    crd = yaml.safe_load(CRD_FILE.read_text())
    stored = crd_server.request(
        "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}")
    assert stored.ok, stored.message
    conditions = {c["type"]: c["status"] for c in stored.body["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"

    def rules(doc: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        (version,) = [v for v in doc["spec"]["versions"] if v.get("storage")]
        found: list[tuple[str, str, str]] = []

        def walk(schema: Mapping[str, Any], path: str) -> None:
            found.extend((path, r["rule"], r["message"])
                         for r in schema.get("x-kubernetes-validations", ()))
            for key, child in schema.get("properties", {}).items():
                walk(child, f"{path}.{key}")
            for key in ("items", "additionalProperties"):
                if isinstance(schema.get(key), Mapping):
                    walk(schema[key], f"{path}[]")

        walk(version["schema"]["openAPIV3Schema"], "")
        return found

    shipped = rules(crd)
    assert shipped, "crds/ has CEL rules"
    assert sorted(rules(stored.body)) == sorted(shipped)


def _variant(extra_rule: Mapping[str, str], where: tuple[str, ...]) -> dict[str, Any]:
    """The shipped CRD under another group, with one more rule at `where`."""
    crd = yaml.safe_load(CRD_FILE.read_text())
    crd["spec"]["group"] = "cel-check.batchcompute.azureml.dev"
    crd["metadata"]["name"] = f"{crd['spec']['names']['plural']}.{crd['spec']['group']}"
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    schema = version["schema"]["openAPIV3Schema"]
    for key in where:
        schema = schema["properties"][key]
    schema.setdefault("x-kubernetes-validations", []).append(dict(extra_rule))
    return crd


@pytest.mark.parametrize(("where", "extra_rule", "refusal"), [
    (("spec", "credentials", "secretRef"),
     {"rule": "!has(self.namespace) || self.namespace.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
      "message": "a regular expression over a string of unbounded length"},
     "estimated rule cost exceeds budget"),
    (("spec",), {"rule": "has(self.workspace", "message": "a syntax error"},
     "compilation failed"),
    (("spec",), {"rule": "self.nosuchfield == 'x'", "message": "an undeclared field"},
     "compilation failed"),
    (("spec",), {"rule": "self.workspace.name", "message": "a string, not a bool"},
     "must evaluate to a bool"),
], ids=["over-budget", "syntax", "undeclared-field", "not-a-bool"])
def test_the_server_refuses_rules_that_would_not_run(apiextensions: ExtensionsServer,
                                                     where: tuple[str, ...],
                                                     extra_rule: dict[str, str],
                                                     refusal: str) -> None:
    """The control for the test above: a rule a modern cluster cannot run fails the install."""
    with pytest.raises(CrdRefused, match=refusal):
        apiextensions.install_crd(_variant(extra_rule, where))


# -- each rule refuses with its own message ---------------------------------------------------

GOOD = spec_of({"resourceId": RID})
# For each rule (by a fragment of its message): the resource before (None: a create) and after.
VIOLATIONS: dict[str, tuple[dict[str, Any] | None, dict[str, Any]]] = {
    "metadata.name is not a valid compute name":
        (None, resource("team-a-batch-attachment-prod", GOOD)),
    "batchAccount takes exactly one form":
        (None, resource("mybatch", spec_of({"resourceId": RID, "accountName": "acct1"}))),
    "computeName is immutable":
        (resource("mybatch", GOOD), resource("mybatch", {**GOOD, "computeName": "other-name"})),
    "workspace is immutable":
        (resource("mybatch", GOOD),
         resource("mybatch", {**GOOD, "workspace": {**WS, "name": "other-ws"}})),
    "tag names are 1-512 characters":
        (None, resource("mybatch", {**GOOD, "tags": {"a/b": "x"}})),
    "description must not be empty":
        (None, resource("mybatch", {**GOOD, "description": ""})),
    "reserved for the operator's ownership record":
        (None, resource("mybatch", {**GOOD, "tags": {"batchcompute-operator.owner": "x/y"}})),
}


def _case_for(message: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    found = [case for fragment, case in VIOLATIONS.items() if fragment in normalized(message)]
    assert len(found) == 1, f"add one violating case to VIOLATIONS for the rule {message!r}"
    return found[0]


def _fresh_name(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy under a name no other test uses (metadata.name must stay an invalid one)."""
    obj = copy.deepcopy(obj)
    if obj["metadata"]["name"] == "mybatch":
        obj["metadata"]["name"] = f"m{uuid.uuid4().hex[:12]}"
    return obj


@pytest.mark.parametrize(("path", "entry"), all_rules(),
                         ids=lambda v: normalized(str(v.get("message", v)))[:50]
                         if isinstance(v, dict) else v or "<root>")
def test_each_rule_refuses_with_its_own_message(crd_server: ExtensionsServer, path: str,
                                                entry: dict[str, Any]) -> None:
    old, new = _case_for(entry["message"])
    new = _fresh_name(new)
    if old is None:
        answer = crd_server.create(PLURAL, new, NAMESPACE, dry_run=True)
    else:
        old = {**copy.deepcopy(old), "metadata": dict(new["metadata"])}
        created = crd_server.create(PLURAL, old, NAMESPACE)
        assert created.ok, created.message
        new["metadata"]["resourceVersion"] = created.body["metadata"]["resourceVersion"]
        answer = crd_server.update(PLURAL, new, NAMESPACE)
        crd_server.delete(PLURAL, new, NAMESPACE)
    assert answer.status == 422, answer
    assert normalized(entry["message"]) in normalized(answer.message)


# -- agreement with spec.py over generated specs ----------------------------------------------

k8s_names = (object_names | compute_names.map(str.lower)).filter(
    lambda n: len(n) <= 253 and DNS_SUBDOMAIN.fullmatch(n) is not None)


def _json_safe(spec: Any) -> bool:
    try:
        json.dumps(spec, allow_nan=False)
    except ValueError:
        return False
    return True


def _verdict(server: ExtensionsServer, spec: Any, name: str) -> Response:
    answer = server.create(PLURAL, resource(name, spec), NAMESPACE, dry_run=True)
    assert answer.ok or answer.status in (400, 422), answer
    return answer


@AGREEMENT
@given(spec=specs(), name=k8s_names)
@example(spec=spec_of({"resourceId": RID}), name="team-a-batch-attachment-prod")
@example(spec=spec_of({"resourceId": RID}, computeName="team-a-prod"),
         name="team-a-batch-attachment-prod")
@example(spec=spec_of({"resourceId": RID},
                      credentials={"secretRef": {"name": "azure", "namespace": NAMESPACE}}),
         name="mybatch")
@example(spec=spec_of({"resourceId": RID},
                      credentials={"secretRef": {"name": "azure", "namespace": "kube-system"}}),
         name="mybatch")
@example(spec=spec_of({"resourceId": RID.replace("/subscriptions/", "/\u017fubscriptions/")}),
         name="mybatch")
@example(spec=spec_of({"resourceId": RID}, tags={f"k{i}": "v" for i in range(48)}),
         name="mybatch")
@example(spec=spec_of({"resourceId": RID}, tags={f"k{i}": "v" for i in range(49)}),
         name="mybatch")
@example(spec=spec_of({"resourceId": RID}, tags={"BatchCompute-Operator.Owner": "x"}),
         name="mybatch")
def test_the_server_and_spec_py_agree_on_creates(crd_server: ExtensionsServer, spec: Any,
                                                 name: str) -> None:
    assume(_json_safe(spec))
    answer = _verdict(crd_server, spec, name)
    problems = spec_py(spec, name)
    if not problems:
        assert answer.ok, f"spec.py accepts what the server refuses: {answer.message}"
    if answer.ok:
        stored = answer.body["spec"]
        stored_problems = spec_py(stored, name)
        reason = spec_py_checks_more(stored)
        if stored_problems:
            assert reason, f"the server stored a spec that spec.py refuses: {stored_problems}"
            event(f"spec.py checks more: {reason}")
        else:
            event("both accept")
    else:
        assert problems, f"the server refuses what spec.py accepts: {answer.message}"
        event("both refuse")
    if not crd_errors(spec, name):
        # The schema passes it, so the rules decide: as cel-python evaluates them.
        assert answer.ok is cel_python_admits(resource(name, spec)), answer.message


# -- updates: the transition rules ------------------------------------------------------------

def _other_name(name: str) -> str:
    """A different name of the same shape: its first letter or digit replaced."""
    first = "b" if name[0] == "a" else "a"
    return first + name[1:]


@st.composite
def updates(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A spec spec.py accepts and an edit of it: immutable fields changed or not, others too."""
    old = draw(base_specs().filter(lambda s: not spec_py(s, UPDATE_NAME)))
    new = copy.deepcopy(old)
    for change in draw(st.lists(st.sampled_from(
            ["subscriptionId", "resourceGroup", "workspaceName", "workspaceCase", "setCompute",
             "dropCompute", "changeCompute", "description", "tags", "policy", "accountForm"]),
            max_size=2, unique=True)):
        ws = new["workspace"]
        if change == "subscriptionId":
            current = ws["subscriptionId"].lower()
            ws["subscriptionId"] = draw(guids.filter(lambda g, c=current: g.lower() != c))
        elif change == "resourceGroup":
            group = ws["resourceGroup"]
            ws["resourceGroup"] = "x" + group if len(group) < 90 else _other_name(group)
        elif change == "workspaceName":
            ws["name"] = _other_name(ws["name"])
        elif change == "workspaceCase" and ws["name"].swapcase() != ws["name"]:
            ws["name"] = ws["name"].swapcase()
        elif change == "setCompute" and "computeName" not in new:
            new["computeName"] = draw(compute_names)
        elif change == "changeCompute" and "computeName" in new:
            new["computeName"] = _other_name(new["computeName"])
        elif change == "dropCompute":
            new.pop("computeName", None)
        elif change == "description":
            new["description"] = draw(st.text(min_size=1, max_size=20))
        elif change == "tags":
            new["tags"] = {"team": draw(st.text(max_size=10))}
        elif change == "policy":
            new["deletionPolicy"] = "Orphan" if new.get("deletionPolicy") != "Orphan" else "Detach"
        elif change == "accountForm":
            new["batchAccount"] = {"resourceId": RID.replace(
                "batch-rg", "other-rg")} if "resourceGroup" in new["batchAccount"] else {
                "resourceGroup": "other-rg", "accountName": "other1"}
    return old, new


def transition_rules() -> list[tuple[str, str]]:
    return [(path, str(entry["rule"])) for path, entry in all_rules()
            if "oldSelf" in entry["rule"]]


def _immutable_fields_kept(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return old["workspace"] == new["workspace"] and old.get("computeName") == new.get(
        "computeName")


@UPDATES
@given(change=updates())
@example(change=(spec_of({"resourceId": RID}), spec_of({"resourceId": RID})))
@example(change=(spec_of({"resourceId": RID}), spec_of({"resourceId": RID}, computeName="b-1")))
@example(change=(spec_of({"resourceId": RID}, computeName="b-1"), spec_of({"resourceId": RID})))
@example(change=(spec_of({"resourceId": RID}, computeName="b-1"),
                 spec_of({"resourceId": RID}, computeName="B-1")))
@example(change=(spec_of({"resourceId": RID}),
                 {**spec_of({"resourceId": RID}), "workspace": {**WS, "name": "ML-WS"}}))
def test_updates_keep_the_workspace_and_compute_name(crd_server: ExtensionsServer,
                                                      change: tuple[dict[str, Any],
                                                                    dict[str, Any]]) -> None:
    old_spec, new_spec = change
    name = f"u{uuid.uuid4().hex[:12]}"  # as valid a compute name as UPDATE_NAME
    created = crd_server.create(PLURAL, resource(name, old_spec), NAMESPACE)
    assert created.ok, created.message
    try:
        stored_old = created.body["spec"]
        answer = crd_server.update(PLURAL, resource(
            name, new_spec, resourceVersion=created.body["metadata"]["resourceVersion"]),
            NAMESPACE)
    finally:
        crd_server.delete(PLURAL, resource(name, old_spec), NAMESPACE)
    expected = _immutable_fields_kept(old_spec, new_spec)
    event("kept" if expected else "changed")
    assert answer.ok is expected, answer.message
    new_obj, old_obj = resource(name, new_spec), resource(name, stored_old)
    cel_python = all(admits(rule, at(new_obj, path)[1], at(old_obj, path)[1])
                     for path, rule in transition_rules())
    assert cel_python is expected
    if not expected:
        messages = [normalized(entry["message"]) for _, entry in all_rules()
                    if "oldSelf" in entry["rule"]]
        assert any(m in normalized(answer.message) for m in messages), answer.message

