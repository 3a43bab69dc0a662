"""Plotly figures as files: self-contained HTML always; PNG, SVG and PDF through kaleido, which drives
a Chrome or Chromium found on the machine (Debian's ``chromium`` works; nothing is downloaded).

One kaleido browser is started on first use and kept for the process (stopped at exit): starting
Chromium costs about 2 s per image, a kept one about 0.2 s. The browser runs on an event-loop thread of
its own; its start and each render are bounded by :func:`render_timeout`, its stop by two seconds. So a
browser that never answers cannot hang a caller: it is killed and started afresh once, and if that
fails too, static export reports itself unavailable ("HTML works") and is not retried for
``RETRY_AFTER_S`` seconds, so a dead renderer costs one bounded wait, not one per image.
"""
from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import io
import os
import signal
import subprocess
import threading
import time
import zipfile
from typing import Any, Coroutine, Mapping

import plotly.graph_objects as go

from mudsc.errors import ConfigError

STATIC_FORMATS = ("png", "svg", "pdf")
MIME = {"html": "text/html", "png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}
RETRY_AFTER_S = 60.0  # after a failed restart, later calls fail at once for this long
_CLOSE_S = 2.0  # a healthy browser closes in well under a second; then it is killed


def figure_html(fig: go.Figure) -> bytes:
    """The figure as one HTML file with plotly.js inlined (opens offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True).encode()


def render_timeout() -> float:
    """Seconds the browser's start or one render may take: ``$MUDSC_RENDER_TIMEOUT``, default 15 (a small
    figure takes about 0.2 s and a start about 2 s on an idle machine; two busy cores take longer)."""
    raw = os.environ.get("MUDSC_RENDER_TIMEOUT", "15")
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ConfigError(f"MUDSC_RENDER_TIMEOUT must be a positive number of seconds, got {raw!r}")
    return value


def _new_kaleido() -> Any:
    """An unopened kaleido browser with plotly.io's settings; finding no browser raises here."""
    import kaleido
    import plotly.io as pio

    kopts = {k: v for k in ("plotlyjs", "mathjax", "headers") if (v := getattr(pio.defaults, k, None))}
    return kaleido.Kaleido(n=1, timeout=None, **kopts)  # our bound governs; kaleido's covers only the tab


async def _render(k: Any, fig: dict, opts: dict) -> bytes:
    import plotly.io as pio

    return await k.calc_fig(fig, opts=opts, topojson=pio.defaults.topojson)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the browser and its renderers: choreographer starts it as the leader of its own group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(proc.pid) == proc.pid:  # never signal our own group
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(1.0)  # reap it


