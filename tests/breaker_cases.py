"""The failure-rate rule checked after every outcome (successes too): the cases of issue 9.

Each case is a breaker and a sequence of (seconds after the start, failed)
outcomes; the breaker must be closed before the last outcome and open after
it. The policy, both stores and ``@baldur.protected`` are tested with them.
"""

from __future__ import annotations

from dataclasses import dataclass

from baldur.policies.breaker import Breaker

F, S = True, False


@dataclass(frozen=True)
class RuleCase:
    id: str
    options: Breaker
    outcomes: tuple[tuple[float, bool], ...]


CASES = (
    # Half of ten calls failed, and the tenth was a success.
    RuleCase("alternating-tenth-succeeds", Breaker(failure_rate=0.5, min_calls=10, consecutive_failures=None),
             tuple((0.0, i % 2 == 0) for i in range(10))),
    # The defaults: five failures in ten calls, the last four successes.
    RuleCase("defaults", Breaker(), tuple((0.0, failed) for failed in (F, F, F, F, S, F, S, S, S, S))),
    # Two early successes leave the window: three failures and one success remain.
    RuleCase("successes-leave-the-window", Breaker(failure_rate=0.75, min_calls=4, window=10),
             ((0.0, S), (0.1, S), (5.0, F), (5.1, F), (5.2, F), (10.5, S))),
)
CASE_IDS = [case.id for case in CASES]
