"""The emulator's parts bundled together, shared by the ARM and admin handlers."""

from __future__ import annotations

import asyncio
import secrets

from aiohttp import web

from .auth import IdentityEndpoint, TokenStore
from .config import EmulatorConfig
from .faults import FaultBook
from .operations import OperationRunner
from .requestlog import RequestLog
from .state import Store
from .throttle import Throttler


class Emulator:
    """One emulated cloud. `config` is live: admin updates change behaviour at once."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.store = Store()
        self.operations = OperationRunner(self.store, config)
        self.throttler = Throttler(config.throttle)
        self.faults = FaultBook()
        self.tokens = TokenStore(config.static_tokens, tenant_id=config.tenant_id)
        self.identity = IdentityEndpoint(
            self.tokens,
            config.identity_header or secrets.token_urlsafe(24),
            lambda: self.config.token_lifetime_seconds,
        )
        self.log = RequestLog(config.request_log_limit)
        if config.seed is not None:
            self.store.seed(config.seed)

    def reset(self) -> None:
        """Forget computes, operations, faults, requests and throttle state; keep resources."""
        self.operations.clear()
        self.store.computes.clear()
        self.faults.clear()
        self.log.clear()
        self.throttler.reconfigure(self.config.throttle)


EMULATOR = web.AppKey("emulator", Emulator)
STOPPING = web.AppKey("stopping", asyncio.Event)
