"""The studio in a real browser: Debian's Chromium driven by Playwright against `streamlit run app.py`.

Never downloads a browser; skips when /usr/bin/chromium or Playwright is missing. Screenshots go to
pytest's tmp dir (set MUDSC_SCREENSHOTS=DIR to keep them somewhere to look at).
"""
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import browser_clock
import pytest

from mudsc.zoo.demo import DEMO

try:
    from playwright.sync_api import expect
except ImportError:  # the module-level fixture skips without Playwright
    expect = None

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
    from mudsc.zoo.demo_family import demo_family

    demo_family(root=home / "demo_family")  # where the server's demo_family() looks: cached
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


# Plotly keeps the figure on its graph div: the traces' point counts and the layout's shapes, per chart.
CHARTS_JS = """() => [...document.querySelectorAll('.js-plotly-plot')].map(el => ({
    points: (el._fullData || []).reduce((n, t) => n + Math.max(
        ...['x', 'y', 'z'].map(k => (t[k] && t[k].length) || 0)), 0),
    shapes: JSON.stringify((el.layout || {}).shapes || [])}))"""


def _charts(page) -> list[dict]:
    return page.evaluate(CHARTS_JS)


def _metric(page, label: str) -> str:
    return page.get_by_test_id("stMetric").filter(has_text=label).get_by_test_id("stMetricValue").inner_text()


def _open(page, name: str, ready_text: str) -> None:
    page.get_by_role("link", name=name, exact=True).first.click()
    expect(page.get_by_text(ready_text).first).to_be_visible(timeout=180_000)
    _settled(page)


