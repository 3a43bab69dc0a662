"""The studio in a real browser: Debian's Chromium driven by Playwright against `streamlit run app.py`.

Never downloads a browser; skips when /usr/bin/chromium or Playwright is missing. Screenshots go to
pytest's tmp dir (set MUDSC_SCREENSHOTS=DIR to keep them somewhere to look at).
"""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(demo_parents, tmp_path_factory):
    """A studio server on a free port whose $MUDSC_HOME already holds the trained demo pair."""
    if not CHROMIUM.is_file():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    home = tmp_path_factory.mktemp("studio_home")
    (home / "demo").mkdir()
    for p in demo_parents:  # same file names demo_pair() looks for, so the server skips training
        shutil.copy(p, home / "demo" / Path(p).name)
    port = _free_port()
    log = open(tmp_path_factory.mktemp("server") / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "MUDSC_HOME": str(home), "MUDSC_STATS_IMAGES": "500"})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("streamlit did not become healthy within 60 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def _settled(page, timeout: float = 60_000) -> None:
    """Wait until the script run is over and no skeleton is left."""
    page.wait_for_selector("[data-testid=stApp][data-test-script-state=notRunning]", timeout=timeout)
    page.wait_for_timeout(300)


def test_demo_merge_and_alpha(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("MUDSC_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2000})
        page.goto(app_url)
        _settled(page)
        page.get_by_role("button", name="Load the demo parents").click()
        expect(page.get_by_text("Ready:")).to_be_visible(timeout=180_000)
        expect(page.get_by_text("Accuracy per task")).to_be_visible()
        _settled(page)
        page.screenshot(path=str(shots / "parents.png"), full_page=True)

        page.get_by_role("link", name="Merge", exact=True).first.click()
        expect(page.get_by_text("Joint accuracy")).to_be_visible(timeout=180_000)
        _settled(page)
        slider = page.get_by_role("slider", name="alpha: weight share of the similarity")
        assert slider.get_attribute("aria-valuetext") == "0.50"
        slider.focus()
        for _ in range(4):  # 4 steps of 0.05 down
            page.keyboard.press("ArrowLeft")
        expect(page.get_by_text("Merged with mudsc-zip, alpha 0.3, cut full.")).to_be_visible(timeout=180_000)
        _settled(page)
        assert slider.get_attribute("aria-valuetext") == "0.30"
        expect(page.get_by_test_id("stPlotlyChart").first).to_be_visible()
        page.screenshot(path=str(shots / "merge.png"), full_page=True)

        page.get_by_role("link", name="Export", exact=True).first.click()
        expect(page.get_by_text("Reproduce from the command line")).to_be_visible(timeout=180_000)
        _settled(page)
        with page.expect_download() as download:
            page.get_by_role("button", name="manifest.json").click()
        assert b'"manifest_version"' in Path(download.value.path()).read_bytes()
        page.screenshot(path=str(shots / "export.png"), full_page=True)
        browser.close()
