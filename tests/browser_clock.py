"""Time from a key press to the page painting a text, measured inside the page.

Playwright's ``expect`` polls at widening intervals (20, 50, 100, 100, then 500 ms in the installed
version), each poll a round trip to a page that may be busy redrawing, so it reads a 0.1 s update as
0.3-0.5 s. This clock runs in the page, on its own ``performance.now()``: a keydown listener notes each
press, a MutationObserver the first moment the text is in the document after the last press, and the
time counted ends after the next frame is painted (a timer set from that frame's animation callback).
Used by tests/test_browser.py and benchmarks/bench_studio.py.
"""
from __future__ import annotations

ARM = """text => {
  if (!window.__mudscClock) {
    const clock = window.__mudscClock = {text: null, pressed: null, seen: null, painted: null};
    document.addEventListener("keydown", () => {
      Object.assign(clock, {pressed: performance.now(), seen: null, painted: null});
    }, true);
    new MutationObserver(() => {
      if (clock.pressed !== null && clock.seen === null && document.body.textContent.includes(clock.text)) {
        clock.seen = performance.now();
        const pressed = clock.pressed;
        requestAnimationFrame(() => setTimeout(() => {
          if (clock.pressed === pressed) clock.painted = performance.now();
        }));
      }
    }).observe(document.body, {subtree: true, childList: true, characterData: true});
  }
  Object.assign(window.__mudscClock, {text: text, pressed: null, seen: null, painted: null});
}"""


def arm(page, text: str) -> None:
    """Watch for `text` from the next key press on (one listener and one observer per page)."""
    page.evaluate(ARM, text)


def seconds_to_text(page, timeout_s: float = 180.0) -> float:
    """Seconds from the last key press since :func:`arm` to the first paint showing the text (waits for it)."""
    page.wait_for_function("() => window.__mudscClock.painted !== null", timeout=timeout_s * 1000)
    return page.evaluate("() => (window.__mudscClock.painted - window.__mudscClock.pressed) / 1000")
