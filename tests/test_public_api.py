from __future__ import annotations

import pytest

import baldur


def test_public_names_are_exported() -> None:
    for name in ("init", "protected", "guard", "breaker", "Breaker", "RateLimit", "Retry", "reset",
                 "BaldurError", "Rejected", "CircuitOpen", "RateLimited", "Overloaded",
                 "IdempotencyConflict", "IdempotencyMismatch", "CallTimeout", "StoreUnavailable", "ConfigError"):
        assert hasattr(baldur, name), name
    assert isinstance(baldur.__version__, str)


def test_rejections_carry_retry_after_and_share_a_root() -> None:
    for cls in (baldur.CircuitOpen, baldur.RateLimited, baldur.Overloaded, baldur.IdempotencyConflict):
        exc = cls("n", 2.5)
        assert isinstance(exc, baldur.Rejected) and isinstance(exc, baldur.BaldurError)
        assert exc.retry_after == 2.5
    assert issubclass(baldur.CallTimeout, TimeoutError)
    assert issubclass(baldur.CallTimeout, baldur.BaldurError)


def test_protected_keeps_metadata_and_returns_the_result() -> None:
    @baldur.protected("meta")
    def add(a: int, b: int) -> int:
        """Adds."""
        return a + b

    assert add(2, 3) == 5
    assert add.__name__ == "add" and add.__doc__ == "Adds."


def test_bad_name_and_non_callable() -> None:
    with pytest.raises(baldur.ConfigError, match="protected"):
        baldur.protected("")
    with pytest.raises(baldur.ConfigError):
        baldur.protected(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        baldur.protected("x")(42)  # type: ignore[arg-type]
