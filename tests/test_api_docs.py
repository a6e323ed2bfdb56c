"""docs/api.md documents every public name with the signature the code has.

The page's convention: each public name has a heading of its own, `` ### `baldur.name` ``, and the
first code block under that heading is the name's signature exactly as ``signature_block`` renders
it from the code (annotations as written in the source, defaults as values, one parameter per line
when one line would be longer than ``WIDTH``). A missing entry, a stale signature or an entry for a
name that is gone fails, and the failure shows the block to paste.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import baldur
from baldur.adapters.flask import init_flask

ROOT = Path(__file__).resolve().parents[1]
API_PAGE = ROOT / "docs" / "api.md"
WIDTH = 100
#: ``(qualified name, object)`` for every name the page must document.
PUBLIC = [(f"baldur.{name}", getattr(baldur, name)) for name in baldur.__all__]
PUBLIC.append(("baldur.adapters.flask.init_flask", init_flask))
HEADING = re.compile(r"^#{2,4} `(?P<name>baldur(?:\.\w+)+)`$", re.MULTILINE)
PRIVATE_MODULE = re.compile(r"\b_\w+\.")
CODE_BLOCK = re.compile(r"^```pyi\n(?P<code>.*?)\n```$", re.MULTILINE | re.DOTALL)


class _Verbatim:
    """Shown as its text: an annotation as the source wrote it, a default as a reader would write it."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _default_text(value: object) -> str:
    if isinstance(value, type):
        return value.__qualname__
    if isinstance(value, tuple):
        items = [_default_text(item) for item in value]
        return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
    return repr(value)


def _annotation_text(annotation: object) -> str:
    # The package uses ``from __future__ import annotations``: an annotation is its source text,
    # shown without the private module it was reached through (``_runtime.Runtime``: ``Runtime``).
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    return PRIVATE_MODULE.sub("", text)


def _parameters(signature: inspect.Signature) -> list[str]:
    """Each parameter as source would write it, with the bare ``*`` and ``/`` markers."""
    parameters = list(signature.parameters.values())
    has_star_args = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
    parts: list[str] = []
    for index, parameter in enumerate(parameters):
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and not has_star_args and "*" not in parts:
            parts.append("*")
        shown = parameter.replace(
            annotation=(inspect.Parameter.empty if parameter.annotation is inspect.Parameter.empty
                        else _Verbatim(_annotation_text(parameter.annotation))),
            default=(inspect.Parameter.empty if parameter.default is inspect.Parameter.empty
                     else _Verbatim(_default_text(parameter.default))),
        )
        parts.append(str(shown))
        following = parameters[index + 1].kind if index + 1 < len(parameters) else None
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY and following is not inspect.Parameter.POSITIONAL_ONLY:
            parts.append("/")
    return parts


def _call(prefix: str, parameters: list[str], returns: str = "") -> str:
    one_line = f"{prefix}({', '.join(parameters)}){returns}"
    if len(one_line) <= WIDTH:
        return one_line
    return f"{prefix}(\n" + "".join(f"    {part},\n" for part in parameters) + f"){returns}"


def _own_constructor(cls: type) -> bool:
    """The class (or a Baldur base) defines ``__init__``, rather than taking what ``Exception`` takes."""
    defining = next(klass for klass in cls.__mro__ if "__init__" in vars(klass))
    return defining.__module__.startswith("baldur")


def signature_block(qualified: str, obj: object) -> str:
    """The code block that documents ``obj`` under ``qualified``: for a function its call with the
    return type, for a class the call that builds one, for an exception also its bases (the page's
    error tree shows the whole hierarchy), for a value its type."""
    if isinstance(obj, type) and issubclass(obj, BaseException):
        declaration = f"class {qualified}({', '.join(base.__name__ for base in obj.__bases__)})"
        if not _own_constructor(obj):
            return declaration
        return f"{declaration}\n{_call(qualified, _parameters(inspect.signature(obj)))}"
    if isinstance(obj, type):
        return _call(qualified, _parameters(inspect.signature(obj)))
    if callable(obj):
        signature = inspect.signature(obj)
        returns = ("" if signature.return_annotation is inspect.Signature.empty
                   else f" -> {_annotation_text(signature.return_annotation)}")
        return _call(qualified, _parameters(signature), returns)
    return f"{qualified}: {type(obj).__name__}"


def documented_signatures(page: str) -> dict[str, str | None]:
    """Each heading's name and the first code block under it (``None`` when there is none)."""
    headings = list(HEADING.finditer(page))
    found: dict[str, str | None] = {}
    for heading, following in zip(headings, [*headings[1:], None], strict=True):
        section = page[heading.end():following.start() if following else len(page)]
        next_heading = re.search(r"^#{1,6} ", section, re.MULTILINE)
        block = CODE_BLOCK.search(section, 0, next_heading.start() if next_heading else len(section))
        found[heading["name"]] = block["code"] if block else None
    return found


