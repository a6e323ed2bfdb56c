"""The docs say what the code does."""

from __future__ import annotations

from pathlib import Path

from hypothesis import settings

from baldur.policies.breaker import diagram

ROOT = Path(__file__).resolve().parents[1]


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
