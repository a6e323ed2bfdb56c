"""Idempotency keys as a pure state machine (``baldur.policies.idempotency``), against a
small reference model.

The clock is an argument of every function, so these tests are deterministic: time
moves only when a test (or hypothesis) moves it. The model keeps *when* a record was
last claimed, renewed or completed and asks whether it is still alive; the policy keeps
an ``until`` deadline. Both must give the same verdicts: ``RUN`` (no live record: claim
the key), ``REPLAY`` (a live result with the same fingerprint), ``CONFLICT`` (a live
claim: retry after the rest of its lease) and ``MISMATCH`` (a live record of another
payload).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from baldur.policies.idempotency import (
    CLAIM_LEASE_SECONDS,
    IdempotencyRecord,
    Verdict,
    abort,
    begin,
    complete,
    renew,
)

RUN, REPLAY, CONFLICT, MISMATCH = Verdict.RUN, Verdict.REPLAY, Verdict.CONFLICT, Verdict.MISMATCH
TTL = 86400.0


# -- the reference model --------------------------------------------------------


@dataclass
class Entry:
    fingerprint: str
    token: str
    #: When the claim was taken or last renewed (running), or when the result was stored (done).
    since: float
    #: How long the entry lives after ``since``: the lease while running, the ttl once done.
    life: float
    result: str | None = None


class Model:
    """What the docs promise, per key: a claim lives for a lease after it was taken or last
    renewed; a result lives for its ttl after it was stored; a dead entry is as good as none."""

    def __init__(self) -> None:
        self.now = 0.0
        self.entries: dict[str, Entry] = {}

    def live(self, key: str) -> Entry | None:
        entry = self.entries.get(key)
        if entry is not None and not self.now < entry.since + entry.life:
            del self.entries[key]
            return None
        return entry

    def begin(self, key: str, fingerprint: str, token: str) -> tuple[Verdict, str | None, float]:
        entry = self.live(key)
        if entry is None:
            self.entries[key] = Entry(fingerprint, token, self.now, CLAIM_LEASE_SECONDS)
            return RUN, None, 0.0
        if entry.fingerprint != fingerprint:
            return MISMATCH, None, 0.0
        if entry.result is not None:
            return REPLAY, entry.result, 0.0
        return CONFLICT, None, entry.since + entry.life - self.now

    def holder(self, key: str, token: str) -> Entry | None:
        entry = self.live(key)
        if entry is None or entry.token != token or entry.result is not None:
            return None
        return entry

    def complete(self, key: str, token: str, result: str, ttl: float) -> bool:
        entry = self.holder(key, token)
        if entry is None:
            return False
        entry.result, entry.since, entry.life = result, self.now, ttl
        return True

    def renew(self, key: str, token: str) -> bool:
        entry = self.holder(key, token)
        if entry is None:
            return False
        entry.since = self.now
        return True

    def abort(self, key: str, token: str) -> bool:
        if self.holder(key, token) is None:
            return False
        del self.entries[key]
        return True


# -- the system under test: the policy's functions over a dict of records ---------


class Records:
    """The policy applied the way the memory store applies it: one record per key."""

    def __init__(self) -> None:
        self.records: dict[str, IdempotencyRecord] = {}

    def begin(self, key: str, now: float, fingerprint: str, token: str) -> tuple[Verdict, str | None, float]:
        record = self.records.get(key)
        verdict, claim, retry_after = begin(record, now, fingerprint, token, CLAIM_LEASE_SECONDS)
        if claim is not None:
            self.records[key] = claim
        result = record.result if verdict is REPLAY and record is not None else None
        return verdict, result, retry_after

    def abort(self, key: str, now: float, token: str) -> bool:
        if abort(self.records.get(key), now, token):
            del self.records[key]
            return True
        return False


_tokens = (f"t{n}" for n in itertools.count())
KEYS = ("k1", "k2")
FINGERPRINTS = ("fp-a", "fp-b")
#: Steps around the interesting boundaries: a third of a lease (the renewal period), a lease, a ttl.
STEPS = st.one_of(
    st.sampled_from([0.0, 0.5, 1.0, CLAIM_LEASE_SECONDS / 3, CLAIM_LEASE_SECONDS - 0.5, CLAIM_LEASE_SECONDS,
                     45.0, 100.0]),
    st.floats(min_value=0.0, max_value=200.0, allow_nan=False, allow_infinity=False),
)


class IdempotencyMachine(RuleBasedStateMachine):
    claims = Bundle("claims")

    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.sut = Records()

    @property
    def now(self) -> float:
        return self.model.now

    @rule(target=claims, key=st.sampled_from(KEYS), fingerprint=st.sampled_from(FINGERPRINTS))
    def request(self, key: str, fingerprint: str) -> tuple[str, str]:
        token = next(_tokens)
        expected = self.model.begin(key, fingerprint, token)
        got = self.sut.begin(key, self.now, fingerprint, token)
        assert got == expected
        if got[0] is CONFLICT:  # (float noise: now + lease - now may exceed lease by an ulp)
            assert 0 < got[2] <= CLAIM_LEASE_SECONDS * (1 + 1e-12)
        return key, token  # (a claim only if the verdict was RUN; else a token nobody holds)

    @rule(claim=claims, result=st.sampled_from(['{"a": 1}', '{"b": 2}']), ttl=st.sampled_from([1.0, 45.0, TTL]))
    def completes(self, claim: tuple[str, str], result: str, ttl: float) -> None:
        key, token = claim
        expected = self.model.complete(key, token, result, ttl)
        assert complete(self.sut.records.get(key), self.now, token, result, ttl) == expected

    @rule(claim=claims)
    def renews(self, claim: tuple[str, str]) -> None:
        key, token = claim
        expected = self.model.renew(key, token)
        assert renew(self.sut.records.get(key), self.now, token, CLAIM_LEASE_SECONDS) == expected

    @rule(claim=claims)
    def aborts(self, claim: tuple[str, str]) -> None:
        key, token = claim
        assert self.sut.abort(key, self.now, token) == self.model.abort(key, token)

    @rule(key=st.sampled_from(KEYS))
    def a_stranger_settles(self, key: str) -> None:
        """A token that never claimed anything can settle nothing."""
        assert not complete(self.sut.records.get(key), self.now, "stranger", "{}", TTL)
        assert not renew(self.sut.records.get(key), self.now, "stranger", CLAIM_LEASE_SECONDS)
        assert not self.sut.abort(key, self.now, "stranger")

    @rule(seconds=STEPS)
    def time_passes(self, seconds: float) -> None:
        self.model.now += seconds

    @invariant()
    def the_live_records_agree(self) -> None:
        for key in KEYS:
            entry = self.model.live(key)
            record = self.sut.records.get(key)
            live = record if record is not None and record.until > self.now else None
            if entry is None:
                assert live is None, (key, record)
                continue
            assert live is not None, (key, entry)
            assert (live.fingerprint, live.token, live.result, live.done) == (
                entry.fingerprint, entry.token, entry.result, entry.result is not None)
            assert live.until == entry.since + entry.life


IdempotencyMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestIdempotencyMachine = IdempotencyMachine.TestCase


# -- plain scenarios --------------------------------------------------------------


def claimed(now: float = 100.0, fingerprint: str = "fp", token: str = "t1") -> IdempotencyRecord:
    verdict, record, retry_after = begin(None, now, fingerprint, token, CLAIM_LEASE_SECONDS)
    assert (verdict, retry_after) == (RUN, 0.0)
    assert record is not None
    return record


def test_the_first_request_claims_the_key_for_one_lease() -> None:
    record = claimed(now=100.0)
    assert (record.fingerprint, record.token, record.until, record.result, record.done) == (
        "fp", "t1", 100.0 + CLAIM_LEASE_SECONDS, None, False)


def test_a_duplicate_while_the_first_runs_conflicts_and_retries_after_the_rest_of_the_lease() -> None:
    record = claimed(now=100.0)
    assert begin(record, 110.0, "fp", "t2", CLAIM_LEASE_SECONDS) == (CONFLICT, None, CLAIM_LEASE_SECONDS - 10.0)
    assert record.token == "t1"  # the claim is untouched


def test_the_lease_ends_exactly_at_its_deadline_and_the_key_is_taken_over() -> None:
    record = claimed(now=100.0)
    just_before = 100.0 + CLAIM_LEASE_SECONDS - 0.001
    assert begin(record, just_before, "fp", "t2", CLAIM_LEASE_SECONDS)[0] is CONFLICT
    verdict, takeover, _ = begin(record, 100.0 + CLAIM_LEASE_SECONDS, "fp", "t2", CLAIM_LEASE_SECONDS)
    assert verdict is RUN and takeover is not None and takeover.token == "t2"
    # The worker that lost its lease (it was presumed dead) can no longer store or drop anything.
    assert not complete(takeover, 131.0, "t1", "{}", TTL)
    assert not renew(takeover, 131.0, "t1", CLAIM_LEASE_SECONDS)
    assert not abort(takeover, 131.0, "t1")
    assert complete(takeover, 131.0, "t2", '{"ok": true}', TTL)


def test_a_renewed_claim_holds_a_full_lease_from_the_renewal() -> None:
    record = claimed(now=100.0)
    assert renew(record, 125.0, "t1", CLAIM_LEASE_SECONDS)
    assert record.until == 125.0 + CLAIM_LEASE_SECONDS
    assert begin(record, 150.0, "fp", "t2", CLAIM_LEASE_SECONDS) == (CONFLICT, None, 5.0)
    # ... but a lapsed lease cannot be renewed: someone may have taken the key over.
    assert not renew(record, 125.0 + CLAIM_LEASE_SECONDS, "t1", CLAIM_LEASE_SECONDS)


def test_a_completed_result_is_replayed_until_its_ttl_then_the_key_is_free() -> None:
    record = claimed(now=100.0)
    assert complete(record, 105.0, "t1", '{"id": 7}', TTL)
    assert (record.done, record.until) == (True, 105.0 + TTL)
    assert begin(record, 105.0 + TTL - 1, "fp", "t2", CLAIM_LEASE_SECONDS) == (REPLAY, None, 0.0)
    verdict, fresh, _ = begin(record, 105.0 + TTL, "fp", "t3", CLAIM_LEASE_SECONDS)
    assert verdict is RUN and fresh is not None and fresh.result is None


def test_a_result_is_kept_longer_than_a_lease() -> None:
    record = claimed(now=0.0)
    assert complete(record, 1.0, "t1", "{}", TTL)
    assert begin(record, 1.0 + 10 * CLAIM_LEASE_SECONDS, "fp", "t2", CLAIM_LEASE_SECONDS)[0] is REPLAY


@pytest.mark.parametrize("done", [False, True], ids=["running", "done"])
def test_the_same_key_with_another_payload_is_a_mismatch_while_the_record_lives(done: bool) -> None:
    record = claimed(now=100.0, fingerprint="fp-a")
    if done:
        assert complete(record, 100.0, "t1", "{}", TTL)
    assert begin(record, 101.0, "fp-b", "t2", CLAIM_LEASE_SECONDS) == (MISMATCH, None, 0.0)
    # Once the record is gone, the key may carry any payload.
    later = record.until
    assert begin(record, later, "fp-b", "t3", CLAIM_LEASE_SECONDS)[0] is RUN


def test_only_the_holder_settles_and_only_once() -> None:
    record = claimed(now=100.0)
    assert not complete(record, 101.0, "t2", "{}", TTL)
    assert not abort(record, 101.0, "t2")
    assert complete(record, 101.0, "t1", '{"first": 1}', TTL)
    # A completed result is never overwritten, renewed into a claim or dropped by its holder.
    assert not complete(record, 102.0, "t1", '{"second": 2}', TTL)
    assert not renew(record, 102.0, "t1", CLAIM_LEASE_SECONDS)
    assert not abort(record, 102.0, "t1")
    assert record.result == '{"first": 1}'


def test_nothing_to_settle_without_a_record() -> None:
    assert not complete(None, 0.0, "t1", "{}", TTL)
    assert not renew(None, 0.0, "t1", CLAIM_LEASE_SECONDS)
    assert not abort(None, 0.0, "t1")


def test_the_lease_is_thirty_seconds() -> None:
    """docs/idempotency.md promises a crashed request's key back within 30 s."""
    assert CLAIM_LEASE_SECONDS == 30.0
