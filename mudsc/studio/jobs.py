"""Long work off the caller's thread: a Job runs a function on a worker thread and exposes its
progress, result, error and a cancel flag. The app keeps Jobs in its session state, so a rerun of
the page script never loses running or finished work. No Streamlit here.

Heavy work shares the machine: every job first takes one of a fixed number of :class:`Slots`
(``$MUDSC_MAX_JOBS``, default 1, process-wide), so two cores run one merge at a time instead of
thrashing between several; the rest wait in line and report their place. Background jobs (work done
ahead of need) wait behind every foreground one, hand their slot over at their next progress report
when a foreground job is waiting, and run at the lowest CPU priority (on Linux), so that the page they
are ahead of (and a browser on the same machine) draws first.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from typing import Any, Callable

from mudsc.errors import ConfigError, MudscError, out_of_memory

Work = Callable[[Callable[[str, float], None], threading.Event], Any]


class Cancelled(Exception):
    """Raised inside a job's work when its cancel flag is set (via its progress callback)."""


def ordinal(n: int) -> str:
    """1 -> '1st', 2 -> '2nd', 11 -> '11th', 23 -> '23rd'."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


class Slots:
    """At most `size` jobs run at once; the others wait in arrival order, foreground before background."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ConfigError(f"the number of concurrent jobs must be at least 1, got {size}")
        self.size = size
        self._cond = threading.Condition()
        self._running: set[Job] = set()
        self._waiting: list[Job] = []

    def _line(self) -> list["Job"]:
        return sorted(self._waiting, key=lambda j: j.background)  # stable: arrival order within each kind

    def acquire(self, job: "Job") -> None:
        """Block until `job` may run; raises :class:`Cancelled` if it is cancelled while waiting."""
        with self._cond:
            self._waiting.append(job)
            try:
                while not (len(self._running) < self.size and self._line()[0] is job):
                    if job.cancel_event.is_set():
                        raise Cancelled()
                    self._cond.wait(0.1)  # also wakes to see a cancel
                self._running.add(job)
            finally:
                self._waiting.remove(job)
                self._cond.notify_all()

    def release(self, job: "Job") -> None:
        with self._cond:
            self._running.discard(job)
            self._cond.notify_all()

    def position(self, job: "Job") -> int:
        """`job`'s place in line (1: next to run), 0 if it is not waiting."""
        with self._cond:
            line = self._line()
            return line.index(job) + 1 if job in line else 0

    def foreground_waiting(self) -> bool:
        with self._cond:
            return any(not j.background for j in self._waiting)


_SLOTS: list[Slots] = []


def heavy_slots() -> Slots:
    """The process-wide slots every studio job takes: ``$MUDSC_MAX_JOBS`` of them (default 1), read once."""
    if not _SLOTS:
        raw = os.environ.get("MUDSC_MAX_JOBS", "1")
        try:
            size = int(raw)
        except ValueError:
            raise ConfigError(f"MUDSC_MAX_JOBS must be a whole number, got {raw!r}") from None
        _SLOTS.append(Slots(size))
    return _SLOTS[0]


def idle_priority() -> None:
    """Give the calling thread, and the torch worker threads it starts from now on, the lowest CPU
    priority (nice 19) where the system sets it per thread (Linux); elsewhere, nothing."""
    if sys.platform == "linux":
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:  # a sandbox may forbid it; the job still runs, at normal priority
            pass


class Job:
    """``work(progress, cancel_event) -> result`` on a daemon thread, once it holds one of `slots`.

    ``status`` is ``queued``, ``running``, ``done``, ``failed`` or ``cancelled``; ``message`` and
    ``fraction`` the last progress report; ``error`` a one-line message (user errors keep their text,
    running out of memory reads as such; other unexpected exceptions are reported with their type).
    """

    def __init__(self, name: str, work: Work, *, slots: Slots | None = None, background: bool = False) -> None:
        self.name = name
        self._work = work
        self.slots = slots
        self.background = background
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
        self.status = "queued" if self.slots is not None else "running"
        self.started = time.time()
        self._thread = threading.Thread(target=self._run, name=f"mudsc-job-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _progress(self, message: str, fraction: float) -> None:
        if self.cancel_event.is_set():
            raise Cancelled()
        self.message, self.fraction = message, max(0.0, min(1.0, float(fraction)))
        if self.background and self.slots is not None and self.slots.foreground_waiting():
            self.slots.release(self)  # work someone waits for goes first; this resumes after it
            self.status = "queued"
            self.slots.acquire(self)
            self.status = "running"

    def _run(self) -> None:
        held = False
        if self.background:
            idle_priority()
        try:
            if self.slots is not None:
                self.slots.acquire(self)
                held, self.status = True, "running"
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
            if held:
                self.slots.release(self)
            self.finished = time.time()

    @property
    def running(self) -> bool:
        """Not finished yet: waiting for a slot or at work."""
        return self.status in ("queued", "running")

    @property
    def position(self) -> int:
        """The job's place in line for a slot (1: next), 0 once it runs or when it takes no slot."""
        return self.slots.position(self) if self.slots is not None and self.status == "queued" else 0

    def describe(self) -> str:
        """What the job is doing now: ``'queued: 2nd in line'`` or its last progress message."""
        if self.status == "queued":
            return f"queued: {ordinal(max(self.position, 1))} in line"
        return self.message or "starting"

    def cancel(self) -> None:
        self.cancel_event.set()

    def wait(self, timeout: float | None = None) -> "Job":
        if self._thread is not None:
            self._thread.join(timeout)
        return self
