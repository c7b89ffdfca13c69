"""The web view in a real browser (Debian's headless Chromium) during a paced replay."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.broker import free_port
from tests.conftest import ROOT


def require_chromium() -> tuple[str, str]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver must be installed in CI (.ci/run does)")
        pytest.skip("Chromium not installed here (apt-get install chromium chromium-driver)")
    return browser, driver


def _wait_for_port(port: int, process: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port}")


@pytest.mark.slow
def test_the_page_fills_its_turn_list_during_a_replay(tmp_path: Path) -> None:
    browser, driver_path = require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    config = tmp_path / "names.yaml"
    config.write_text("perception:\n  names: {P1: Alice, P2: Ben, P3: Clara}\n")
    replay = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "replay", str(ROOT / "examples" / "demo.mp4"),
         "--realtime", "--web", f"127.0.0.1:{port}", "--config", str(config), "--json"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    page = None
    try:
        _wait_for_port(port, replay)
        page = webdriver.Chrome(options=options, service=Service(driver_path))
        page.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(page, 90).until(
            lambda p: len(p.find_elements(By.CSS_SELECTOR, "#turns li .pred")) >= 3)
        turns = page.find_elements(By.CSS_SELECTOR, "#turns li")
        assert "Alice (P1): Ben, did you finish the map" in turns[0].text
        assert "addressee" in turns[0].find_element(By.CSS_SELECTOR, ".pred").text
        assert page.find_element(By.ID, "status").text == "live"
        assert len(page.find_elements(By.CSS_SELECTOR, "#timeline div")) == len(turns)
        # The picture arrived: the canvas took the video's size (640x480).
        assert page.execute_script("return document.getElementById('picture').height") == 480
        assert page.find_elements(By.CSS_SELECTOR, "#metrics tr"), "the stages table"
        shot = tmp_path / "web.png"
        assert page.save_screenshot(str(shot)) and shot.stat().st_size > 20_000
        if target := os.environ.get("SOCIALSTREAM_SCREENSHOT"):
            # How the picture in README.md and docs/operations.md is made.
            shutil.copy(shot, target)
    finally:
        if page is not None:
            page.quit()
        replay.send_signal(signal.SIGINT)
        replay.wait(60)
