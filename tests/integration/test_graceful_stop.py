"""Every service stops within 10 s of SIGTERM, and a call already in flight still completes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_serving(addr: str, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > end:
                raise TimeoutError(f"{addr} not serving after {deadline_s} s")
            await asyncio.sleep(0.05)


async def test_sigterm_finishes_in_flight_call_and_exits_within_10s() -> None:
    port = free_port()
    env = {**os.environ, "CHATMESH_GRPC_PORT": str(port), "SLOW_CALL_S": "2"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "slow_service.py"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        addr = f"127.0.0.1:{port}"
        await wait_serving(addr, 15)
        async with grpc.aio.insecure_channel(addr) as channel:
            call = channel.unary_unary("/test.Slow/Wait")(b"x", timeout=15)
            line = await asyncio.wait_for(_line_with(proc.stdout, b"started"), 10)
            assert line
            stopped_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert await call == b"done:x"
            code = await asyncio.wait_for(proc.wait(), 10)
            assert code == 0
            assert time.monotonic() - stopped_at < 10
            with pytest.raises(grpc.aio.AioRpcError):
                await channel.unary_unary("/test.Slow/Wait")(b"y", timeout=2)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _line_with(stream: asyncio.StreamReader, needle: bytes) -> bytes:
    while True:
        line = await stream.readline()
        if not line:
            raise EOFError("process closed stdout")
        if needle in line:
            return line
