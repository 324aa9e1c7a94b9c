"""Property tests for the spec validator: hostile specs never get through, and never crash it.

Specs are built from valid pieces with a few hostile edits mixed in: look-alike letters from
other scripts, zero-width and other invisible characters, path syntax (`/`, `..`, `?`, `#`,
`%2F`), whitespace, empty strings, overlong names, values of the wrong JSON type, resource ids
with too few or too many segments or another provider, both or neither Batch account form,
and huge descriptions and tag maps. Three properties must hold for every such spec:

(a) `parse_spec` raises nothing but `SpecError`;
(b) what it accepts yields ARM paths made only of `[A-Za-z0-9._()-]` segments, none of them
    `..`, and a compute id of exactly 11 '/'-separated parts;
(c) what it accepts, the CRD's openAPIV3Schema accepts too: the operator never acts on a spec
    the API server would have refused.

(c) needs the schema evaluated the way kube-apiserver does it, so this module carries a small
validator for the part of OpenAPI v3 the CRD uses. Patterns are Go RE2 expressions; they are
translated to Python `re` with RE2's meaning kept where the two differ (see `re2`). Both
differences were checked against kube-apiserver v1.20.2: `(?i:subscriptions)` accepts a
LATIN SMALL LETTER LONG S but refuses a DOTLESS I, and `$` does not match before a trailing
newline. The server prunes null values of non-nullable fields (including map values) before
validating; the validator does the same. (That v1.20 server also refuses empty strings as if
they were null, a bug later fixed; the validator follows the schema, not that bug.)
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from batchcompute_operator.spec import AttachmentSpec, SpecError, parse_spec

CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "batchcomputeattachments.yaml"
SEGMENT = re.compile(r"^[A-Za-z0-9._()-]+$")
SUB = "00000000-0000-0000-0000-000000000001"
WS = {"subscriptionId": SUB, "resourceGroup": "ml-rg", "name": "ml-ws"}
RID = f"/subscriptions/{SUB}/resourceGroups/batch-rg/providers/Microsoft.Batch/batchAccounts/acct1"

PROPERTY = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- the CRD schema, evaluated as kube-apiserver does ---------------------------------------

# RE2 folds case by Unicode simple case folding. For ASCII letters that adds exactly two
# characters: KELVIN SIGN to k, LATIN SMALL LETTER LONG S to s. Python's IGNORECASE adds
# DOTLESS I and CAPITAL I WITH DOT ABOVE to i as well, which RE2 does not, so case-insensitive
# groups are spelled out as character classes instead.
RE2_FOLD_EXTRA = {"k": "\u212a", "s": "\u017f"}
RE2_CLASSES = {"d": "[0-9]", "D": "[^0-9]", "w": "[0-9A-Za-z_]", "W": "[^0-9A-Za-z_]",
               "s": "[\\t\\n\\f\\r ]", "S": "[^\\t\\n\\f\\r ]"}


def _fold(char: str) -> str:
    orbit = {char.lower(), char.upper(), RE2_FOLD_EXTRA.get(char.lower(), char)}
    return "[" + "".join(sorted(orbit)) + "]"


@cache
def re2(pattern: str) -> re.Pattern[str]:
    """A Python regex matching what the RE2 `pattern` matches (the constructs the CRD uses).

    Handled: literals, escapes, character classes, groups, `(?:...)`, `(?i:...)`, `^`, `$`.
    Anything else is refused rather than translated approximately.
    """
    out: list[str] = []
    groups: list[bool] = []  # for each open group: is it case-insensitive?
    i = 0
    while i < len(pattern):
        char = pattern[i]
        folding = any(groups)
        if char == "\\":
            escaped = pattern[i + 1]
            if escaped in RE2_CLASSES:
                out.append(RE2_CLASSES[escaped])
            elif escaped.isalnum():
                raise NotImplementedError(f"escape \\{escaped} in {pattern!r}")
            else:
                out.append(pattern[i:i + 2])
            i += 2
        elif char == "[":
            end = i + 1
            if pattern[end] == "^":
                end += 1
            if pattern[end] == "]":
                end += 1
            while pattern[end] != "]":
                end += 2 if pattern[end] == "\\" else 1
            klass = pattern[i:end + 1]
            if folding and any(c.isalpha() for c in klass):
                raise NotImplementedError(f"a class inside (?i:...) in {pattern!r}")
            if re.search(r"\\[a-zA-Z]", klass):
                raise NotImplementedError(f"an escape class inside [...] in {pattern!r}")
            out.append(klass)
            i = end + 1
        elif pattern.startswith("(?i:", i):
            groups.append(True)
            out.append("(?:")
            i += 4
        elif pattern.startswith("(?:", i):
            groups.append(False)
            out.append("(?:")
            i += 3
        elif pattern.startswith("(?", i):
            raise NotImplementedError(f"group flags in {pattern!r}")
        elif char == "(":
            groups.append(False)
            out.append("(")
            i += 1
        elif char == ")":
            groups.pop()
            out.append(")")
            i += 1
        elif char == "$":
            out.append(r"\Z")  # RE2 without (?m): the end of the text, never before a "\n"
            i += 1
        elif folding and char.isalpha():
            out.append(_fold(char))
            i += 1
        else:
            out.append(char)
            i += 1
    assert not groups, f"unbalanced groups in {pattern!r}"
    return re.compile("".join(out))


# Keywords the validator evaluates, and keywords that do not constrain a value here.
CHECKED = {"type", "properties", "required", "pattern", "minLength", "maxLength",
           "maxProperties", "minProperties", "additionalProperties", "enum", "items", "nullable"}
NOT_CHECKED = {"description", "default", "format", "x-kubernetes-validations",
               "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
               "x-kubernetes-preserve-unknown-fields"}
TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}


def _child(schema: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    props = schema.get("properties", {})
    if key in props:
        return props[key]  # type: ignore[no-any-return]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, Mapping) else None


def schema_errors(schema: Mapping[str, Any], value: Any, path: str = "") -> list[str]:
    """What kube-apiserver's structural-schema validation would say about `value`."""
    unknown = set(schema) - CHECKED - NOT_CHECKED
    if unknown:
        raise NotImplementedError(f"{path}: schema keywords {sorted(unknown)}")
    kind = schema.get("type")
    if value is None:
        return [] if schema.get("nullable") else [f"{path}: must be of type {kind}: null"]
    if kind is not None and not TYPES[kind](value):
        return [f"{path}: must be of type {kind}: {type(value).__name__}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re2(schema["pattern"]).search(value):
            errors.append(f"{path}: does not match {schema['pattern']}")
    elif isinstance(value, dict):
        # Null values of non-nullable fields are pruned before validation.
        value = {k: v for k, v in value.items()
                 if not (v is None and not (_child(schema, k) or {}).get("nullable"))}
        for key in schema.get("required", ()):
            if key not in value:
                errors.append(f"{path}.{key}: Required value")
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errors.append(f"{path}: more than {schema['maxProperties']} properties")
        if len(value) < schema.get("minProperties", 0):
            errors.append(f"{path}: fewer than {schema['minProperties']} properties")
        for key, item in value.items():
            child = _child(schema, key)
            if child is not None:
                errors += schema_errors(child, item, f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}.{key}: not allowed")
            # otherwise an unknown field: pruned by the server, not refused
    elif isinstance(value, list) and "items" in schema:
        for n, item in enumerate(value):
            errors += schema_errors(schema["items"], item, f"{path}[{n}]")
    return errors


@cache
def crd_schema() -> Mapping[str, Any]:
    crd = yaml.safe_load(CRD_FILE.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    schema: Mapping[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def crd_errors(spec: Any, name: str = "mybatch") -> list[str]:
    obj = {"apiVersion": "batchcompute.azureml.dev/v1alpha1", "kind": "BatchComputeAttachment",
           "metadata": {"name": name, "namespace": "default"}, "spec": spec}
    return schema_errors(crd_schema(), obj)


def test_the_validator_understands_every_keyword_of_the_spec_schema() -> None:
    def walk(schema: Mapping[str, Any], path: str) -> None:
        assert not set(schema) - CHECKED - NOT_CHECKED, path
        if "pattern" in schema:
            re2(schema["pattern"])  # translatable
        for key, child in schema.get("properties", {}).items():
            walk(child, f"{path}.{key}")
        if isinstance(schema.get("additionalProperties"), Mapping):
            walk(schema["additionalProperties"], f"{path}.*")
        if "items" in schema:
            walk(schema["items"], f"{path}[]")

    walk(crd_schema()["properties"]["spec"], "spec")


def test_the_validator_agrees_with_the_api_server_on_known_cases() -> None:
    good = {"workspace": WS, "batchAccount": {"resourceId": RID}}
    assert crd_errors(good) == []
    assert crd_errors({**good, "description": None, "tags": {"a": None}, "zzz": [1]}) == []
    assert crd_errors({"workspace": WS, "batchAccount": {"resourceId": RID + "\n"}})
    assert crd_errors({**good, "workspace": {**WS, "name": "ml-ws\n"}})
    assert crd_errors({**good, "workspace": None})
    assert crd_errors({**good, "description": 5})
    assert crd_errors({**good, "description": "\U0001f600" * 1024}) == []
    assert crd_errors({**good, "description": "\U0001f600" * 1025})
    assert crd_errors({**good, "workspace": {**WS, "resourceGroup": "a" * 91}})
    assert crd_errors({**good, "tags": {f"k{i}": "v" for i in range(51)}})
    # RE2 case folding, as kube-apiserver v1.20.2 applied it:
    assert crd_errors({**good, "batchAccount": {
        "resourceId": RID.replace("/subscriptions/", "/\u017fubscriptions/")}}) == []
    for odd in ("\u0131", "\u0130"):
        assert crd_errors({**good, "batchAccount": {
            "resourceId": RID.replace("/subscriptions/", f"/subscr{odd}ptions/")}})


# -- strategies --------------------------------------------------------------------------------

# Look-alikes of ASCII letters and digits from other scripts, and case-fold oddities.
LOOKALIKES = {
    "a": "\u0430", "c": "\u0441", "e": "\u0435", "i": "\u0456", "o": "\u043e", "p": "\u0440",
    "s": "\u0455", "x": "\u0445", "y": "\u0443", "A": "\u0410", "B": "\u0412", "C": "\u0421",
    "E": "\u0415", "H": "\u041d", "K": "\u212a", "M": "\u041c", "O": "\u039f", "P": "\u0420",
    "T": "\u0422", "X": "\u0425", "0": "\u0660", "1": "\uff11", "3": "\u0663", "l": "\u04cf",
}
FOLD_ODDITIES = ["\u017f", "\u212a", "\u0131", "\u0130", "\uff41", "\u1e9e"]
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u202e", "\u0301"]
PATH_SYNTAX = ["/", "..", "/../", "?", "#", "%2F", "%2f", "%2e%2e", "\\", "&", "%", ";",
               "?api-version=1", "#frag", "@", ":", "*", "~", "+", "=", "'", '"', "<", ">"]
WHITESPACE = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\u00a0", "\u2028", "\u3000", "\x00"]
INJECTIONS = INVISIBLE + PATH_SYNTAX + WHITESPACE + FOLD_ODDITIES
JUNK_STRINGS = ["", " ", ".", "..", "...", "/", "//", "-", "_", "()", "a", "ab", "\n",
                "a" * 25, "a" * 34, "a" * 91, "a" * 513, "x" * 5000, "null", "None", "0",
                "\u200b", "..%2F..%2F", "/subscriptions/../", "-abc", "abc.", "abc-"]

guids = st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper())
resource_groups = (st.from_regex(r"[-A-Za-z0-9_.()]{0,12}[-A-Za-z0-9_()]", fullmatch=True)
                   | st.sampled_from(["a" * 90, "(" + "x" * 88 + ")", "a.b", "-", "_", "()"]))
workspace_names = st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9_-]{2,32}", fullmatch=True)
compute_names = st.from_regex(r"[a-zA-Z][a-zA-Z0-9-]{2,23}", fullmatch=True)
account_names = st.from_regex(r"[a-z0-9]{3,24}", fullmatch=True)
object_names = (st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,30}[a-z0-9])?", fullmatch=True)
                | st.sampled_from(["my.batch", "1batch", "a" * 63, "ab", "batch-" * 5]))
