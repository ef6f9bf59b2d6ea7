"""The page at / in a real headless browser (Debian's chromium and its driver): it uploads a clip through the
public API and shows the top match, with the decision and the passage in both recordings; in segments mode it
draws the spans. Off with COVERID_DEMO_PAGE=false."""

from __future__ import annotations

import shutil

import httpx
import pytest

from tests.app.conftest import running_service
from tests.app.test_segments import EXAMPLES, ORDER, SHIPPED_MODEL, set_list

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
KEY = "page-key"


@pytest.fixture(params=["sqlite"])
def service(request, tmp_path):
    yield from running_service(request, tmp_path, SHIPPED_MODEL, {"COVERID_API_KEYS": f'["{KEY}"]',
                                                                   "COVERID_IDENTIFY_REQUIRES_KEY": "true"})


@pytest.fixture
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.fail("chromium and chromedriver are missing: `make test` installs them (docker/system-packages.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)  # the Debian driver: nothing downloaded
    yield driver
    driver.quit()


def test_the_page_uploads_a_clip_and_shows_the_top_match_and_the_spans(service, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    with httpx.Client(base_url=service.url, timeout=120, headers={"Authorization": f"Bearer {KEY}"}) as client:
        for name in ORDER:
            data = (EXAMPLES / "originals" / f"{name}.ogg").read_bytes()
            added = client.post("/catalog", files={"file": ("o.ogg", data)},
                                data={"track_id": name, "title": f"Title of {name}", "artist": "Example Band"})
            assert added.status_code == 201, added.text

    browser.get(service.url + "/")
    wait = WebDriverWait(browser, 120)
    clip = EXAMPLES / "clips" / "song-3-cover-20s-from-12s.ogg"
    browser.find_element(By.ID, "file").send_keys(str(clip))  # without the key: the page shows the service's 401
    wait.until(seen.text_to_be_present_in_element((By.ID, "status"), "401"))

    browser.find_element(By.ID, "key").send_keys(KEY)
    browser.find_element(By.ID, "file").clear()
    browser.find_element(By.ID, "file").send_keys(str(clip))
    first = wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, "#matches tbody tr")))
    assert first.get_attribute("data-track-id") == "song-3"
    assert first.find_element(By.CLASS_NAME, "title").text == "Title of song-3"
    cells = [c.text for c in first.find_elements(By.TAG_NAME, "td")]
    assert cells[2] == "Example Band" and cells[3] in ("yes", "no") and 0.0 <= float(cells[4]) <= 1.0
    assert "clip 0:" in cells[6] and "track " in cells[6]  # the passage in both recordings
    screenshot = tmp_path / "page.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.read_bytes()[:4] == b"\x89PNG"

    browser.find_element(By.CSS_SELECTOR, "input[name=mode][value=segments]").click()
    upload, _ = set_list(tmp_path)
    browser.find_element(By.ID, "file").clear()
    browser.find_element(By.ID, "file").send_keys(str(upload))
    wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, "#spans tbody tr")))
    rows = browser.find_elements(By.CSS_SELECTOR, "#spans tbody tr")
    assert [r.get_attribute("data-track-id") for r in rows if r.get_attribute("data-track-id")] == ORDER
    assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline div")) == len(rows)


@pytest.fixture(params=["sqlite"])
def service_without_page(request, tmp_path, narrow_artifact):
    yield from running_service(request, tmp_path, narrow_artifact[0], {"COVERID_DEMO_PAGE": "false"})


def test_the_page_can_be_turned_off(service_without_page):
    assert httpx.get(service_without_page.url + "/").status_code == 404
    assert httpx.get(service_without_page.url + "/healthz").status_code == 200
