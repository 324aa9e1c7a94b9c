"""The Grafana dashboard shipped in deploy/components/monitoring, and the metric names its
PromQL queries read.

Used by tests/unit/test_metrics.py (every name is one the operator registers) and by the
integration suite (every name is in a real scrape).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DASHBOARD = (Path(__file__).resolve().parents[1] / "deploy" / "components" / "monitoring"
             / "grafana-dashboard.json")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_RANGE = re.compile(r"\[[^\]]*\]")
_MATCHERS = re.compile(r"\{[^}]*\}")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_WORD = re.compile(r"(?<![\w.])([A-Za-z_:][\w:]*)\s*(\(?)")
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without",
                      "on", "ignoring", "group_left", "group_right"})


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep theirs inside


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets, and the variables' label_values() selectors."""
    found = [t["expr"] for p in panels(dashboard) for t in p.get("targets", []) if "expr" in t]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        if variable.get("type") == "query" and isinstance(text, str):
            inner = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", text, re.DOTALL)
            found.append(inner.group(1) if inner else text)
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names one PromQL expression reads (functions, keywords, labels left out)."""
    text = _STRING.sub('""', expr)
    text = _VARIABLE.sub("", text)
    text = _RANGE.sub("", text)
    text = _MATCHERS.sub("{}", text)
    text = _GROUPING.sub("", text)
    return {word for word, call in _WORD.findall(text)
            if not call and word.lower() not in KEYWORDS}


def dashboard_metric_names() -> dict[str, set[str]]:
    """Metric name -> the expressions that read it."""
    names: dict[str, set[str]] = {}
    for expr in queries(load()):
        for name in metric_names(expr):
            names.setdefault(name, set()).add(expr)
    return names
