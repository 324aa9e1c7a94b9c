"""Command line: run the control plane in the foreground until SIGTERM or SIGINT.

    python -m batchcompute_testbed.controlplane up --state-dir DIR [--audit-log]
        [--user NAME[:GROUP,GROUP...]]... [--apiextensions]

writes DIR/env.json once the API server is ready (see ControlPlane.env()) and removes it on
the way out. `python -m batchcompute_testbed.controlplane apiserver-path` prints the
kube-apiserver binary, building it first if need be; `apiextensions-path` does the same for
the modern apiextensions-apiserver, which `up --apiextensions` runs beside kube-apiserver
(its URL and kubeconfig under "apiextensions" in env.json; see controlplane/extensions.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from batchcompute_testbed.controlplane.cluster import (
    ControlPlane,
    ControlPlaneError,
    _write_atomic,
    find_kube_apiserver,
)
from batchcompute_testbed.controlplane.extensions import (
    ApiextensionsUnavailable,
    ExtensionsServer,
    find_apiextensions_apiserver,
)


def _parse_user(text: str) -> tuple[str, list[str]]:
    name, _, groups = text.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"bad --user {text!r}: expected NAME[:GROUP,GROUP...]")
    return name, [g for g in groups.split(",") if g]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m batchcompute_testbed.controlplane")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run etcd + kube-apiserver until SIGTERM/SIGINT")
    up.add_argument("--state-dir", type=Path, required=True, help="env.json and run files")
    up.add_argument("--audit-log", action="store_true", help="Metadata-level audit log")
    up.add_argument(
        "--user",
        type=_parse_user,
        action="append",
        default=[],
        metavar="NAME[:GROUP,...]",
        help="an extra token user with its own kubeconfig (repeatable)",
    )
    up.add_argument("--startup-timeout", type=float, default=90.0)
    up.add_argument("--apiextensions", action="store_true",
                    help="also run the modern apiextensions-apiserver (CEL), if it builds")
    sub.add_parser("apiserver-path", help="print the kube-apiserver binary (build if needed)")
    sub.add_parser("apiextensions-path",
                   help="print the apiextensions-apiserver binary (build if needed)")
    return parser


def _up(args: argparse.Namespace) -> int:
    state: Path = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    env_file = state / "env.json"
    env_file.unlink(missing_ok=True)
    run_dir = state / "run"
    shutil.rmtree(run_dir, ignore_errors=True)

    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    plane = ControlPlane(
        run_dir=run_dir,
        audit_log=args.audit_log,
        users=dict(args.user),
        startup_timeout=args.startup_timeout,
    )
    try:
        plane.start()
    except ControlPlaneError as exc:
        print(exc, file=sys.stderr)
        return 1
    code = 0
    extensions: ExtensionsServer | None = None
    try:
        env = plane.env()
        if args.apiextensions:
            try:
                extensions = ExtensionsServer(plane).start()
            except ApiextensionsUnavailable as exc:
                print(exc, file=sys.stderr)
            else:
                env["apiextensions"] = {"server": extensions.server,
                                        "ca_file": str(extensions.ca_file),
                                        "kubeconfig": str(extensions.kubeconfig)}
        _write_atomic(env_file, json.dumps(env, indent=2) + "\n")
        print(
            f"control plane ready at {plane.server} in {plane.startup_seconds:.1f}s; "
            f"env: {env_file}",
            flush=True,
        )
        while not stopping.wait(1.0):
            try:
                plane.check_alive()
                if extensions is not None:
                    extensions.check_alive()
            except ControlPlaneError as exc:
                print(exc, file=sys.stderr)
                code = 1
                break
    finally:
        env_file.unlink(missing_ok=True)
        if extensions is not None:
            extensions.stop()
        plane.stop()
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "apiserver-path":
        try:
            print(find_kube_apiserver())
        except ControlPlaneError as exc:
            print(exc, file=sys.stderr)
            return 1
        return 0
    if args.command == "apiextensions-path":
        try:
            print(find_apiextensions_apiserver())
        except ControlPlaneError as exc:
            print(exc, file=sys.stderr)
            return 1
        return 0
    return _up(args)


if __name__ == "__main__":
    sys.exit(main())