wrong_types = st.one_of(
    st.integers(), st.booleans(), st.floats(allow_nan=False), st.none(),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[str]) -> str:
    """A valid value with one hostile edit: a look-alike, an injection, a cut or a pad."""
    text = draw(valid)
    at = draw(st.integers(0, len(text)))
    how = draw(st.sampled_from(["lookalike", "insert", "replace", "cut", "pad", "case"]))
    if how == "lookalike":
        spots = [n for n, c in enumerate(text) if c in LOOKALIKES]
        if spots:
            n = draw(st.sampled_from(spots))
            return text[:n] + LOOKALIKES[text[n]] + text[n + 1:]
        how = "insert"
    if how == "insert":
        return text[:at] + draw(st.sampled_from(INJECTIONS)) + text[at:]
    if how == "replace" and text:
        at = min(at, len(text) - 1)
        return text[:at] + draw(st.sampled_from(INJECTIONS)) + text[at + 1:]
    if how == "cut":
        return text[:at]
    if how == "pad":
        return text + draw(st.sampled_from(["a" * 100, "-", ".", " ", "0"]))
    return text.swapcase()


# Empty and falsy values: a validator must not read them as "not given" unless null.
empties: st.SearchStrategy[Any] = st.sampled_from(["", 0, False, [], {}, None])