@contextlib.contextmanager
def _browser(tmp_path):
    """(page, screenshot folder): a fresh Chromium page on the studio's size."""
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("MUDSC_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield browser.new_page(viewport={"width": 1400, "height": 2000}, accept_downloads=True), shots
        browser.close()


def test_demo_through_every_page(app_url, tmp_path):
    timings = {}
    with _browser(tmp_path) as (page, shots):
        page.goto(app_url)
        _settled(page)
        page.get_by_role("button", name="Load the demo parents").click()
        expect(page.get_by_text("Ready:")).to_be_visible(timeout=180_000)
        expect(page.get_by_text("Accuracy per task")).to_be_visible()
        _settled(page)
        page.screenshot(path=str(shots / "parents.png"), full_page=True)

        # Merge: the alpha sweep, then alpha moved: the metric and the sweep's "current" marker change.
        _open(page, "Merge", "Joint accuracy")
        page.get_by_role("button", name="Run alpha sweep").click()
        expect(page.get_by_text("accuracy vs alpha")).to_be_visible(timeout=180_000)
        _settled(page)
        before_joint, before_charts = _metric(page, "Joint accuracy"), _charts(page)
        assert len(before_charts) >= 2 and all(c["points"] > 0 for c in before_charts)
        slider = page.get_by_role("slider", name="alpha: weight share of the similarity")
        assert slider.get_attribute("aria-valuetext") == "0.50"
        slider.focus()
        # the demo's first merge is its partial zip (mudsc.zoo.demo.DEMO["merge"])
        merged_at = f"Merged with mudsc-zip, alpha 0.3, cut {DEMO['merge']['cut']}."
        browser_clock.arm(page, merged_at)
        for _ in range(4):  # 4 steps of 0.05 down
            page.keyboard.press("ArrowLeft")
        timings["alpha_update_s"] = browser_clock.seconds_to_text(page)
        expect(page.get_by_text(merged_at)).to_be_visible()
        _settled(page)
        assert slider.get_attribute("aria-valuetext") == "0.30"
        after_charts = _charts(page)
        assert _metric(page, "Joint accuracy") != before_joint
        assert [c["shapes"] for c in after_charts] != [c["shapes"] for c in before_charts]  # the marker moved
        page.screenshot(path=str(shots / "merge.png"), full_page=True)

        # Similarity: scatter, agreement bars and heatmaps, each holding data; then the UMAP.
        _open(page, "Similarity", "Weight vs activation similarity")
        charts = _charts(page)
        assert len(charts) >= 3 and all(c["points"] > 0 for c in charts)
        page.screenshot(path=str(shots / "similarity.png"), full_page=True)
        page.get_by_role("button", name="Compute the UMAP").click()
        page.wait_for_function("n => document.querySelectorAll('.js-plotly-plot').length > n", arg=len(charts),
                               timeout=180_000)
        _settled(page)
        page.screenshot(path=str(shots / "similarity_umap.png"), full_page=True)

        _open(page, "Alignment", "Merges within one parent vs across parents")
        charts = _charts(page)
        assert len(charts) >= 2 and all(c["points"] > 0 for c in charts)
        page.screenshot(path=str(shots / "alignment.png"), full_page=True)

        # Landscape: the demo's partial zip has no point on a plane; the page offers the full merge, then
        # a small exact-BN plane through the primed parents, the merge and the permute merge.
        _open(page, "Landscape", "This is a partial merge")
        page.get_by_role("button", name="Use the full merge").click()
        expect(page.get_by_role("button", name="Compute landscape")).to_be_visible(timeout=180_000)
        _settled(page)
        page.get_by_role("button", name="Compute landscape").click()
        expect(page.get_by_text("Overlap threshold")).to_be_visible(timeout=300_000)
        _settled(page)
        charts = _charts(page)
        assert len(charts) == 1 and charts[0]["points"] > 0
        page.screenshot(path=str(shots / "landscape.png"), full_page=True)

        # Export: the manifest and the zip of checkpoint + manifest download.
        _open(page, "Export", "Reproduce from the command line")
        with page.expect_download() as download:
            page.get_by_role("button", name="manifest.json").click()
        manifest = json.loads(Path(download.value.path()).read_text())
        assert manifest["config"]["alpha"] == 0.3 and manifest["config"]["method"] == "mudsc-zip"
        with page.expect_download() as download:
            page.get_by_role("button", name="both as merge.zip").click()
        with zipfile.ZipFile(download.value.path()) as z:
            assert sorted(z.namelist()) == ["manifest.json", "model.safetensors"]
        with page.expect_download(timeout=180_000) as download:
            page.get_by_role("button", name="Everything as one zip").click()
        with zipfile.ZipFile(download.value.path()) as z:
            names = set(z.namelist())
            assert {"merge/model.safetensors", "merge/manifest.json", "merge/reproduce.sh", "tables/metrics.csv",
                    "tables/metrics.tex", "tables/alpha_sweep.csv", "figures/plotly.min.js",
                    "figures/loss_landscape.html", "figures/loss_landscape.pdf", "figures/alpha_sweep.png"} <= names
            assert b"mudsc merge --manifest manifest.json" in z.read("merge/reproduce.sh")
        page.screenshot(path=str(shots / "export.png"), full_page=True)
    (shots / "timings.json").write_text(json.dumps(timings))


def test_same_init_flow(app_url, tmp_path):
    """Demo family -> Same-init page (statistics, λ moved, sweep, CG residual, task-vector landscape) ->
    Export zip with the task checkpoints and the manifest; the λ change's latency to the updated page."""
    timings = {}
    with _browser(tmp_path) as (page, shots):
        page.goto(app_url)
        _settled(page)
        page.get_by_role("tab", name="Same-init family").click()
        page.get_by_role("button", name="Load the demo family").click()
        expect(page.get_by_text("Same-init family: base")).to_be_visible(timeout=180_000)
        _settled(page)
        page.get_by_role("tab", name="Same-init family").click()
        page.screenshot(path=str(shots / "same_init_parents.png"), full_page=True)

        _open(page, "Same-init merge", "Mean task-aware accuracy")
        # the statistics job ends, MaTS merges and draws its CG residual
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 1", timeout=180_000)
        _settled(page)
        slider = page.get_by_role("slider", name="λ: task-vector scale")
        assert slider.get_attribute("aria-valuetext") == "0.3"
        latencies = []
        for value in ("0.35", "0.4", "0.45"):
            slider.focus()
            browser_clock.arm(page, f"task-arithmetic (λ {value})")
            page.keyboard.press("ArrowRight")
            latencies.append(browser_clock.seconds_to_text(page, 60))
            expect(page.get_by_text(f"task-arithmetic (λ {value})").first).to_be_visible()
            _settled(page)
        timings["lambda_update_s"] = latencies
        page.get_by_role("button", name="Run sweep").click()
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 2", timeout=180_000)
        _settled(page)
        page.get_by_role("button", name="Compute task-vector landscape").click()
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 3", timeout=300_000)
        _settled(page)
        charts = _charts(page)
        assert len(charts) == 3 and all(c["points"] > 0 for c in charts)
        page.screenshot(path=str(shots / "same_init.png"), full_page=True)

        _open(page, "Export", "Same-init merge")
        with page.expect_download(timeout=180_000) as download:
            page.get_by_role("button", name="Everything as one zip").click()
        with zipfile.ZipFile(download.value.path()) as z:
            names = set(z.namelist())
            assert {"same-init/manifest.json", "same-init/task0.safetensors", "same-init/task2.safetensors",
                    "same-init/reproduce.sh", "tables/same-init_metrics.csv", "figures/cg_residual.html",
                    "figures/task_vector_landscape.html"} <= names, sorted(names)
            assert b"mudsc merge-same --manifest manifest.json" in z.read("same-init/reproduce.sh")
        page.screenshot(path=str(shots / "same_init_export.png"), full_page=True)
    (shots / "timings_same_init.json").write_text(json.dumps(timings))
    print("same-init timings", timings)
