"""`python -m user_svc`: the accounts service process (gRPC on 9211 unless configured)."""

from __future__ import annotations

from svckit import lifecycle
from svckit.config import load
from user_svc.app import build
from user_svc.config import DEFAULT_PORT, UserConfig

SERVICE = "user_svc"


async def main() -> None:
    """Load the config, then serve while the pool is open; the pool closes after the server
    drained its in-flight calls."""
    cfg = load(UserConfig)
    async with build(cfg) as app:
        await lifecycle.serve_forever(cfg, DEFAULT_PORT, app.register)


if __name__ == "__main__":
    lifecycle.run(SERVICE, main)
