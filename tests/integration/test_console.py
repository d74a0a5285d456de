"""The console at /console in a real headless Chromium, against real workers on the real broker.

Debian's ``chromium`` (installed by ``scripts/chromium-local``) driven by Playwright; nothing
of the browser or the server is stubbed. Two workers serve the module, started side by side:
``main`` (the admin token and the scoped ones of ``devtools.support``), where templates are
written, and ``clean``, another deployment (its own topics and data), empty until the console
imports into it what it exported from the first. One browser serves the module; each test has its own browser context,
so nothing a test signed in with (``sessionStorage``) leaks into the next.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.server
import json
import os
import re
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devtools.support import (
    ROOT,
    SCOPED_TOKENS,
    SEED_MAIL,
    SEED_SMS,
    TOKEN,
    Api,
    Worker,
    free_port,
    unique,
    write_tokens_file,
)
from devtools.support import worker_env as base_worker_env
from web.console import ASSETS, CONTENT_SECURITY_POLICY, STATIC_DIR

try:
    from playwright import sync_api as playwright_sync
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip("playwright is not installed (make installs it)", allow_module_level=True)

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
READ_TOKEN = SCOPED_TOKENS["reader"][0]
TOKEN_KEY = "faust-otp.console.token"
ARTIFACTS = ROOT / ".local" / "artifacts"
TIMEOUT_MS = 15_000
#: What writes, shown only to a token with the ``edit`` scope (``#create`` only for a new
#: template, ``#discard-draft`` only when there is a draft: hidden here for every token).
EDIT_CONTROLS = (
    "#new-template",
    "#create",
    "#save-draft",
    "#publish",
    "#discard-draft",
    "#clone",
    "#delete",
    "#add-param",
    "#history button.restore",
)
IMPORT_CONTROL = "label[for='import-file']"


# --------------------------------------------------------------------------- fixtures


def start_deployment(bootstrap: str, base: Path, tokens: Path | None) -> Worker:
    extra = {"NOTIFY_API_TOKENS_FILE": str(tokens)} if tokens else {}
    env = base_worker_env(bootstrap, unique("console"), free_port(), **extra)
    return Worker(env=env, data_dir=base / "data", log_path=base / "worker.log").start()


@dataclass
class Deployments:
    """The two workers; ``clean`` is waited for only by the test that imports into it, so
    its start overlaps the tests before."""

    main: Worker
    _clean: Worker
    _clean_ready: bool = False

    @property
    def clean(self) -> Worker:
        if not self._clean_ready:
            self._clean.wait_ready_sync()
            self._clean_ready = True
        return self._clean


@pytest.fixture(scope="module")
def deployments(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployments]:
    """Both workers, started together (each takes seconds, mostly waiting on the broker)."""
    base = tmp_path_factory.mktemp("console")
    tokens = write_tokens_file(base / "tokens.json")
    main = start_deployment(kafka_bootstrap, base / "main", tokens)
    clean = start_deployment(kafka_bootstrap, base / "clean", None)
    try:
        main.wait_ready_sync()
        yield Deployments(main, clean)
    finally:
        # Side by side again: each spends its few seconds of shutdown waiting on the broker.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(Worker.stop, (main, clean)))
    for worker in (main, clean):
        assert "unhandled error" not in worker.log_path.read_text(errors="replace"), (
            worker.log_tail(80)
        )


@pytest.fixture(scope="module")
def main(deployments: Deployments) -> Worker:
    return deployments.main


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: run scripts/chromium-local fetch"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with playwright_sync.sync_playwright() as p:
        # --no-sandbox: CI and this machine run as root, where Chromium's sandbox cannot start.
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@dataclass
class Console:
    """One browser context on one deployment's /console, with what its page reported."""

    page: Any
    base_url: str
    messages: list[str] = field(default_factory=list)
    #: every request the page made: (url, its Cookie header or None)
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def sign_in(self, token: str) -> None:
        self.page.goto(f"{self.base_url}/console")
        self.page.fill("#token", token)
        self.page.click("#sign-in-button")
        self.page.wait_for_selector("#workspace:not([hidden])")
        self.page.wait_for_selector("#list-count:has-text('templates')")

    def open(self, name: str, language: str = "en") -> None:
        self.page.click(f".template-item[data-name='{name}'][data-language='{language}']")
        self.page.wait_for_function(
            "t => document.getElementById('editor-title').textContent === t",
            arg=f"{name} ({language})",
        )
        self.wait_preview()

    def wait_preview(self, outcome: str = "ready") -> None:
        """Until the preview of what the editor holds now is in (the page marks it)."""
        self.page.wait_for_selector(f"#side-pane[data-preview='{outcome}']", state="attached")

    def status(self, pattern: str) -> None:
        self.page.wait_for_selector(f"#status:text-matches('{pattern}')")

    def violations(self) -> list[str]:
        return [m for m in self.messages if "Content Security Policy" in m]


