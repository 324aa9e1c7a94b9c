"""The compute name a spec asks for is known even when the spec is invalid, so status (and the
COMPUTE column of `kubectl get bca`) can show it."""

from __future__ import annotations

import pytest

from batchcompute_operator.engine.records import RecordBuilder
from batchcompute_operator.spec import SpecError, parse_spec

WS = {"subscriptionId": "00000000-0000-0000-0000-000000000001", "resourceGroup": "ml-rg",
      "name": "ml-ws"}
BOTH = {"resourceId": "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/b"
                      "/providers/Microsoft.Batch/batchAccounts/acct1",
        "resourceGroup": "b", "accountName": "acct2"}


@pytest.mark.parametrize(("spec", "asked"), [
    ({"workspace": WS, "computeName": "asked-name", "batchAccount": BOTH}, "asked-name"),
    ({"workspace": WS, "batchAccount": BOTH}, "meta-name"),
    ({"workspace": WS, "computeName": "", "batchAccount": BOTH}, None),
])
def test_an_invalid_spec_still_says_which_compute_it_asks_for(spec: dict[str, object],
                                                              asked: str | None) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(spec, "meta-name", "team-a")
    assert err.value.requested_name == asked
    record = RecordBuilder().build({"metadata": {"uid": "u1", "name": "meta-name",
                                                 "namespace": "team-a", "generation": 1},
                                    "spec": spec}, None)
    assert record is not None
    assert record.requested_name == (asked or "meta-name")
