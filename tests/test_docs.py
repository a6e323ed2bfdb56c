"""The docs say what the code does, and every command they show runs as shown.

Every ``bash``, ``console``, ``log`` and ``python`` block of README.md, CONTRIBUTING.md and docs/
runs on a fresh copy of the checkout (tests/docs_runner.py says how), or carries
``<!-- skip: next "reason" -->`` in the page's source. The README's install is the first command
run, on a copy that has no virtual environment yet.
"""

from __future__ import annotations

import re
from pathlib import Path
from unittest import SkipTest

import pytest
from hypothesis import settings

import baldur
from baldur.policies.breaker import diagram
from tests.docs_runner import INSTALL, PageRun, fresh_checkout, page_sybil

ROOT = Path(__file__).resolve().parents[1]
#: README first: its install is the newcomer's first command, on a checkout without a .venv.
PAGES = ["README.md", "CONTRIBUTING.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]
#: Fences that hold neither a command nor code to run: a diagram (drawn from the code, see below), plain
#: text, and the API's signatures (stub syntax, checked against the code by tests/test_api_docs.py).
NOT_COMMANDS = {"mermaid", "text", "pyi"}
RUN = {"bash", "console", "log", "python"}
_FENCE = re.compile(r"^```(\S*)", re.M)
_SKIP = re.compile(r"<!--\s*skip:\s*(\S+)(.*?)-->", re.S)


@pytest.fixture(scope="session")
def newcomer_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fresh_checkout(tmp_path_factory.mktemp("checkout"))


@pytest.mark.parametrize("page", PAGES)
def test_every_block_of_the_page_runs_as_shown(page: str, newcomer_checkout: Path, tmp_path: Path) -> None:
    run = PageRun(page, newcomer_checkout, tmp_path)
    document = page_sybil().parse(ROOT / page)
    # As in a script the reader runs (Flask(__name__) looks its module up by this name).
    document.namespace.update(page_run=run, __name__="__main__")
    try:
        for example in document.examples():
            try:
                example.evaluate()
            except SkipTest:
                continue  # marked in the page with its reason (checked below)
    finally:
        run.stop()
        baldur.reset()


@pytest.mark.parametrize("page", PAGES)
def test_every_block_is_run_or_marked_not_run_with_a_reason(page: str) -> None:
    text = (ROOT / page).read_text()
    fences = _FENCE.findall(text)[::2]  # an opening fence, then its closing one
    assert set(fences) <= RUN | NOT_COMMANDS, f"{page}: a block without a known language: {set(fences) - RUN}"
    for action, reason in _SKIP.findall(text):
        assert action == "next", f"{page}: skip one block at a time, each with its reason"
        assert re.fullmatch(r'\s*"[^"]{10,}"\s*', reason), f"{page}: `skip: next` needs a quoted reason"


def test_the_readme_installs_what_every_page_assumes() -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"```bash\n{INSTALL} && cd examples/quickstart_flask" in readme


def test_the_breaker_diagram_in_the_docs_is_drawn_from_the_transition_table() -> None:
    assert diagram() in (ROOT / "docs" / "strategies.md").read_text()


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Run the tests", 1)[1]
    command = section.split("```bash\n", 1)[1].split("\n```", 1)[0].strip()
    assert command in (ROOT / ".ci" / "run").read_text()


def test_ci_draws_the_same_hypothesis_examples_on_every_run() -> None:
    """`.ci/run` selects the profile tests/conftest.py registers: derandomized, no deadlines."""
    assert "\nexport HYPOTHESIS_PROFILE=ci\n" in (ROOT / ".ci" / "run").read_text()
    ci = settings.get_profile("ci")
    assert (ci.derandomize, ci.database, ci.deadline) == (True, None, None)
    assert settings.get_profile("dev").deadline is None


def test_the_quickstart_is_design_md_verbatim() -> None:
    app = (ROOT / "examples" / "quickstart_flask" / "app.py").read_text()
    assert "init_flask(app)            # calls baldur.init() once, installs the request hooks" in app
    assert '@baldur.protected("demo")  # the response travels through a circuit breaker' in app
