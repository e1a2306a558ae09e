"""The agents' search page in a real headless Chromium, driven through chromedriver's W3C WebDriver API.

No selenium: the WebDriver protocol is a handful of JSON calls, made with httpx. One server per
index and one browser per module (they are slow to start). Screenshots go to $BERTDEX_SCREENSHOTS
when set (`BERTDEX_SCREENSHOTS=docs/screenshots` refreshes the README's), else to a tmp folder.
Needs Debian's `chromium` and `chromium-driver` (`make browser` installs them).
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import EXAMPLES
from test_server import running

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                                                   reason="needs Debian's chromium and chromium-driver: run `make browser`")]
KEYS = {"Enter": "\ue007", "ArrowDown": "\ue015", "ArrowUp": "\ue013"}


class Browser:
    """A WebDriver session: open(url), type_into(css, text), click(css), texts(css), screenshot(path)."""

    def __init__(self, driver_url: str):
        self.http = httpx.Client(base_url=driver_url, timeout=60)
        options = {"binary": CHROMIUM, "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                                "--disable-dev-shm-usage", "--window-size=1100,900", "--lang=ko-KR"]}
        session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": options}}})
        self.session = f"/session/{session['sessionId']}"

    def _call(self, method: str, path: str, body: dict | None = None):
        response = self.http.request(method, path, json=body)
        value = response.json().get("value")
        assert response.status_code == 200, f"WebDriver {method} {path}: {value}"
        return value

    def open(self, url: str) -> None:
        self._call("POST", f"{self.session}/url", {"url": url})

    def find(self, css: str) -> list[str]:
        found = self._call("POST", f"{self.session}/elements", {"using": "css selector", "value": css})
        return [item[ELEMENT] for item in found]

    def type_into(self, css: str, text: str) -> None:
        (element,) = self.find(css)
        self._call("POST", f"{self.session}/element/{element}/clear", {})
        self._call("POST", f"{self.session}/element/{element}/value", {"text": text})

    def select(self, css: str, value: str) -> None:
        self.click(f"{css} option[value='{value}']")

    def click(self, css: str) -> None:
        (element,) = self.find(css)
        self._call("POST", f"{self.session}/element/{element}/click", {})

    def text(self, element: str) -> str:
        return self._call("GET", f"{self.session}/element/{element}/text")

    def attribute(self, element: str, name: str) -> str | None:
        return self._call("GET", f"{self.session}/element/{element}/attribute/{name}")

    def value(self, css: str) -> str:
        (element,) = self.find(css)
        return self._call("GET", f"{self.session}/element/{element}/property/value")

    def wait_for(self, condition, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if result:
                return result
            assert time.monotonic() < deadline, "the page did not show the result in time"
            time.sleep(0.1)

    def run(self, script: str, *args):
        """The value of a JavaScript function body run in the page (a returned promise is awaited)."""
        return self._call("POST", f"{self.session}/execute/sync", {"script": script, "args": list(args)})

    def press(self, *keys: str) -> None:
        """Key presses sent to whatever has focus, as a person types them."""
        actions = []
        for key in keys:
            actions += [{"type": "keyDown", "value": KEYS.get(key, key)}, {"type": "keyUp", "value": KEYS.get(key, key)}]
        self._call("POST", f"{self.session}/actions", {"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})

    def resize(self, width: int, height: int) -> None:
        self._call("POST", f"{self.session}/window/rect", {"width": width, "height": height})

    def allow(self, permission: str) -> None:
        self._call("POST", f"{self.session}/permissions", {"descriptor": {"name": permission}, "state": "granted"})

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self._call("GET", f"{self.session}/screenshot")))
        if os.environ.get("BERTDEX_SCREENSHOTS"):  # for the README: 96 colours, a third of the bytes
            from PIL import Image

            Image.open(path).convert("RGB").quantize(96, dither=Image.Dither.NONE).save(path, optimize=True)
        return path

    def close(self) -> None:
        self.http.delete(self.session)
        self.http.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}", f"--log-path={log}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/status", timeout=2).json()["value"]["ready"]:
                    break
            except httpx.TransportError:
                pass
            assert driver.poll() is None and time.monotonic() < deadline, "chromedriver did not start"
            time.sleep(0.1)
        session = Browser(url)
        yield session
        session.close()
    finally:
        driver.terminate()
        driver.wait(timeout=30)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("BERTDEX_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# an archive entry longer than one window (the matching part comes last) with a long answer
LONG_TEXT = " ".join([
    "Our team reviewed the ticket history for this customer account in detail.",
    "The customer first wrote about a delayed parcel, then about a discount code that did not apply at checkout,",
    "then about the colour of a sweater that looked different from the photo on the product page.",
] * 6 + ["Finally: how can I export all my invoices to a CSV spreadsheet for my accountant?"])
LONG_ANSWER = " ".join(["Open Billing > Invoices, choose the date range, and click Export > CSV."] +
                       ["Each row holds the invoice number, date, amount, tax, currency and payment method."] * 8)


@pytest.fixture(scope="module")
def calibrated(faq_index_master, encoder, tmp_path_factory):
    """The English FAQ plus one long archive entry, calibrated (its cut is stored), served keyless on loopback."""
    from indexer.ingest.build import upsert_entries
    from indexer.ingest.readers import Entry
    from indexer.store.folder import IndexWriter
    from search.quality.calibrate import calibrate_index, read_questions
    from search.server.app import create_app

    folder = tmp_path_factory.mktemp("calibrated") / "index"
    shutil.copytree(faq_index_master, folder, ignore=shutil.ignore_patterns("write.lock"))
    with IndexWriter.open(folder) as writer:
        upsert_entries(writer, encoder, [Entry("long-1", LONG_TEXT, {"answer": LONG_ANSWER, "category": "billing"})])
        writer.commit()
    english = [q for q in read_questions(EXAMPLES / "out_of_scope.txt") if q.isascii()]
    calibration = calibrate_index(folder, out_of_scope=english, in_scope=read_questions(EXAMPLES / "questions_en.txt"),
                                  encoder=encoder)
    assert calibration.stored and 0.2 < calibration.min_score < 0.6
    with running(create_app(folder, encoder=encoder)) as http:
        yield http, folder, calibration


def ask(browser: Browser, question: str, *, mode: str = "", min_score: str | None = None) -> list[str]:
    """Type a question into the page, submit it, and wait for hits or a 'no good answer'."""
    browser.run("document.getElementById('results').replaceChildren(); document.getElementById('status').className = ''")
    browser.type_into("#question", question)
    browser.select("#mode", mode)
    if min_score is not None:
        browser.type_into("#min-score", min_score)
    browser.click("#ask")
    return browser.wait_for(lambda: browser.find("#results li.hit") or browser.find("#status.no-answer"))


def open_page(browser: Browser, http, expect: str) -> None:
    browser.open(str(http.base_url))
    browser.wait_for(lambda: expect in browser.text(browser.find("#index-info")[0]))


def test_a_calibrated_index_searches_and_clearing_the_box_removes_the_cut(browser, calibrated, screenshots):
    http, folder, calibration = calibrated
    open_page(browser, http, "entries")
    browser.wait_for(lambda: browser.value("#min-score"))  # the page filled in the calibrated cut
    assert browser.run("return document.getElementById('min-score').checkValidity()") is True
    hits = ask(browser, "I can't remember my password")
    assert browser.value("#min-score") == str(round(calibration.min_score, 3))
    browser.screenshot(screenshots / "search-page-en.png")
    assert browser.attribute(hits[0], "data-key") in {"en-001", "en-005", "en-006"}
    badge = browser.find("#results li.hit .score")[0]
    assert browser.text(badge) == f"Good match · {float(browser.attribute(badge, 'data-score')):.3f}"  # the score beside the band
    assert f"calibrated cut {calibration.min_score:.4f}" in browser.attribute(badge, "title")

    ask(browser, "What is the capital of Australia?")  # out of scope: below the calibrated cut
    assert browser.text(browser.find("#status")[0]).startswith("No good answer")
    assert browser.find("#results li") == [] and browser.attribute(browser.find("#closest")[0], "open") is None
    browser.click("#closest > summary")
    browser.screenshot(screenshots / "search-page-no-answer.png")
    (miss,) = browser.find("#closest-list li.hit.miss")
    assert browser.text(browser.find("#closest-list .score")[0]).startswith("Below the cut · 0.")
    assert "This one was right" in browser.text(miss)

    hits = ask(browser, "What is the capital of Australia?", min_score="")  # cleared: no cut at all
    assert len(hits) == 5 and browser.find("#status.no-answer") == []
    hits = ask(browser, "I can't remember my password", min_score="0.99")
    assert browser.find("#status.no-answer")


def test_long_answers_fold_and_the_matching_window_and_words_are_marked(browser, calibrated, screenshots):
    http, _, _ = calibrated
    open_page(browser, http, "calibrated cut")
    hits = ask(browser, "How can I export my invoices to a CSV file?", min_score="")
    assert browser.attribute(hits[0], "data-key") == "long-1"
    (answer,) = browser.find("#results li.hit:first-child .answer")
    assert "collapsed" in browser.attribute(answer, "class")
    folded = browser.run("return document.querySelector('#results .answer').clientHeight")
    (shown,) = browser.find("#results li.hit:first-child .excerpt > .matched:not([hidden])")
    (window,) = browser.find("#results li.hit:first-child .excerpt > .matched:not([hidden]) .window")
    assert "invoices to a CSV spreadsheet" in browser.text(window)
    assert browser.text(shown).startswith("… ") and len(browser.text(shown)) < len(LONG_TEXT) / 2  # the window, in context
    words = {browser.text(mark).lower() for mark in browser.find("#results li.hit:first-child mark.word")}
    assert {"export", "invoices", "csv"} <= words and "how" not in words
    browser.screenshot(screenshots / "search-page-long-answer.png")
    browser.click("#results li.hit:first-child .answer-block button.more")
    assert "collapsed" not in browser.attribute(answer, "class")
    assert browser.run("return document.querySelector('#results .answer').clientHeight") > folded + 40
    browser.click("#results li.hit:first-child .excerpt button.more")
    assert browser.text(browser.find("#results li.hit:first-child .excerpt")[0]).startswith("Our team reviewed")

    hits = ask(browser, "I can't remember my password")
    (variants,) = browser.find("#results li.hit:first-child details.variants")
    browser.click("#results li.hit:first-child details.variants summary")
    assert "Also asked as (2)" in browser.text(variants)
    assert "I forgot my password, how do I reset it?" in browser.text(variants) or \
           "How do I get a password reset link sent to me?" in browser.text(variants)


def test_filters_come_from_the_stored_fields(browser, calibrated):
    http, _, _ = calibrated
    open_page(browser, http, "calibrated cut")
    browser.wait_for(lambda: browser.find("#filter-category"))
    options = [browser.text(o) for o in browser.find("#filter-category option")]
    assert options[0] == "any" and {"account", "billing", "shipping"} <= set(options)
    browser.select("#filter-category", "billing")
    hits = ask(browser, "I can't remember my password", min_score="")
    categories = browser.run("return Array.from(document.querySelectorAll('#results li.hit')).map("
                             "li => li.querySelector('dl.fields').innerText)")
    assert len(hits) == 5 and all("category\nbilling" in text or "category\tbilling" in text for text in categories)
    # the page says the answers are filtered, and the set filter stands out
    assert browser.text(browser.find("#status")[0]).endswith("Filter on: category = billing.")
    assert "active" in browser.attribute(browser.find("#filters label")[0], "class")
    browser.select("#filter-category", "")
    assert "active" not in (browser.attribute(browser.find("#filters label")[0], "class") or "")


def test_keyboard_copy_and_feedback(browser, calibrated, screenshots):
    from indexer.store.feedback import FeedbackStore

    http, folder, _ = calibrated
    open_page(browser, http, "calibrated cut")
    browser.allow("clipboard-read")
    browser.allow("clipboard-write")
    browser.type_into("#question", "my parcel has not arrived, where is it")
    browser.press("Enter")
    browser.wait_for(lambda: browser.find("#results li.hit"))
    browser.press("ArrowDown")
    first = browser.run("return document.activeElement.dataset.key")
    browser.press("ArrowDown")
    second = browser.run("return document.activeElement.dataset.key")
    assert first == browser.attribute(browser.find("#results li.hit")[0], "data-key") and second != first
    browser.press("c")
    browser.wait_for(lambda: "copied" in browser.text(browser.find("#status")[0]))
    copied = browser.run("return navigator.clipboard.readText()")
    answer = http.get(f"/documents/{second}").json()["fields"]["answer"]
    assert copied == answer
    browser.press("ArrowUp", "ArrowUp")
    assert browser.run("return document.activeElement.id") == "question"

    browser.click("#results li.hit:nth-child(2) button.verdict-right")
    browser.wait_for(lambda: browser.find("#results li.hit:nth-child(2) button.verdict-right.sent"))
    browser.click("#results li.hit:first-child button.verdict-down")
    browser.wait_for(lambda: browser.find("#results li.hit:first-child button.verdict-down.sent"))
    browser.screenshot(screenshots / "search-page-feedback.png")
    store = FeedbackStore(folder, readonly=True)
    try:
        verdicts = store.verdicts()
        logged = store.logged()
    finally:
        store.close()
    assert [(v.key, v.verdict, v.rank) for v in verdicts[-2:]] == [(second, "right", 2), (first, "down", 1)]
    assert verdicts[-1].question == "my parcel has not arrived, where is it"
    assert verdicts[-1].query_id == logged[-1].id and logged[-1].hits[0][0] == first


def test_the_page_is_readable_on_a_phone(browser, calibrated, screenshots):
    http, _, _ = calibrated
    browser.resize(390, 844)
    try:
        open_page(browser, http, "calibrated cut")
        ask(browser, "How can I export my invoices to a CSV file?", min_score="")
        browser.screenshot(screenshots / "search-page-phone.png")
        width = browser.run("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"the page scrolls sideways on a phone: {width}"
        box = browser.run("const r = document.querySelector('#results li.hit').getBoundingClientRect(); return [r.left, r.right]")
        assert box[0] >= 0 and box[1] <= width[1]
    finally:
        browser.resize(1100, 900)


def test_the_page_works_in_korean(browser, resolved, encoder, tmp_path, screenshots):
    from indexer.ingest.build import upsert_entries
    from indexer.ingest.readers import Entry, Fields, read_entries
    from indexer.store.folder import IndexWriter, Manifest
    from search.server.app import create_app

    folder = tmp_path / "ko"
    settings = {"text_fields": ["question"], "id_field": "id", "group_field": "group", "window": True,
                "stride": resolved.recipe.max_length // 8, "format": None}
    entries = [e for e in read_entries(EXAMPLES / "faq_ko.csv", Fields(("question",), "id", "group"))
               if isinstance(e, Entry)]
    with IndexWriter.open(folder, new=Manifest(recipe=resolved.recipe, settings=settings)) as writer:
        upsert_entries(writer, encoder, entries)
        writer.commit()
    with running(create_app(folder, encoder=encoder)) as http:
        open_page(browser, http, "entries")
        assert browser.value("#min-score") == ""
        hits = ask(browser, "비밀번호를 잊어버렸는데 어떻게 찾나요", mode="hybrid")
        browser.screenshot(screenshots / "search-page-ko.png")
        assert browser.attribute(hits[0], "data-key") == "ko-001"
        top = browser.text(hits[0])
        assert "비밀번호를 잊어버렸어요" in top and "로그인 화면에서 '비밀번호 찾기'를 누르고" in top
        marks = [browser.text(m) for m in browser.find("#results li.hit:first-child .matched mark.word")]
        assert "비밀번호" in "".join(marks)
        assert browser.text(browser.find("#results li.hit .score")[0]).startswith("score ")


HOSTILE_TEXT = ("How do I embed <script>window.pwned = 'text'</script> code? "
                "<img src=x onerror=\"window.pwned = 'img'\"> <b>bold</b> <a href=\"javascript:window.pwned='link'\">here</a>")
HOSTILE_FIELDS = {"answer": "<script>window.pwned = 'field'</script><iframe src=\"javascript:window.pwned='frame'\"></iframe>",
                  "link": "javascript:window.pwned = 'href'", "category": "<svg onload=\"window.pwned='svg'\">"}


def test_stored_html_and_scripts_render_as_text(browser, faq_index_master, encoder, tmp_path):
    """Entries are data: <script>, on* attributes, javascript: links and tags in texts, fields and the
    group show as the characters they are, and nothing of them runs."""
    from indexer.ingest.build import upsert_entries
    from indexer.ingest.readers import Entry
    from indexer.store.folder import IndexWriter
    from search.server.app import create_app

    folder = tmp_path / "index"
    shutil.copytree(faq_index_master, folder, ignore=shutil.ignore_patterns("write.lock"))
    with IndexWriter.open(folder) as writer:
        upsert_entries(writer, encoder, [Entry("<i>hostile</i>", HOSTILE_TEXT, HOSTILE_FIELDS, "<u>group</u>")])
        writer.commit()
    with running(create_app(folder, encoder=encoder)) as http:
        open_page(browser, http, "51 entries")  # the page shows the entry count once it has the index's info
        browser.run("window.pwned = undefined")
        ask(browser, "How do I embed script code?", min_score="")
        first = browser.find("#results li.hit")[0]
        shown = browser.text(first)
        assert "<script>window.pwned = 'text'</script>" in shown and "<b>bold</b>" in shown
        # the filter list is built from the stored fields too
        made = browser.run("""
            const hits = document.getElementById('results');
            return {pwned: window.pwned === undefined ? null : window.pwned,
                    tags: Array.from(document.querySelectorAll('#results script, #results img, #results b, #results iframe, '
                                                              + '#results svg, #results u, #results i, select option script'))
                               .map(e => e.tagName),
                    links: Array.from(document.querySelectorAll('a[href^="javascript:" i]')).map(a => a.outerHTML)};""")
        time.sleep(0.5)  # an onerror or onload would have fired by now
        assert browser.run("return window.pwned === undefined ? null : window.pwned") is None
        assert made == {"pwned": None, "tags": [], "links": []}, made
