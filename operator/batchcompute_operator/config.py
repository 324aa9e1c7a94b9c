"""Operator settings: read once from `BCO_*` environment variables and validated at start.

Flags on the command line set the same variables, so a Deployment, `make run` and the
tests all configure the operator one way. A bad value stops the operator before it does
anything, with one line naming the variable, the value and what is accepted.
"""

from __future__ import annotations

import math
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from batchcompute_operator.policy import PolicyError, WorkspacePolicy

CredentialMode = Literal["default", "managed-identity", "workload-identity", "environment",
                         "static-file"]
CREDENTIAL_MODES: tuple[str, ...] = ("default", "managed-identity", "workload-identity",
                                     "environment", "static-file")
SDK_V1_API_VERSION = "2020-02-02"  # later public API versions do not list the Batch type
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("json", "text")
Kind = Literal["reads", "writes", "deletes"]
KINDS: tuple[Kind, ...] = ("reads", "writes", "deletes")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")


@dataclass(frozen=True)
class BucketFigures:
    capacity: float
    refill_per_second: float


ARM_DEFAULTS: Mapping[Kind, BucketFigures] = {
    "reads": BucketFigures(250, 25),
    "writes": BucketFigures(200, 10),
    "deletes": BucketFigures(200, 10),
}


class ConfigError(ValueError):
    """A setting is missing or malformed; the operator refuses to start."""

    def __init__(self, name: str, value: str, accepted: str) -> None:
        super().__init__(f"{name}={value!r} is invalid; accepted: {accepted}")
        self.name = name


class _Env:
    """Typed reads of one environment, each failing with the same kind of message."""

    def __init__(self, env: Mapping[str, str], files: bool) -> None:
        self.env = env
        self.files = files  # also check that named files exist and hold what they should

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        return value.strip() if value is not None and value.strip() else None

    def seconds(self, name: str, default: float, minimum: float = 0.0,
                maximum: float | None = None, *, not_below: str | None = None) -> float:
        """A duration in seconds; `not_below` names the setting `minimum` comes from."""
        raw = self.raw(name)
        if raw is None:
            return default
        accepted = f"a number of seconds from {minimum:g}" + (
            f" to {maximum:g}" if maximum else " up") + (
            f" (not below {not_below})" if not_below else "")
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(name, raw, accepted) from None
        if not math.isfinite(value) or value < minimum or \
                (maximum is not None and value > maximum):
            raise ConfigError(name, raw, accepted)
        return value

    def integer(self, name: str, default: int, minimum: int = 0,
                maximum: int | None = None, *, what: str = "a whole number",
                zero: str = "") -> int:
        """`what` the number is ("a port number"); `zero` says what 0 means."""
        raw = self.raw(name)
        if raw is None:
            return default
        accepted = f"{what} from {minimum}" + (
            f" to {maximum}" if maximum else " up") + (f" ({zero})" if zero else "")
        if not re.fullmatch(r"\d+", raw) or int(raw) < minimum or \
                (maximum is not None and int(raw) > maximum):
            raise ConfigError(name, raw, accepted)
        return int(raw)

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.raw(name)
        if raw is None:
            return default
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(name, raw, "true or false")

    def choice(self, name: str, default: str, choices: tuple[str, ...], *,
               fold: bool = False) -> str:
        raw = self.raw(name)
        if raw is None:
            return default
        value = raw.upper() if fold else raw
        if value not in choices:
            raise ConfigError(name, raw, ", ".join(choices))
        return value

    def matching(self, name: str, pattern: re.Pattern[str], accepted: str) -> str | None:
        raw = self.raw(name)
        if raw is not None and not pattern.fullmatch(raw):
            raise ConfigError(name, raw, accepted)
        return raw

    def url(self, name: str, default: str, *, insecure: bool = False,
            connected: bool = True) -> str:
        """`connected`: the operator connects to it (an audience is only a name)."""
        raw = (self.raw(name) or default).rstrip("/")
        schemes = ("https://", "http://") if insecure else ("https://",)
        if not raw.startswith(schemes) or len(raw) <= len("https://") or " " in raw:
            accepted = "an https:// URL" + ("" if insecure or not connected else
                                            " (plain http needs BCO_ALLOW_INSECURE_HTTP=true,"
                                            " for local development only)")
            raise ConfigError(name, raw, accepted)
        return raw

    def readable_file(self, name: str) -> str | None:
        raw = self.raw(name)
        if raw is not None and self.files and not Path(raw).is_file():
            raise ConfigError(name, raw, "the path of a readable file")
        return raw

    def ca_bundle(self, name: str) -> str | None:
        path = self.readable_file(name)
        if path is None or not self.files:
            return path
        try:
            ssl.create_default_context(cafile=path)
        except (ssl.SSLError, OSError, ValueError):
            raise ConfigError(name, path, "a file of PEM certificates") from None
        return path

    def names(self, name: str) -> tuple[str, ...]:
        found = tuple(x.strip() for x in (self.raw(name) or "").split(",") if x.strip())
        for item in found:
            if not _DNS_LABEL.fullmatch(item):
                raise ConfigError(name, self.raw(name) or "", "comma-separated namespace "
                                  "names (lowercase letters, digits and '-')")
        return found

    def buckets(self) -> dict[Kind, BucketFigures]:
        buckets = dict(ARM_DEFAULTS)
        for kind in KINDS:
            key = f"BCO_ARM_{kind.upper()}"  # e.g. BCO_ARM_WRITES=200/10 (bucket/refill per s)
            raw = self.raw(key)
            if raw is None:
                continue
            try:
                cap, rate = (float(x) for x in raw.split("/"))
            except ValueError:
                raise ConfigError(key, raw, "BUCKET/REFILL, e.g. 200/10") from None
            if not (math.isfinite(cap) and math.isfinite(rate)) or cap < 1 or rate <= 0:
                raise ConfigError(key, raw, "BUCKET/REFILL, both positive, e.g. 200/10")
            buckets[kind] = BucketFigures(cap, rate)
        return buckets