def hostile(valid: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.one_of(mutated(valid), st.sampled_from(JUNK_STRINGS), wrong_types, empties,
                     st.text(max_size=40))


def keyword(word: str) -> st.SearchStrategy[str]:
    return st.sampled_from([word, word.lower(), word.upper(), word.swapcase()])


rid_parts = st.tuples(keyword("subscriptions"), guids, keyword("resourceGroups"), resource_groups,
                      keyword("providers"), keyword("Microsoft.Batch"), keyword("batchAccounts"),
                      account_names).map(list)
valid_rids = rid_parts.map(lambda parts: "/" + "/".join(parts))
WRONG_PROVIDERS = ["Microsoft.Storage", "Microsoft.Batch2", "Microsoft.BatchAI", "Microsoft",
                   "Microsoft.MachineLearningServices", "Microsoft%2EBatch", "Microsoft.Batch/..",
                   "Micro\u017foft.Batch", "Microsoft.B\u0430tch", "Microsoft.Batch\u200b", "",
                   ".."]
WRONG_KINDS = ["batchAccount", "storageAccounts", "workspaces", "computes", "", "..",
               "b\u0430tchAccounts", "batchAccount\u017f"]


@st.composite
def hostile_rids(draw: st.DrawFn) -> str:
    """Batch account ids that are wrong in one way: segment count, provider, names, syntax."""
    parts: list[str] = draw(rid_parts)
    how = draw(st.sampled_from(["drop", "add", "provider", "kind", "mutate", "fold", "slashes",
                                "traverse", "junk"]))
    if how == "drop":  # 8 parts: one segment short
        del parts[draw(st.integers(0, len(parts) - 1))]
    elif how == "add":  # 10 or 11 parts
        for _ in range(draw(st.integers(1, 2))):
            parts.insert(draw(st.integers(0, len(parts))),
                         draw(st.sampled_from(["x", "..", ".", "", "computes", "acct1"])))
    elif how == "provider":
        parts[5] = draw(st.sampled_from(WRONG_PROVIDERS))
    elif how == "kind":
        parts[6] = draw(st.sampled_from(WRONG_KINDS))
    elif how == "mutate":
        n = draw(st.integers(0, len(parts) - 1))
        parts[n] = draw(mutated(st.just(parts[n])))
    elif how == "fold":  # RE2's (?i:...) lets LONG S and KELVIN SIGN through the schema
        n = draw(st.sampled_from([0, 2, 4, 5, 6]))
        parts[n] = parts[n].replace("s", "\u017f", 1).replace("S", "\u017f", 1)
    elif how == "slashes":
        rid = "/" + "/".join(parts)
        return draw(st.sampled_from([rid + "/", rid[1:], "/" + rid, rid.replace("/", "//", 2),
                                     rid + "/../../x", rid + "?x=1", rid + "#x", rid + " "]))
    elif how == "traverse":
        parts[draw(st.sampled_from([1, 3, 7]))] = draw(st.sampled_from(
            ["..", ".", "%2e%2e", "..%2F..", "a/../b"]))
    else:
        return draw(st.sampled_from(["", "/", "x" * 600, "/subscriptions", RID.upper(),
                                     RID.replace("/", "\\")]))
    return "/" + "/".join(parts)


valid_tag_keys = st.text(st.characters(blacklist_characters="<>%&\\?/",
                                       codec="utf-8"), min_size=1, max_size=20
                         ).filter(lambda k: not k.lower().startswith("batchcompute-operator."))
hostile_tag_keys = st.one_of(
    st.sampled_from(["batchcompute-operator.owner", "batchcompute-operator.owner-uid",
                     "BatchCompute-Operator.Owner", "batchcompute-operator.", "",
                     "a/b", "a%2Fb", "a%b", "a?b", "a#b", "a<b", "a>b", "a&b", "a\\b",
                     "k" * 513, "../owner"]),
    mutated(st.just("batchcompute-operator.owner")),
)
valid_tag_values = st.text(max_size=30) | st.just("v" * 256)
hostile_tag_values = st.one_of(st.just("v" * 257), st.just("\U0001f600" * 257), wrong_types)
valid_tags = st.dictionaries(valid_tag_keys, valid_tag_values, max_size=4)
big_tags = st.integers(48, 53).map(lambda n: {f"k{i}": "v" for i in range(n)})
hostile_tags = st.one_of(
    st.dictionaries(hostile_tag_keys, valid_tag_values, min_size=1, max_size=3),
    st.dictionaries(valid_tag_keys, hostile_tag_values, min_size=1, max_size=3),
    big_tags, wrong_types,
)
descriptions = st.text(max_size=60) | st.sampled_from(["d" * 1024, "\U0001f600" * 1024, ""])
hostile_descriptions = st.one_of(
    st.sampled_from(["d" * 1025, "\U0001f600" * 1025, "\u200b" * 1025, "x" * 100_000]),
    wrong_types)
secret_names = (st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,20}[a-z0-9])?", fullmatch=True)
                | st.just("s" * 253))
