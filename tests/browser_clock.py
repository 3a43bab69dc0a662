"""Time from a key press to the page showing a text, measured inside the page.

Playwright's ``expect`` polls at widening intervals (100, 250, 500 ms ...), so it reads a 0.2 s update
as 0.35 s or 0.45 s. This clock runs in the page: a keydown listener notes each press and a
MutationObserver the first moment the text is in the document after the last press, both on the
page's own ``performance.now()``. Used by tests/test_browser.py and benchmarks/bench_studio.py.
"""
from __future__ import annotations

ARM = """text => {
  if (!window.__mudscClock) {
    const clock = window.__mudscClock = {text: null, pressed: null, seen: null};
    document.addEventListener("keydown", () => { clock.pressed = performance.now(); clock.seen = null; }, true);
    new MutationObserver(() => {
      if (clock.pressed !== null && clock.seen === null && document.body.textContent.includes(clock.text)) {
        clock.seen = performance.now();
      }
    }).observe(document.body, {subtree: true, childList: true, characterData: true});
  }
  Object.assign(window.__mudscClock, {text: text, pressed: null, seen: null});
}"""


def arm(page, text: str) -> None:
    """Watch for `text` from the next key press on (one listener and one observer per page)."""
    page.evaluate(ARM, text)


def seconds_to_text(page, timeout_s: float = 180.0) -> float:
    """Seconds from the last key press since :func:`arm` to the text's appearance (waits for it)."""
    page.wait_for_function("() => window.__mudscClock.seen !== null", timeout=timeout_s * 1000)
    return page.evaluate("() => (window.__mudscClock.seen - window.__mudscClock.pressed) / 1000")
