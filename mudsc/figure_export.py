"""Plotly figures as files: self-contained HTML always; PNG, SVG and PDF through kaleido, which drives
a Chrome or Chromium found on the machine (Debian's ``chromium`` works; nothing is downloaded)."""
from __future__ import annotations

import plotly.graph_objects as go

from .errors import ConfigError

STATIC_FORMATS = ("png", "svg", "pdf")
MIME = {"html": "text/html", "png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}


def figure_html(fig: go.Figure) -> bytes:
    """The figure as one HTML file with plotly.js inlined (opens offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True).encode()


def static_image(fig: go.Figure, fmt: str, *, scale: float = 2.0) -> bytes:
    """The figure as PNG, SVG or PDF bytes (kaleido); WebGL traces come out as embedded rasters."""
    import plotly.io as pio

    if fmt not in STATIC_FORMATS:
        raise ConfigError(f"unknown image format {fmt!r}; choose from {', '.join(STATIC_FORMATS)}")
    try:
        return pio.to_image(fig, format=fmt, scale=scale)
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
