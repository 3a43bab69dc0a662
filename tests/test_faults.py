"""Faults, not bad input: a renderer that hangs, two writers of one cache entry, a job killed with
SIGKILL, a full disk, a damaged cache entry, a job out of memory. Each case is bounded in time and
stays on this machine (subprocesses only, no network).

Two studio sessions merging different parents at once (case 2) run as two AppTests in two threads
against one process, so they share its Streamlit caches and its job slots as two browsers would.
"""
import asyncio
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import landscape.compute as compute_mod
import mudsc.studio.figure_export as fe
from landscape import LandscapeResult
from landscape.cache import LandscapeCache
from landscape.figure import write_figure
from mudsc.atomic import write_bytes
from mudsc.errors import ConfigError, DiskFullError, ResourceError, out_of_memory
from mudsc.models import create_model
from mudsc.models.checkpoint import load_model, save_model
from mudsc.studio.jobs import Job

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- 1. a renderer that hangs


@pytest.fixture
def fresh_browser():
    fe.stop_browser()
    yield
    fe.stop_browser()


class _FakeKaleido:
    """Stands in for kaleido's browser: opens at once; what a render does is up to the test."""

    subprocess = None
    opened = 0

    async def open(self):
        type(self).opened += 1

    async def close(self):
        pass


@pytest.fixture
def fake_browser(monkeypatch, fresh_browser):
    _FakeKaleido.opened = 0
    monkeypatch.setattr(fe, "_new_kaleido", _FakeKaleido)
    return _FakeKaleido


@pytest.mark.timeout(30)
def test_hung_render_times_out_restarts_once_and_degrades_without_blocking_others(monkeypatch, fake_browser):
    release = threading.Event()

    async def hang(k, fig, opts):
        release.wait()  # wedges the browser's event loop itself: the worst case

    monkeypatch.setattr(fe, "_render", hang)
    fig = go.Figure(go.Scatter(y=[1, 2]))
    out: dict = {}

    def export():
        t0 = time.monotonic()
        try:
            fe.static_image(fig, "png", timeout=0.5)
        except ConfigError as e:
            out["error"], out["seconds"] = str(e), time.monotonic() - t0

    worker = threading.Thread(target=export)
    try:
        worker.start()
        deadline = time.monotonic() + 5
        while not fake_browser.opened and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake_browser.opened and worker.is_alive()      # the render is in flight, hanging
        t0 = time.monotonic()                                  # meanwhile another caller of the module
        files = fe.figure_files({"A": fig}, static_formats=())
        assert b"<html>" in fe.figure_html(fig)[:100] and "figures/a.html" in files
        assert fe.zip_bytes({"x.txt": "x"}) and time.monotonic() - t0 < 3
        worker.join(10)
        assert not worker.is_alive()
        assert out["error"] == "static export unavailable: TimeoutError: no answer from the browser within 0.5 s; HTML works"
        assert fake_browser.opened == 2 and out["seconds"] < 4  # started, restarted once, then gave up
        t0 = time.monotonic()
        assert not fe.static_export_works()                     # a known-dead renderer answers at once
        assert time.monotonic() - t0 < 0.5 and fake_browser.opened == 2
    finally:
        release.set()


@pytest.mark.timeout(30)
def test_a_restart_recovers_and_a_bad_figure_does_not_kill_the_browser(monkeypatch, fake_browser):
    from kaleido.errors import KaleidoError

    calls = []

    async def flaky(k, fig, opts):
        calls.append(opts["format"])
        if len(calls) == 1:
            await asyncio.sleep(3600)                         # the first render never answers
        if opts["format"] == "pdf":
            raise KaleidoError(525, "plotly.js could not draw this figure")
        return b"image"

    monkeypatch.setattr(fe, "_render", flaky)
    fig = go.Figure(go.Scatter(y=[1, 2]))
    assert fe.static_image(fig, "png", timeout=0.5) == b"image" and fake_browser.opened == 2
    with pytest.raises(ConfigError, match="static pdf export failed: KaleidoError"):
        fe.static_image(fig, "pdf", timeout=0.5)
    assert fe.static_image(fig, "svg", timeout=0.5) == b"image" and fake_browser.opened == 2  # same browser


