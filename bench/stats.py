"""Latency histograms: one kind for every figure the tool reports, merged across processes.

Values are recorded in microseconds in an HdrHistogram (1 us to 1 hour, 3 significant digits),
so percentiles keep their precision whatever the spread. A worker process sends its histograms
to the parent in HdrHistogram's compressed, base64 encoding (`encode`), and the parent adds them
up (`merge`): percentiles of the merged histogram are the percentiles of every sample, which
averaging per-worker percentiles would not give.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour; longer values are clamped to it
SIGNIFICANT_DIGITS = 3
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
)


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def record_ns(histogram: HdrHistogram, duration_ns: int) -> None:
    """Record a duration given in nanoseconds (negative ones, from clock jitter, count as 0)."""
    us = duration_ns // 1000
    histogram.record_value(min(max(us, LOWEST_US), HIGHEST_US))


def encode(histogram: HdrHistogram) -> str:
    """The histogram as text (compressed, base64): small, and safe in JSON and pipes."""
    return bytes(histogram.encode()).decode("ascii")


def merge(encoded: Iterable[str]) -> HdrHistogram:
    """One histogram holding every sample of the encoded ones."""
    total = new_histogram()
    for text in encoded:
        total.decode_and_add(text.encode("ascii"))
    return total


def summary(histogram: HdrHistogram) -> dict[str, Any]:
    """count, p50/p90/p99/p99.9, max and mean, in milliseconds (None when empty)."""
    count = int(histogram.get_total_count())
    out: dict[str, Any] = {"count": count}
    for name, pct in PERCENTILES:
        out[f"{name}_ms"] = _ms(histogram.get_value_at_percentile(pct)) if count else None
    out["max_ms"] = _ms(histogram.get_max_value()) if count else None
    out["mean_ms"] = _ms(histogram.get_mean_value()) if count else None
    return out


def _ms(us: float) -> float:
    return round(float(us) / 1000.0, 3)
