"""The agents' search page in a real headless Chromium, driven through chromedriver's W3C WebDriver API.

No selenium: the WebDriver protocol is a handful of JSON calls, made with httpx. Screenshots go to
$BERTDEX_SCREENSHOTS when set, else to the test's tmp folder. Needs Debian's `chromium` and
`chromium-driver` (`make browser` installs them).
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

pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                                reason="needs Debian's chromium and chromium-driver: run `make browser`")


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

    def wait_for(self, condition, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if result:
                return result
            assert time.monotonic() < deadline, "the page did not show the result in time"
            time.sleep(0.1)

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self._call("GET", f"{self.session}/screenshot")))
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


@pytest.fixture
def screenshots(tmp_path) -> Path:
    folder = Path(os.environ.get("BERTDEX_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def ask(browser: Browser, question: str, *, mode: str = "", min_score: str = "") -> list[str]:
    """Type a question into the page, submit it, and wait for hits or a 'no good answer'."""
    browser.type_into("#question", question)
    browser.select("#mode", mode)
    browser.type_into("#min-score", min_score)
    browser.click("#ask")
    return browser.wait_for(lambda: browser.find("#results li.hit") or browser.find("#status.no-answer"))


def test_the_page_shows_the_right_answer_first(browser, faq_index, encoder, screenshots):
    from search.server.app import create_app

    with running(create_app(faq_index, encoder=encoder)) as http:
        browser.open(str(http.base_url))
        browser.wait_for(lambda: "50 entries" in browser.text(browser.find("#index-info")[0]))
        hits = ask(browser, "I can't remember my password")
        shot = browser.screenshot(screenshots / "search-page-en.png")
        keys = [browser.attribute(hit, "data-key") for hit in hits]
        assert keys[0] in {"en-001", "en-005", "en-006"}  # the g-password-reset variants
        top = browser.text(hits[0])
        assert "Forgot password?" in top and "#1" in top and "account" in top
        score = float(browser.text(browser.find("#results li.hit .score")[0]))
        assert 0.8 < score <= 1.0
        assert len(keys) == 5 and len(set(keys)) == 5
        assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        ask(browser, "What is the capital of Australia?", mode="dense", min_score="0.5")
        status = browser.text(browser.find("#status")[0])
        browser.screenshot(screenshots / "search-page-no-answer.png")
        assert status.startswith("No good answer") and browser.find("#results li") == []


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
        browser.open(str(http.base_url))
        hits = ask(browser, "비밀번호를 잊어버렸는데 어떻게 찾나요", mode="hybrid")
        browser.screenshot(screenshots / "search-page-ko.png")
        assert browser.attribute(hits[0], "data-key") == "ko-001"
        top = browser.text(hits[0])
        assert "비밀번호를 잊어버렸어요" in top and "로그인 화면에서 '비밀번호 찾기'를 누르고" in top