@pytest.mark.timeout(30)
def test_static_export_is_asked_again_after_a_while_and_recovers(monkeypatch, fake_browser):
    broken = [True]

    async def render(k, fig, opts):
        if broken[0]:
            raise RuntimeError("the renderer crashed")
        return b"<svg/>"

    monkeypatch.setattr(fe, "_render", render)
    monkeypatch.setattr(fe, "RETRY_AFTER_S", 0.5)
    assert not fe.static_export_works() and fake_browser.opened == 2  # crashed, restarted once, crashed again
    broken[0] = False
    assert not fe.static_export_works() and fake_browser.opened == 2  # known dead for RETRY_AFTER_S: no new try
    time.sleep(0.6)
    assert fe.static_export_works() and fake_browser.opened == 3      # then tried afresh: it works again
    assert fe.static_image(go.Figure(), "svg") == b"<svg/>" and fake_browser.opened == 3


@pytest.mark.timeout(60)
def test_no_browser_or_a_silent_one_is_reported_promptly(monkeypatch, fresh_browser, tmp_path):
    pytest.importorskip("kaleido")
    monkeypatch.setenv("MUDSC_RENDER_TIMEOUT", "2")
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-browser"))
    t0 = time.monotonic()
    assert not fe.static_export_works() and time.monotonic() - t0 < 5
    with pytest.raises(ConfigError, match="static export unavailable: no Chrome or Chromium found.*HTML works"):
        fe.static_image(go.Figure(), "svg")
    fe.stop_browser()
    silent = tmp_path / "silent-browser"   # starts, never speaks the DevTools protocol
    silent.write_text("#!/bin/sh\nexec sleep 3599.25\n")
    silent.chmod(0o755)
    monkeypatch.setenv("BROWSER_PATH", str(silent))
    t0 = time.monotonic()
    assert not fe.static_export_works() and time.monotonic() - t0 < 12
    deadline = time.monotonic() + 5  # a killed process can take a moment to go on a loaded machine
    while (left := subprocess.run(["pgrep", "-f", "sleep 3599.25"], capture_output=True, text=True).stdout.split()) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left  # the silent browsers were killed, not abandoned


# ----------------------------------------------------------------------------- 2. two studio sessions at once


def _pair_session(tmp_path, seeds):
    from mudsc.diffinit.session import MergeSession

    paths = []
    for task, seed in zip(TASKS, seeds):
        torch.manual_seed(seed)
        m = create_model("mlp", classes=task, num_classes=10, in_chans=1, img_size=8, width=8)
        paths.append(str(save_model(m, tmp_path / f"p{seed}.safetensors", seed=seed)))
    make = lambda: MergeSession.from_paths(paths, "digits", stats_images=64, eval_images=64, batch_size=64)  # noqa: E731
    return make(), make


@pytest.mark.timeout(60)
def test_tracing_a_model_while_another_thread_runs_forward_passes():
    # fx patches nn.Module for the whole process while it traces; a session's page tracing a cut while
    # another session's job evaluates a model once made that evaluation fail
    from mudsc.unitgraph import trace

    busy, stop, errors = _mlp(), threading.Event(), []
    x = torch.randn(16, 1, 8, 8)
    expected = busy(x)

    def forwards():
        try:
            while not stop.is_set():
                assert torch.equal(busy(x), expected)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    worker = threading.Thread(target=forwards)
    worker.start()
    try:
        graphs = [trace(_mlp()) for _ in range(30)]
    finally:
        stop.set()
        worker.join(10)
    assert not errors, errors[:1]
    assert len({len(g.spaces) for g in graphs}) == 1 and graphs[0].spaces


@pytest.mark.timeout(240)
def test_two_sessions_merging_different_parents_at_once_each_see_only_their_own(tmp_path, monkeypatch):
    import streamlit as st
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import AppTest

    # A server compiles each page once, under its one ScriptCache's lock; every AppTest run makes a cache
    # of its own, and CPython 3.11's AST conversion is not safe in two threads at once ("AST constructor
    # recursion depth mismatch"). One lock over all caches is what the server does.
    compiling, get_bytecode = threading.Lock(), ScriptCache.get_bytecode

    def one_at_a_time(self, script_path):
        with compiling:
            return get_bytecode(self, script_path)

    monkeypatch.setattr(ScriptCache, "get_bytecode", one_at_a_time)

    from mudsc.diffinit.config import make_config
    from mudsc.studio.summary import metric_rows
    from pages._state import AppSettings

    st.cache_data.clear()
    st.cache_resource.clear()
    config = make_config(method="mudsc-zip", alpha=0.4)
    pairs = [_pair_session(tmp_path, seeds) for seeds in ((1, 2), (3, 4))]
    apps = []
    for i, (session, _) in enumerate(pairs):
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
        at.session_state["settings"] = AppSettings(home=tmp_path / "home", inline_wait_s=60.0, merge_ahead=0)
        at.session_state["session"] = session
        at.session_state["session_key"] = (f"pair {i}",)
        at.session_state["config"] = config
        at.run()
        at.switch_page("pages/merge.py")
        apps.append(at)
    errors: list = []

    def merge_page(at):
        try:
            at.run()
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=merge_page, args=(at,)) for at in apps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors and not any(t.is_alive() for t in threads)
    tables = []
    for at, (session, fresh) in zip(apps, pairs):
        assert not at.exception, [e.value for e in at.exception]
        result = at.session_state["result"]
        assert result.config == config and at.session_state["session"] is session
        alone = fresh().merge(config)  # the same pair merged by itself, in a session of its own
        assert result.state_dict.keys() == alone.state_dict.keys()
        assert all(torch.equal(result.state_dict[k], alone.state_dict[k]) for k in alone.state_dict)
        shown = next(d.value for d in at.dataframe if "per-task" in d.value.columns)
        expected = metric_rows(alone, fresh())
        assert shown["joint"].tolist() == pytest.approx([r["joint"] for r in expected])
        tables.append(shown)
    assert tables[0]["joint"].tolist() != tables[1]["joint"].tolist()  # the two pairs really differ
    a, b = (at.session_state for at in apps)
    assert a["jobs"] is not b["jobs"] and a["figures"] is not b["figures"]
    assert a["jobs"]["merge"].job is not b["jobs"]["merge"].job


