"""Settling a web request (``WebRequest.settle``, ``settle_async``): its in-flight slot is given
back whatever happens before, because a slot kept counts against the adaptive limit forever."""

from __future__ import annotations

import pytest

from baldur.adapters._shedding import _InFlight
from baldur.adapters._web import WebRequest
from baldur.policies.shedding import Priority


class _BrokenClaim:
    """An Idempotency-Key claim whose abort fails other than by the store being unavailable
    (which ``Claim`` itself logs and swallows): a bug, or an async settle being cancelled."""

    aborts = 0

    def abort(self) -> None:
        self.aborts += 1
        raise RuntimeError("abort failed")

    async def abort_async(self) -> None:
        self.aborts += 1
        raise RuntimeError("abort failed")


def _admitted_request() -> tuple[WebRequest, _InFlight, _BrokenClaim]:
    in_flight = _InFlight(None)
    request = type("_Request", (WebRequest,), {"requests_in_flight": in_flight})()
    assert in_flight.enter(request, Priority.NORMAL)
    request.in_flight, request.admitted_at = True, 0.0
    claim = _BrokenClaim()
    request.idempotency_claim = claim  # type: ignore[assignment]
    return request, in_flight, claim


def test_a_failing_abort_still_gives_back_the_in_flight_slot() -> None:
    request, in_flight, claim = _admitted_request()
    with pytest.raises(RuntimeError, match="abort failed"):
        request.settle()
    assert not in_flight.running
    assert request.idempotency_claim is None
    request.settle()  # once only: no second abort, no second release
    assert claim.aborts == 1


@pytest.mark.anyio
async def test_a_failing_async_abort_still_gives_back_the_in_flight_slot() -> None:
    request, in_flight, claim = _admitted_request()
    with pytest.raises(RuntimeError, match="abort failed"):
        await request.settle_async()
    assert not in_flight.running
    assert request.idempotency_claim is None
    await request.settle_async()
    assert claim.aborts == 1
