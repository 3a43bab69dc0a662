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
