"""``/metrics``: the meters of ``baldur._metrics`` in the Prometheus text format 0.0.4.

On a shared store (Redis) the figures are the fleet's: counters added up from
every process's write-behind, in flight summed over the processes alive, and
each breaker's state as the store holds it.
"""

from __future__ import annotations

from typing import cast

from baldur import _metrics
from baldur._options import DEFAULT_BREAKER, declared_breaker
from baldur._runtime import Runtime
from baldur.policies.breaker import Breaker, State

__all__ = ["CONTENT_TYPE", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: ``baldur_breaker_state``'s value per state: a forced state reads as the state it forces.
BREAKER_GAUGE = {
    State.CLOSED: 0,
    State.FORCED_CLOSED: 0,
    State.HALF_OPEN: 1,
    State.OPEN: 2,
    State.FORCED_OPEN: 2,
}

_FAMILIES = (
    ("baldur_calls_total", "counter",
     "Calls Baldur admitted that ran to their end (whatever their outcome), per protected name."),
    ("baldur_failures_total", "counter",
     "Calls that counted as failures for the breaker (an exception, a 5xx, a slow call, a timeout)."),
    ("baldur_rejections_total", "counter",
     "Calls refused (circuit_open, rate_limited, concurrency, shed) or cut at their timeout (timeout)."),
    ("baldur_breaker_state", "gauge", "The circuit breaker's state: 0 closed, 1 half-open, 2 open."),
    ("baldur_in_flight", "gauge", "Calls admitted and not yet settled."),
)


def escape_label(value: str) -> str:
    """A label value as the text format writes it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def render_metrics(runtime: Runtime) -> str:
    """The exposition of every name's metrics (sorted by name), for ``GET /metrics``."""
    readings = await _metrics.read(runtime)
    samples: dict[str, list[str]] = {family: [] for family, _, _ in _FAMILIES}
    for reading in readings:
        name = f'name="{escape_label(reading.name)}"'
        samples["baldur_calls_total"].append(f"baldur_calls_total{{{name}}} {reading.calls}")
        samples["baldur_failures_total"].append(f"baldur_failures_total{{{name}}} {reading.failures}")
        samples["baldur_rejections_total"].extend(
            f'baldur_rejections_total{{{name},cause="{cause}"}} {count}'
            for cause, count in reading.rejections.items())
        if reading.breaker:
            state = await runtime.async_.read_breaker(reading.name, _breaker_options(runtime, reading.name))
            samples["baldur_breaker_state"].append(f"baldur_breaker_state{{{name}}} {BREAKER_GAUGE[state]}")
        samples["baldur_in_flight"].append(f"baldur_in_flight{{{name}}} {reading.in_flight}")
    lines: list[str] = []
    for family, kind, help_text in _FAMILIES:
        lines += [f"# HELP {family} {help_text}", f"# TYPE {family} {kind}", *samples[family]]
    return "\n".join(lines) + "\n"


def _breaker_options(runtime: Runtime, name: str) -> Breaker:
    declared = declared_breaker(name)
    if declared is DEFAULT_BREAKER:
        return runtime.default_breaker
    return cast(Breaker, declared).inherit(runtime.default_breaker)
