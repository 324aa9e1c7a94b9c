"""Operator settings: read once from `BCO_*` environment variables and validated at start.

Flags on the command line set the same variables, so a Deployment, `make run` and the
tests all configure the operator one way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from batchcompute_operator.policy import PolicyError, WorkspacePolicy
from batchcompute_operator.workspace.pacing import ARM_DEFAULTS, BucketFigures, Kind

CredentialMode = Literal["default", "managed-identity", "workload-identity", "environment",
                         "static-file"]
CREDENTIAL_MODES: tuple[str, ...] = ("default", "managed-identity", "workload-identity",
                                     "environment", "static-file")
SDK_V1_API_VERSION = "2020-02-02"  # later public API versions do not list the Batch type


class ConfigError(ValueError):
    """A setting is missing or malformed; the operator refuses to start."""


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean")


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in env.get(name, "").split(",") if x.strip())


@dataclass(frozen=True)
class Settings:
    arm_endpoint: str = "https://management.azure.com"
    arm_audience: str = "https://management.azure.com"
    api_version: str = SDK_V1_API_VERSION
    allow_insecure_http: bool = False
    ca_bundle: str | None = None
    http_timeout: float = 30.0
    max_connections: int = 32
    kube_connections: int = 16
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
    pacing: bool = True
    buckets: Mapping[Kind, BucketFigures] = field(default_factory=lambda: dict(ARM_DEFAULTS))
    workspace_policy: WorkspacePolicy = field(default_factory=WorkspacePolicy)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        endpoint = env.get("BCO_ARM_ENDPOINT", cls.arm_endpoint).rstrip("/")
        insecure = _bool(env, "BCO_ALLOW_INSECURE_HTTP", False)
        if not endpoint.startswith("https://") and not (insecure and
                                                        endpoint.startswith("http://")):
            raise ConfigError(
                f"BCO_ARM_ENDPOINT={endpoint!r} must be https:// (plain http needs "
                "BCO_ALLOW_INSECURE_HTTP=true, for local development only)")
        credential = env.get("BCO_CREDENTIAL", "default")
        if credential not in CREDENTIAL_MODES:
            modes = ", ".join(CREDENTIAL_MODES)
            raise ConfigError(f"BCO_CREDENTIAL={credential!r}: one of {modes}")
        token_file = env.get("BCO_STATIC_TOKEN_FILE") or None
        if credential == "static-file" and not token_file:
            raise ConfigError("BCO_CREDENTIAL=static-file needs BCO_STATIC_TOKEN_FILE")
        poll = _float(env, "BCO_POLL_INTERVAL", cls.poll_interval, 0.2)
        resync = _float(env, "BCO_RESYNC_INTERVAL", cls.resync_interval, 1.0)
        buckets = dict(ARM_DEFAULTS)
        kinds: tuple[Kind, ...] = ("reads", "writes", "deletes")
        for kind in kinds:
            key = f"BCO_ARM_{kind.upper()}"  # e.g. BCO_ARM_WRITES=200/10 (bucket/refill per s)
            if env.get(key):
                try:
                    cap, rate = (float(x) for x in env[key].split("/"))
                except ValueError:
                    raise ConfigError(f"{key}={env[key]!r}: expected BUCKET/REFILL") from None
                buckets[kind] = BucketFigures(cap, rate)
        try:
            policy = WorkspacePolicy.parse(env.get("BCO_WORKSPACE_POLICY"))
        except (PolicyError, OSError) as err:
            raise ConfigError(str(err)) from None
        return cls(
            workspace_policy=policy,
            arm_endpoint=endpoint,
            arm_audience=env.get("BCO_ARM_AUDIENCE", cls.arm_audience).rstrip("/"),
            api_version=env.get("BCO_API_VERSION", SDK_V1_API_VERSION),
            allow_insecure_http=insecure,
            ca_bundle=env.get("BCO_CA_BUNDLE") or None,
            http_timeout=_float(env, "BCO_HTTP_TIMEOUT", cls.http_timeout, 0.1),
            max_connections=int(_float(env, "BCO_MAX_CONNECTIONS", cls.max_connections, 1)),
            kube_connections=int(_float(env, "BCO_KUBE_CONNECTIONS", cls.kube_connections, 1)),
            credential=credential,  # type: ignore[arg-type]
            static_token_file=token_file,
            managed_identity_client_id=env.get("BCO_MANAGED_IDENTITY_CLIENT_ID") or None,
            resync_interval=resync,
            poll_interval=poll,
            observe_max_age=_float(env, "BCO_OBSERVE_MAX_AGE", cls.observe_max_age),
            detach_wait=_float(env, "BCO_DETACH_WAIT", cls.detach_wait),
            retry_min=_float(env, "BCO_RETRY_MIN", cls.retry_min, 0.1),
            retry_max=_float(env, "BCO_RETRY_MAX", cls.retry_max, 0.1),
            failure_retry_min=_float(env, "BCO_FAILURE_RETRY_MIN", cls.failure_retry_min, 0.1),
            failure_retry_max=_float(env, "BCO_FAILURE_RETRY_MAX", cls.failure_retry_max, 0.1),
            loop_workers=int(_float(env, "BCO_LOOP_WORKERS", cls.loop_workers, 1)),
            namespaces=_list(env, "BCO_NAMESPACES"),
            peering=env.get("BCO_PEERING") or None,
            peering_lifetime=int(_float(env, "BCO_PEERING_LIFETIME", cls.peering_lifetime, 5)),
            health_port=int(_float(env, "BCO_HEALTH_PORT", cls.health_port, 0)),
            metrics_port=int(_float(env, "BCO_METRICS_PORT", cls.metrics_port, 0)),
            pacing=_bool(env, "BCO_PACING", True),
            buckets=buckets,
        )
