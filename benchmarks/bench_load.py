"""Several studio users at once: N browser sessions against one server, each stepping alpha on the demo.

Run by hand:  .venv/bin/python benchmarks/bench_load.py [--sessions 1 2 4] [--steps 6] [--home DIR]
For each N a fresh ``streamlit run app.py`` (``$MUDSC_HOME`` with the trained demo pair, copied from
``--home`` or trained first) is driven by N contexts of Debian's Chromium through Playwright (never
downloads a browser). Every session loads the demo parents, opens Merge, moves the "ZipIt! a" slider by
its own number of steps (so no two sessions ask for the same merges), then all sessions at once press
the alpha slider's left key `--steps` times, each press timed until that session's page shows the new
merge's caption (polled every animation frame; the demo's first merge, ``DEMO["merge"]``, sets method and
cut). Errors are exceptions or error boxes on any page and
steps that never showed; none are allowed. The server's peak memory is its VmHWM (peak resident set)
from /proc. Prints a markdown table for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mudsc.zoo.demo import DEMO  # noqa: E402

FIRST = DEMO["merge"]  # what the Merge page shows first on the demo: the captions to wait for
CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOWN_JS = "t => document.body.innerText.includes(t)"
ERRORS_JS = "() => document.querySelectorAll('[data-testid=stException], [data-testid=stAlertContentError]').length"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


async def _settled(page) -> None:
    await page.wait_for_selector("[data-testid=stApp][data-test-script-state=notRunning]", timeout=300_000)


async def _prepare(page, url: str, index: int) -> None:
    """Demo parents loaded, Merge open, ZipIt! a moved `index` steps so this session's merges are its own."""
    await page.goto(url)
    await _settled(page)
    await page.get_by_role("button", name="Load the demo parents").click()
    await page.get_by_text("Ready:").wait_for(timeout=300_000)
    await page.get_by_role("link", name="Merge", exact=True).first.click()
    await page.get_by_text("Joint accuracy").wait_for(timeout=300_000)
    await _settled(page)
    zip_a = page.get_by_role("slider", name="ZipIt! a: decay of repeatedly merged units")
    for _ in range(index):
        await zip_a.focus()
        await page.keyboard.press("ArrowLeft")
        await page.wait_for_timeout(300)
        await _settled(page)
    await page.wait_for_function(SHOWN_JS, arg=_caption(FIRST["alpha"]), timeout=120_000)


def _caption(alpha: float) -> str:
    return f"Merged with {FIRST['method']}, alpha {alpha:g}, cut {FIRST['cut']}."


async def _steps(page, steps: int, evidence: Path) -> tuple[list[float], int]:
    slider = page.get_by_role("slider", name="alpha: weight share of the similarity")
    times, missed = [], 0
    for i in range(steps):
        alpha = round(FIRST["alpha"] - 0.05 * (i + 1), 2)
        await slider.focus()
        t0 = time.perf_counter()
        await page.keyboard.press("ArrowLeft")
        try:
            await page.wait_for_function(SHOWN_JS, arg=_caption(alpha), polling="raf", timeout=120_000)
            times.append(time.perf_counter() - t0)
            await _settled(page)
        except Exception:  # noqa: BLE001 - a step that never shows or settles is an error; keep what the page shows
            missed += 1
            evidence.mkdir(parents=True, exist_ok=True)
            (evidence / f"step{i}.txt").write_text(await page.evaluate("() => document.body.innerText"))
            await page.screenshot(path=str(evidence / f"step{i}.png"), full_page=True)
    return times, missed + await page.evaluate(ERRORS_JS)


async def _run(n: int, url: str, steps: int, evidence: Path) -> list[tuple[list[float], int]]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        pages = [await (await browser.new_context(viewport={"width": 1400, "height": 1600})).new_page()
                 for _ in range(n)]
        for i, page in enumerate(pages):  # one after the other: the demo's statistics are shared
            await _prepare(page, url, i)
        out = await asyncio.gather(*(_steps(p, steps, evidence / f"n{n}_session{i}")
                                     for i, p in enumerate(pages)))  # all sessions at once
        await browser.close()
    return list(out)


def _server(home: Path, app_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(app_dir / "app.py"), "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=app_dir, stdout=subprocess.DEVNULL, stderr=log.open("w"),
        env={**os.environ, "MUDSC_HOME": str(home), "MUDSC_STATS_IMAGES": "500", "PYTHONPATH": str(app_dir)})
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return proc, url
        except OSError:
            time.sleep(0.25)
    proc.kill()
    raise RuntimeError("streamlit did not become healthy within 60 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4], help="concurrent browser sessions")
    ap.add_argument("--steps", type=int, default=6, help="alpha steps each session takes")
    ap.add_argument("--home", type=Path, help="a $MUDSC_HOME whose demo/ holds the trained demo pair")
    ap.add_argument("--app-dir", type=Path, default=ROOT, help="the checkout whose app.py is served")
    ap.add_argument("--evidence", type=Path, default=Path("bench_load_evidence"),
                    help="where the server logs and, for a failed step, the page's text and screenshot go")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, load average at start {load:.1f}, "
          f"{args.steps} alpha steps per session", flush=True)
    print("| sessions | alpha step s per session (median / max) | all steps median, max s | errors | "
          "server peak RSS MiB |")
    print("|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.home is None:
            from mudsc.zoo.demo import demo_pair

            demo = demo_pair(root=Path(tmp) / "trained" / "demo")
        else:
            demo = sorted((args.home / "demo").glob("*.safetensors"))
        for n in args.sessions:  # each row printed as it is measured: a later N cannot lose an earlier one
            home = Path(tmp) / f"home{n}"
            (home / "demo").mkdir(parents=True)
            for p in demo:
                shutil.copy(p, home / "demo" / Path(p).name)
            proc, url = _server(home, args.app_dir.resolve(), args.evidence / f"server_n{n}.log")
            try:
                results = asyncio.run(_run(n, url, args.steps, args.evidence))
                peak = _peak_rss_mib(proc.pid)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            every = [t for times, _ in results for t in times]
            per = "; ".join(f"{statistics.median(t):.2f} / {max(t):.2f}" if t else "-" for t, _ in results)
            overall = f"{statistics.median(every):.2f}, {max(every):.2f}" if every else "-"
            print(f"| {n} | {per} | {overall} | {sum(e for _, e in results)} | {peak:.0f} |", flush=True)


if __name__ == "__main__":
    main()
