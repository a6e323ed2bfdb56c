"""The Web Console in a real headless Chromium (Debian's ``chromium``, driven by Playwright) against
real servers on loopback: gunicorn with one worker serving ``console_app.py`` (the admin mounted at
``/_baldur``; one worker, so its memory store is the whole truth) and the standalone admin server.

The test makes the failing requests itself and waits for the page with Playwright's auto-waiting
``expect``; servers are awaited by polling with a deadline and stopped by their process group.
Screenshots go to the test's temporary directory; ``UPDATE_SCREENSHOTS=1`` writes them to
``docs/images/console-*.png`` instead, where the admin docs show them.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from tests.adapters._flask_support import (
    PYTHON,
    child_env,
    http_get,
    read_log,
    server_process,
    stop_group,
    wait_for_http,
)
from tests.ports import free_port

CHROMIUM = shutil.which("chromium")
_NO_CHROMIUM = ("no `chromium` on PATH: the Web Console's browser test drives the system's Chromium "
                "(Debian: apt-get install chromium); it never downloads a browser")
if CHROMIUM is None and os.environ.get("BALDUR_TEST_REQUIRE_BROWSER") == "1":  # CI installs it: never skip there
    pytest.fail(f"{_NO_CHROMIUM}, and BALDUR_TEST_REQUIRE_BROWSER=1", pytrace=False)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=_NO_CHROMIUM)

HERE = Path(__file__).resolve().parent
DOCS_IMAGES = HERE.parents[1] / "docs" / "images"

STRICT_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
              "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
KEYS = {
    "viewer": "viewer-key-for-the-console-test",
    "operator": "operator-key-for-the-console-test",
    "admin": "admin-key-for-the-console-test",
}
ADMIN_KEYS = ",".join(f"{role}:{key}" for role, key in KEYS.items())
#: The breaker name with markup that console_app.py declares.
MARKUP_NAME = '<img src="x" onerror="document.title=\'owned\'"><b>bold</b>'
#: payments, recommendations, search and the markup one.
BREAKER_COUNT = 4
LAPTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def key_id(key: str) -> str:
    return "k-" + hashlib.sha256(key.encode()).hexdigest()[:10]


# -- servers ---------------------------------------------------------------------------------------

def _gunicorn(port: int) -> list[str]:
    from gunicorn.config import KNOWN_SETTINGS

    args = [PYTHON, "-m", "gunicorn", "-w", "1", "--threads", "4", "-b", f"127.0.0.1:{port}",
            "--graceful-timeout", "5"]
    if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
        args.append("--no-control-socket")  # gunicorn ≥ 25 would share one socket under $HOME
    return [*args, "console_app:app"]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of console_app.py under gunicorn (one worker, four threads)."""
    port = free_port()
    log = tmp_path_factory.mktemp("console-app") / "gunicorn.log"
    with server_process(_gunicorn(port), HERE, child_env(BALDUR_ADMIN_KEYS=ADMIN_KEYS), log) as proc:
        status, _ = wait_for_http(f"http://127.0.0.1:{port}/_baldur/", proc, log)
        assert status == 200, read_log(log)
        yield f"http://127.0.0.1:{port}"


# -- the browser -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    expect.set_options(timeout=15_000)  # a loaded two-core machine; the page polls every 1.5 s
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Console:
    """A page of the console with what it did: every request's URL, every uncaught error or CSP violation."""

    page: Page
    requests: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def log_in(self, role: str) -> None:
        self.page.get_by_label("Admin key").fill(KEYS[role])
        self.page.get_by_role("button", name="Log in").click()
        expect(self.page.locator("#who")).to_have_text(f"{key_id(KEYS[role])} · {role}")

    def breaker(self, name: str) -> Locator:
        return self.page.locator("#breakers > li").filter(
            has=self.page.get_by_role("heading", name=name, exact=True))

    def assert_clean(self, origin: str) -> None:
        """Only the server's own origin was asked, no key ever sat in a URL, nothing broke or was blocked."""
        assert self.requests, "the page made no request at all"
        foreign = [url for url in self.requests if not url.startswith(origin + "/") and not url.startswith("data:")]
        assert foreign == [], foreign
        assert not [url for url in self.requests if any(key in url for key in KEYS.values())]
        assert self.problems == []
        assert self.page.evaluate("localStorage.length") == 0


