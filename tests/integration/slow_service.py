"""A service process built on svckit whose one method takes a while: the SIGTERM test's subject.

Run as `python tests/integration/slow_service.py`; CHATMESH_GRPC_PORT picks the port.
`/test.Slow/Wait` prints "started" on stdout when it begins and answers after SLOW_CALL_S.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from svckit import lifecycle  # noqa: E402
from svckit.config import ServiceConfig, load  # noqa: E402


async def wait(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    print("started", flush=True)
    await asyncio.sleep(float(os.environ.get("SLOW_CALL_S", "2")))
    return b"done:" + request


def register(server: grpc.aio.Server) -> list[str]:
    handler = grpc.unary_unary_rpc_method_handler(wait)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Slow", {"Wait": handler}),)
    )
    return []


async def main() -> None:
    cfg = load(ServiceConfig)
    print(f"port {cfg.grpc_port}", flush=True)
    await lifecycle.serve_forever(cfg, 0, register)


if __name__ == "__main__":
    lifecycle.run("slow_service", main)