namespaces = st.sampled_from([None, "default"])
policies = st.sampled_from(["Detach", "Orphan"])
hostile_policies = st.one_of(
    st.sampled_from(["detach", "orphan", "Delete", "", "Detach ", "Orph\u0430n", "DETACH"]),
    wrong_types)


@st.composite
def base_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid spec: either Batch account form, optional fields present or not."""
    spec: dict[str, Any] = {"workspace": {"subscriptionId": draw(guids),
                                          "resourceGroup": draw(resource_groups),
                                          "name": draw(workspace_names)}}
    if draw(st.booleans()):
        spec["batchAccount"] = {"resourceId": draw(valid_rids)}
    else:
        spec["batchAccount"] = {"resourceGroup": draw(resource_groups),
                                "accountName": draw(account_names)}
    credentials = secret_names.map(lambda name: {"secretRef": {"name": name}})
    for key, values in (("computeName", compute_names), ("description", descriptions),
                        ("tags", valid_tags), ("deletionPolicy", policies),
                        ("credentials", credentials)):
        if draw(st.booleans()):
            spec[key] = draw(values)
    return spec


# Where a hostile value may go, and what to put there.
TARGETS: dict[tuple[str, ...], st.SearchStrategy[Any]] = {
    ("workspace",): wrong_types,
    ("workspace", "subscriptionId"): hostile(guids),
    ("workspace", "resourceGroup"): hostile(resource_groups),
    ("workspace", "name"): hostile(workspace_names),
    ("computeName",): hostile(compute_names),
    ("batchAccount",): wrong_types,
    ("batchAccount", "resourceId"): hostile_rids() | hostile(valid_rids) | valid_rids,
    ("batchAccount", "resourceGroup"): hostile(resource_groups) | resource_groups,
    ("batchAccount", "accountName"): hostile(account_names) | account_names,
    ("description",): hostile_descriptions,
    ("tags",): hostile_tags,
    ("deletionPolicy",): hostile_policies,
    ("credentials",): wrong_types,
    ("credentials", "secretRef"): wrong_types,
    ("credentials", "secretRef", "name"): hostile(secret_names) | st.just("s" * 254),
    ("credentials", "secretRef", "namespace"):
        st.sampled_from(["", "default", "kube-system", "../default", "default\n"]) | wrong_types,
    ("zzz",): wrong_types,
}


class _Delete:
    """The edit that removes a field; one instance, kept by deepcopy so `is` finds it."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _Delete:
        return self


