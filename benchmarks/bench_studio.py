"""The studio in a browser from an empty cache: time to the merged demo, and how fast alpha updates the page.

Run by hand:  .venv/bin/python benchmarks/bench_studio.py [--repeats 5] [--pace 2]
Starts ``streamlit run app.py`` with an empty ``$MUDSC_HOME`` (so the demo pair is trained), drives
Debian's Chromium through Playwright: load the demo, open Merge, wait for the metrics; then moves the
alpha slider one step at a time and times each step until the page shows the new merge. Prints a
markdown summary; the numbers go to benchmarks/RESULTS.md under "## Studio".
"""
from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import browser_clock  # noqa: E402

from mudsc.zoo.demo import DEMO  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settled(page) -> None:
    page.wait_for_selector("[data-testid=stApp][data-test-script-state=notRunning]", timeout=300_000)


def main() -> None:
    from playwright.sync_api import expect, sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="alpha steps to time")
    ap.add_argument("--pace", type=float, default=0.0,
                    help="seconds to wait after each step settles before the next (0: press at once; a human "
                         "scrubbing alpha steps every second or so, so merges ahead of the slider get time to land)")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as home:
        port = _free_port()
        t_start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.address", "127.0.0.1",
             "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "MUDSC_HOME": home})
        url = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                        break
                except OSError:
                    time.sleep(0.2)
            t_health = time.perf_counter() - t_start
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
                page = browser.new_page(viewport={"width": 1400, "height": 1600})
                page.goto(url)
                _settled(page)
                t_page = time.perf_counter() - t_start
                page.get_by_role("button", name="Load the demo parents").click()
                expect(page.get_by_text("Ready:")).to_be_visible(timeout=300_000)
                t_ready = time.perf_counter() - t_start
                page.get_by_role("link", name="Merge", exact=True).first.click()
                expect(page.get_by_text("Joint accuracy")).to_be_visible(timeout=300_000)
                t_merged = time.perf_counter() - t_start
                _settled(page)
                slider = page.get_by_role("slider", name="alpha: weight share of the similarity")
                steps = []
                cut = DEMO["merge"]["cut"]  # the demo's first merge is its partial zip
                for i in range(args.repeats):
                    alpha = round(0.5 - 0.05 * (i + 1), 2)
                    slider.focus()
                    browser_clock.arm(page, f"Merged with mudsc-zip, alpha {alpha:g}, cut {cut}.")
                    page.keyboard.press("ArrowLeft")
                    steps.append(browser_clock.seconds_to_text(page, 60))
                    _settled(page)
                    time.sleep(args.pace)
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average at start {load:.1f}")
    print(f"alpha steps: {' '.join(f'{s:.2f}' for s in steps)} s, {args.pace:g} s between steps")
    print("| server healthy s | page drawn s | demo trained + session ready s | merged demo shown s | "
          "alpha step to new merge s (median, max) |")
    print("|---|---|---|---|---|")
    print(f"| {t_health:.1f} | {t_page:.1f} | {t_ready:.1f} | {t_merged:.1f} | "
          f"{statistics.median(steps):.2f}, {max(steps):.2f} |")


if __name__ == "__main__":
    main()