# ----------------------------------------------------------------------------- landscapes in other processes

TASKS = [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
SETUP = """
import torch
from landscape import GridSpec, PlaneSpec, make_eval_set
from mudsc.data import load_dataset
from mudsc.models import create_model
TASKS = [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
models = {}
for i, lab in enumerate(["A", "B", "M"]):
    torch.manual_seed(20 + i)
    template = create_model("mlp", classes=TASKS[0], num_classes=10, in_chans=1, img_size=8, width=16)
    models[lab] = template.state_dict()
eval_set = make_eval_set(load_dataset("digits"), TASKS, per_task=15, calib_size=0, batch_size=32,
                         generator=torch.Generator().manual_seed(0))
OPTS = dict(grid=GridSpec(resolution=6, margin=0.2), chunk_size=7)
PLANE = PlaneSpec("three_point")
"""
CHILD = SETUP + """
import json, os, signal, sys, time
import landscape.compute as compute_mod
from landscape import compute_landscape
cache, out, kill_after, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
evaluated = []
real = compute_mod.evaluate_coords
def counting(evaluator, coords, **kw):
    evaluated.append(len(coords))
    return real(evaluator, coords, **kw)
compute_mod.evaluate_coords = counting
def progress(done, total):
    if kill_after and done >= kill_after:
        os.kill(os.getpid(), signal.SIGKILL)  # mid-grid, after the chunk was saved
    time.sleep(delay)
res = compute_landscape(template, models, PLANE, eval_set, cache_dir=cache, progress=progress, **OPTS)
res.save(out)
print(json.dumps({"evaluated": sum(evaluated), "complete": res.complete}))
"""


def _child(cache, out, *, kill_after=0, delay=0.0) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", CHILD, str(cache), str(out), str(kill_after), str(delay)],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _report(proc) -> dict:
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    return json.loads(stdout.strip().splitlines()[-1])


def _same(a: LandscapeResult, b: LandscapeResult) -> None:
    for k in ("xs", "ys", "task_loss", "task_acc", "joint_loss", "joint_acc", "done", "model_coords",
              "model_task_loss", "model_joint_acc"):
        np.testing.assert_allclose(getattr(a, k), getattr(b, k), rtol=1e-6, atol=1e-7, err_msg=k)


@pytest.fixture(scope="module")
def inputs():
    ns: dict = {}
    exec(SETUP, ns)
    return ns


def _compute(inputs, cache, **kw):
    return compute_mod.compute_landscape(inputs["template"], inputs["models"], inputs["PLANE"], inputs["eval_set"],
                                         cache_dir=cache, **inputs["OPTS"], **kw)


def _counting(monkeypatch) -> list[int]:
    evaluated: list[int] = []
    real = compute_mod.evaluate_coords
    monkeypatch.setattr(compute_mod, "evaluate_coords",
                        lambda ev, coords, **kw: evaluated.append(len(coords)) or real(ev, coords, **kw))
    return evaluated


@pytest.mark.timeout(180)
def test_two_processes_computing_one_landscape_share_the_work(tmp_path, inputs):
    cache = tmp_path / "cache"
    procs = [_child(cache, tmp_path / f"r{i}.npz", delay=0.3) for i in range(2)]
    reports = [_report(p) for p in procs]
    results = [LandscapeResult.load(tmp_path / f"r{i}.npz") for i in range(2)]
    assert all(r["complete"] for r in reports) and all(r.complete for r in results)
    _same(*results)
    _same(results[0], _compute(inputs, None, use_cache=False))
    total = results[0].done.size
    # one wrote the entry while the other waited on its lock, then read it: the points were computed once
    assert sorted(r["evaluated"] for r in reports) == [0, total]
    assert len(list(cache.glob("*.npz"))) == 1 and not list(cache.glob(".*.tmp"))


@pytest.mark.timeout(60)
def test_a_landscape_stopped_while_another_writer_holds_the_entry_returns_its_points_read_only(tmp_path, inputs):
    stop = threading.Event()
    partial = _compute(inputs, tmp_path, should_stop=stop, progress=lambda d, t: stop.set())
    (entry,) = tmp_path.glob("*.npz")
    before = entry.read_bytes()
    waited = threading.Event()
    t0 = time.monotonic()
    with LandscapeCache(tmp_path).lock(partial.fingerprint):  # another writer is at work on this entry
        threading.Timer(0.5, waited.set).start()
        got = _compute(inputs, tmp_path, should_stop=waited)
    assert 0.5 <= time.monotonic() - t0 < 5
    assert int(got.done.sum()) == int(partial.done.sum()) == 7 and entry.read_bytes() == before


@pytest.mark.timeout(180)
def test_sigkilled_landscape_resumes_computing_only_the_missing_points(tmp_path, inputs, monkeypatch):
    cache = tmp_path / "cache"
    proc = _child(cache, tmp_path / "never.npz", kill_after=14)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    (entry,) = cache.glob("*.npz")
    saved = LandscapeResult.load(entry)
    assert int(saved.done.sum()) == 14 and not saved.complete
    evaluated = _counting(monkeypatch)
    resumed = _compute(inputs, cache)
    assert resumed.complete and evaluated == [saved.done.size - 14]
    _same(resumed, _compute(inputs, None, use_cache=False))


# ----------------------------------------------------------------------------- 5. a full disk


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _half_then_enospc(real):
    """A file write that fills the disk halfway through."""
    def write(self, data):
        real(self, data[: len(data) // 2])
        _enospc()
    return write


def _assert_disk_full(excinfo, path: Path) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg and f"writing {path} needs " in msg and " bytes)" in msg and "free" in msg
    assert not list(path.parent.glob(f".{path.name}.*.tmp"))  # no temporary file left behind


def _mlp():
    torch.manual_seed(0)
    return create_model("mlp", classes=TASKS[0], num_classes=10, in_chans=1, img_size=8, width=8)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["rename", "write"])
def test_full_disk_gives_one_line_and_keeps_the_saved_files(tmp_path, monkeypatch, inputs, where):
    ckpt = save_model(_mlp(), tmp_path / "m.safetensors", seed=0)
    entry = tmp_path / "cache"
    first = _compute(inputs, entry)
    (npz,) = entry.glob("*.npz")
    blob = tmp_path / "blob.bin"
    write_bytes(blob, b"old")
    html = write_figure(first, tmp_path / "fig", formats=("html",)).paths["html"]
    before = {p: p.read_bytes() for p in (ckpt, npz, blob, html)}
    with monkeypatch.context() as m:
        if where == "rename":
            m.setattr(os, "replace", _enospc)
        else:
            m.setattr(Path, "write_bytes", _half_then_enospc(Path.write_bytes))
            m.setattr(np, "savez_compressed", lambda f, **arrays: f.write(b"PK\x03\x04") and _enospc())
        with pytest.raises(DiskFullError) as e:
            write_bytes(blob, b"new" * 1000)
        _assert_disk_full(e, blob)
        assert "2.9 KiB (3,000 bytes)" in str(e.value)
        with pytest.raises(DiskFullError) as e:
            save_model(_mlp(), ckpt, seed=1)
        _assert_disk_full(e, ckpt)
        with pytest.raises(DiskFullError) as e:
            LandscapeCache(entry).save(first.fingerprint, first)
        _assert_disk_full(e, npz)
        with pytest.raises(DiskFullError) as e:
            write_figure(first, tmp_path / "fig", formats=("html",), title="another title")
        _assert_disk_full(e, html)
    assert {p: p.read_bytes() for p in before} == before
    assert load_model(ckpt)[1]["seed"] == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["rename", "write"])
def test_full_disk_during_a_merge_export_keeps_the_earlier_export(tmp_path, monkeypatch, where):
    from mudsc.diffinit.config import make_config
    from mudsc.diffinit.manifest import save_merge
    from mudsc.diffinit.session import MergeSession

    paths = []
    for i, task in enumerate(TASKS):
        torch.manual_seed(i)
        m = create_model("mlp", classes=task, num_classes=10, in_chans=1, img_size=8, width=8)
        paths.append(save_model(m, tmp_path / f"p{i}.safetensors", seed=i))
    session = MergeSession.from_paths([str(p) for p in paths], "digits", stats_images=64, eval_images=64, batch_size=64)
    out = tmp_path / "merged"
    save_merge(session.merge(make_config(method="zipit")), session, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = session.merge(make_config(method="mudsc-zip", alpha=0.3))
    with monkeypatch.context() as m:
        if where == "rename":  # both files are written before either is renamed: the first rename fails
            m.setattr(os, "replace", _enospc)
        else:
            m.setattr(Path, "write_bytes", _half_then_enospc(Path.write_bytes))
        with pytest.raises(DiskFullError) as e:
            save_merge(again, session, out)
    _assert_disk_full(e, out / ("manifest.json" if where == "rename" else "model.safetensors"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary files either


# ----------------------------------------------------------------------------- 6. damaged entries


@pytest.mark.timeout(60)
def test_truncated_landscape_entry_is_rebuilt(tmp_path, inputs, monkeypatch):
    first = _compute(inputs, tmp_path)
    (entry,) = tmp_path.glob("*.npz")
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    evaluated = _counting(monkeypatch)
    again = _compute(inputs, tmp_path)
    assert evaluated == [first.done.size] and again.complete
    _same(first, again)
    assert LandscapeResult.load(entry).complete  # the entry was rewritten whole


@pytest.mark.timeout(60)
def test_demo_zoo_trains_each_parent_once_across_writers_and_rebuilds_a_damaged_one(tmp_path, monkeypatch):
    from mudsc.zoo import demo

    trained = []

    def fake_train(*, out, seed, **kw):  # a real (tiny) checkpoint, slowly, so the second writer must wait
        trained.append(Path(out).name)
        time.sleep(0.3)
        save_model(_mlp(), out, seed=seed)

    monkeypatch.setattr(demo, "train_parent", fake_train)
    got: list = []
    writers = [threading.Thread(target=lambda: got.append(demo.demo_pair(root=tmp_path))) for _ in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(20)
    assert len(got) == 2 and got[0] == got[1] and len(trained) == 2  # each parent trained once, then reused
    damaged = got[0][1]
    damaged.write_bytes(damaged.read_bytes()[:100])
    assert demo.demo_pair(root=tmp_path) == got[0] and trained[2:] == [damaged.name]
    load_model(damaged)


# ----------------------------------------------------------------------------- 7. out of memory in a job


@pytest.mark.timeout(30)
@pytest.mark.parametrize("error", [MemoryError(), torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")])
def test_out_of_memory_in_a_job_is_one_clear_line_and_the_next_job_runs(error):
    def work(progress, cancel):
        progress("statistics", 0.5)
        raise error

    job = Job("statistics", work).start().wait(10)
    assert job.status == "failed" and job.detail is None
    assert job.error.startswith("out of memory") and "\n" not in job.error and "Traceback" not in job.error
    assert isinstance(out_of_memory(error), ResourceError)
    if str(error):
        assert "Tried to allocate 2.00 GiB" in job.error
    assert Job("next", lambda p, c: 42).start().wait(10).result == 42


@pytest.mark.timeout(120)
def test_a_merge_session_keeps_only_its_newest_merges_within_its_memory_budget(tmp_path, monkeypatch):
    import mudsc.diffinit.session as session_mod
    from mudsc.diffinit.config import make_config

    session, _ = _pair_session(tmp_path, (5, 6))
    first = session.merge(make_config(method="zipit"))
    monkeypatch.setattr(session_mod, "RESULTS_BYTES", 2 * session_mod._nbytes(first))  # room for two merges
    configs = [make_config(method="mudsc-zip", alpha=a) for a in (0.2, 0.4, 0.6)]
    results = [session.merge(c) for c in configs]
    assert session.cached(make_config(method="zipit")) is None and session.cached(configs[0]) is None
    assert session.cached(configs[1]) is results[1] and session.cached(configs[2]) is results[2]


def test_the_server_config_keeps_polls_from_starving_jobs():
    """Every 1-s job poll is a script run; with Streamlit's gc.collect(2) after each, four sessions held
    the GIL long enough that a 1-s merge did not finish in minutes (benchmarks/RESULTS.md, "Studio under
    load"). The server runs with the repository's config file: the collection must stay off there."""
    import tomllib

    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["runner"]["postScriptGC"] is False