@dataclass(frozen=True)
class Settings:
    arm_endpoint: str = "https://management.azure.com"
    arm_audience: str = "https://management.azure.com"
    api_version: str = SDK_V1_API_VERSION
    allow_insecure_http: bool = False
    ca_bundle: str | None = None
    http_timeout: float = 30.0
    # Each open connection holds its own TLS buffers (Python's read buffer alone is 256 KiB),
    # and on a small control plane more concurrent writers only contend with each other.
    # These are the sizes `make bench` measures; kopf and the engine have one pool each.
    max_connections: int = 16
    kube_connections: int = 8
    # ARM answers read at once: each LIST page (up to 100 computes) is parsed whole, and a
    # hundred workspaces polling together would otherwise parse a pool's worth.
    max_reads: int = 4
    credential: CredentialMode = "default"
    static_token_file: str | None = None
    managed_identity_client_id: str | None = None
    resync_interval: float = 300.0
    poll_interval: float = 5.0
    observe_max_age: float = 2.0
    detach_wait: float = 60.0
    retry_min: float = 5.0
    retry_max: float = 300.0
    failure_retry_min: float = 60.0  # permanent failures: first retry after a minute,
    failure_retry_max: float = 3600.0  # doubling up to an hour
    loop_workers: int = 4
    namespaces: tuple[str, ...] = ()
    peering: str | None = None  # None: standalone (one replica); a name: kopf peering for HA
    peering_lifetime: int = 60  # seconds a silent peer counts as alive: the HA handover time
    health_port: int = 8080
    metrics_port: int = 8081
    log_level: str = "INFO"
    log_format: str = "text"
    pacing: bool = True
    buckets: Mapping[Kind, BucketFigures] = field(default_factory=lambda: dict(ARM_DEFAULTS))
    workspace_policy: WorkspacePolicy = field(default_factory=WorkspacePolicy)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *,
                 files: bool = True) -> Settings:
        """`files=False` checks only the values, for settings meant for another machine (a
        rendered manifest); the operator itself always checks the files too."""
        env = _Env(os.environ if environ is None else environ, files)
        insecure = env.boolean("BCO_ALLOW_INSECURE_HTTP", False)
        credential = env.choice("BCO_CREDENTIAL", "default", CREDENTIAL_MODES)
        token_file = env.readable_file("BCO_STATIC_TOKEN_FILE")
        if credential == "static-file" and not token_file:
            raise ConfigError("BCO_STATIC_TOKEN_FILE", "", "the token file's path (needed by "
                                                         "BCO_CREDENTIAL=static-file)")
        raw_policy = env.raw("BCO_WORKSPACE_POLICY")
        try:
            policy = WorkspacePolicy.parse(raw_policy)
        except (PolicyError, OSError) as err:
            raise ConfigError("BCO_WORKSPACE_POLICY", (raw_policy or "")[:80],
                              f"a JSON policy or @file ({err})") from None
        retry_min = env.seconds("BCO_RETRY_MIN", cls.retry_min, 0.1)
        failure_min = env.seconds("BCO_FAILURE_RETRY_MIN", cls.failure_retry_min, 0.1)
        health = env.integer("BCO_HEALTH_PORT", cls.health_port, 0, 65535, what="a port number",
                             zero="0 turns the probes off")
        metrics_port = env.integer("BCO_METRICS_PORT", cls.metrics_port, 0, 65535,
                                   what="a port number", zero="0 turns /metrics off")
        return cls(
            workspace_policy=policy,
            arm_endpoint=env.url("BCO_ARM_ENDPOINT", cls.arm_endpoint, insecure=insecure),
            arm_audience=env.url("BCO_ARM_AUDIENCE", cls.arm_audience, connected=False),
            api_version=env.matching("BCO_API_VERSION", _API_VERSION,
                                     "an api-version such as 2020-02-02") or SDK_V1_API_VERSION,
            allow_insecure_http=insecure,
            ca_bundle=env.ca_bundle("BCO_CA_BUNDLE"),
            http_timeout=env.seconds("BCO_HTTP_TIMEOUT", cls.http_timeout, 0.1),
            max_connections=env.integer("BCO_MAX_CONNECTIONS", cls.max_connections, 1),
            kube_connections=env.integer("BCO_KUBE_CONNECTIONS", cls.kube_connections, 1),
            max_reads=env.integer("BCO_MAX_READS", cls.max_reads, 1),
            credential=credential,  # type: ignore[arg-type]
            static_token_file=token_file,
            managed_identity_client_id=env.matching("BCO_MANAGED_IDENTITY_CLIENT_ID", _GUID,
                                                    "a client id (GUID)"),
            resync_interval=env.seconds("BCO_RESYNC_INTERVAL", cls.resync_interval, 1.0),
            poll_interval=env.seconds("BCO_POLL_INTERVAL", cls.poll_interval, 0.2),
            observe_max_age=env.seconds("BCO_OBSERVE_MAX_AGE", cls.observe_max_age),
            detach_wait=env.seconds("BCO_DETACH_WAIT", cls.detach_wait),
            retry_min=retry_min,
            retry_max=env.seconds("BCO_RETRY_MAX", cls.retry_max, retry_min,
                                  not_below="BCO_RETRY_MIN"),
            failure_retry_min=failure_min,
            failure_retry_max=env.seconds("BCO_FAILURE_RETRY_MAX", cls.failure_retry_max,
                                          failure_min, not_below="BCO_FAILURE_RETRY_MIN"),
            loop_workers=env.integer("BCO_LOOP_WORKERS", cls.loop_workers, 1, 256),
            namespaces=env.names("BCO_NAMESPACES"),
            peering=env.matching("BCO_PEERING", _DNS_LABEL, "a Kubernetes object name "
                                 "(lowercase letters, digits and '-', up to 63)"),
            peering_lifetime=env.integer("BCO_PEERING_LIFETIME", cls.peering_lifetime, 5,
                                         what="a whole number of seconds"),
            health_port=health,
            metrics_port=metrics_port,
            log_level=env.choice("BCO_LOG_LEVEL", cls.log_level, LOG_LEVELS, fold=True),
            log_format=env.choice("BCO_LOG_FORMAT", cls.log_format, LOG_FORMATS),
            pacing=env.boolean("BCO_PACING", True),
            buckets=env.buckets(),
        )
