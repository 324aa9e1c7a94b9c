"""Log lines as a platform team's collector reads them: one JSON object per line, the object
each line is about, and no secret in any line, whatever logged it."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchcompute_operator import logs

REPO_ROOT = Path(__file__).resolve().parents[2]
JWT = ("eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJhdWQiOiJodHRwczovL21hbmFnZW1lbnQuYXp1cmUuY29tIn0"
       ".c2lnbmF0dXJlLXRoYXQtbXVzdC1zdGF5LWhvbWU")
UID = "3f1f5c3e-9a53-4c4e-8f0e-0c2d3b1a9e77"


def record(message: str, *args: Any, level: int = logging.INFO, name: str = "test",
           exc_info: Any = None, **attrs: Any) -> logging.LogRecord:
    rec = logging.LogRecord(name, level, __file__, 1, message, args, exc_info)
    for key, value in attrs.items():
        setattr(rec, key, value)
    return rec


def as_json(rec: logging.LogRecord) -> dict[str, Any]:
    line = logs.JsonFormatter().format(rec)
    assert "\n" not in line
    parsed: dict[str, Any] = json.loads(line)
    return parsed


@pytest.fixture(autouse=True)
def no_remembered_secrets() -> Iterator[None]:
    logs.remember_secrets({})
    yield
    logs.remember_secrets({})


def test_a_json_line_has_time_level_logger_and_message() -> None:
    line = as_json(record("attached %s", "mybatch", level=logging.WARNING))
    assert line["level"] == "WARNING"
    assert line["logger"] == "test"
    assert line["message"] == "attached mybatch"
    assert line["time"].endswith("Z") and "T" in line["time"]
    assert set(line) == {"time", "level", "logger", "message"}


def test_engine_lines_carry_the_resource_workspace_and_compute() -> None:
    extra = logs.resource("team-a", "mybatch", UID, "ml-ws", "mybatch-compute")
    line = as_json(record("team-a/mybatch: attached", **extra))
    assert {k: line[k] for k in logs.CONTEXT} == {
        "namespace": "team-a", "name": "mybatch", "uid": UID, "workspace": "ml-ws",
        "compute": "mybatch-compute"}
    # What the engine does not know is left out, not written as null.
    line = as_json(record("x", **logs.resource("team-a", "mybatch")))
    assert "uid" not in line and "workspace" not in line


def test_kopf_per_object_lines_carry_the_object() -> None:
    ref = {"apiVersion": "batchcompute.azureml.dev/v1alpha1", "kind": "BatchComputeAttachment",
           "namespace": "team-a", "name": "mybatch", "uid": UID}
    line = as_json(record("Handler 'release' succeeded.", name="kopf.objects", k8s_ref=ref))
    assert (line["namespace"], line["name"], line["uid"]) == ("team-a", "mybatch", UID)
    assert "kind" not in line


def test_a_line_about_an_event_carries_its_reason() -> None:
    line = as_json(record("team-a/mybatch: Attached: ok", reason="Attached"))
    assert line["reason"] == "Attached"


def test_an_exception_stays_in_its_line_masked() -> None:
    try:
        raise RuntimeError(f"ARM refused Bearer {JWT}")
    except RuntimeError:
        line = as_json(record("step failed", exc_info=sys.exc_info()))
    assert "RuntimeError" in line["exception"] and "Traceback" in line["exception"]
    assert "eyJ" not in json.dumps(line)


@pytest.mark.parametrize(("text", "secret"), [
    (f"Authorization: Bearer {JWT}", JWT),
    (f"token {JWT} expired", JWT),
    ("bearer plain-opaque-token-value", "plain-opaque-token-value"),
    ("client_secret=Qx8~client.secret_value&grant_type=client_credentials",
     "Qx8~client.secret_value"),
    ('{"access_token": "opaque-access-token-value"}', "opaque-access-token-value"),
    ("X-IDENTITY-HEADER: 9f8e7d6c5b4a39281716", "9f8e7d6c5b4a39281716"),
])
def test_tokens_and_keyed_secrets_are_masked_in_both_formats(text: str, secret: str) -> None:
    for formatted in (json.dumps(as_json(record("sent %s", text))),
                      logs.TextFormatter().format(record("sent %s", text))):
        assert logs.MASK in formatted, formatted
        assert secret not in formatted and secret[:12] not in formatted, formatted


def test_values_of_secret_variables_are_masked_wherever_they_appear() -> None:
    logs.remember_secrets({"AZURE_CLIENT_SECRET": "Qx8~client.secret_value",
                           "IDENTITY_HEADER": "f0e1d2c3-identity-header", "MSI_SECRET": "short",
                           "AZURE_CLIENT_ID": "00000000-0000-0000-0000-0000000000bb"})
    text = ("azure-identity said: Qx8~client.secret_value was refused (header "
            "f0e1d2c3-identity-header); client 00000000-0000-0000-0000-0000000000bb; short")
    line = as_json(record(text))["message"]
    assert "Qx8~" not in line and "identity-header" not in line
    assert "00000000-0000-0000-0000-0000000000bb" in line  # an id, not a secret
    assert line.endswith("; short")  # values shorter than 8 characters would mask words


def test_text_lines_name_the_object_once() -> None:
    ref = {"namespace": "team-a", "name": "mybatch", "uid": UID}
    text = logs.TextFormatter().format(record("Handler 'release' succeeded.", k8s_ref=ref))
    assert "[team-a/mybatch] Handler 'release' succeeded." in text
    own = logs.TextFormatter().format(
        record("team-a/mybatch: attached", **logs.resource("team-a", "mybatch")))
    assert "[team-a/mybatch]" not in own


def test_kopfs_line_per_watch_event_is_dropped_and_nothing_else() -> None:
    routine = record("Handler 'observe' succeeded.", name="kopf.objects")
    failed = record("Handler 'observe' failed with an exception.", name="kopf.objects",
                    level=logging.ERROR)
    other = record("Handler 'release' succeeded.", name="kopf.objects")
    keep = logs.DropRoutine()
    assert not keep.filter(routine)
    assert keep.filter(failed) and keep.filter(other)


def test_a_detach_still_in_progress_is_logged_as_a_wait() -> None:
    waiting = record("Handler 'release' failed temporarily: the detach is still in progress",
                     name="kopf.objects", level=logging.ERROR)
    failed = record("Handler 'release' failed with an exception. Will retry.",
                    name="kopf.objects", level=logging.ERROR)
    quiet = logs.WaitIsNotAnError()
    assert quiet.filter(waiting) and quiet.filter(failed)
    assert as_json(waiting)["level"] == "INFO"
    assert as_json(failed)["level"] == "ERROR"


def test_configure_routes_warnings_through_the_handler(
        capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, sys.excepthook)
    try:
        logs.configure("INFO", "json")
        warnings.warn("something is deprecated", UserWarning, stacklevel=1)
        logging.getLogger("batchcompute_operator.test").info("hello")
    finally:
        root.handlers[:], _, sys.excepthook = saved
        root.setLevel(saved[1])
        logging.captureWarnings(False)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["message"] for line in lines][-1] == "hello"
    assert any("something is deprecated" in line["message"] and line["level"] == "WARNING"
               for line in lines), lines


def test_an_uncaught_exception_is_one_json_line(tmp_path: Path) -> None:
    """What a crash looks like in a JSON log: one object with the traceback inside it."""
    script = ("from batchcompute_operator import logs\n"
              "logs.configure('INFO', 'json')\n"
              "raise RuntimeError('boom with Bearer opaque-token-value')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO_ROOT, env={"PYTHONPATH": str(REPO_ROOT / "operator")},
                          timeout=60, check=False)
    assert done.returncode == 1
    (line,) = [json.loads(x) for x in done.stderr.splitlines()]
    assert line["level"] == "CRITICAL"
    assert "RuntimeError: boom" in line["exception"]
    assert "opaque-token-value" not in done.stderr