DELETE = _Delete()


@st.composite
def edits(draw: st.DrawFn) -> tuple[tuple[str, ...], Any]:
    target = draw(st.sampled_from(sorted(TARGETS)))
    value = DELETE if draw(st.integers(0, 5)) == 0 else draw(TARGETS[target])
    return target, value


def apply(spec: dict[str, Any], edit: tuple[tuple[str, ...], Any]) -> None:
    path, value = edit
    node: Any = spec
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    if value is DELETE:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid spec with zero to three hostile edits (zero is common, so acceptance is too)."""
    spec = draw(base_specs())
    for edit in draw(st.lists(edits(), max_size=3)):
        apply(spec, copy.deepcopy(edit))
    return spec


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=10)
garbage_specs = st.dictionaries(
    st.sampled_from(["workspace", "batchAccount", "computeName", "description", "tags",
                     "deletionPolicy", "other"]), json_values, max_size=6)


def parse(spec: Any, name: str, namespace: str | None = None) -> AttachmentSpec | None:
    """parse_spec's verdict; any exception other than SpecError fails the test."""
    try:
        parsed = parse_spec(spec, name, namespace)
    except SpecError as err:
        problems = err.problems
    else:
        event("accepted")
        return parsed
    assert problems, "a SpecError must say what is wrong"
    assert all(isinstance(p, str) and p for p in problems)
    event("refused")
    return None


