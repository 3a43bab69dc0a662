"""The studio's settings, session state, cached resources and background jobs (UI plumbing, no math).

Canonical state lives in ``st.session_state`` under plain keys, never in widget keys:

- ``settings``: :class:`AppSettings`, read once per browser session by ``app.py``
- ``data``: ``(dataset, data_dir, data_img_size)`` the parents are evaluated on
- ``parents``: ``list[mudsc.studio.Parent]``
- ``session`` / ``session_key``: the ready :class:`~mudsc.diffinit.session.MergeSession` and its fingerprint
- ``config`` / ``result``: the current ``MergeConfig`` and the latest ``MergeResult``
- ``sweeps``: ``{"alpha" | "cut": {"base": MergeConfig, "rows": list[dict]}}``
- ``landscape``: ``{"tag": (session_key, MergeConfig), "holder": {"plan", "partial"}, "result"}``, the
  Landscape page's latest job (``jobs()["landscape"]``), what it plans and what it has computed
- ``figures``: ``{title: plotly Figure}``, every figure a page draws, for the Export page
- ``jobs``: ``{name: Tracked}``, long work (a :class:`mudsc.studio.jobs.Job`) that survives reruns; all
  sessions' jobs share the server's job slots (``$MUDSC_MAX_JOBS``), and a session's jobs are cancelled
  and its heavy keys dropped when the session ends (:class:`SessionHold`)

Cached resources are keyed by content fingerprints (file sha256, MergeConfig), never by tensors.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import streamlit as st

from mudsc.diffinit.config import MergeConfig
from mudsc.diffinit.session import MergeResult, MergeSession
from mudsc.studio.figure_export import RETRY_AFTER_S
from mudsc.studio.jobs import Job, heavy_slots
from mudsc.studio.parents import Parent, load_parent

POLL_SECONDS = 1.0  # polls rerun on the thread the jobs share the GIL with: not more often


@dataclass(frozen=True)
class AppSettings:
    """Everything the app reads from its environment, once."""

    home: Path                      # $MUDSC_HOME: uploads, converted parents, exports, the demo
    max_upload_mb: int = 200        # $MUDSC_MAX_UPLOAD_MB
    stats_images: int = 1000        # images for the activation statistics ($MUDSC_STATS_IMAGES)
    eval_images: int | None = None  # held-out images per evaluation, None: all ($MUDSC_EVAL_IMAGES)
    batch_size: int = 250
    inline_wait_s: float = 2.0      # a job that finishes this fast shows its result in the same run
    merge_ahead: int = 4            # alpha steps each side merged ahead on small pairs ($MUDSC_MERGE_AHEAD; 0: off)

    @classmethod
    def from_env(cls) -> "AppSettings":
        from mudsc.zoo.demo import home

        env = os.environ
        return cls(home=home(), max_upload_mb=int(env.get("MUDSC_MAX_UPLOAD_MB", 200)),
                   stats_images=int(env.get("MUDSC_STATS_IMAGES", 1000)),
                   eval_images=int(env["MUDSC_EVAL_IMAGES"]) if env.get("MUDSC_EVAL_IMAGES") else None,
                   merge_ahead=int(env.get("MUDSC_MERGE_AHEAD", 4)))


def settings() -> AppSettings:
    return st.session_state.setdefault("settings", AppSettings.from_env())


# ----------------------------------------------------------------------------- cached resources

@st.cache_data(show_spinner=False, max_entries=256)
def file_sha256(path: str, mtime_ns: int, size: int) -> str:
    """sha256 of a file, recomputed only when its modification time or size changes."""
    from mudsc.models.checkpoint import sha256_file

    return sha256_file(path)


def fingerprint(path: str | Path) -> tuple[str, str]:
    """``(resolved path, sha256)`` of a checkpoint: the key of everything derived from it."""
    p = Path(path).expanduser().resolve()
    st_ = p.stat()
    return str(p), file_sha256(str(p), st_.st_mtime_ns, st_.st_size)


@st.cache_resource(show_spinner="Evaluating the parent", max_entries=32)
def cached_parent(path: str, sha256: str, dataset: str, data_dir: str | None, data_img_size: int | None) -> Parent:
    """A checkpoint evaluated on a data set (checked to fit first, so a mismatch is a clear error)."""
    from mudsc.data import load_dataset
    from mudsc.studio.parent_sources import check_fits, read_info

    check_fits(read_info(path), load_dataset(dataset, data_dir, img_size=data_img_size), name=Path(path).name)
    return load_parent(path, dataset=dataset, data_dir=data_dir, data_img_size=data_img_size)


@st.cache_resource(show_spinner="Opening the merge session", max_entries=4)
def cached_session(files: tuple[tuple[str, str], ...], dataset: str, data_dir: str | None, data_img_size: int | None,
                   stats_images: int, eval_images: int | None, batch_size: int) -> MergeSession:
    """One MergeSession per set of parent files (by sha256), data and session options."""
    return MergeSession.from_paths([p for p, _ in files], dataset, data_dir, data_img_size=data_img_size,
                                   stats_images=stats_images,
                                   eval_images=eval_images, batch_size=batch_size)


@st.cache_data(show_spinner="Evaluating parents and ensemble", max_entries=16)
def cached_reference_rows(session_key: tuple, _session: MergeSession) -> list[dict]:
    """The parents' and the ensemble's rows of the metrics table: fixed per session, computed once."""
    from mudsc.studio.summary import reference_rows

    return reference_rows(_session)


def cached_metric_rows(session_key: tuple, config: MergeConfig, _session: MergeSession,
                       _result: MergeResult) -> list[dict]:
    """The metrics table of a merge: its own row next to the cached rows of the parents and the ensemble."""
    from mudsc.studio.summary import merged_row

    return [merged_row(_result, _session), *cached_reference_rows(session_key, _session)]


@st.cache_resource(show_spinner="Writing the merged checkpoint", max_entries=16)
def cached_export(session_key: tuple, config: MergeConfig, _session: MergeSession,
                  _result: MergeResult) -> Path:
    """``model.safetensors`` and ``manifest.json`` of a merge, in ``$MUDSC_HOME/exports/<digest>``."""
    from mudsc.diffinit.manifest import save_merge

    digest = hashlib.sha256(repr((session_key, config.model_dump_json())).encode()).hexdigest()[:16]
    out = settings().home / "exports" / digest
    save_merge(_result, _session, out)
    return out


@st.cache_data(show_spinner="Measuring what each cut merges", max_entries=16)
def cached_cut_costs(session_key: tuple, _session: MergeSession) -> dict[str, dict[str, float]]:
    """Per cut (and ``full``), the shares of parameters and FLOPs it merges: one pass per session."""
    from mudsc.models.multihead import cut_costs

    return cut_costs(_session.parents[0], _session.graph, _session.eval.x[:1])


@st.cache_resource(show_spinner=False, max_entries=32)
def cached_network_figure(session_key: tuple, cut: str, _session: MergeSession):
    """The drawing of the unit spaces with the cut: the same for every alpha, so drawn once per cut."""
    from mudsc.studio.merge_figures import network_figure

    return network_figure(_session.graph, cut, costs=cached_cut_costs(session_key, _session),
                          tasks=len(_session.tasks))


@st.cache_resource(show_spinner="Checking static image export", max_entries=1, ttl=RETRY_AFTER_S)
def static_export_works() -> bool:
    """Whether kaleido renders here, asked again after RETRY_AFTER_S: a renderer that failed (or
    appeared) is noticed within a minute, and a working one costs one tiny render a minute."""
    from mudsc.studio.figure_export import static_export_works as probe

    return probe()


# ----------------------------------------------------------------------------- merge session state

def current_session() -> MergeSession | None:
    return st.session_state.get("session")


def session_key() -> tuple | None:
    return st.session_state.get("session_key")


def drop_session() -> None:
    """Forget the session and everything computed from it (the parents changed)."""
    for key in ("session", "session_key", "result", "sweeps", "landscape", "figures"):
        st.session_state.pop(key, None)
    for name in ("stats", "merge", "ahead", "sweep_alpha", "sweep_cut", "landscape", "umap"):
        t = jobs().pop(name, None)
        if t is not None:
            t.job.cancel()


def require_session() -> MergeSession:
    """The ready merge session, or a pointer to the Parents page and stop."""
    session = current_session()
    if session is None:
        st.info("No merge session yet: load two or more compatible parents first.")
        st.page_link("pages/parents.py", label="Go to Parents", icon=":material/arrow_forward:")
        st.stop()
    return session


def figures() -> dict[str, Any]:
    return st.session_state.setdefault("figures", {})


# ----------------------------------------------------------------------------- background jobs

@dataclass
class Tracked:
    """A job with what it computes for (a config, a parent set): results for stale tags are ignored."""

    job: Job
    tag: Any
    taken: bool = False


# what a session holds that is worth freeing when it ends: its jobs' and merges' results and figures
HEAVY_KEYS = ("jobs", "result", "sweeps", "landscape", "figures")


class SessionHold:
    """Handle on one browser session's state, released by Streamlit when the session ends.

    Streamlit calls session-scoped resources' ``on_release`` when their session disconnects; then the
    session's running jobs are cancelled (their slots go to other sessions) and its results are dropped,
    rather than waiting for the session store to expire them.
    """

    def __init__(self, state: Any) -> None:
        self.state = state  # the session's SafeSessionState: safe to use from the server thread

    def release(self) -> None:
        for t in list(self.state["jobs"].values()) if "jobs" in self.state else ():
            t.job.cancel()
        for key in HEAVY_KEYS:
            if key in self.state:
                del self.state[key]


@st.cache_resource(scope="session", on_release=SessionHold.release, show_spinner=False)
def session_hold() -> SessionHold:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    return SessionHold(get_script_run_ctx().session_state)


def jobs() -> dict[str, Tracked]:
    session_hold()  # registers the release of this session's jobs at its end
    return st.session_state.setdefault("jobs", {})


def start_job(name: str, work: Callable, *, tag: Any = None, wait: bool = True, background: bool = False) -> Job:
    """Run `work(progress, cancel_event)` as job `name` (cancelling a running one of that name) once one
    of the server's job slots is free; wait up to ``inline_wait_s`` so quick work shows its result in
    this very run. A `background` job (work ahead of need) lets every other job go first."""
    old = jobs().get(name)
    if old is not None and old.job.running:
        old.job.cancel()
    job = Job(name, work, slots=heavy_slots(), background=background).start()
    jobs()[name] = Tracked(job, tag)
    if wait:
        deadline = time.monotonic() + settings().inline_wait_s
        while job.running and time.monotonic() < deadline and not rerun_requested():
            job.wait(0.02)
    return job


def rerun_requested() -> bool:
    """Whether the browser already asked for another run (say, the slider moved on): a widget inside a
    fragment does not interrupt the fragment's run, so an inline wait stops itself and that run shows
    the newer request. Streamlit has no public call for this; its script-request state is read
    defensively and, should that change, inline waits merely run their full length again."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    state = getattr(getattr(get_script_run_ctx(suppress_warning=True), "script_requests", None), "_state", None)
    return getattr(state, "name", None) in ("RERUN", "STOP")


