"""Running the emulator on a loopback port, in-process (tests) or from the command line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from .app import build_app
from .auth import normalize_audience
from .config import EmulatorConfig
from .runtime import Emulator
from .tls import server_ssl_context


class EmulatorServer:
    """`async with EmulatorServer(config) as server:` serves until the block ends.

    The config is copied: admin updates change the server's copy, never the caller's.
    """

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = (config or EmulatorConfig()).copy()
        self.emulator = Emulator(self.config)
        self.ca_file: Path | None = None
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        ssl_context = None
        if self.config.tls_dir is not None:
            ssl_context, self.ca_file = server_ssl_context(self.config.tls_dir, self.config.host)
        runner = web.AppRunner(
            build_app(self.emulator),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self.config.shutdown_timeout,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port, ssl_context=ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        # Tokens requested for the emulator's own URL are as good as ARM-audience tokens.
        self.emulator.tokens.audiences.add(normalize_audience(self.arm_url))

    async def stop(self) -> None:
        await self.emulator.operations.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> EmulatorServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def arm_url(self) -> str:
        scheme = "https" if self.config.tls_dir is not None else "http"
        host = self.config.host
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"{self.arm_url}/_admin"

    @property
    def identity_endpoint(self) -> str:
        return f"{self.arm_url}/msi/token"

    @property
    def identity_header(self) -> str:
        return self.emulator.identity.secret

    def ready_info(self) -> dict[str, Any]:
        return {
            "arm_url": self.arm_url,
            "admin_url": self.admin_url,
            "ca_file": str(self.ca_file) if self.ca_file else None,
            "identity_endpoint": self.identity_endpoint,
            "identity_header": self.identity_header,
            "pid": os.getpid(),
        }

    def write_ready_file(self, path: Path) -> None:
        """Written whole then renamed, so a watcher never reads half a file."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.ready_info(), indent=2) + "\n")
        tmp.chmod(0o600)
        os.replace(tmp, path)
