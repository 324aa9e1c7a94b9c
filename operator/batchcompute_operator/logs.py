"""Log lines platform teams can query: one JSON object per line (or plain text), with the object.

Per-resource lines carry `namespace`, `name`, `uid` and, where known, `workspace` and
`compute`, whether the engine wrote them (`extra=resource(...)`) or kopf did (its `k8s_ref`).
Bearer tokens, JWT-shaped strings, `client_secret=`-style pairs and the values of the secret
variables azure-identity reads are masked in every line as a last line of defence; the code
never logs secrets on purpose. Python warnings and uncaught exceptions go through the same
handler, so with `json` every line the process writes is one JSON object.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

CONTEXT = ("namespace", "name", "uid", "workspace", "compute")
MASK = "***"
_SECRET = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}|"
                     r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*|"
                     r"\b(client_secret|client_assertion|access_token|refresh_token|password"
                     r"|x-identity-header)([\"']?\s*[=:]\s*[\"']?)[^\s\"'&,;}]+")
# The secret variables azure-identity reads: their values are masked wherever they appear.
SECRET_VARIABLES = ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_PASSWORD",
                    "IDENTITY_HEADER", "MSI_SECRET")
_known: tuple[str, ...] = ()
# Library loggers whose routine lines carry nothing an operator of the operator needs.
QUIET = ("httpx", "httpcore", "azure", "asyncio", "aiohttp.access", "urllib3", "msal")


def _mask(text: str) -> str:
    for value in _known:
        text = text.replace(value, MASK)
    return _SECRET.sub(_masked, text)


def _masked(match: re.Match[str]) -> str:
    if match.group(2):  # key=value: keep the key, mask the value
        return f"{match.group(2)}{match.group(3)}{MASK}"
    return f"{match.group(1) or ''}{MASK}"


def remember_secrets(environ: Mapping[str, str] | None = None) -> None:
    """Mask the values the secret variables have now (short values would mask too much)."""
    env = os.environ if environ is None else environ
    global _known
    _known = tuple(sorted({v for name in SECRET_VARIABLES if len(v := env.get(name, "")) >= 8},
                          key=len, reverse=True))


def _context(record: logging.LogRecord) -> dict[str, str]:
    found: dict[str, str] = {}
    ref = getattr(record, "k8s_ref", None)  # kopf's per-object loggers
    if isinstance(ref, dict):
        for key in ("namespace", "name", "uid"):
            if isinstance(ref.get(key), str):
                found[key] = ref[key]
    ours = getattr(record, "resource", None)
    if isinstance(ours, dict):
        found.update({k: v for k, v in ours.items() if k in CONTEXT and isinstance(v, str)})
    return found


def resource(namespace: str, name: str, uid: str | None = None, workspace: str | None = None,
             compute: str | None = None) -> dict[str, dict[str, str]]:
    """`extra=` for a log line about one resource."""
    context = {"namespace": namespace, "name": name, "uid": uid, "workspace": workspace,
               "compute": compute}
    return {"resource": {k: v for k, v in context.items() if v is not None}}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": _mask(record.getMessage()),
            **_context(record),
        }
        reason = getattr(record, "reason", None)  # a line about an event posted: its reason
        if isinstance(reason, str):
            line["reason"] = reason
        if record.exc_info:
            line["exception"] = _mask(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        context = _context(record)
        text = super().format(record)
        if "namespace" in context and "name" in context and \
                f"{context['namespace']}/{context['name']}" not in record.getMessage():
            head, _, tail = text.partition(": ")
            text = f"{head}: [{context['namespace']}/{context['name']}] {tail}"
        return _mask(text)


class DropRoutine(logging.Filter):
    """kopf reports every watch event it hands to the engine; those lines are noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "kopf.objects" and record.levelno <= logging.INFO
                    and str(record.msg).startswith("Handler 'observe'"))


class WaitIsNotAnError(logging.Filter):
    """The deletion handler hands back to kopf while a detach runs (BCO_DETACH_WAIT); kopf
    logs that at ERROR ("failed temporarily"). It is a wait: INFO, so alerts on errors stay
    quiet. A detach that fails is a WARNING line and a DetachFailed event of the engine's."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "kopf.objects" and record.levelno == logging.ERROR and \
                "the detach is still in progress" in record.getMessage():
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(DropRoutine())
    handler.addFilter(WaitIsNotAnError())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    # kopf reports every handler call on every watch event at INFO; the engine logs what
    # happens to each resource itself. Below WARNING those lines only cost CPU, so kopf's
    # per-object logger speaks at INFO only when debugging.
    logging.getLogger("kopf.objects").setLevel(
        logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING)
    remember_secrets()
    # Nothing reaches stderr around the handler: warnings and uncaught exceptions are lines too.
    logging.captureWarnings(True)
    sys.excepthook = _uncaught
    threading.excepthook = _uncaught_in_thread


def _uncaught(kind: type[BaseException], value: BaseException,
              traceback: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, traceback)
        return
    logging.getLogger("batchcompute_operator").critical(
        "uncaught exception: the operator stops", exc_info=(kind, value, traceback))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or isinstance(args.exc_value, SystemExit):
        return
    logging.getLogger("batchcompute_operator").error(
        "uncaught exception in thread %s", args.thread.name if args.thread else "?",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
