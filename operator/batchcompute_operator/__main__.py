"""Entry point: `python -m batchcompute_operator [flags]`; flags override BCO_* variables."""

from __future__ import annotations

import argparse
import logging
import os
import sys

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
        description="Attach Azure Batch accounts to Azure ML workspaces from Kubernetes.")
    for flag, env in FLAGS.items():
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag,
                            help=f"overrides {env}")
    parser.add_argument("--allow-insecure-http", action="store_true",
                        help="allow a plain-http ARM endpoint (local development only)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    from batchcompute_operator import __version__  # the package metadata's (pyproject.toml)

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    for flag, env in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            os.environ[env] = value
    if args.allow_insecure_http:
        os.environ["BCO_ALLOW_INSECURE_HTTP"] = "true"
    level = "DEBUG" if args.verbose else os.environ.get("BCO_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # request lines carry no value here
    logging.getLogger("azure").setLevel(logging.WARNING)

    from batchcompute_operator.config import ConfigError, Settings

    try:
        settings = Settings.from_env()
    except ConfigError as err:
        sys.exit(f"batchcompute-operator: {err}")

    import kopf

    from batchcompute_operator import handlers  # noqa: F401 - registers the handlers

    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=settings.peering is None,
        peering_name=settings.peering,
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz"
        if settings.health_port else None,
    )


if __name__ == "__main__":
    main()
