"""A Prometheus text page, read the way an operator's queries read it (tests' helper).

`Page(text).value(name, **labels)` is one sample (0 when the series is absent, as a dashboard
shows no data); `total(name, **labels)` sums every series whose labels include those given;
`names()` is every metric and sample name on the page. `settled_page(gate, n)` waits until the
gate counted `n` requests: the client can have its answer before the gate's task counts it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


class Page:
    def __init__(self, text: str) -> None:
        self.text = text
        self.types: dict[str, str] = {}
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples.append((sample.name, dict(sample.labels), sample.value))

    def names(self) -> set[str]:
        return set(self.types) | {name for name, _, _ in self.samples}

    def value(self, name: str, **labels: str) -> float:
        for sample_name, sample_labels, value in self.samples:
            if sample_name == name and sample_labels == labels:
                return value
        return 0.0

    def total(self, name: str, **labels: str) -> float:
        return sum(
            value
            for sample_name, sample_labels, value in self.samples
            if sample_name == name and labels.items() <= sample_labels.items()
        )

    def series(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Every non-zero series of `name`, keyed by its sorted labels."""
        return {
            tuple(sorted(labels.items())): value
            for sample_name, labels, value in self.samples
            if sample_name == name and value
        }


async def settled_page(gate: Any, requests: int, seconds: float = 5.0) -> Page:
    """The gate's page once `requests` requests were counted (or the last one read)."""
    deadline = time.monotonic() + seconds
    while True:
        page = Page(gate.metrics.exposition().decode())
        done = page.total("sessiongate_requests_total") >= requests
        if done or time.monotonic() > deadline:
            return page
        await asyncio.sleep(0.02)
