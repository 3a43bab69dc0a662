"""AppTest of the Similarity, Alignment and Landscape pages with a seeded small session."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from streamlit.testing.v1 import AppTest

from mudsc.diffinit.config import make_config

REPO = Path(__file__).resolve().parents[1]
PAGES = ("similarity", "alignment", "loss_landscape")


@pytest.fixture(scope="module")
def session(demo_parents):
    from mudsc.data import load_dataset
    from mudsc.diffinit.session import MergeSession
    from mudsc.models.checkpoint import load_model

    models = [load_model(p)[0] for p in demo_parents]
    return MergeSession(models, load_dataset("digits"), stats_images=250, eval_images=200)


def _page(name, session=None, result=None) -> AppTest:
    at = AppTest.from_file(str(REPO / "pages" / f"{name}.py"), default_timeout=120)
    if session is not None:
        at.session_state["session"] = session
        at.session_state["result"] = result
        if result is not None:
            at.session_state["config"] = result.config
    return at.run()


def _charts(at) -> int:
    return len(at.get("plotly_chart"))


@pytest.mark.parametrize("name", PAGES)
def test_guard_without_session(name):
    at = _page(name)
    assert not at.exception
    assert any("Parents page" in i.value for i in at.info)
    assert _charts(at) == 0


@pytest.mark.parametrize("name", PAGES)
def test_guard_without_merge(name, session):
    at = _page(name, session)
    assert not at.exception
    assert any("Merge page" in i.value for i in at.info)


def test_similarity_page(session):
    result = session.merge(make_config(method="zipit"))
    at = _page("similarity", session, result)
    assert not at.exception
    assert _charts(at) == 3  # scatter, agreement, heatmaps; the UMAP waits for its button
    at.radio(key="sim_choice").set_value("weight").run()
    at.selectbox(key="sim_space").set_value(result.spaces[-1]).run()
    assert not at.exception
    at.button(key="umap_go").click().run()  # a background job: the first UMAP compiles numba code
    assert not at.exception
    at.session_state["jobs"]["umap"].job.wait(120)
    at.run()
    assert not at.exception
    assert _charts(at) == 4
    assert {"similarity scatter " + result.spaces[-1], "matching agreement per unit space"} <= set(
        at.session_state["figures"])


def test_alignment_page(session):
    result = session.merge(make_config(method="zipit"))
    at = _page("alignment", session, result)
    assert not at.exception
    assert _charts(at) == 2  # merges within/across and the merge map; resnet20 has no groups
    assert any("No grouped unit spaces" in i.value for i in at.info)
    at.selectbox(key="al_space").set_value(result.spaces[3]).run()
    assert not at.exception


def test_landscape_page_offers_the_full_merge_for_a_partial_one(session):
    partial = session.merge(make_config(method="permute", cut="layer2.1"))
    at = _page("loss_landscape", session, partial)
    assert not at.exception
    assert any("partial merge (cut layer2.1)" in i.value and "no single network in one basis" in i.value
               and "full merge" in i.value for i in at.info), [i.value for i in at.info]
    assert _charts(at) == 0
    at.button(key="ls_full_merge").click().run()
    assert not at.exception
    result = at.session_state["result"]
    assert result.config == partial.config.model_copy(update={"cut": "full"}) and not result.multihead
    assert at.session_state["config"] == result.config
    assert any("press Compute landscape" in i.value for i in at.info)  # the page now offers the full merge's


def _compute_small_landscape(session, result, *, resolution: int) -> AppTest:
    """The Landscape page with a preview-BN grid of `resolution` points, no other merges, computed."""
    at = _page("loss_landscape", session, result)
    assert not at.exception
    at.multiselect(key="ls_others").set_value([])
    at.slider(key="ls_res").set_value(resolution)
    at.radio(key="ls_bn").set_value("preview")
    at.number_input(key="ls_eval").set_value(20)
    next(b for b in at.button if b.label == "Compute landscape").click().run()
    assert not at.exception
    at.session_state["jobs"]["landscape"].job.wait(120)
    return at.run()


def test_landscape_page_computes_a_small_grid(session):
    at = _compute_small_landscape(session, session.merge(make_config(method="permute")), resolution=3)
    assert not at.exception
    job = at.session_state["jobs"]["landscape"].job
    assert job.status == "done" and job.result.complete
    assert job.result.model_labels[:3] == ["parent 0'", "parent 1'", "merge: permute"]
    assert _charts(at) == 1 and len(at.dataframe) == 1


def test_landscape_page_refuses_a_grid_too_large_and_keeps_the_merge(session, monkeypatch):
    import landscape.grid

    monkeypatch.setattr(landscape.grid, "available_memory", lambda device: 2 ** 20)  # a 1 MiB machine
    result = session.merge(make_config(method="permute"))
    at = _compute_small_landscape(session, result, resolution=5)
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any(e.startswith("Landscape failed: a ") and "GiB" in e and "lower the grid resolution" in e
               for e in errors), errors
    assert at.session_state["result"] is result and at.session_state["session"] is session
    assert not at.get("expander")  # a user error, not a crash: no traceback


def test_landscape_page_pca_with_every_methods_primed_parents(session):
    result = session.merge(make_config(method="zipit"))
    at = _page("loss_landscape", session, result)
    at.radio(key="ls_plane").set_value("pca")
    at.checkbox(key="ls_all_parents").check()
    at.multiselect(key="ls_others").set_value(["permute"])
    at.slider(key="ls_res").set_value(3)
    at.radio(key="ls_bn").set_value("preview")
    at.number_input(key="ls_eval").set_value(20)
    next(b for b in at.button if b.label == "Compute landscape").click().run()
    at.session_state["jobs"]["landscape"].job.wait(120)
    at.run()
    assert not at.exception
    res = at.session_state["jobs"]["landscape"].job.result
    assert res.model_labels == ["parent 0' (merge: zipit)", "parent 1' (merge: zipit)", "merge: zipit",
                                "parent 0' (merge: permute)", "parent 1' (merge: permute)", "merge: permute"]
    assert res.settings["plane"]["models"] == res.model_labels  # the PCA plane goes through all six
    legend = {t.get("name") for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"] if t.get("showlegend")}
    assert {"merge: zipit", "merge: permute"} <= legend  # one colour per method


def test_view_memo_is_keyed_by_the_session_fingerprint():
    def script():
        import streamlit as st

        from pages._views import memo

        st.session_state["calls"] = st.session_state.get("calls", 0)

        def compute():
            st.session_state["calls"] += 1
            return st.session_state["session_key"]

        st.session_state["shown"] = memo(st.session_state["result"], "view", compute)

    result = SimpleNamespace(config=make_config(method="zipit"))
    at = AppTest.from_function(script)
    at.session_state["result"] = result
    at.session_state["session_key"] = ("parents a",)
    at.run()
    at.run()  # the same content: served from the memo
    assert at.session_state["shown"] == ("parents a",) and at.session_state["calls"] == 1
    at.session_state["session_key"] = ("parents b",)  # other parents, same merge config
    at.run()
    assert at.session_state["shown"] == ("parents b",) and at.session_state["calls"] == 2

