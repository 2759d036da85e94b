"""The live page at `/`, in a real browser (headless Chromium through Selenium) against a real server: what a
person sees when they submit a photo, open a job's link, give the token, or the server restarts meanwhile.

Where Chromium or its driver is missing the tests skip, except under CI=true, where .ci/run installs them.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Iterator

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")

if not (CHROMIUM and DRIVER):
    if IN_CI:
        pytest.fail("Chromium or chromedriver is missing, and CI=true: .ci/run should have installed them",
                    pytrace=False)
    pytest.skip("needs Chromium and chromedriver (apt-get install chromium chromium-driver)", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from servers import wait_for  # noqa: E402


@pytest.fixture()
def browser() -> Iterator[webdriver.Chrome]:
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    try:
        yield driver
        scripts = [e["message"] for e in driver.get_log("browser") if e.get("source") == "javascript"]
        assert not scripts, f"JavaScript errors on the page: {scripts}"
    finally:
        driver.quit()


def text(driver: webdriver.Chrome, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def submit_from_the_page(driver: webdriver.Chrome, photo: Path, iterations: int) -> None:
    driver.find_element(By.NAME, "image").send_keys(str(photo))
    driver.find_element(By.NAME, "strokes").clear()
    driver.find_element(By.NAME, "strokes").send_keys("4")
    driver.find_element(By.NAME, "iterations").send_keys(str(iterations))
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


@pytest.fixture()
def photo(tmp_path: Path, server_photo_png: bytes) -> Path:
    path = tmp_path / "photo.png"
    path.write_bytes(server_photo_png)
    return path


def test_a_photo_sketched_from_the_page_and_its_link(server_factory, browser, photo: Path) -> None:
    """Submit, watch it to the end, Download offered; the address names the job, and opening that address
    in another tab shows it; a link to a job the server does not have says so, in the job's panel."""
    server = server_factory()
    browser.get(server.url + "/")
    wait_for(lambda: "queued" in text(browser, "health"), "the server's health")
    submit_from_the_page(browser, photo, 2)
    wait_for(lambda: text(browser, "info").startswith("succeeded"), "the job succeeded")
    assert browser.find_element(By.ID, "download").is_displayed()
    job = browser.execute_script("return location.hash").removeprefix("#job=")
    assert text(browser, "title") == f"Job {job}" and browser.find_elements(By.CSS_SELECTOR, "#canvas img")
    browser.get(server.url + "/#job=" + job)
    wait_for(lambda: text(browser, "info").startswith("succeeded"), "the linked job")
    browser.execute_script("location.hash = '#token=unused-token-0123456789'")  # a token leaves the job shown
    wait_for(lambda: browser.execute_script("return location.hash") == "#job=" + job, "the job's address again")
    browser.execute_script("location.hash = '#job=no-such-job'")  # a link followed on the open page
    wait_for(lambda: text(browser, "problem") == "The server has no job no-such-job.", "that the job is unknown")
    assert text(browser, "info") == "" and text(browser, "message") == ""


def test_the_page_follows_its_job_across_a_server_restart(server_factory, browser, photo: Path, tmp_path: Path) -> None:
    """The server stops while the page shows a running job (which is queued again) and comes back on the
    same port: the page says it is trying again, then shows the job as it ends after the restart. It stayed
    on "queued" with a red 'Failed to fetch' before."""
    first = server_factory(tmp_path / "data")
    browser.get(first.url + "/")
    wait_for(lambda: "queued" in text(browser, "health"), "the server's health")
    submit_from_the_page(browser, photo, 10000)
    wait_for(lambda: text(browser, "info").startswith("running"), "the job running")
    assert first.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    wait_for(lambda: "trying again" in text(browser, "problem"), "that it is trying again")
    job = browser.execute_script("return location.hash").removeprefix("#job=")
    second = server_factory(tmp_path / "data", port=first.port)
    # (The page may still show "running" from before the stop, where the stream ended before the job was
    # queued again: what counts is that it hears from the job again, which clears the problem line.)
    wait_for(lambda: not text(browser, "problem") and text(browser, "info").startswith(("queued", "running")),
          "the job followed again after the restart")
    with second.client() as client:
        assert client.delete(f"/jobs/{job}").status_code in (200, 202)  # queued: at once; running: at its next step
    wait_for(lambda: text(browser, "info").startswith("cancelled"), "the job's end")


def test_the_token_in_the_address(server_factory, browser) -> None:
    """A wrong token says how to give the right one; the right one given on the open page is taken at once,
    kept out of the address, and a stray % in it does not break the page."""
    server = server_factory(token="right-token-0123456789")
    browser.get(server.url + "/#token=wrong%zz-token")
    wait_for(lambda: text(browser, "health") == "wrong or missing token: open this page as /#token=YOUR_TOKEN",
          "the token's problem")
    browser.execute_script("location.hash = '#token=right-token-0123456789'")
    wait_for(lambda: "queued" in text(browser, "health"), "the server's health with the right token")
    assert "token" not in browser.current_url
