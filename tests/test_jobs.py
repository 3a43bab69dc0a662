import time

from mudsc.errors import ConfigError
from mudsc.studio.jobs import Job


def test_job_result_progress_and_errors():
    def work(progress, cancel):
        for i in range(3):
            progress(f"step {i}", i / 3)
        return 42

    job = Job("ok", work).start().wait(5)
    assert job.status == "done" and job.result == 42 and job.message == "step 2"

    def bad(progress, cancel):
        raise ConfigError("alpha must be in [0, 1]")

    job = Job("bad", bad).start().wait(5)
    assert job.status == "failed" and job.error == "alpha must be in [0, 1]" and job.detail is None

    def boom(progress, cancel):
        raise RuntimeError("unexpected")

    job = Job("boom", boom).start().wait(5)
    assert job.status == "failed" and job.error.startswith("RuntimeError") and "Traceback" in job.detail


def test_job_cancel_stops_at_next_progress():
    def slow(progress, cancel):
        for i in range(1000):
            progress("working", i / 1000)
            time.sleep(0.01)
        return "finished"

    job = Job("slow", slow).start()
    time.sleep(0.05)
    job.cancel()
    job.wait(5)
    assert job.status == "cancelled" and job.result is None


def _blocker(release):
    def work(progress, cancel):
        progress("holding the slot", 0.5)
        release.wait(10)
        return "held"
    return work


def test_slots_cap_concurrent_jobs_and_queue_the_rest_in_order():
    import threading

    from mudsc.studio.jobs import Slots

    slots, release = Slots(1), threading.Event()
    first = Job("first", _blocker(release), slots=slots).start()
    while first.status != "running":
        time.sleep(0.01)
    second = Job("second", lambda p, c: "second", slots=slots).start()
    third = Job("third", lambda p, c: "third", slots=slots).start()
    while third.position != 2:
        time.sleep(0.01)
    assert second.position == 1 and second.status == "queued" and second.result is None
    assert second.describe() == "queued: 1st in line" and third.describe() == "queued: 2nd in line"
    third.cancel()  # leaving the line lets the others move up
    third.wait(5)
    assert third.status == "cancelled" and third.result is None
    release.set()
    assert first.wait(5).result == "held" and second.wait(5).result == "second"


def test_a_background_job_hands_its_slot_to_foreground_work_at_its_next_progress():
    import threading

    from mudsc.studio.jobs import Slots

    slots, order, go = Slots(1), [], threading.Event()

    def ahead(progress, cancel):
        for i in range(200):
            progress(f"step {i}", i / 200)
            order.append("background")
            go.set()
            time.sleep(0.005)

    background = Job("ahead", ahead, slots=slots, background=True).start()
    go.wait(5)
    foreground = Job("merge", lambda p, c: order.append("foreground"), slots=slots).start().wait(5)
    assert foreground.status == "done" and background.running  # it ran while the background job was mid-way
    background.wait(10)
    assert background.status == "done" and order.count("background") == 200
    i = order.index("foreground")
    assert 0 < i < len(order) - 1


def test_ordinals_and_a_bad_slot_count():
    import pytest

    from mudsc.studio.jobs import Slots, ordinal

    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th"]
    with pytest.raises(ConfigError, match="at least 1"):
        Slots(0)


def test_background_work_runs_at_the_lowest_cpu_priority_and_foreground_work_does_not():
    import os
    import platform
    import threading

    import pytest

    if platform.system() != "Linux":
        pytest.skip("per-thread priorities are a Linux feature")

    def priorities(progress, cancel):
        box = {}
        # a thread the job starts (torch's workers are such threads) inherits the job's priority
        worker = threading.Thread(target=lambda: box.update(worker=os.getpriority(os.PRIO_PROCESS,
                                                                                   threading.get_native_id())))
        worker.start()
        worker.join()
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), box["worker"]

    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert Job("ahead", priorities, background=True).start().wait(10).result == (19, 19)
    assert Job("asked", priorities).start().wait(10).result == (base, base)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # the caller is untouched
