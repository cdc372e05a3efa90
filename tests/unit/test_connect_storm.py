"""A reconnect wave is one warning line per heartbeat interval, and normal churn is silent."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from gateway import ws


def _edge(opened: int, sockets: int) -> Any:
    return SimpleNamespace(opened=opened, registry=[None] * sockets)


def test_a_connect_storm_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.ws")
    quiet = ws.report_connect_storm(_edge(opened=150, sockets=140), 100, 10.0)
    assert quiet == 150 and not caplog.records
    storm = ws.report_connect_storm(_edge(opened=5150, sockets=5000), 150, 10.0)
    assert storm == 5150
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.__dict__["event"] == "connect_storm"
    assert record.__dict__["opened_per_s"] == 500.0
    assert record.__dict__["sockets"] == 5000
