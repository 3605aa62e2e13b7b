"""The unsubscribe page in a real browser: Debian's headless Chromium through selenium.

Loading the page (as a person following the link does) records nothing; pressing its one button
does, and shows the result page.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.web import LIST, RECIPIENT, running_web, token, unsubscribed

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None or shutil.which(CHROMEDRIVER) is None,
    reason="needs Debian's chromium and chromium-driver",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=800,600"):
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_then_the_button(tmp_path: Path, browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    with running_web(_directory(tmp_path)) as web:
        url = f"{web.base_url}/u/{token()}"
        browser.get(url)
        assert browser.title == f"Unsubscribe from {LIST}"
        assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
        text = browser.find_element(By.TAG_NAME, "main").text
        assert LIST in text and "b***@example.net" in text and RECIPIENT not in browser.page_source
        shot = tmp_path / "unsubscribe-page.png"
        assert browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
        assert unsubscribed(_directory(tmp_path)) == []  # loading the page changed nothing

        button = browser.find_element(By.CSS_SELECTOR, "form[method=post] button")
        assert button.text == "Unsubscribe"
        button.click()
        WebDriverWait(browser, 10).until(expected_conditions.title_is("Unsubscribed"))
        assert browser.current_url == url  # the answer of the POST itself: no redirect
        assert "will get no more mail" in browser.find_element(By.TAG_NAME, "main").text
        browser.save_screenshot(str(tmp_path / "unsubscribed.png"))

    [entry] = unsubscribed(_directory(tmp_path))
    assert (entry.scope, entry.address, entry.reason) == (f"list:{LIST}", RECIPIENT, "unsubscribe")
    assert [event["source"] for event in web.events("unsubscribed")] == ["page"]


def _directory(tmp_path: Path) -> Path:
    directory = tmp_path / "web"
    directory.mkdir(exist_ok=True)
    return directory
