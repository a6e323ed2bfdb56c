"""The ``baldur`` console script, run as a real process against a real admin server.

The server is a Flask app with the admin API mounted (``init_flask(app, admin="/_baldur")``)
under gunicorn, in its own process group (killed and reaped after the module), waited for by
polling; ``baldur admin`` itself is started too. Each error case has its exit code and one
line on stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from baldur.cli import EXIT_CODES, MAX_SECONDS, parse_duration
from tests.ports import free_port

HERE = Path(__file__).resolve().parent
_SCRIPT = Path(sys.executable).with_name("baldur")
#: The installed console script when there is one (what a user runs), else the module.
BALDUR = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "baldur.cli"]


def baldur(*args: str, key: str | None = None, env: dict[str, str] | None = None,
           timeout: float = 30) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BALDUR_")}
    if key is not None:
        environment["BALDUR_ADMIN_KEY"] = key
    environment.update(env or {})
    return subprocess.run([*BALDUR, *args], capture_output=True, text=True, env=environment, timeout=timeout,
                          check=False)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- durations ---------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400),
                                               ("90", 90), ("1.5h", 5400), (" 7D ", 604800)])
def test_durations_read_as_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10x", "-5m", "0s", "8d", "1e3", "m"])
def test_a_bad_duration_is_refused_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match=r"--for"):
        parse_duration(text)


@given(st.integers(min_value=1, max_value=MAX_SECONDS))
def test_every_whole_number_of_seconds_in_range_reads_back(seconds: int) -> None:
    assert parse_duration(f"{seconds}s") == parse_duration(str(seconds)) == seconds


def test_a_bad_for_is_a_usage_error_naming_the_value() -> None:
    result = baldur("breaker", "open", "payments", "--reason", "deploy", "--for", "soon", key="k" * 20)
    assert result.returncode == EXIT_CODES["usage"] == 2
    assert "--for 'soon' is not a duration" in result.stderr


def test_an_empty_reason_is_a_usage_error() -> None:
    result = baldur("breaker", "close", "payments", "--reason", " ", key="k" * 20)
    assert result.returncode == 2 and "--reason must say why" in result.stderr


# -- no server needed ----------------------------------------------------------

def test_no_key_says_where_to_put_one() -> None:
    result = baldur("status")
    assert result.returncode == EXIT_CODES["usage"]
    assert one_line(result) == "baldur: no admin key: set BALDUR_ADMIN_KEY or pass --key-file PATH"


def test_an_unreadable_key_file_is_named(tmp_path: Path) -> None:
    result = baldur("status", "--key-file", str(tmp_path / "missing.key"))
    assert result.returncode == EXIT_CODES["usage"] and "missing.key" in one_line(result)


def test_an_unreachable_server_is_one_line_and_its_own_exit_code() -> None:
    port = free_port()  # nothing listens there
    result = baldur("status", "--url", f"http://127.0.0.1:{port}", key="k" * 20)
    assert result.returncode == EXIT_CODES["unreachable"] == 3
    assert one_line(result).startswith(f"baldur: cannot reach the admin API at http://127.0.0.1:{port} ")
