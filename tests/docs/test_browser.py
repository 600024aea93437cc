"""The built site in a real browser: Chromium (Debian's chromium and chromium-driver) driven by Selenium.

The site is served on 127.0.0.1 by ``http.server`` in a thread; the test opens the home page, a
tutorial and the config reference, and searches ``clip_range`` with the site's own search page.
Screenshots go to ``docs/_build/browser/`` and their paths are printed at the end of the run.

Chromium is started so that it makes no connection of its own (no sync, component updates, QUIC or
background networking), with a fresh profile: the test machine's network refuses them. Without
chromium, chromedriver or selenium the test skips, unless ``CI`` is set: then it fails.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.docs.conftest import SCREENSHOTS, DocsBuild, need

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1400"]
WAIT = 30


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (the base class's name)
        pass


@pytest.fixture(scope="module")
def site(docs_build: DocsBuild) -> Iterator[str]:
    """The built site's base URL on an ephemeral port of 127.0.0.1."""
    if docs_build.returncode != 0:
        pytest.fail("the docs build failed (see test_build.py)", pytrace=False)
    handler = functools.partial(QuietHandler, directory=str(docs_build.html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        need("selenium", "pip install -e '.[docs]'")
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not binary.exists() and not shutil.which(binary.name):
            need(str(binary), "apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium"))
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    # The driver is Debian's, named outright: Selenium must never fetch one.
    service = Service(executable_path=str(CHROMEDRIVER if CHROMEDRIVER.exists() else shutil.which("chromedriver")))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver: Any, url: str) -> str:
    """Load ``url``, check that it is a real page, and return its visible text."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    body = driver.find_element(By.TAG_NAME, "body").text
    assert "404" not in driver.title and "Error code: 404" not in body, f"{url}: not found"
    assert "ppokit" in driver.title, f"{url}: the title {driver.title!r} does not name ppokit"
    return body


def screenshot(driver: Any, name: str, record_property: Any) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 1000, f"{path}: the screenshot is empty"
    record_property("screenshot", str(path))
    print(f"screenshot: {path}")
    return path


def heading(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, "article h1").text


def test_the_home_page_renders(browser: Any, site: str, record_property: Any) -> None:
    body = open_page(browser, f"{site}/index.html")
    assert heading(browser).startswith("ppokit")
    assert "Proximal Policy Optimization" in body
    for section in ("Getting started", "Tutorials", "How-to guides", "Concepts", "Reference"):
        assert section in body, f"the home page's navigation lacks {section!r}"
    screenshot(browser, "home.png", record_property)


def test_a_tutorial_page_renders(browser: Any, site: str) -> None:
    body = open_page(browser, f"{site}/tutorials/own-env.html")
    title = heading(browser)
    assert title and title in browser.title
    assert "env" in body.lower()


def test_the_config_reference_renders(browser: Any, site: str) -> None:
    from selenium.webdriver.common.by import By

    body = open_page(browser, f"{site}/reference/config.html")
    assert heading(browser).startswith("Configuration")
    field = browser.find_element(By.ID, "config-ControlConfig.clip_range")
    assert "clip_range" in field.text and "float" in field.text
    assert "RLHFConfig" in body and "kl_coef" in body


def test_searching_clip_range_finds_the_config_reference(browser: Any, site: str, record_property: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, f"{site}/search.html?q=clip_range")
    link = (By.CSS_SELECTOR, "#search-results a[href*='reference/config']")
    try:
        WebDriverWait(browser, WAIT).until(expected_conditions.presence_of_element_located(link))
    finally:
        screenshot(browser, "search-clip_range.png", record_property)
    results = browser.find_element(By.ID, "search-results").text
    assert "clip_range" in results or "Configuration" in results
