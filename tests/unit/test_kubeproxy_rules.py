"""The fault proxy's rules: which requests they meet, and what the API server would answer."""

from __future__ import annotations

import pytest

from batchcompute_testbed.kubeproxy import (
    EVENT_POST,
    STATUS_PATCH,
    Action,
    Rule,
    server_timeout,
    too_many_requests,
)

STATUS = "/apis/batchcompute.azureml.dev/v1alpha1/namespaces/team-a/batchcomputeattachments/x"


def test_the_status_patch_rule_meets_status_patches_only() -> None:
    rule = Rule(Action.STATUS, frozenset({STATUS_PATCH[0]}), STATUS_PATCH[1])
    assert rule.matches("PATCH", f"{STATUS}/status", watch=False)
    assert rule.matches("patch", f"{STATUS}/status", watch=False)
    assert not rule.matches("PATCH", STATUS, watch=False)  # the finalizer patch
    assert not rule.matches("GET", f"{STATUS}/status", watch=False)


def test_the_event_rule_meets_core_event_posts_only() -> None:
    rule = Rule(Action.RESET, frozenset({EVENT_POST[0]}), EVENT_POST[1])
    assert rule.matches("POST", "/api/v1/namespaces/team-a/events", watch=False)
    assert not rule.matches("POST", "/apis/events.k8s.io/v1/namespaces/team-a/events",
                            watch=False)
    assert not rule.matches("GET", "/api/v1/namespaces/team-a/events", watch=False)


def test_watch_rules_meet_watches_and_request_rules_meet_requests() -> None:
    stall = Rule(Action.STALL)
    delay = Rule(Action.DELAY, seconds=1)
    assert stall.matches("GET", STATUS, watch=True)
    assert not stall.matches("GET", STATUS, watch=False)
    assert delay.matches("GET", STATUS, watch=False)
    assert not delay.matches("GET", STATUS, watch=True)


def test_a_counted_rule_stops_after_its_uses_and_remembers_the_first() -> None:
    rule = Rule(Action.RESET, count=2)
    assert rule.first_hit is None
    for _ in range(2):
        assert rule.matches("GET", "/api", watch=False)
        rule.use()
    assert rule.first_hit is not None
    assert not rule.matches("GET", "/api", watch=False)
    assert rule.hits == 2


def test_answers_look_like_the_api_servers() -> None:
    timeout = Rule(Action.STATUS, **server_timeout("POST", "events"))
    body = timeout.status_body()
    assert (timeout.status, timeout.retry_after) == (500, 1)
    assert body["reason"] == "ServerTimeout"
    assert body["message"] == ("The POST operation against events could not be completed at "
                               "this time, please try again.")
    assert body["details"] == {"retryAfterSeconds": 1}
    throttled = Rule(Action.STATUS, **too_many_requests(2))
    assert (throttled.status, throttled.status_body()["code"]) == (429, 429)


def test_an_injected_status_must_be_an_error() -> None:
    with pytest.raises(ValueError, match="error"):
        Rule(Action.STATUS, status=200)