def assert_safe_path(path: str, parts: int) -> None:
    split = path.split("/")
    assert len(split) == parts, path
    assert split[0] == "", path
    for segment in split[1:]:
        assert SEGMENT.fullmatch(segment), (segment, path)
        assert segment not in ("..", "."), path
    # httpx sends it as it is: nothing re-encoded, nothing resolved away.
    assert httpx.URL("https://management.azure.com").copy_with(path=path).path == path


# -- the properties ---------------------------------------------------------------------------


@PROPERTY
@given(spec=specs() | garbage_specs, name=object_names | hostile(compute_names),
       namespace=namespaces)
def test_parse_spec_raises_only_spec_error(spec: dict[str, Any], name: Any,
                                           namespace: str | None) -> None:
    parse(spec, name, namespace)


@PROPERTY
@given(spec=specs(), name=object_names, namespace=namespaces)
def test_accepted_specs_build_only_safe_arm_paths(spec: dict[str, Any], name: str,
                                                  namespace: str | None) -> None:
    parsed = parse(spec, name, namespace)
    if parsed is None:
        return
    assert_safe_path(parsed.compute_id, 11)
    assert_safe_path(parsed.workspace.arm_id, 9)
    assert_safe_path(parsed.workspace.arm_id + "/computes", 10)
    assert_safe_path(parsed.batch_account_id, 9)
    assert parsed.batch_account_id.split("/")[6].lower() == "microsoft.batch"
    assert parsed.compute_id.split("/")[10] == parsed.compute_name
    assert parsed.compute_name in (spec.get("computeName"), name)


@PROPERTY
@given(spec=specs(), name=object_names)
@example(spec={"workspace": WS, "batchAccount": {"resourceId": RID}, "computeName": ""},
         name="mybatch")
@example(spec={"workspace": WS, "batchAccount": {"resourceId": RID, "accountName": ""}},
         name="mybatch")
def test_accepted_specs_pass_the_crd_schema(spec: dict[str, Any], name: str) -> None:
    if parse(spec, name, "default") is not None:
        assert crd_errors(spec, name) == []


# -- named hostile cases -----------------------------------------------------------------------

def base(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"workspace": dict(WS), "batchAccount": {"resourceId": RID}}
    spec.update(changes)
    return spec


