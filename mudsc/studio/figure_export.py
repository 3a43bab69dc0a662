"""Plotly figures as files: self-contained HTML always; PNG, SVG and PDF through kaleido, which drives
a Chrome or Chromium found on the machine (Debian's ``chromium`` works; nothing is downloaded).

One kaleido browser is started on first use and kept for the process (stopped at exit): starting
Chromium costs about 2 s per image, a kept one about 0.2 s.
"""
from __future__ import annotations

import atexit
import io
import threading
import warnings
import zipfile
from typing import Mapping

import plotly.graph_objects as go

from mudsc.errors import ConfigError

STATIC_FORMATS = ("png", "svg", "pdf")
MIME = {"html": "text/html", "png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}


def figure_html(fig: go.Figure) -> bytes:
    """The figure as one HTML file with plotly.js inlined (opens offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True).encode()


_KALEIDO = threading.Lock()  # one render at a time through the one kept browser
_server: list[bool] = []


def _keep_browser() -> None:
    try:
        import kaleido
    except ImportError:
        raise ConfigError("static figure export needs the kaleido package (pip install kaleido); "
                          "the HTML file works without it") from None

    if not _server:
        kaleido.start_sync_server(silence_warnings=True)
        atexit.register(kaleido.stop_sync_server, silence_warnings=True)
        _server.append(True)


def static_image(fig: go.Figure, fmt: str, *, scale: float = 2.0) -> bytes:
    """The figure as PNG, SVG or PDF bytes (kaleido); WebGL traces come out as embedded rasters."""
    import plotly.io as pio

    if fmt not in STATIC_FORMATS:
        raise ConfigError(f"unknown image format {fmt!r}; choose from {', '.join(STATIC_FORMATS)}")
    try:
        with _KALEIDO, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The kopts argument is ignored")
            _keep_browser()
            return pio.to_image(fig, format=fmt, scale=scale)
    except ConfigError:
        raise
    except Exception as e:  # kaleido raises its own types (no browser, timeouts): one user-facing error
        raise ConfigError(f"static {fmt} export failed ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                          "install Chromium (apt-get install chromium) or use the HTML file") from None


def static_export_works() -> bool:
    """Whether kaleido can render here (one tiny SVG; the first call starts a browser, seconds)."""
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
