"""Entry point: `python -m batchcompute_operator [flags]` runs the operator (flags override
BCO_* variables); `python -m batchcompute_operator export ...` prints manifests (export.py)."""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
from types import ModuleType

FLAGS = {
    "arm_endpoint": "BCO_ARM_ENDPOINT",
    "api_version": "BCO_API_VERSION",
    "ca_bundle": "BCO_CA_BUNDLE",
    "credential": "BCO_CREDENTIAL",
    "resync_interval": "BCO_RESYNC_INTERVAL",
    "poll_interval": "BCO_POLL_INTERVAL",
    "namespaces": "BCO_NAMESPACES",
    "peering": "BCO_PEERING",
    "health_port": "BCO_HEALTH_PORT",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="batchcompute-operator",
        description="Attach Azure Batch accounts to Azure ML workspaces from Kubernetes.",
        epilog="batchcompute-operator export --help: BatchComputeAttachments for the Batch "
               "computes a workspace already has (moving off SDK v1).")
    for flag, env in FLAGS.items():
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag,
                            help=f"overrides {env}")
    parser.add_argument("--allow-insecure-http", action="store_true",
                        help="allow a plain-http ARM endpoint (local development only)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    from batchcompute_operator import __version__  # the package metadata's (pyproject.toml)

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def load_handlers() -> ModuleType:
    """Import the kopf wiring (which registers the handlers) without the kubernetes client.

    kopf imports the client when it is installed, only to recognise its model objects, which
    this operator never hands to kopf; the import alone holds about 30 MiB. It is hidden for
    that moment and imported later only if a kubeconfig needs it (handlers._login).
    """
    hidden = "kubernetes" not in sys.modules
    if hidden:
        sys.modules["kubernetes"] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        from batchcompute_operator import handlers
    finally:
        if hidden:
            del sys.modules["kubernetes"]
    return handlers


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        from batchcompute_operator import export

        sys.exit(export.main(argv[1:]))
    args = parse_args(argv)
    for flag, env in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            os.environ[env] = value
    if args.allow_insecure_http:
        os.environ["BCO_ALLOW_INSECURE_HTTP"] = "true"
    from batchcompute_operator import logs
    from batchcompute_operator.config import ConfigError, Settings

    try:
        settings = Settings.from_env()
    except ConfigError as err:
        print(f"batchcompute-operator: {err}", file=sys.stderr)
        sys.exit(2)
    logs.configure("DEBUG" if args.verbose else settings.log_level, settings.log_format)

    handlers = load_handlers()

    # kopf's convention: POD_ID names this replica among its peers (the Deployment sets it).
    host = os.environ.get("POD_NAME") or socket.gethostname()
    identity = os.environ.get("POD_ID") or f"{host}-{os.getpid()}-{secrets.token_hex(3)}"
    # kopf pauses a replica that sees a peer of equal or higher priority: distinct random
    # priorities make exactly one replica of an HA pair active.
    priority = secrets.randbelow(1_000_000)
    handlers.run(settings, identity, priority, settings.namespaces)


if __name__ == "__main__":
    main()