@contextmanager
def open_console(browser: Any, worker: Worker, **context_options: Any) -> Iterator[Console]:
    context = browser.new_context(
        viewport={"width": 1440, "height": 900}, accept_downloads=True, **context_options
    )
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    console = Console(page, worker.url)
    page.on("console", lambda m: console.messages.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.messages.append(f"pageerror: {e}"))
    page.on("request", lambda r: console.requests.append((r.url, r.headers.get("cookie"))))
    try:
        yield console
    finally:
        context.close()
        # Shown by pytest only when the test fails: what the page itself said.
        print("browser console:", *console.messages, sep="\n  ")
    assert not [m for m in console.messages if m.startswith("pageerror")], console.messages


@pytest.fixture
def console(browser: Any, main: Worker) -> Iterator[Console]:
    with open_console(browser, main) as opened:
        yield opened


@pytest.fixture(scope="module")
def api(main: Worker) -> Api:
    return Api(main.url)


def run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine from a synchronous test (Playwright's sync API wants no running loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def call(api: Api, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return run_sync(api.call(method, path, body))


def create(api: Api, template: dict[str, Any]) -> dict[str, Any]:
    status, body = call(api, "POST", "/api/template", template)
    assert status == 201, body
    return body


def save_artifact(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=False)
    print(f"\nconsole screenshot: {path}")
    return path


# --------------------------------------------------------------------------- the page itself


def test_console_files_hold_no_inline_script_or_markup_sinks():
    """What the CSP enforces in the browser, checked in the source too: no inline script or
    event-handler attribute in the page, and no API for putting markup into the document."""
    html = (STATIC_DIR / "index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", html) == ['<script src="/console/console.js" defer>']
    assert not re.search(r"\son[a-z]+\s*=", html), "event-handler attribute in index.html"
    assert not re.search(r"\sstyle\s*=", html), "inline style in index.html"
    script = (STATIC_DIR / "console.js").read_text()
    code = "\n".join(line for line in script.splitlines() if not line.strip().startswith("//"))
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in code, sink
    assert "localStorage" not in code and "document.cookie" not in code
    assert set(ASSETS) == {p.name for p in STATIC_DIR.iterdir()}


async def fetch_plain(url: str) -> tuple[int, Any, bytes]:
    """A GET with no token, as a browser loading the page sends it: status, headers, body."""
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            return resp.status, resp.headers.copy(), await resp.read()


def test_console_is_served_with_strict_headers(main: Worker):
    for path, media in (
        ("/console", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ):
        status, headers, body = run_sync(fetch_plain(main.url + path))
        assert status == 200 and body, (path, status)
        assert headers["Content-Type"] == f"{media}; charset=utf-8", headers
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Cache-Control"] == "no-cache"
        # Unchanged since the browser's copy: 304, no body, the same headers.
        etag = headers["ETag"]
        status, body = run_sync(
            Api(main.url, token=None).call("GET", path, headers={"If-None-Match": etag})
        )
        assert status == 304 and not body
    policy = dict(d.split(" ", 1) for d in CONTENT_SECURITY_POLICY.split("; "))
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["base-uri"] == "'none'"
    # Only the console's own files are served, as JSON errors like the API's otherwise.
    status, body = call(Api(main.url, token=None), "GET", "/console/secrets.txt")
    assert status == 404 and "error" in body


# --------------------------------------------------------------------------- the editor


def test_sign_in_create_preview_draft_publish_restore(console: Console, api: Api):
    page = console.page
    page.goto(f"{console.base_url}/console")
    page.fill("#token", "not-a-token")
    page.click("#sign-in-button")
    page.wait_for_selector("#sign-in-error:has-text('not accepted')")
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None

    console.sign_in(TOKEN)
    assert page.text_content("#who-name") == "default"
    assert "admin" in page.text_content("#who-scopes")
    # The token is in this tab's sessionStorage and nowhere else the browser keeps or shows.
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == TOKEN
    assert page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == []
    assert TOKEN not in page.url
    # A reload keeps the tab signed in; another tab (its own sessionStorage) is not.
    page.reload()
    page.wait_for_selector("#workspace:not([hidden])")
    other = page.context.new_page()
    other.goto(f"{console.base_url}/console")
    other.wait_for_selector("#sign-in:not([hidden])")
    other.close()

    # Create the seed's otpMail through the form, as a person would.
    page.click("#new-template")
    page.fill("#f-name", SEED_MAIL["name"])
    page.fill("#f-language", SEED_MAIL["language"])
    page.select_option("#f-type", SEED_MAIL["type"])
    page.fill("#f-subject", SEED_MAIL["subject"])
    page.fill("#f-body", SEED_MAIL["body"])
    # The form starts with otpValue; clientId (the subject's) is added as mandatory, and is
    # warned about until it has a sample value to preview with.
    page.click("#add-param")
    page.locator("#params .param-key").last.fill("clientId")
    page.locator("#params .param-mandatory").last.check()
    page.wait_for_selector("#warnings li:has-text(\"'clientId' has no sample value\")")
    page.locator("#params .param-sample").last.fill("42")
    console.wait_preview()
    # The live preview: the mail's HTML in the sandboxed iframe, with the sample code.
    code = page.text_content("#preview-otp")
    assert code and code.isdigit(), code
    frame = page.frame_locator("#preview-mail")
    assert frame.locator("p").nth(1).text_content() == code
    assert page.text_content("#preview-subject") == "otp for 42"
    assert page.get_attribute("#preview-mail", "sandbox") == ""

    # A mandatory parameter the body stops using is warned about as the person types.
    page.fill("#f-body", "<p>no code here</p>")
    page.wait_for_selector("#warnings li:has-text(\"Mandatory parameter 'otpValue' is not used\")")
    # The service refuses it too (the preview fails), and its word on it is not shown twice.
    console.wait_preview("failed")
    assert page.locator("#warnings li").count() == 1
    page.fill("#f-body", SEED_MAIL["body"])
    page.wait_for_selector("#warnings li", state="detached")

    page.click("#create")
    console.status("Created otpMail")
    status, stored = call(api, "GET", "/api/template/otpMail?language=en")
    assert status == 200 and stored["version"] == 1
    for key in ("subject", "body", "type"):
        assert stored[key] == SEED_MAIL[key]
    assert {(p["key"], p["mandatory"]) for p in stored["params"]} == {
        ("clientId", True),
        ("otpValue", True),
    }

    # Save a draft: the published v1 stays what sends use.
    new_subject = "Your code for [(${clientId})]"
    page.fill("#f-subject", new_subject)
    console.wait_preview()
    assert page.text_content("#preview-subject") == "Your code for 42"
    page.click("#save-draft")
    console.status("Draft saved")
    status, draft = call(api, "GET", "/api/template/otpMail?language=en&draft=true")
    assert status == 200 and draft["subject"] == new_subject, draft
    status, published = call(api, "GET", "/api/template/otpMail?language=en")
    assert published["version"] == 1 and published["subject"] == SEED_MAIL["subject"]
    page.wait_for_selector(".template-item[data-name='otpMail'] .tag.draft")

    # Publish: v2 is live and heads the history.
    page.click("#publish")
    console.status("Published v2")
    status, published = call(api, "GET", "/api/template/otpMail?language=en")
    assert (published["version"], published["subject"]) == (2, new_subject)
    page.wait_for_selector("#history li[data-version='2'] .tag.current")
    assert page.locator("#history li").count() == 2
    assert "subject" in page.text_content("#history li[data-version='2'] .summary")
    console.wait_preview()
    save_artifact(page, "console-editor.png")

    # Restore v1: a new version, v3, with v1's content.
    page.click("#history button.restore[data-version='1']")
    page.click("#confirm-ok")
    console.status("Restored v1 as v3")
    status, published = call(api, "GET", "/api/template/otpMail?language=en")
    assert (published["version"], published["subject"]) == (3, SEED_MAIL["subject"])
    assert page.input_value("#f-subject") == SEED_MAIL["subject"]
    page.wait_for_selector("#history li[data-version='3'] .tag.current")
    assert console.violations() == []

    # No request of the whole session carried the token in its URL, nor any cookie.
    assert len(console.requests) > 20
    assert [r for r in console.requests if TOKEN in r[0] or r[1] is not None] == []

    # Signing out forgets the token.
    page.click("#sign-out")
    page.wait_for_selector("#sign-in:not([hidden])")
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None


def test_clone_and_delete_with_confirmation(console: Console, api: Api):
    name = unique("sms")
    create(api, {**SEED_SMS, "name": name})
    page = console.page
    console.sign_in(TOKEN)
    console.open(name)
    # An SMS previews as text, with the sample code.
    code = page.text_content("#preview-otp")
    assert page.text_content("#preview-text") == f"OTP {code}"
    assert page.is_hidden("#preview-mail")

    # A draft, then discarded: the published template is untouched, the list says no draft.
    page.fill("#f-body", "Your code: [(${otpValue})]")
    console.wait_preview()
    assert page.text_content("#preview-text") == f"Your code: {code}"
    page.click("#save-draft")
    console.status("Draft saved")
    page.wait_for_selector(f".template-item[data-name='{name}'] .tag.draft")
    page.click("#discard-draft")
    page.click("#confirm-ok")
    console.status("Draft discarded")
    assert page.input_value("#f-body") == SEED_SMS["body"]
    assert page.locator(f".template-item[data-name='{name}'] .tag.draft").count() == 0
    assert call(api, "GET", f"/api/template/{name}?language=en&draft=true")[0] == 404

    page.click("#clone")
    page.fill("#clone-name", f"{name}-ro")
    page.fill("#clone-language", "ro")
    page.click("#clone-ok")
    console.status(f"Cloned into {name}-ro")
    status, clone = call(api, "GET", f"/api/template/{name}-ro?language=ro")
    assert status == 200 and clone["version"] == 1 and clone["body"] == SEED_SMS["body"]

    # Delete asks first; cancelling keeps the template.
    page.click("#delete")
    assert f"{name}-ro (ro)" in page.text_content("#confirm-text")
    page.click("#confirm-cancel")
    assert call(api, "GET", f"/api/template/{name}-ro?language=ro")[0] == 200
    page.click("#delete")
    page.click("#confirm-ok")
    console.status(f"Deleted {name}-ro")
    assert call(api, "GET", f"/api/template/{name}-ro?language=ro")[0] == 404
    assert page.locator(f".template-item[data-name='{name}-ro']").count() == 0
    assert console.violations() == []


def test_a_change_made_elsewhere_since_opening_is_never_overwritten(console: Console, api: Api):
    """The console writes with If-Match: another editor's publish after this page opened the
    template makes this page's draft save and delete a 412 it shows, and both changes that
    would have been lost stay."""
    name = unique("race")
    create(api, {**SEED_SMS, "name": name})
    page = console.page
    console.sign_in(TOKEN)
    console.open(name)
    elsewhere = {**SEED_SMS, "name": name, "body": "Elsewhere [(${otpValue})]"}
    status, stored = call(api, "PUT", f"/api/template/{name}?language=en", elsewhere)
    assert status == 200 and stored["version"] == 2, stored
    page.fill("#f-body", "Here [(${otpValue})]")
    console.wait_preview()
    page.click("#save-draft")
    console.status("changed since it was read")
    assert call(api, "GET", f"/api/template/{name}?language=en&draft=true")[0] == 404
    page.click("#delete")
    page.click("#confirm-ok")
    console.status("changed since it was read")
    status, current = call(api, "GET", f"/api/template/{name}?language=en")
    assert (status, current["version"], current["body"]) == (200, 2, elsewhere["body"])
    assert console.violations() == []


def test_list_filters_by_name_type_language_and_status(console: Console, api: Api):
    tag = unique("flt")
    create(api, {**SEED_SMS, "name": f"{tag}-sms"})
    create(api, {**SEED_SMS, "name": f"{tag}-sms", "language": "de", "active": False})
    create(api, {**SEED_MAIL, "name": f"{tag}-mail"})
    page = console.page
    console.sign_in(TOKEN)

    def shown() -> set[tuple[str, str]]:
        items = page.locator(".template-item")
        return {
            (items.nth(i).get_attribute("data-name"), items.nth(i).get_attribute("data-language"))
            for i in range(items.count())
        }

    page.fill("#filter-name", tag.upper())  # the name filter ignores case
    assert shown() == {(f"{tag}-sms", "en"), (f"{tag}-sms", "de"), (f"{tag}-mail", "en")}
    page.select_option("#filter-type", "SMS")
    assert shown() == {(f"{tag}-sms", "en"), (f"{tag}-sms", "de")}
    page.select_option("#filter-language", "de")
    assert shown() == {(f"{tag}-sms", "de")}
    page.select_option("#filter-language", "")
    page.select_option("#filter-status", "inactive")
    assert shown() == {(f"{tag}-sms", "de")}
    page.select_option("#filter-status", "active")
    assert shown() == {(f"{tag}-sms", "en")}


def test_typed_parameters_preview_with_samples_of_their_type(console: Console, api: Api):
    name = unique("typed")
    create(
        api,
        {
            "name": name,
            "type": "SMS",
            "body": "Pay [(${amount})] for [(${client.name})]: [(${otpValue})]",
            "params": [
                {"key": "amount", "mandatory": True, "type": "NUMBER"},
                {"key": "client", "mandatory": True, "type": "OBJECT"},
                {"key": "otpValue", "mandatory": True},
            ],
        },
    )
    page = console.page
    console.sign_in(TOKEN)
    console.open(name)
    samples = page.locator("#params .param-sample")
    assert page.locator("#params .param-type").first.input_value() == "NUMBER"
    samples.nth(1).fill('{"name": "Ana"}')
    samples.nth(0).fill("12.5")
    console.wait_preview()
    code = page.text_content("#preview-otp")
    assert page.text_content("#preview-text") == f"Pay 12.5 for Ana: {code}"
    # A sample that does not fit the type: the service says why, beside the form.
    samples.nth(0).fill("a lot")
    console.wait_preview("failed")
    assert "NUMBER" in page.text_content("#warnings li.server")
    assert console.violations() == []


# --------------------------------------------------------------------------- hostile mail


class PixelServer:
    """A real HTTP server on loopback that counts the requests it gets (a tracking pixel)."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def pixel() -> Iterator[PixelServer]:
    server = PixelServer()
    server.thread.start()
    yield server
    server.server.shutdown()


def test_preview_runs_no_script_and_fetches_nothing_remote(
    console: Console, api: Api, pixel: PixelServer
):
    """A mail's HTML stays inside the sandboxed preview: its inline style applies, its script
    does not run, and its remote image is not fetched (the console says so)."""
    name = unique("hostile")
    body = (
        "<html><body><p id='styled' style='color: rgb(200, 0, 0)'>code "
        "<b th:text='${otpValue}'></b></p>"
        f"<img src='{pixel.url}/pixel.png'>"
        "<script>parent.document.title = 'owned'; document.title = 'ran'</script>"
        "<a href='https://example.com/' target='_top'>link</a>"
        "</body></html>"
    )
    create(api, {**SEED_MAIL, "name": name, "body": body, "params": []})
    page = console.page
    console.sign_in(TOKEN)
    console.open(name)
    frame = page.frame_locator("#preview-mail")
    styled = frame.locator("#styled")
    assert styled.evaluate("e => getComputedStyle(e).color") == "rgb(200, 0, 0)"
    assert styled.locator("b").text_content() == page.text_content("#preview-otp")
    assert page.title() == "faust-otp console"
    assert page.is_visible("#preview-note")
    time.sleep(0.3)
    assert pixel.hits == []
    # The frame's own document has no access to the console's: it has an opaque origin.
    messages = " ".join(console.messages)
    assert "Blocked script execution in 'about:srcdoc'" in messages
    assert pixel.url in messages  # reported as blocked by the policy, never requested


# --------------------------------------------------------------------------- scopes


def test_read_token_sees_no_edit_controls_and_its_write_is_refused(console: Console, api: Api):
    name = unique("ro")
    create(api, {**SEED_MAIL, "name": name})
    status, body = call(api, "PUT", f"/api/template/{name}", {**SEED_MAIL, "name": name})
    assert (status, body["version"]) == (200, 2), body  # so that v1 could be restored
    page = console.page
    console.sign_in(READ_TOKEN)
    assert page.text_content("#who-name") == "reader"
    assert page.text_content("#who-scopes") == "read"
    console.open(name)
    # It reads, previews and exports (this one template, from the editor)...
    assert page.frame_locator("#preview-mail").locator("p").nth(1).text_content()
    assert page.is_visible("#export")
    with page.expect_download() as download:
        page.click("#export-one")
    exported = json.loads(Path(download.value.path()).read_text())
    assert [(t["name"], t["language"]) for t in exported["templates"]] == [(name, "en")]
    assert download.value.suggested_filename.startswith(f"{name}-en-")
    # ...and is shown nothing that writes.
    page.wait_for_selector("#history li[data-version='1']")
    for control in (*EDIT_CONTROLS, IMPORT_CONTROL, ".remove-param"):
        assert page.locator(f"{control}:visible").count() == 0, control
    assert page.is_editable("#f-body") is False
    assert page.is_editable("#f-subject") is False
    assert page.is_disabled("#f-type")
    # Hiding is a courtesy: the API itself refuses the write, with the token the console holds.
    status, body = page.evaluate(
        """async ([name, key]) => {
            const token = sessionStorage.getItem(key);
            const resp = await fetch(`/api/template/${name}?language=en`, {
                method: "PUT",
                headers: {Authorization: `Bearer ${token}`, "Content-Type": "application/json"},
                body: JSON.stringify({name, type: "MAIL", subject: "x", body: "<p>x</p>"}),
            });
            return [resp.status, await resp.json()];
        }""",
        [name, TOKEN_KEY],
    )
    assert status == 403, body
    assert "edit" in json.dumps(body["details"]), body
    status, stored = call(api, "GET", f"/api/template/{name}?language=en")
    assert stored["version"] == 2
    assert console.violations() == []


@pytest.mark.parametrize(
    ("who", "edits", "imports"), [("editor", True, False), ("importer", False, True)]
)
def test_each_scope_is_shown_its_own_actions(
    console: Console, api: Api, who: str, edits: bool, imports: bool
):
    name = unique(who)
    create(api, {**SEED_MAIL, "name": name})
    call(api, "PUT", f"/api/template/{name}", {**SEED_MAIL, "name": name})
    page = console.page
    console.sign_in(SCOPED_TOKENS[who][0])
    assert page.text_content("#who-name") == who
    console.open(name)
    if edits:  # a change, so that Save draft is enabled
        page.fill("#f-subject", "changed [(${clientId})]")
        # The form enables it on the input event: wait for it, as a user would.
        playwright_sync.expect(page.locator("#save-draft")).to_be_enabled(timeout=TIMEOUT_MS)
    page.wait_for_selector("#history li[data-version='1']")
    for control in EDIT_CONTROLS:
        if control != "#create" and control != "#discard-draft":
            assert page.locator(f"{control}:visible").count() == (1 if edits else 0), control
    assert (page.locator(".remove-param:visible").count() == 2) is edits
    assert page.locator(f"{IMPORT_CONTROL}:visible").count() == (1 if imports else 0)
    assert page.is_editable("#f-body") is edits


# --------------------------------------------------------------------------- export / import


def test_export_then_import_into_a_clean_deployment(
    browser: Any, deployments: Deployments, api: Api, tmp_path: Path
):
    ours = unique("exp")
    create(api, {**SEED_MAIL, "name": ours})
    create(api, {**SEED_SMS, "name": ours, "language": "de"})

    exported = tmp_path / "export.json"
    with open_console(browser, deployments.main) as source:
        source.sign_in(TOKEN)
        with source.page.expect_download() as download:
            source.page.click("#export")
        download.value.save_as(exported)
    document = json.loads(exported.read_text())
    assert document["format"] == "faust-otp.templates" and document["formatVersion"] == 1
    names = {(t["name"], t["language"]) for t in document["templates"]}
    assert {(ours, "en"), (ours, "de")} <= names

    # The same document with one template broken: the dry run names it and nothing applies.
    broken = tmp_path / "broken.json"
    templates = [dict(t) for t in document["templates"]]
    templates[0]["params"] = [*templates[0]["params"], {"key": "nowhere", "mandatory": True}]
    broken.write_text(json.dumps({**document, "templates": templates}))

    clean_api = Api(deployments.clean.url)
    assert call(clean_api, "GET", "/api/template")[1]["count"] == 0
    with open_console(browser, deployments.clean) as target:
        target.sign_in(TOKEN)
        page = target.page
        assert page.locator(".template-item").count() == 0

        def choose(path: Path) -> None:
            with page.expect_file_chooser() as chooser:
                page.click("label[for='import-file']")
            chooser.value.set_files(str(path))

        choose(broken)
        page.wait_for_selector("#import-summary:has-text('1 refused')")
        refused = page.locator("#import-results tr.action-refused")
        assert refused.count() == 1 and "nowhere" in refused.text_content()
        playwright_sync.expect(page.locator("#import-apply")).to_be_disabled(timeout=TIMEOUT_MS)
        page.click("#import-cancel")

        choose(exported)
        page.wait_for_selector(f"#import-summary:has-text('Dry run: {len(names)} create')")
        assert "0 refused" in page.text_content("#import-summary")
        # A dry run changes nothing.
        assert call(clean_api, "GET", "/api/template")[1]["count"] == 0
        page.click("#import-apply")
        page.wait_for_selector("#import-summary:has-text('Imported')")
        page.wait_for_function(
            "n => document.querySelectorAll('.template-item').length === n", arg=len(names)
        )
        assert target.violations() == []

    status, listed = call(clean_api, "GET", "/api/template")
    assert {(t["name"], t["language"]) for t in listed["items"]} == names
    for template in document["templates"]:
        path = f"/api/template/{template['name']}?language={template['language']}"
        status, stored = call(clean_api, "GET", path)
        assert status == 200, stored
        assert {k: stored.get(k) for k in template} == template
