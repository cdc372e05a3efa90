"""`python -m user_svc`: the accounts service process (gRPC on 9211 unless configured)."""

from __future__ import annotations

import logging
import sys

from svckit import lifecycle
from svckit.config import load
from user_svc.app import build
from user_svc.config import DEFAULT_PORT, UserConfig
from user_svc.store import DatabaseUnreachable

SERVICE = "user_svc"

log = logging.getLogger(SERVICE)


async def main() -> None:
    """Load the config, then serve while the pool is open; the pool closes after the server
    drained its in-flight calls."""
    cfg = load(UserConfig)
    logging.getLogger().setLevel(cfg.log_level.upper())
    try:
        async with build(cfg) as app:
            await lifecycle.serve_forever(cfg, DEFAULT_PORT, app.register)
    except DatabaseUnreachable as exc:
        log.error(str(exc), extra={"event": "start_failed"})
        sys.exit(1)


if __name__ == "__main__":
    lifecycle.run(SERVICE, main)
