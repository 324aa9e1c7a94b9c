"""Log lines platform teams can query: one JSON object per line (or plain text), with the object.

Per-resource lines carry `namespace`, `name`, `uid` and, where known, `workspace` and
`compute`, whether the engine wrote them (`extra=resource(...)`) or kopf did (its `k8s_ref`). Bearer
tokens and JWT-shaped strings are masked in every line as a last line of defence; the code
never logs secrets on purpose.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

CONTEXT = ("namespace", "name", "uid", "workspace", "compute")
_SECRET = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}|"
                     r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
# Library loggers whose routine lines carry nothing an operator of the operator needs.
QUIET = ("httpx", "httpcore", "azure", "asyncio", "aiohttp.access", "urllib3", "msal")


def _mask(text: str) -> str:
    return _SECRET.sub(lambda m: f"{m.group(1) or ''}***", text)


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


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(DropRoutine())
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