class _Browser:
    """A started kaleido browser driven from its own event-loop thread, so a caller can stop waiting."""

    def __init__(self, timeout: float) -> None:
        ready = threading.Event()
        self.kaleido: Any = None
        threading.Thread(target=asyncio.run, args=(self._serve(ready),), name="mudsc-kaleido", daemon=True).start()
        if not ready.wait(timeout):
            raise TimeoutError("the browser thread did not start")
        try:
            self.call(self._open(), timeout)
        except BaseException:
            self.stop(graceful=False)
            raise

    async def _serve(self, ready: threading.Event) -> None:
        self.loop = asyncio.get_running_loop()
        # work given up on (a timed-out start or render) may fail later; that was already reported
        self.loop.set_exception_handler(lambda loop, context: None)
        self._done = asyncio.Event()
        ready.set()
        await self._done.wait()  # then asyncio.run cancels what is left and closes the loop

    async def _open(self) -> None:
        self.kaleido = _new_kaleido()
        await self.kaleido.open()

    def call(self, coro: Coroutine, timeout: float) -> Any:
        """Run `coro` on the browser's loop; give up after `timeout` seconds (the loop may be wedged)."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"no answer from the browser within {timeout:g} s") from None

    def stop(self, *, graceful: bool) -> None:
        """Close the browser (briefly, if `graceful`), kill its process if still alive, and let the loop
        thread end. A browser that just failed to answer is killed without asking."""
        if self.kaleido is not None:
            if graceful:
                with contextlib.suppress(Exception):
                    self.call(self.kaleido.close(), _CLOSE_S)
            proc = getattr(self.kaleido, "subprocess", None)
            if proc is not None and proc.poll() is None:
                _kill(proc)
        self.loop.call_soon_threadsafe(self._done.set)


_LOCK = threading.Lock()  # one browser start, render or stop at a time; each is bounded, so waits are too
_browser: _Browser | None = None
_failed: tuple[float, str] | None = None  # (monotonic time, why) of the last failed restart
_exit_hook: list[bool] = []


def _drop_browser(*, graceful: bool) -> None:
    global _browser
    if _browser is not None:
        _browser.stop(graceful=graceful)
        _browser = None


def stop_browser() -> None:
    """Stop the kept browser and forget a past failure: the next render starts a fresh one."""
    global _failed
    with _LOCK:
        _drop_browser(graceful=True)
        _failed = None


def _why(e: BaseException) -> str:
    from kaleido.errors import ChromeNotFoundError

    if isinstance(e, ChromeNotFoundError):
        return "no Chrome or Chromium found (apt-get install chromium, or set BROWSER_PATH)"
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:160]}" if text else type(e).__name__


def _spec(fig: go.Figure, fmt: str, scale: float) -> tuple[dict, dict]:
    """The figure as kaleido takes it, sized as ``plotly.io.to_image`` sizes it."""
    import plotly.io as pio

    d = fig.to_dict()
    layout = d.get("layout", {})
    size = {k: layout.get(k) or layout.get("template", {}).get("layout", {}).get(k)
            or getattr(pio.defaults, f"default_{k}") for k in ("width", "height")}
    return d, {"format": fmt, "scale": scale, **size}


def static_image(fig: go.Figure, fmt: str, *, scale: float = 2.0, timeout: float | None = None) -> bytes:
    """The figure as PNG, SVG or PDF bytes (kaleido); WebGL traces come out as embedded rasters.

    Each browser step waits at most `timeout` seconds (default :func:`render_timeout`). A browser
    that fails or does not answer is restarted once; then ConfigError "static export unavailable".
    """
    global _browser, _failed
    if fmt not in STATIC_FORMATS:
        raise ConfigError(f"unknown image format {fmt!r}; choose from {', '.join(STATIC_FORMATS)}")
    try:
        from kaleido.errors import JavascriptError, KaleidoError
    except ImportError:
        raise ConfigError("static figure export needs the kaleido package (pip install kaleido); "
                          "the HTML file works without it") from None
    bound = render_timeout() if timeout is None else float(timeout)
    fig_dict, opts = _spec(fig, fmt, scale)
    with _LOCK:
        if _failed is not None and time.monotonic() - _failed[0] < RETRY_AFTER_S:
            raise ConfigError(f"static export unavailable: {_failed[1]}; HTML works")
        why = ""
        for _ in range(2):  # the kept browser (started if need be), then one fresh one
            try:
                if _browser is None:
                    _browser = _Browser(bound)
                    if not _exit_hook:
                        atexit.register(stop_browser)
                        _exit_hook.append(True)
                out = _browser.call(_render(_browser.kaleido, fig_dict, opts), bound)
                _failed = None
                return out
            except (KaleidoError, JavascriptError) as e:  # plotly.js refused this figure; the browser is fine
                raise ConfigError(f"static {fmt} export failed: {_why(e)}") from None
            except Exception as e:  # noqa: BLE001 - no browser, a crashed or a silent one: replace it
                why = _why(e)
                _drop_browser(graceful=False)
        _failed = (time.monotonic(), why)
        raise ConfigError(f"static export unavailable: {why}; HTML works")


def static_export_works() -> bool:
    """Whether kaleido can render here (one tiny SVG; the first call starts a browser, seconds).

    Bounded like :func:`static_image`: False within a few timeouts when no browser works."""
    try:
        static_image(go.Figure(go.Scatter(x=[0, 1], y=[0, 1])), "svg", scale=1.0)
    except ConfigError:
        return False
    return True


def file_stem(title: str) -> str:
    """A figure or table title as a file name stem: lower case, runs of other characters as ``_``."""
    out = "".join(ch if ch.isalnum() else "_" for ch in title.lower())
    while "__" in out:
        out = out.replace("__", "_")
    return out.strip("_") or "figure"


def zip_bytes(files: Mapping[str, bytes | str]) -> bytes:
    """{path in the archive: content} -> the bytes of one deflated zip."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def figure_files(figures: Mapping[str, go.Figure], *, static_formats: tuple[str, ...] = ("pdf", "png"),
                 folder: str = "figures") -> dict[str, bytes]:
    """Every figure as ``folder/<stem>.html`` and, where kaleido can render, one file per static format.

    The HTML files share one ``folder/plotly.min.js`` instead of inlining plotly.js each (about 4.6 MB).
    """
    from plotly.offline import get_plotlyjs

    out: dict[str, bytes] = {f"{folder}/plotly.min.js": get_plotlyjs().encode()} if figures else {}
    for title, fig in figures.items():
        stem = f"{folder}/{file_stem(title)}"
        out[f"{stem}.html"] = fig.to_html(include_plotlyjs="directory", full_html=True).encode()
        for fmt in static_formats:
            out[f"{stem}.{fmt}"] = static_image(fig, fmt)
    return out