def drop_stale_run() -> None:
    """End this fragment run at once when the browser already asked for a newer one (the slider moved
    on while it waited): drawing a setting the user has left only delays the one they are on. Full
    runs of the page go on, as Streamlit reruns a fragment alone only from inside a fragment run."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx(suppress_warning=True)
    if rerun_requested() and ctx is not None and ctx.fragment_ids_this_run:
        st.rerun(scope="fragment")


def running(name: str) -> Tracked | None:
    t = jobs().get(name)
    return t if t is not None and t.job.running else None


def take(name: str, tag: Any = ...) -> Any:
    """The result of job `name` once it is done (and, if `tag` is given, was started for it), handed out once."""
    t = jobs().get(name)
    if t is None or t.job.status != "done" or t.taken or (tag is not ... and t.tag != tag):
        return None
    t.taken = True
    return t.job.result


def job_status(name: str, label: str, *, during: Callable[[], None] | None = None) -> None:
    """Progress of a running job (polled without rerunning the page, `during` drawn under the bar at
    every poll), or why it failed."""
    t = jobs().get(name)
    if t is None:
        return
    job = t.job
    if job.running:
        _poll(name, label, during)
    elif job.status == "failed":
        st.error(f"{label} failed: {job.error}")
        if job.detail:
            with st.expander("Traceback"):
                st.code(job.detail)
    elif job.status == "cancelled":
        st.caption(f"{label}: cancelled.")


@st.fragment(run_every=POLL_SECONDS)
def _poll(name: str, label: str, during: Callable[[], None] | None) -> None:
    t = jobs().get(name)
    if t is None or not t.job.running:
        st.rerun()  # the whole page picks up the result
    job = t.job
    bar, stop = st.columns([5, 1], vertical_alignment="center")
    bar.progress(job.fraction, text=f"{label}: {job.describe()}")
    stop.button("Cancel", key=f"cancel_{name}", on_click=job.cancel)
    if during is not None:
        during()
