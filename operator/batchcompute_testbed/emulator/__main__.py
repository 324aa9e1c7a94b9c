"""Command line: serve the emulator until SIGTERM or SIGINT, announcing it in a ready file."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import DEFAULT_API_VERSIONS, EmulatorConfig
from .server import EmulatorServer


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m batchcompute_testbed.emulator",
        description="Emulator of the Azure ML workspace ARM API (computes of type Batch).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    p.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    p.add_argument(
        "--ready-file",
        type=Path,
        required=True,
        help="JSON file written once listening (urls, CA file, identity header, pid)",
    )
    p.add_argument("--tls-dir", type=Path, help="serve HTTPS; CA and certificates go here")
    p.add_argument("--seed", type=Path, help="JSON file of workspaces and Batch accounts")
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay added to ARM calls")
    p.add_argument(
        "--operation-seconds",
        type=float,
        default=2.0,
        help="how long attach and detach operations run",
    )
    p.add_argument("--page-size", type=int, default=100, help="computes per list page")
    p.add_argument(
        "--retry-after",
        type=int,
        default=1,
        help="Retry-After seconds on long-running operation answers",
    )
    p.add_argument(
        "--throttle",
        choices=("default", "off"),
        default="default",
        help="ARM's published per-subscription limits, or none",
    )
    p.add_argument(
        "--static-token",
        action="extend",
        nargs="+",
        default=[],
        metavar="TOKEN",
        help="bearer tokens that are always valid (several, and repeatable)",
    )
    p.add_argument(
        "--token-lifetime", type=int, default=3600, help="lifetime of issued tokens, seconds"
    )
    p.add_argument(
        "--api-version",
        action="append",
        dest="api_versions",
        help="an api-version to accept besides the defaults (repeatable; defaults: "
        f"{', '.join(sorted(DEFAULT_API_VERSIONS))})",
    )
    p.add_argument("--identity-header", help="fixed X-IDENTITY-HEADER secret (default: random)")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    config = EmulatorConfig(
        host=args.host,
        port=args.port,
        tls_dir=args.tls_dir,
        seed=json.loads(args.seed.read_text()) if args.seed else None,
        latency_ms=args.latency_ms,
        operation_seconds=args.operation_seconds,
        page_size=args.page_size,
        retry_after_seconds=args.retry_after,
        static_tokens=tuple(args.static_token),
        token_lifetime_seconds=args.token_lifetime,
        identity_header=args.identity_header,
    )
    if args.throttle == "off":
        config.throttle = None
    if args.api_versions:
        config.api_versions = DEFAULT_API_VERSIONS | frozenset(args.api_versions)
    return config


async def serve(server: EmulatorServer, ready_file: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        server.write_ready_file(ready_file)
        logging.getLogger("batchcompute_testbed.emulator").info("listening on %s", server.arm_url)
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(FileNotFoundError):
                ready_file.unlink()  # noqa: ASYNC240 - one tiny unlink at shutdown


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        server = EmulatorServer(config_from_args(args))  # validates the seed
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(server, args.ready_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
