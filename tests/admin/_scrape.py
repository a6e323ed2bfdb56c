"""Reading ``/metrics`` the way Prometheus does: ``prometheus_client``'s own text parser."""

from __future__ import annotations

import anyio
from prometheus_client.parser import text_string_to_metric_families

from baldur import _runtime
from baldur.admin._metrics import render_metrics

CAUSES = ("circuit_open", "rate_limited", "concurrency", "shed", "timeout")


class Scrape:
    """One parsed exposition: ``value(sample, name, cause=...)``, absent samples as ``None``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.types: dict[str, str] = {}
        self.samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def value(self, sample: str, name: str, **labels: str) -> float | None:
        return self.samples.get((sample, tuple(sorted({"name": name, **labels}.items()))))

    def figures(self, name: str) -> dict[str, float | None]:
        """Every figure of ``name``: calls, failures, each rejection cause, in flight, breaker state."""
        figures = {
            "calls": self.value("baldur_calls_total", name),
            "failures": self.value("baldur_failures_total", name),
            "in_flight": self.value("baldur_in_flight", name),
            "breaker_state": self.value("baldur_breaker_state", name),
        }
        figures.update({cause: self.value("baldur_rejections_total", name, cause=cause) for cause in CAUSES})
        return figures


def expected(calls: int = 0, failures: int = 0, in_flight: int = 0, breaker_state: int | None = 0,
             **rejections: int) -> dict[str, float | None]:
    figures: dict[str, float | None] = {"calls": calls, "failures": failures, "in_flight": in_flight,
                                        "breaker_state": breaker_state}
    figures.update({cause: rejections.get(cause, 0) for cause in CAUSES})
    return figures


def scrape(runtime: _runtime.Runtime | None = None) -> Scrape:
    """Render and parse the metrics of ``runtime`` (the current one by default), from sync code."""
    return Scrape(anyio.run(render_metrics, runtime or _runtime.current()))