CYR_A = "\u0430"
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("workspace name with a Cyrillic a", base(workspace={**WS, "name": f"ml-ws{CYR_A}"}),
     "workspace.name"),
    ("workspace group with a zero-width space",
     base(workspace={**WS, "resourceGroup": "ml\u200b-rg"}), "workspace.resourceGroup"),
    ("workspace group '..'", base(workspace={**WS, "resourceGroup": ".."}),
     "workspace.resourceGroup"),
    ("workspace group with a slash", base(workspace={**WS, "resourceGroup": "a/b"}),
     "workspace.resourceGroup"),
    ("workspace group with %2F", base(workspace={**WS, "resourceGroup": "a%2Fb"}),
     "workspace.resourceGroup"),
    ("workspace group of 91", base(workspace={**WS, "resourceGroup": "a" * 91}),
     "workspace.resourceGroup"),
    ("subscription with a fullwidth digit",
     base(workspace={**WS, "subscriptionId": SUB[:-1] + "\uff11"}), "workspace.subscriptionId"),
    ("subscription as an int", base(workspace={**WS, "subscriptionId": 1}),
     "workspace.subscriptionId"),
    ("workspace as a list", base(workspace=[WS]), "workspace"),
    ("computeName with '?'", base(computeName="abc?x=1"), "computeName"),
    ("computeName with '#'", base(computeName="abc#x"), "computeName"),
    ("computeName '..'", base(computeName=".."), "computeName"),
    ("computeName with a trailing newline", base(computeName="abcd\n"), "computeName"),
    ("computeName of 25", base(computeName="a" * 25), "computeName"),
    ("computeName as a list", base(computeName=["abc"]), "computeName"),
    ("resourceId of 8 parts", base(batchAccount={"resourceId": RID.rsplit("/", 1)[0]}),
     "Invalid resource_id"),
    ("resourceId of 10 parts", base(batchAccount={"resourceId": RID + "/x"}),
     "Invalid resource_id"),
    ("resourceId with a trailing slash", base(batchAccount={"resourceId": RID + "/"}),
     "Invalid resource_id"),
    ("resourceId of another provider",
     base(batchAccount={"resourceId": RID.replace("Microsoft.Batch", "Microsoft.Storage")}),
     "provider must be"),
    ("resourceId with LONG S in 'subscriptions'",
     base(batchAccount={"resourceId": RID.replace("/subscriptions/", "/\u017fubscriptions/")}),
     "not a Batch account id"),
    ("resourceId with LONG S in the provider",
     base(batchAccount={"resourceId": RID.replace("Microsoft.", "Micro\u017foft.")}),
     "provider must be"),
    ("resourceId with '..' as the group",
     base(batchAccount={"resourceId": RID.replace("batch-rg", "..")}), "resource group"),
    ("resourceId with a Cyrillic account",
     base(batchAccount={"resourceId": RID.replace("acct1", f"{CYR_A}cct1")}), "account name"),
    ("both forms", base(batchAccount={"resourceId": RID, "resourceGroup": "batch-rg",
                                      "accountName": "acct1"}), "do not provide"),
    ("resourceId and accountName", base(batchAccount={"resourceId": RID,
                                                      "accountName": "acct1"}), "do not provide"),
    ("neither form", base(batchAccount={}), "Please provide"),
    ("resourceGroup without accountName", base(batchAccount={"resourceGroup": "batch-rg"}),
     "Please provide"),
    ("batchAccount as a string", base(batchAccount=RID), "Please provide"),
    ("description of 1025", base(description="d" * 1025), "description"),
    ("description as a dict", base(description={"a": "b"}), "description"),
    ("51 tags", base(tags={f"k{i}": "v" for i in range(51)}), "tags"),
    ("tag value of 257", base(tags={"a": "v" * 257}), "value is longer"),
    ("tag value as an int", base(tags={"a": 1}), "tag"),
    ("tags as a list", base(tags=["a"]), "tags"),
    ("owner tag", base(tags={"batchcompute-operator.owner": "other/x"}), "reserved"),
    ("owner tag, other case", base(tags={"BatchCompute-Operator.Owner-UID": "x"}), "reserved"),
    ("tag name with a slash", base(tags={"a/b": "x"}), "tag name"),
    ("tag name with %", base(tags={"a%2Fb": "x"}), "tag name"),
    ("tag name with ?", base(tags={"a?b": "x"}), "tag name"),
    ("empty tag name", base(tags={"": "x"}), "tag name"),
    ("tag name of 513", base(tags={"k" * 513: "x"}), "tag name"),
    ("deletionPolicy in lower case", base(deletionPolicy="detach"), "deletionPolicy"),
    ("deletionPolicy None", base(deletionPolicy=None), "deletionPolicy"),
    ("Secret in another namespace",
     base(credentials={"secretRef": {"name": "azure", "namespace": "kube-system"}}),
     "credentials.secretRef.namespace"),
    ("Secret name with '/'", base(credentials={"secretRef": {"name": "../azure"}}),
     "credentials.secretRef.name"),
    ("Secret name with a Cyrillic a", base(credentials={"secretRef": {"name": f"{CYR_A}zure"}}),
     "credentials.secretRef.name"),
    ("credentials without secretRef", base(credentials={"name": "azure"}), "secretRef"),
    ("credentials as a string", base(credentials="azure"), "secretRef"),
]


