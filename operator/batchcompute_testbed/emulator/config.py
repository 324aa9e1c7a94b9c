"""Emulator settings: fixed at start-up, several of them adjustable later through the admin API."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# GA api-versions of Microsoft.MachineLearningServices that clients of this emulator send:
# 2020-02-02 (SDK v1 computes), 2022-05-01 (SDK v1 workspaces), the operator's and a few others.
DEFAULT_API_VERSIONS = frozenset(
    {"2020-02-02", "2020-06-01", "2021-04-01", "2021-07-01", "2022-05-01", "2023-04-01"}
)
# Only the SDK v1's api-versions know the `Batch` compute type; later specs dropped it.
BATCH_MAX_API_VERSION = "2021-01-01"
# Microsoft.Resources versions for the subscription routes (SDK v1 lists with 2022-12-01).
SUBSCRIPTION_API_VERSIONS = frozenset(
    {
        "2014-04-01",
        "2015-01-01",
        "2016-06-01",
        "2018-06-01",
        "2019-06-01",
        "2019-11-01",
        "2020-01-01",
        "2021-01-01",
        "2022-12-01",
    }
)
# The tenant the emulated subscriptions belong to; it is the `tid` of every token minted.
DEFAULT_TENANT_ID = "5f0a1e9c-7b3d-4c2e-9a61-0c8d2b7e4f13"


@dataclass
class BucketSpec:
    """One token bucket: `bucket` tokens at most, `refill` tokens added per second."""

    bucket: float
    refill: float

    def to_json(self) -> dict[str, float]:
        return {"bucket": self.bucket, "refill": self.refill}

    @classmethod
    def from_json(cls, data: Any) -> BucketSpec:
        if not isinstance(data, dict):
            raise ValueError("a bucket must be an object {bucket, refill}")
        bucket, refill = data.get("bucket"), data.get("refill")
        if not isinstance(bucket, int | float) or not isinstance(refill, int | float):
            raise ValueError("bucket and refill must be numbers")
        if bucket < 1 or refill < 0:
            raise ValueError("bucket must be >= 1 and refill >= 0")
        return cls(float(bucket), float(refill))


@dataclass
class ThrottleConfig:
    """Per-subscription limits, defaulting to the figures ARM publishes."""

    reads: BucketSpec = field(default_factory=lambda: BucketSpec(250, 25))
    writes: BucketSpec = field(default_factory=lambda: BucketSpec(200, 10))
    deletes: BucketSpec = field(default_factory=lambda: BucketSpec(200, 10))

    def to_json(self) -> dict[str, dict[str, float]]:
        return {k: getattr(self, k).to_json() for k in ("reads", "writes", "deletes")}

    @classmethod
    def from_json(cls, data: Any) -> ThrottleConfig:
        if not isinstance(data, dict):
            raise ValueError("throttle must be an object or null")
        unknown = set(data) - {"reads", "writes", "deletes"}
        if unknown:
            raise ValueError(f"unknown throttle keys: {sorted(unknown)}")
        base = cls()
        for key, value in data.items():
            setattr(base, key, BucketSpec.from_json(value))
        return base


@dataclass
class EmulatorConfig:
    """Everything the emulator can be told; the server works on its own copy."""

    host: str = "127.0.0.1"
    port: int = 0
    tls_dir: Path | None = None
    seed: dict[str, Any] | None = None
    latency_ms: float = 0.0
    operation_seconds: float = 2.0
    page_size: int = 100
    retry_after_seconds: int = 1
    throttle: ThrottleConfig | None = field(default_factory=ThrottleConfig)
    static_tokens: tuple[str, ...] = ()
    token_lifetime_seconds: int = 3600
    api_versions: frozenset[str] = DEFAULT_API_VERSIONS
    identity_header: str | None = None
    tenant_id: str = DEFAULT_TENANT_ID
    # "flat": {"error": {code, message}}; "nested": {"error": {"error": {...}}} as older versions.
    operation_error_style: str = "flat"
    request_log_limit: int = 100_000
    shutdown_timeout: float = 1.0

    def copy(self) -> EmulatorConfig:
        return dataclasses.replace(self)

    def runtime_json(self) -> dict[str, Any]:
        """The settings the admin API exposes and may change."""
        return {
            "latency_ms": self.latency_ms,
            "operation_seconds": self.operation_seconds,
            "page_size": self.page_size,
            "retry_after_seconds": self.retry_after_seconds,
            "throttle": self.throttle.to_json() if self.throttle else None,
            "token_lifetime_seconds": self.token_lifetime_seconds,
            "api_versions": sorted(self.api_versions),
            "operation_error_style": self.operation_error_style,
        }

    def apply_json(self, data: Any) -> bool:
        """Validate then apply an admin update; returns whether throttling changed."""
        if not isinstance(data, dict):
            raise ValueError("config must be a JSON object")
        unknown = set(data) - set(self.runtime_json())
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        updates: dict[str, Any] = {}
        for key in ("latency_ms", "operation_seconds"):
            if key in data:
                updates[key] = _number(data[key], key, minimum=0.0)
        for key, minimum in (("page_size", 1), ("retry_after_seconds", 0)):
            if key in data:
                updates[key] = int(_number(data[key], key, minimum=minimum, integer=True))
        if "token_lifetime_seconds" in data:
            updates["token_lifetime_seconds"] = int(
                _number(data["token_lifetime_seconds"], "token_lifetime_seconds", integer=True)
            )
        if "throttle" in data:
            raw = data["throttle"]
            updates["throttle"] = None if raw is None else ThrottleConfig.from_json(raw)
        if "api_versions" in data:
            versions = data["api_versions"]
            if not isinstance(versions, list) or not all(
                isinstance(v, str) and v for v in versions
            ):
                raise ValueError("api_versions must be a list of strings")
            # Added to the accepted versions, never replacing them: a test that needs one more
            # version must not take away the ones other clients of the emulator are using.
            updates["api_versions"] = self.api_versions | frozenset(versions)
        if "operation_error_style" in data:
            if data["operation_error_style"] not in ("flat", "nested"):
                raise ValueError("operation_error_style must be 'flat' or 'nested'")
            updates["operation_error_style"] = data["operation_error_style"]
        for key, value in updates.items():
            setattr(self, key, value)
        return "throttle" in updates


def _number(value: Any, name: str, minimum: float | None = None, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number")
    if integer and not float(value).is_integer():
        raise ValueError(f"{name} must be an integer")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}")
    return float(value)
