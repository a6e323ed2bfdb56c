"""Idempotency and the edge-trust cases through Django: the key is scoped to the authenticated
user, a stored response is never replayed to another user, and the login view's limit holds
for wrong passwords."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from _dj_support import MODES, Site, content, problem_of
from dj_views import ran
from django.contrib.auth.models import User

import baldur

pytestmark = [pytest.mark.parametrize("mode", MODES), pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def fresh_counts() -> None:
    ran.clear()


def order(site: Site, key: str | None, body: str = "one",
          path: str = "/orders/sync") -> tuple[int, dict[str, str], bytes]:
    headers = {} if key is None else {"Idempotency-Key": key}
    response = site.post(path, data=body, content_type="text/plain", headers=headers)
    return response.status_code, {name.lower(): value for name, value in response.items()}, content(response)


@pytest.mark.parametrize("kind", ["sync", "async", "class"])
def test_a_repeat_is_replayed_and_the_view_runs_once(mode: str, kind: str) -> None:
    site = Site(mode)
    status, headers, body = order(site, '"k-1"', path=f"/orders/{kind}")
    assert status == 201 and "idempotent-replayed" not in headers
    again = order(site, '"k-1"', path=f"/orders/{kind}")
    assert again[0] == 201
    assert again[1]["idempotent-replayed"] == "true"
    assert again[2] == body
    assert ran["orders"] == 1


def test_the_same_key_with_another_payload_is_422_and_a_bad_key_is_400(mode: str) -> None:
    site = Site(mode)
    assert order(site, "k-2", "one")[0] == 201
    assert problem_of(site.post("/orders/sync", data="two", content_type="text/plain",
                                headers={"Idempotency-Key": "k-2"}), 422)["title"] == "Unprocessable Content"
    bad = site.post("/orders/sync", data="x", content_type="text/plain", headers={"Idempotency-Key": "a, b"})
    assert "one key" in problem_of(bad, 400)["detail"]
    assert ran["orders"] == 1


def test_required_idempotency_answers_400_without_a_key(mode: str, baldur_settings: Callable[..., None]) -> None:
    baldur_settings(idempotency="required")
    assert "requires an Idempotency-Key" in problem_of(
        Site(mode).post("/orders/sync", data="x", content_type="text/plain"), 400)["detail"]
    assert ran["orders"] == 0


def test_a_body_over_the_cap_is_413_unread(mode: str) -> None:
    site = Site(mode)
    big = "x" * (1_048_576 + 1)
    response = site.post("/orders/sync", data=big, content_type="text/plain", headers={"Idempotency-Key": "k-3"})
    assert response.status_code == 413
    assert ran["orders"] == 0


def test_one_users_stored_response_is_never_replayed_to_another(mode: str) -> None:
    alice, bob = User.objects.create_user("alice", password="pw"), User.objects.create_user("bob", password="pw")
    as_alice, as_bob = Site(mode), Site(mode)  # one address: two users behind one NAT
    as_alice.force_login(alice)
    as_bob.force_login(bob)
    first = order(as_alice, "shared-key", path="/private/orders")
    assert first[0] == 201 and json.loads(first[2])["for"] == "alice"
    theirs = order(as_bob, "shared-key", path="/private/orders")
    assert theirs[0] == 201 and "idempotent-replayed" not in theirs[1]
    assert json.loads(theirs[2])["for"] == "bob"
    mine = order(as_alice, "shared-key", path="/private/orders")
    assert mine[1]["idempotent-replayed"] == "true" and json.loads(mine[2])["for"] == "alice"
    assert ran["order-count"] == 2


def test_a_login_redirect_is_not_stored(mode: str) -> None:
    # login_required answers before the protected view begins: the retry after logging in runs.
    site = Site(mode)
    assert order(site, "before-login", path="/private/orders")[0] == 302
    site.force_login(User.objects.create_user("carol", password="pw"))
    after = order(site, "before-login", path="/private/orders")
    assert after[0] == 201 and "idempotent-replayed" not in after[1]


def test_brute_force_through_the_login_view_ends_in_429(mode: str) -> None:
    User.objects.create_user("dave", password="right")
    site = Site(mode)
    tries = [site.post("/login/", data={"username": "dave", "password": f"wrong-{n}"}) for n in range(3)]
    assert [t.status_code for t in tries] == [200, 200, 200]  # the form again, with its error
    refused = site.post("/login/", data={"username": "dave", "password": "right"})
    body = problem_of(refused, 429)
    assert body["violated-policies"] == ["login"]
    assert refused["Retry-After"] == "20"
    assert site.get("/login/").status_code == 200  # only POST is limited


@pytest.fixture
def two_records_per_identity() -> Iterator[None]:
    """A process-wide setting (``baldur.init``), put back after the test."""
    default = baldur.init().settings.idempotency_max_records
    baldur.init(idempotency_max_records=2)
    yield
    baldur.init(idempotency_max_records=default)


@pytest.mark.usefixtures("two_records_per_identity")
def test_new_stored_responses_per_identity_are_bounded_and_a_refused_claim_is_given_back(mode: str) -> None:
    site = Site(mode)
    assert order(site, "r-1")[0] == 201
    assert order(site, "r-2")[0] == 201
    refused = site.post("/orders/sync", data="one", content_type="text/plain", headers={"Idempotency-Key": "r-3"})
    assert problem_of(refused, 429)["violated-policies"] == ["idempotency-records"]
    # The refused key was given back (not held "in progress": that would be a 409), and the bound holds.
    assert order(site, "r-3")[0] == 429
    replay = order(site, "r-1")  # a replay stores nothing new: not bounded
    assert replay[0] == 201 and replay[1]["idempotent-replayed"] == "true"
    assert ran["orders"] == 2
