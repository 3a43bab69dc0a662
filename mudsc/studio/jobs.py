"""Long work off the caller's thread: a Job runs a function on a worker thread and exposes its
progress, result, error and a cancel flag. The app keeps Jobs in its session state, so a rerun of
the page script never loses running or finished work. No Streamlit here.
"""
from __future__ import annotations

import threading
import time
import traceback
from typing import Any, Callable

from mudsc.errors import MudscError, out_of_memory

Work = Callable[[Callable[[str, float], None], threading.Event], Any]


class Cancelled(Exception):
    """Raised inside a job's work when its cancel flag is set (via :meth:`Job.check`)."""


class Job:
    """``work(progress, cancel_event) -> result`` on a daemon thread.

    ``status`` is ``running``, ``done``, ``failed`` or ``cancelled``; ``message`` and ``fraction`` the
    last progress report; ``error`` a one-line message (user errors keep their text, running out of
    memory reads as such; other unexpected exceptions are reported with their type).
    """

    def __init__(self, name: str, work: Work) -> None:
        self.name = name
        self._work = work
        self.cancel_event = threading.Event()
        self.status = "pending"
        self.message = ""
        self.fraction = 0.0
        self.result: Any = None
        self.error: str | None = None
        self.detail: str | None = None  # traceback of unexpected failures, for a details expander
        self.started = self.finished = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> "Job":
        self.status = "running"
        self.started = time.time()
        self._thread = threading.Thread(target=self._run, name=f"mudsc-job-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _progress(self, message: str, fraction: float) -> None:
        if self.cancel_event.is_set():
            raise Cancelled()
        self.message, self.fraction = message, max(0.0, min(1.0, float(fraction)))

    def _run(self) -> None:
        try:
            self.result = self._work(self._progress, self.cancel_event)
            self.status = "cancelled" if self.cancel_event.is_set() else "done"
        except Cancelled:
            self.status = "cancelled"
        except MudscError as e:
            self.error, self.status = str(e), "failed"
        except Exception as e:  # noqa: BLE001 - any failure must reach the page, not kill the thread silently
            if (oom := out_of_memory(e)) is not None:  # the machine's limit, not a bug: one line, no traceback
                self.error = str(oom)
            else:
                self.error, self.detail = f"{type(e).__name__}: {e}", traceback.format_exc()
            self.status = "failed"
        finally:
            self.finished = time.time()

    @property
    def running(self) -> bool:
        return self.status == "running"

    def cancel(self) -> None:
        self.cancel_event.set()

    def wait(self, timeout: float | None = None) -> "Job":
        if self._thread is not None:
            self._thread.join(timeout)
        return self