@pytest.fixture
def open_console(browser: Browser) -> Iterator[Callable[..., Console]]:
    """``open_console(url, viewport)`` opens the console in a fresh context (its own sessionStorage)."""
    contexts = []

    def open_(url: str, viewport: dict[str, int] = LAPTOP) -> Console:
        # One locale and zone, so that the screenshots read the same wherever they are taken.
        context = browser.new_context(viewport=viewport, locale="en-GB", timezone_id="UTC")  # type: ignore[arg-type]
        contexts.append(context)
        console = Console(context.new_page())
        console.page.on("request", lambda request: console.requests.append(request.url))
        console.page.on("pageerror", lambda error: console.problems.append(f"uncaught: {error}"))
        console.page.on("console", lambda message: console.problems.append(message.text)
                        if "Content Security Policy" in message.text else None)
        console.page.goto(url)
        return console

    yield open_
    for context in contexts:
        context.close()


def screenshot(console: Console, name: str, tmp_path: Path) -> Path:
    folder = DOCS_IMAGES if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path
    path = folder / f"console-{name}.png"
    console.page.screenshot(path=path, full_page=True)
    assert path.read_bytes().startswith(b"\x89PNG")
    return path


# -- the tests -------------------------------------------------------------------------------------

def test_a_viewer_watches_every_breaker_but_cannot_act(app_url: str, open_console: Callable[..., Console]) -> None:
    for path in ("/search", "/search", "/markup"):
        assert http_get(app_url + path)[0] == 200
    # Without the trailing slash too: the page's relative URLs need the redirect to /_baldur/.
    console = open_console(app_url + "/_baldur")
    page = console.page
    expect(page).to_have_url(app_url + "/_baldur/")
    console.log_in("viewer")

    expect(page.locator("#breakers > li h3")).to_have_count(BREAKER_COUNT)
    search = console.breaker("search")
    expect(search.locator(".badge-label")).to_have_text("closed")
    expect(search.locator(".stat", has_text="Calls").locator("dd")).to_have_text("2")
    # Every action is there, and disabled; the audit log is not shown at all.
    expect(page.locator("#breakers button")).to_have_count(3 * BREAKER_COUNT)
    expect(page.locator("#breakers button:enabled")).to_have_count(0)
    expect(page.locator("#readonly-note")).to_be_visible()
    expect(page.locator("#audit-section")).to_be_hidden()
    expect(page.locator("#limits tr", has_text="search")).to_contain_text("100/minute")

    # A name with markup is text: no element is built from it, its handler never ran.
    expect(console.breaker(MARKUP_NAME).locator("h3")).to_have_text(MARKUP_NAME)
    expect(page.locator("img, b")).to_have_count(0)
    assert page.title() == "Baldur console"

    assert page.evaluate("sessionStorage.getItem('baldur.admin.key')") == KEYS["viewer"]
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_label("Admin key")).to_be_visible()
    expect(page.locator("#breakers > li")).to_have_count(0)
    assert page.evaluate("sessionStorage.length") == 0
    console.assert_clean(app_url)


def test_an_operator_sees_a_breaker_open_and_forces_it_closed_which_the_admin_sees_audited(
        app_url: str, open_console: Callable[..., Console], tmp_path: Path) -> None:
    operator = open_console(app_url + "/_baldur/")
    operator.log_in("operator")
    payments = operator.breaker("payments")
    expect(payments.locator(".badge-label")).to_have_text("closed")
    expect(operator.page.locator("#readonly-note")).to_be_hidden()
    expect(operator.page.locator("#audit-section")).to_be_hidden()

    # Three failures in a row open it (and "recommendations", left open for the screenshots).
    for path in ("/payments", "/recommendations"):
        assert [http_get(app_url + path)[0] for _ in range(3)] == [502 if path == "/payments" else 503] * 3
        assert http_get(app_url + path)[0] == 503  # refused by the open breaker
    expect(payments.locator(".badge-label")).to_have_text("open")
    expect(payments).to_have_attribute("data-state", "open")
    expect(payments.locator(".stat", has_text="Time left open").locator("dd")).to_have_text(
        re.compile(r"^(9|10) min \d+ s$"))

    payments.get_by_role("button", name="Force closed…").click()
    dialog = operator.page.get_by_role("dialog")
    expect(dialog).to_contain_text("Force closed: payments")
    dialog.get_by_label("Reason").fill("Card processor is back; checked by hand")
    dialog.get_by_label("Expires").select_option(label="in 1 hour")
    dialog.get_by_role("button", name="Force closed").click()
    expect(dialog).to_be_hidden()
    expect(payments.locator(".badge-label")).to_have_text("closed")
    expect(payments.locator(".forced")).to_contain_text(f"Forced closed by {key_id(KEYS['operator'])}")
    expect(payments.locator(".forced")).to_contain_text("Card processor is back; checked by hand")
    expect(operator.page.locator("#notice")).to_have_text("“payments” forced closed.")
    assert http_get(app_url + "/payments")[0] == 502  # calls go through again (and still fail)

    for _ in range(5):
        assert http_get(app_url + "/search")[0] == 200
    admin = open_console(app_url + "/_baldur/")
    admin.log_in("admin")
    entry = admin.page.locator("#audit tr").first
    expect(entry).to_contain_text(key_id(KEYS["operator"]))
    expect(entry).to_contain_text("payments")
    expect(entry).to_contain_text("Card processor is back; checked by hand")
    expect(entry).to_contain_text("1 h 0 min")
    expect(admin.breaker("recommendations").locator(".badge-label")).to_have_text("open")
    expect(admin.page.locator("#breakers button:enabled")).to_have_count(3 * BREAKER_COUNT)

    screenshot(admin, "laptop", tmp_path)
    operator.page.set_viewport_size(PHONE)
    screenshot(operator, "phone", tmp_path)
    operator.assert_clean(app_url)
    admin.assert_clean(app_url)


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.urls += [value for name, value in attrs if name in ("src", "href") and value is not None]
        if "style" in values or any(name.startswith("on") for name in values):
            self.inline.append(tag)
        if tag == "style" or (tag == "script" and "src" not in values):
            self.inline.append(tag)