@pytest.mark.parametrize(("spec", "fragment"), [(s, f) for _, s, f in REFUSED],
                         ids=[name for name, _, _ in REFUSED])
def test_named_hostile_specs_are_refused(spec: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(spec, "mybatch")
    assert fragment in str(err.value)


RESOURCE_ID_SHAPES = [
    RID.rsplit("/", 1)[0], RID + "/x", RID + "/",
    RID.replace("/subscriptions/", "/\u017fubscriptions/"),
    RID.replace("Microsoft.Batch", "Microsoft.Storage"), RID.replace("batchAccounts", "accounts"),
]


@pytest.mark.parametrize("rid", RESOURCE_ID_SHAPES)
def test_a_malformed_resource_id_is_reported_under_its_field_name(rid: str) -> None:
    """The user wrote `batchAccount.resourceId`; the message must say so, not only the SDK's
    parameter name `resource_id`."""
    with pytest.raises(SpecError) as err:
        parse_spec(base(batchAccount={"resourceId": rid}), "mybatch")
    assert "batchAccount.resourceId" in str(err.value)


@pytest.mark.parametrize("name", ["my.batch", "1batch", "a" * 25, "ab", f"b{CYR_A}tch"])
def test_a_resource_name_that_is_no_compute_name_is_refused_as_the_default(name: str) -> None:
    with pytest.raises(SpecError, match="computeName"):
        parse_spec(base(), name)


def test_arm_ids_are_case_insensitive_so_case_variants_are_accepted() -> None:
    rid = RID.replace(SUB, SUB.upper()).replace("resourceGroups", "RESOURCEGROUPS") \
        .replace("Microsoft.Batch", "microsoft.batch")
    parsed = parse_spec(base(batchAccount={"resourceId": rid}), "mybatch")
    assert parsed.batch_account_id == rid
    assert crd_errors(base(batchAccount={"resourceId": rid})) == []


# parse_spec reads an empty or falsy value as "not given". The schema refuses each of these, so
# the operator accepting them means it would act on a spec the API server never lets through.
FALSY_AS_ABSENT: list[tuple[str, dict[str, Any]]] = [
    ("computeName ''", base(computeName="")),
    ("computeName 0", base(computeName=0)),
    ("computeName false", base(computeName=False)),
    ("computeName []", base(computeName=[])),
    ("resourceId '' beside the other form",
     base(batchAccount={"resourceId": "", "resourceGroup": "batch-rg", "accountName": "acct1"})),
    ("resourceGroup '' beside resourceId",
     base(batchAccount={"resourceId": RID, "resourceGroup": ""})),
    ("accountName '' beside resourceId", base(batchAccount={"resourceId": RID, "accountName": ""})),
]


@pytest.mark.parametrize("spec", [s for _, s in FALSY_AS_ABSENT],
                         ids=[name for name, _ in FALSY_AS_ABSENT])
def test_what_the_schema_refuses_parse_spec_refuses_too(spec: dict[str, Any]) -> None:
    assert crd_errors(spec), "the schema refuses this spec"
    with pytest.raises(SpecError):
        parse_spec(spec, "mybatch")