def api_page_problems(page: str) -> list[str]:
    """What is wrong with ``page`` as the API page: missing, stale or unknown entries."""
    documented = documented_signatures(page)
    problems: list[str] = []
    for qualified, obj in PUBLIC:
        expected = signature_block(qualified, obj)
        if qualified not in documented:
            problems.append(f"{qualified} is missing: add a heading ### `{qualified}` and under it\n"
                            f"```pyi\n{expected}\n```")
        elif documented[qualified] != expected:
            problems.append(f"{qualified} has a stale signature: the first code block under its heading is\n"
                            f"```pyi\n{documented[qualified]}\n```\nand the code says\n"
                            f"```pyi\n{expected}\n```")
    known = {qualified for qualified, _ in PUBLIC}
    problems += [f"{name} is documented but is not public (not in baldur.__all__, not init_flask)"
                 for name in documented if name not in known]
    return problems


def test_the_api_page_documents_every_public_name_with_its_signature() -> None:
    problems = api_page_problems(API_PAGE.read_text())
    assert not problems, "docs/api.md is out of step with the code:\n\n" + "\n\n".join(problems)


# -- the check itself fails when it should -------------------------------------------

def _entry(page: str, qualified: str) -> str:
    """The text of ``qualified``'s entry: its heading up to the next heading."""
    start = page.index(f"# `{qualified}`\n")
    start = page.rindex("\n", 0, start) + 1
    following = HEADING.search(page, start + 1)
    return page[start:following.start() if following else len(page)]


@pytest.mark.parametrize("qualified", [qualified for qualified, _ in PUBLIC])
def test_a_page_without_an_entry_is_reported_missing(qualified: str) -> None:
    page = API_PAGE.read_text()
    problems = api_page_problems(page.replace(_entry(page, qualified), ""))
    assert len(problems) == 1 and problems[0].startswith(f"{qualified} is missing"), problems


@pytest.mark.parametrize(("qualified", "stale", "current"), [
    # A parameter renamed, a default changed, a return type changed, a parameter added.
    ("baldur.RateLimit", "*, burst: int | None = None", "*, burst: int = 0"),
    ("baldur.Retry", "attempts: int = 3", "attempts: int = 5"),
    ("baldur.init", "-> Runtime", "-> None"),
    ("baldur.adapters.flask.init_flask", "    idempotency: str | None = None,\n", ""),
    ("baldur.CircuitOpen", "class baldur.CircuitOpen(Rejected)", "class baldur.CircuitOpen(BaldurError)"),
])
def test_a_page_with_a_stale_signature_is_reported(qualified: str, stale: str, current: str) -> None:
    page = API_PAGE.read_text()
    entry = _entry(page, qualified)
    assert stale in entry, f"the example no longer matches the page: {stale!r} is not in {qualified}'s entry"
    problems = api_page_problems(page.replace(entry, entry.replace(stale, current, 1)))
    assert len(problems) == 1 and problems[0].startswith(f"{qualified} has a stale signature"), problems


def test_a_page_documenting_a_name_that_is_gone_is_reported() -> None:
    page = API_PAGE.read_text() + "\n### `baldur.timeout`\n\n```pyi\nbaldur.timeout(seconds: float)\n```\n"
    assert api_page_problems(page) == [
        "baldur.timeout is documented but is not public (not in baldur.__all__, not init_flask)"]


def test_an_entry_without_a_code_block_is_stale() -> None:
    page = API_PAGE.read_text()
    entry = _entry(page, "baldur.reset")
    heading = entry.split("\n", 1)[0]
    problems = api_page_problems(page.replace(entry, f"{heading}\n\nForgets all state.\n\n"))
    assert len(problems) == 1 and problems[0].startswith("baldur.reset has a stale signature"), problems


def test_signatures_render_as_source_would_write_them() -> None:
    def short(a: int, /, b: str = "x", *, on: type[BaseException] = ValueError) -> baldur._runtime.Runtime: ...

    def long(a: int, /, b: str = "x", *, flags: tuple[type[BaseException], ...] = (ValueError, KeyError),
             **extra: object) -> None: ...

    assert signature_block("m.short", short) == (
        "m.short(a: int, /, b: str = 'x', *, on: type[BaseException] = ValueError) -> baldur.Runtime")
    assert signature_block("m.long", long) == (
        "m.long(\n"
        "    a: int,\n"
        "    /,\n"
        "    b: str = 'x',\n"
        "    *,\n"
        "    flags: tuple[type[BaseException], ...] = (ValueError, KeyError),\n"
        "    **extra: object,\n"
        ") -> None")