def test_the_console_is_served_with_the_strict_csp_and_refers_only_to_its_own_files(app_url: str) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(app_url + "/_baldur/", timeout=5) as response:
        assert response.headers["Content-Security-Policy"] == STRICT_CSP
        assert response.headers.get_content_type() == "text/html"
        page = _References()
        page.feed(response.read().decode())
    assert page.inline == []
    for url in page.urls:
        assert url.startswith("data:") or (not urlsplit(url).netloc and not url.startswith("/")), url
        if not url.startswith("data:"):
            with opener.open(f"{app_url}/_baldur/{url}", timeout=5) as asset:
                assert asset.status == 200
                assert asset.headers.get_content_type() in ("text/css", "text/javascript")


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The standalone admin server (``baldur.admin.serve()``, as ``baldur admin`` runs it) and its URL."""
    port = free_port()
    log = tmp_path / "admin.log"
    args = [PYTHON, "-c", "import sys, baldur.admin; sys.exit(baldur.admin.serve())"]
    env = child_env(BALDUR_ADMIN_KEYS=ADMIN_KEYS, BALDUR_ADMIN_ADDR=f"127.0.0.1:{port}")
    with server_process(args, HERE, env, log) as proc:
        status, _ = wait_for_http(f"http://127.0.0.1:{port}/", proc, log)
        assert status == 200, read_log(log)
        yield f"http://127.0.0.1:{port}", proc


def test_at_the_standalone_servers_root_the_console_works_and_reports_the_server_stopped(
        standalone: tuple[str, subprocess.Popen[bytes]], open_console: Callable[..., Console]) -> None:
    url, proc = standalone
    console = open_console(url + "/")
    console.log_in("operator")
    expect(console.page.locator("#updated")).to_contain_text("Live")
    expect(console.page.locator("#readonly-note")).to_be_hidden()

    stop_group(proc)
    expect(console.page.locator("#error")).to_contain_text("cannot be reached")
    expect(console.page.locator("#dashboard")).to_have_class(re.compile(r"\bstale\b"))
    expect(console.page.locator("#who")).to_be_visible()  # still logged in: it keeps retrying
    console.assert_clean(url)


def test_wrong_keys_are_refused_then_throttled_with_the_wait_counted_down(
        standalone: tuple[str, subprocess.Popen[bytes]], open_console: Callable[..., Console]) -> None:
    url, _ = standalone
    intruder = open_console(url + "/")
    page = intruder.page
    button = page.locator("#login-submit")
    for _ in range(12):  # the limiter allows 10 failed attempts a minute per client address
        page.get_by_label("Admin key").fill("not-a-key-of-this-server")
        button.click()  # hides the error banner at once; the answer shows it again
        expect(page.locator("#error")).to_be_visible()
        if button.is_disabled():
            break
        expect(page.locator("#error")).to_have_text("That key was not accepted (401). Check it and try again.")
    expect(page.locator("#error")).to_have_text(
        re.compile(r"^Too many failed attempts from this address \(429\): try again in \d+ s\.$"))
    expect(button).to_be_disabled()
    expect(button).to_have_text(re.compile(r"^Wait \d+ s$"))
    assert page.evaluate("sessionStorage.length") == 0
    intruder.assert_clean(url)


# -- mounted in a Django site: the site's session, not a key ----------------------------------------

QUICKSTART_DJANGO = HERE.parents[1] / "examples" / "quickstart_django"
DJANGO_SITE = HERE.parents[1] / "tests" / "django_adapter"
DJANGO_USERS = """
from django.contrib.auth.models import Group, User
oscar = User.objects.create_user("oscar", password="oscar-password")
oscar.groups.add(Group.objects.get(name="baldur_operator"))
User.objects.create_user("nemo", password="nemo-password", is_staff=True)
"""


@pytest.fixture(scope="module")
def django_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Django quickstart (with a login page and a failing view ``/flaky``) under gunicorn, one
    worker, its own SQLite file: ``oscar`` is in ``baldur_operator``, ``nemo`` is staff in no group."""
    folder = tmp_path_factory.mktemp("console-django")
    env = child_env(DJANGO_SETTINGS_MODULE="worker_site.settings", QUICKSTART_DB=str(folder / "db.sqlite3"))
    env["PYTHONPATH"] = f"{DJANGO_SITE}:{QUICKSTART_DJANGO}:{env['PYTHONPATH']}"
    for args in (["migrate", "--verbosity", "0"], ["shell", "-c", DJANGO_USERS]):
        done = subprocess.run([PYTHON, "manage.py", *args], cwd=QUICKSTART_DJANGO, env=env, capture_output=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stderr.decode()
    port = free_port()
    args = [*_gunicorn(port)[:-1], "quickstart.wsgi:application"]
    with server_process(args, QUICKSTART_DJANGO, env, folder / "gunicorn.log") as proc:
        status, _ = wait_for_http(f"http://127.0.0.1:{port}/healthz", proc, folder / "gunicorn.log")
        assert status == 200, read_log(folder / "gunicorn.log")
        yield f"http://127.0.0.1:{port}"


def django_log_in(console: Console, url: str, user: str) -> None:
    """Log in through the site's own login view, in the page's browser context (its cookies)."""
    console.page.goto(url + "/login/")  # the test site's login template is a bare form body: post it here
    token = console.page.locator("input[name=csrfmiddlewaretoken]").get_attribute("value")
    answer = console.page.request.post(url + "/login/", max_redirects=0, headers={"Referer": url + "/login/"},
                                       form={"csrfmiddlewaretoken": token or "", "username": user,
                                             "password": f"{user}-password"})
    assert answer.status == 302, answer.text()
    console.page.goto(url + "/baldur/")


def test_in_a_django_site_the_console_follows_the_users_group_and_sends_its_csrf_token(
        django_url: str, open_console: Callable[..., Console]) -> None:
    anonymous = open_console(django_url + "/baldur/")
    expect(anonymous.page.locator("#error")).to_contain_text("Log in to this site first")
    expect(anonymous.page.get_by_label("Admin key")).to_be_hidden()  # no key form: the site authenticates

    staff = open_console(django_url + "/")
    django_log_in(staff, django_url, "nemo")
    expect(staff.page.locator("#error")).to_contain_text("django:nemo is in none of the groups")
    expect(staff.page.locator("#dashboard")).to_be_hidden()

    operator = open_console(django_url + "/")
    django_log_in(operator, django_url, "oscar")
    expect(operator.page.locator("#who")).to_have_text("django:oscar · operator")
    expect(operator.page.locator("#logout")).to_be_hidden()
    flaky = operator.breaker("flaky")
    assert [http_get(django_url + "/flaky")[0] for _ in range(5)] == [500] * 5
    assert http_get(django_url + "/flaky")[0] == 503
    expect(flaky.locator(".badge-label")).to_have_text("open")

    flaky.get_by_role("button", name="Force closed…").click()  # a POST: it must carry the CSRF token
    dialog = operator.page.get_by_role("dialog")
    dialog.get_by_label("Reason").fill("Downstream fixed; verified by hand")
    dialog.get_by_role("button", name="Force closed").click()
    expect(dialog).to_be_hidden()
    expect(flaky.locator(".forced")).to_contain_text("Forced closed by django:oscar")
    assert http_get(django_url + "/flaky")[0] == 500  # closed: the view runs (and fails) again
    for console in (anonymous, staff, operator):
        assert console.problems == []
        assert console.page.evaluate("sessionStorage.length") == 0
