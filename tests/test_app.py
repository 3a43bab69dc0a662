"""The Streamlit app through AppTest: every page runs from app.py with a seeded session, bad input shows
an error and keeps the state, every widget has a key, engines never import Streamlit."""
import ast
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Block, Widget

REPO = Path(__file__).resolve().parents[1]


def test_engines_never_import_streamlit():
    offenders = []
    for pkg in ("mudsc", "landscape"):
        for f in (REPO / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(n.split(".")[0] == "streamlit" for n in names):
                    offenders.append(str(f.relative_to(REPO)))
    assert offenders == []


@pytest.fixture(autouse=True)
def _fresh_caches():
    # Streamlit caches are process-global: one test's cached sessions must not leak into the next.
    st.cache_data.clear()
    st.cache_resource.clear()
    yield


@pytest.fixture(scope="module")
def merge_session(demo_parents):
    from mudsc.diffinit.session import MergeSession

    session = MergeSession.from_paths([str(p) for p in demo_parents], "digits", stats_images=250, eval_images=200)
    session.activation_stats()
    return session


def small_settings(**changes):
    from pages._state import AppSettings

    base = AppSettings.from_env()
    return AppSettings(**{**base.__dict__, "stats_images": 250, "eval_images": 200, "inline_wait_s": 30.0,
                          "merge_ahead": 0,
                          **changes})


def open_app(page: str | None = None, **state) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.session_state["settings"] = small_settings()
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    if page:
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def unkeyed_widgets(at: AppTest) -> list[str]:
    out = []

    def walk(node):
        if isinstance(node, Widget) and not node.key:
            out.append(f"{type(node).__name__} {getattr(node, 'label', '')!r}")
        if isinstance(node, Block):
            for child in node.children.values():
                walk(child)

    walk(at._tree)
    return out


def table(at: AppTest, column: str):
    """The first dataframe on the page with `column` (AppTest does not keep keys of read-only tables)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def wait_jobs(at: AppTest, *names: str) -> None:
    for name in names:
        at.session_state["jobs"][name].job.wait(120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]


# ----------------------------------------------------------------------------- Parents

def test_parents_page_bad_path_keeps_state(demo_parents):
    from mudsc.studio.parents import load_parent

    at = open_app()
    assert any("No parents loaded" in i.value for i in at.info)
    at.session_state["parents"] = [load_parent(str(demo_parents[0]), dataset="digits")]
    at.text_input(key="ckpt_path").set_value("/does/not/exist.safetensors").run()
    at.button(key="add_parent").click().run()
    assert not at.exception
    assert any("does not exist" in e.value for e in at.error)
    assert len(at.session_state["parents"]) == 1  # the loaded parent survived the bad action
    assert table(at, "own-task accuracy")["own-task accuracy"].iloc[0] > 0.9
    assert any("second parent" in i.value for i in at.info)
    assert unkeyed_widgets(at) == []


def test_upload_over_the_limit_keeps_state(demo_parents):
    from mudsc.studio.parents import load_parent

    at = open_app(parents=[load_parent(str(demo_parents[0]), dataset="digits")])
    at.session_state["settings"] = small_settings(max_upload_mb=1)
    at.run()
    at.file_uploader(key="upload").upload("huge.safetensors", b"\0" * (2 * 2**20 + 1)).run()
    at.button(key="add_upload").click().run()
    assert not at.exception
    assert any("over the 1 MB upload limit" in e.value for e in at.error)
    assert len(at.session_state["parents"]) == 1


def test_upload_and_plain_weights_build_the_session(demo_parents, tmp_path):
    from mudsc.models.checkpoint import load_model

    at = open_app()
    at.file_uploader(key="upload").upload(demo_parents[0].name, demo_parents[0].read_bytes()).run()
    at.button(key="add_upload").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.session_state["parents"]) == 1

    model, _ = load_model(demo_parents[1])  # the second parent as a plain state dict, as timm users have it
    plain = tmp_path / "b.pt"
    torch.save(model.state_dict(), plain)
    at.text_input(key="plain_arch").set_value("resnet20")
    at.text_input(key="plain_kwargs").set_value("width=1 strides=1/1/2")
    at.text_input(key="plain_classes").set_value("5-9")
    at.text_input(key="plain_path").set_value(str(plain)).run()
    at.button(key="add_plain").click().run()
    assert not at.error, [e.value for e in at.error]
    parents = at.session_state["parents"]
    assert [tuple(p.model.classes) for p in parents] == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    assert Path(parents[1].path).suffix == ".safetensors"  # stored self-describing for the manifest

    if "session" not in at.session_state:
        wait_jobs(at, "stats")
    session = at.session_state["session"]
    assert [s["unit space"] for s in table(at, "unit space").to_dict("records")] == \
        [s.name for s in session.graph.spaces]
    acc = table(at, "trained on")
    assert acc["task 0-4"].iloc[0] > 0.9 and acc["task 5-9"].iloc[1] > 0.9
    assert len(session.eval) == 200
    assert unkeyed_widgets(at) == []


def _variant(demo_parent, path: Path, **changes) -> Path:
    """The demo parent's architecture with `changes` to its spec, freshly initialised, saved to `path`."""
    from mudsc.models import model_from_spec
    from mudsc.models.checkpoint import load_model, save_model

    _, meta = load_model(demo_parent)
    spec = {**meta["spec"], **changes, "kwargs": {**meta["spec"]["kwargs"], **changes.pop("kwargs", {})}}
    return save_model(model_from_spec(spec), path)


def test_corrupt_and_mismatched_uploads_keep_state(demo_parents, tmp_path):
    from mudsc.studio.parents import load_parent

    at = open_app(parents=[load_parent(str(demo_parents[0]), dataset="digits")])
    at.file_uploader(key="upload").upload("broken.safetensors", b"\x10\x00\x00\x00not a safetensors file").run()
    at.button(key="add_upload").click().run()
    assert not at.exception
    assert any("broken.safetensors" in e.value for e in at.error), [e.value for e in at.error]
    assert len(at.session_state["parents"]) == 1

    mnist_sized = _variant(demo_parents[1], tmp_path / "mnist_sized.safetensors", img_size=28)
    at.file_uploader(key="upload").upload(mnist_sized.name, mnist_sized.read_bytes()).run()
    at.button(key="add_upload").click().run()
    assert not at.exception
    assert any("expects 1x28x28 inputs, but digits images are 1x8x8" in e.value for e in at.error), \
        [e.value for e in at.error]
    assert [p.name for p in at.session_state["parents"]] == [Path(demo_parents[0]).name]


def test_checkpoint_with_nans_is_refused_by_path(demo_parents, tmp_path):
    from mudsc.models.checkpoint import load_model, save_model
    from mudsc.studio.parents import load_parent

    model, _ = load_model(demo_parents[1])
    with torch.no_grad():
        next(model.parameters())[0].fill_(float("nan"))
    broken = save_model(model, tmp_path / "nan_parent.safetensors")
    at = open_app(parents=[load_parent(str(demo_parents[0]), dataset="digits")])
    at.text_input(key="ckpt_path").set_value(str(broken)).run()
    at.button(key="add_parent").click().run()
    assert not at.exception
    assert any("NaN or Inf" in e.value for e in at.error), [e.value for e in at.error]
    assert len(at.session_state["parents"]) == 1


def test_unknown_timm_name_is_an_error(demo_parents, tmp_path):
    from mudsc.studio.parents import load_parent

    at = open_app(parents=[load_parent(str(demo_parents[0]), dataset="digits")])
    weights = tmp_path / "w.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, weights)
    at.text_input(key="plain_arch").set_value("timm:resnet_nonexistent_42")
    at.text_input(key="plain_classes").set_value("0-4")
    at.text_input(key="plain_path").set_value(str(weights)).run()
    at.button(key="add_plain").click().run()
    assert not at.exception
    assert any("resnet_nonexistent_42" in e.value and "unknown" in e.value.lower() for e in at.error), \
        [e.value for e in at.error]
    assert len(at.session_state["parents"]) == 1


def test_data_directory_without_data_keeps_the_data_and_parents(demo_parents, tmp_path):
    from mudsc.studio.parents import load_parent

    at = open_app(parents=[load_parent(str(demo_parents[0]), dataset="digits")])
    (tmp_path / "empty").mkdir()
    at.selectbox(key="data_kind").set_value("mnist").run()
    assert any("Give the MNIST directory" in i.value for i in at.info)
    at.text_input(key="data_path").set_value(str(tmp_path / "empty")).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any(e.startswith("Keeping digits:") and str(tmp_path / "empty") in e for e in errors), errors
    assert at.session_state["data"] == ("digits", None, None)
    assert len(at.session_state["parents"]) == 1
    assert table(at, "own-task accuracy")["own-task accuracy"].iloc[0] > 0.9


def test_an_image_folder_of_mixed_sizes_loads_at_the_size_the_data_selector_gives(demo_parents, tmp_path):
    from test_byom import _digit_folder

    from mudsc.studio.parents import load_parent

    folder = _digit_folder(tmp_path / "mixed", (16, 16), (24, 16), (16, 20))
    at = open_app(parents=[load_parent(str(demo_parents[0]), dataset="digits")])
    at.selectbox(key="data_kind").set_value("imagefolder").run()
    at.text_input(key="data_path").set_value(str(folder)).run()
    errors = [e.value for e in at.error]
    assert any(e.startswith("Keeping digits:") and "--data-img-size" in e for e in errors), errors
    at.number_input(key="data_img_size").set_value(8).run()
    assert not at.exception and not at.error
    assert at.session_state["data"] == ("imagefolder", str(folder), 8)
    assert any("loaded at 8x8" in c.value for c in at.caption)
    assert table(at, "own-task accuracy")["own-task accuracy"].iloc[0] > 0.5  # the 8-pixel parent reads them


def test_incompatible_pair_is_refused_and_both_parents_stay(demo_parents, tmp_path):
    from mudsc.studio.parents import load_parent

    wide = _variant(demo_parents[1], tmp_path / "wide.safetensors", kwargs={"width": 2})
    at = open_app(parents=[load_parent(str(demo_parents[0]), dataset="digits"),
                           load_parent(str(wide), dataset="digits")])
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any(e.startswith("These parents cannot be merged:") and "width or shape" in e for e in errors), errors
    assert len(at.session_state["parents"]) == 2 and "session" not in at.session_state
    # Removing the odd one out and adding the right partner gives a working session again.
    at.multiselect(key="remove_names").set_value(["wide.safetensors"]).run()
    at.button(key="remove_parents").click().run()
    at.text_input(key="ckpt_path").set_value(str(demo_parents[1])).run()
    at.button(key="add_parent").click().run()
    if "session" not in at.session_state:
        wait_jobs(at, "stats")
    assert "session" in at.session_state and not at.error


def test_removing_a_parent_drops_the_session(demo_parents):
    from mudsc.studio.parents import load_parent

    at = open_app(parents=[load_parent(str(p), dataset="digits") for p in demo_parents])
    if "session" not in at.session_state:
        wait_jobs(at, "stats")
    assert "session" in at.session_state
    at.multiselect(key="remove_names").set_value([demo_parents[1].name]).run()
    at.button(key="remove_parents").click().run()
    assert len(at.session_state["parents"]) == 1
    assert "session" not in at.session_state


def test_removing_a_parent_cancels_a_running_landscape(demo_parents, monkeypatch):
    import threading

    import landscape
    from mudsc.diffinit.config import make_config
    from mudsc.studio.parents import load_parent

    started = threading.Event()

    def held(*args, should_stop, **kwargs):  # a landscape that runs until it is cancelled
        started.set()
        should_stop.wait(60)

    monkeypatch.setattr(landscape, "compute_landscape", held)
    at = open_app(parents=[load_parent(str(p), dataset="digits") for p in demo_parents])
    if "session" not in at.session_state:
        wait_jobs(at, "stats")
    at.session_state["result"] = at.session_state["session"].merge(make_config(method="permute"))
    at.switch_page("pages/loss_landscape.py").run()
    at.multiselect(key="ls_others").set_value([])
    at.number_input(key="ls_eval").set_value(20)
    next(b for b in at.button if b.label == "Compute landscape").click().run()
    job = at.session_state["jobs"]["landscape"].job
    assert started.wait(60) and job.running

    at.switch_page("pages/parents.py").run()
    at.multiselect(key="remove_names").set_value([demo_parents[1].name]).run()
    at.button(key="remove_parents").click().run()
    assert "landscape" not in at.session_state["jobs"] and "landscape" not in at.session_state
    assert job.wait(30).status == "cancelled"


def test_different_init_parents_align_then_fuse_on_the_same_init_page(demo_parents):
    import json

    from mudsc.cli import main
    from mudsc.studio.parents import load_parent

    at = open_app(parents=[load_parent(str(p), dataset="digits") for p in demo_parents])
    if "session" not in at.session_state:
        wait_jobs(at, "stats")
    at.selectbox(key="atf_align").set_value("permute")
    at.button(key="atf_run").click().run()
    wait_jobs(at, "align_family")
    same = at.session_state["same_session"]
    assert same.alignment is not None and same.options["align"] == "permute"
    assert any("Aligned with permute" in s.value for s in at.success)
    assert at.session_state["session"] is not None  # the different-init session stays as it was

    at.switch_page("pages/same_init.py").run()
    assert any("aligned with permute" in c.value for c in at.caption)
    at.multiselect(key="si_methods").set_value(["regmean"]).run()
    if "same_stats" in at.session_state["jobs"]:
        wait_jobs(at, "same_stats")
    metrics = next(d.value for d in at.dataframe if "mean (task-aware)" in d.value.columns).set_index("model")
    assert any(m.startswith("regmean") for m in metrics.index) and "base" in metrics.index
    out = at.session_state["same_export"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["session"]["align"] == "permute" and "base" not in manifest["inputs"]
    again = out.parent / "again"
    assert main(["--device", "cpu", "merge-same", "--manifest", str(out / "manifest.json"), "--out", str(again),
                 "--quiet"]) == 0
    for o in manifest["outputs"]:
        assert (again / o["path"]).read_bytes() == (out / o["path"]).read_bytes()


# ----------------------------------------------------------------------------- Merge

def test_merge_page_without_session_points_to_parents():
    at = open_app("merge")
    assert any("No merge session" in i.value for i in at.info)


def test_merge_page_remerges_on_alpha_and_cut(merge_session):
    at = open_app("merge", session=merge_session, session_key=("test",))
    result = at.session_state["result"]
    assert result.config == at.session_state["config"]
    metrics = table(at, "per-task")
    assert list(metrics["model"].str.split(" ").str[0]) == ["merged", "parent", "parent", "ensemble"]
    assert metrics["joint"].iloc[-1] > metrics["joint"].iloc[1]  # the ensemble beats a single parent jointly

    at.slider(key="m_alpha").set_value(0.2).run()
    published = at.session_state["result"]
    assert published.config.alpha == 0.2 and published.config.patience == 5

    # a smaller patience stops the same seeded sweeps earlier: its history is a prefix of the published one
    at.number_input(key="m_patience").set_value(1).run()
    early = at.session_state["result"].solution
    assert at.session_state["result"].config.patience == 1 and early.sweeps < published.solution.sweeps
    assert early.history == published.solution.history[:early.sweeps]
    at.number_input(key="m_patience").set_value(5).run()

    # sampled positions make their own statistics pass, seeded by the seed; the config carries both
    at.number_input(key="m_positions").set_value(16).run()
    sampled = at.session_state["result"]
    assert (sampled.config.stats_positions, sampled.config.seed) == (16, 0) and (16, 0) in merge_session._act
    assert sampled.solution.history != published.solution.history  # other correlations, other scores
    at.number_input(key="m_seed").set_value(1).run()
    assert at.session_state["result"].config.seed == 1 and (16, 1) in merge_session._act
    at.number_input(key="m_seed").set_value(0).run()
    at.number_input(key="m_positions").set_value(0).run()
    assert at.session_state["result"].config == published.config  # back to every position

    at.select_slider(key="m_cut").set_value("layer2").run()
    result = at.session_state["result"]
    assert result.config.cut == "layer2" and result.multihead
    assert result.params > sum(t.numel() for t in merge_session.parents[0].parameters())  # per-task tails

    space = merge_session.graph.spaces[3].name
    at.session_state["m_overrides"] = {"edited_rows": {3: {"alpha": 0.9}}, "added_rows": [], "deleted_rows": []}
    at.run()
    assert at.session_state["result"].config.alpha_overrides == ((space, 0.9),)
    assert "Unit spaces and cut" in at.session_state["figures"]

    at.selectbox(key="m_method").set_value("ensemble").run()
    assert at.select_slider(key="m_cut").disabled
    assert at.session_state["result"].config.cut == "full"
    assert at.button(key="sweep_alpha_run").disabled
    assert unkeyed_widgets(at) == []


def test_moving_the_cut_to_a_mid_stage_block_changes_the_metrics_and_parameters(merge_session):
    from mudsc.diffinit.config import make_config
    from mudsc.models.multihead import cut_costs

    # from the whole-network merge, not the demo's first (partial) one
    at = open_app("merge", session=merge_session, session_key=("mid-stage",), config=make_config())
    cuts = at.select_slider(key="m_cut").options
    assert cuts == [c.name for c in merge_session.graph.cuts] + ["full (whole network)"]
    full = table(at, "per-task").iloc[0]
    at.select_slider(key="m_cut").set_value("layer2.1").run()
    assert not at.exception
    result = at.session_state["result"]
    assert result.config.cut == "layer2.1" and result.multihead
    mid = table(at, "per-task").iloc[0]
    assert "cut layer2.1" in mid["model"]
    assert mid["parameters"] > full["parameters"]  # the blocks after layer2.1 run once per task
    assert (mid["joint"], mid["per-task"], mid["FLOPs"]) != (full["joint"], full["per-task"], full["FLOPs"])
    params = next(m for m in at.metric if m.label == "Parameters (vs one parent)")
    assert params.value == f"{mid['parameters'] / table(at, 'per-task').iloc[1]['parameters']:.2f}x"
    share = cut_costs(merge_session.parents[0], merge_session.graph, merge_session.eval.x[:1])["layer2.1"]
    assert any(f"Merging up to **layer2.1** shares {share['params_share']:.1%} of the parameters and "
               f"{share['flops_share']:.1%} of the FLOPs" in c.value for c in at.caption)
    assert "merged up to: layer2.1" in at.session_state["figures"]["Unit spaces and cut"].layout.title.text


def test_demo_first_screen_shows_a_merge_above_the_best_parent(demo_parents):
    from mudsc.diffinit.session import MergeSession
    from mudsc.studio.demo import first_config

    # as the app builds it: 1,000 statistics images, every held-out image
    session = MergeSession.from_paths([str(p) for p in demo_parents], "digits")
    at = open_app("merge", session=session, session_key=("demo-first",))
    result = at.session_state["result"]
    assert result.config == first_config(session.paths) and result.config.cut != "full"
    rows = table(at, "per-task")
    assert rows["model"].iloc[0].startswith("merged") and rows["model"].iloc[-1].startswith("ensemble")
    assert rows["joint"].iloc[0] > rows["joint"].iloc[1:-1].max()  # the first merge beats the better parent
    assert any("one small pair" in i.value for i in at.info)


def test_other_parents_start_from_the_default_merge(merge_session):
    from mudsc.diffinit.config import make_config
    from mudsc.studio.demo import first_config, is_demo

    assert is_demo(merge_session.paths)
    renamed = [str(Path(p).with_name(f"copy_{Path(p).name}")) for p in merge_session.paths]
    assert not is_demo(renamed) and first_config(renamed) == make_config()


def test_depth_sweep_runs_in_the_background(merge_session):
    at = open_app("merge", session=merge_session, session_key=("test",))
    at.button(key="sweep_cut_run").click().run()
    wait_jobs(at, "sweep_cut")
    rows = at.session_state["sweeps"]["cut"]["rows"]
    assert [r["cut"] for r in rows] == [c.name for c in merge_session.graph.cuts] + ["full"]
    fig = at.session_state["figures"]["Depth sweep"]
    assert [t.name for t in fig.data] == ["joint", "per-task", "parameters merged", "FLOPs merged"]
    assert list(fig.data[2].y) == [100 * r["merged_params_share"] for r in rows] and fig.data[2].y[-1] == 100
    assert {a.text.split(" ")[0] for a in fig.layout.annotations} >= {"ensemble", "best"}
    assert not at.exception


def test_alpha_sweep_marks_the_alpha_chosen_on_training_images(merge_session):
    at = open_app("merge", session=merge_session, session_key=("selection",))
    at.button(key="sweep_alpha_run").click().run()
    wait_jobs(at, "sweep_alpha")
    sweep = at.session_state["sweeps"]["alpha"]
    assert sweep["selected"] in [r["alpha"] for r in sweep["rows"]]
    assert any(c.value == sweep["note"] and "held-out training images" in c.value for c in at.caption)
    fig = at.session_state["figures"]["Alpha sweep"]
    assert [s.x0 for s in fig.layout.shapes if s.line.dash == "dash"] == [sweep["selected"]]
    assert any(s.x0 == at.session_state["config"].alpha and s.line.dash != "dash" for s in fig.layout.shapes)
    assert not at.exception


# ----------------------------------------------------------------------------- Export

def test_export_page_offers_checkpoint_commands_tables_and_figures(merge_session):
    from mudsc.diffinit.config import make_config
    from mudsc.studio.merge_figures import network_figure

    config = make_config(alpha=0.3, cut="layer3")
    result = merge_session.merge(config)
    at = open_app("export", session=merge_session, session_key=("test",), config=config, result=result,
                  figures={"Unit spaces": network_figure(merge_session.graph, "layer3")})
    labels = [d.label for d in at.get("download_button")]
    for want in ("model.safetensors", "manifest.json", "both as merge.zip", "CSV", "LaTeX", "HTML"):
        assert want in labels
    code = [c.value for c in at.code]
    assert any(c.startswith("mudsc merge --manifest manifest.json") for c in code)
    full = next(c for c in code if "--parents" in c)
    assert "--cut layer3" in full and "--alpha 0.3" in full and "--eval-images 200" in full
    assert any(r"\begin{tabular}" in c for c in code)
    exports = list((Path(os.environ["MUDSC_HOME"]) / "exports").glob("*/manifest.json"))
    assert exports and all((m.parent / "model.safetensors").is_file() for m in exports)
    assert unkeyed_widgets(at) == []


def _chart_points(chart) -> int:
    """How many data points a rendered plotly chart holds (x, y or z values over its traces)."""
    fig = json.loads(chart.proto.spec)
    count = 0
    for trace in fig.get("data", []):
        for axis in ("x", "y", "z", "values"):
            v = trace.get(axis)
            if isinstance(v, dict) and "bdata" in v:  # plotly's typed-array encoding
                count += int(v.get("shape", "1").split(",")[0]) if "shape" in v else 1
            elif isinstance(v, list):
                count += len(v)
    return count


def test_demo_flow_merge_then_export_reproduces_the_shown_accuracy(merge_session):
    from mudsc.evaluate import multitask_metrics, predict
    from mudsc.models.checkpoint import load_model

    at = open_app("merge", session=merge_session, session_key=("demo-flow",))
    before = table(at, "per-task")["joint"].iloc[0]
    at.slider(key="m_alpha").set_value(0.8).run()
    shown = table(at, "per-task")
    assert shown["model"].iloc[0].startswith("merged") and "alpha 0.8" in shown["model"].iloc[0]
    assert shown["joint"].iloc[0] != before  # moving alpha changed the merge and its metrics
    charts = at.get("plotly_chart")
    assert charts and all(_chart_points(c) > 0 for c in charts)

    at.switch_page("pages/export.py").run()
    assert not at.exception
    config = at.session_state["result"].config
    manifests = [m for m in (Path(os.environ["MUDSC_HOME"]) / "exports").glob("*/manifest.json")
                 if json.loads(m.read_text())["config"] == config.model_dump(mode="json")]
    assert len(manifests) == 1
    model, info = load_model(manifests[0].parent / "model.safetensors")
    logits = predict(model, merge_session.eval, device="cpu")
    got = multitask_metrics(logits, merge_session.eval.y, model.output_classes, merge_session.tasks)
    assert got.joint == pytest.approx(shown["joint"].iloc[0], abs=1e-9)
    assert got.per_task == pytest.approx(shown["per-task"].iloc[0], abs=1e-9)
    assert info["merge"]["alpha"] == 0.8


def test_export_page_refuses_the_ensemble(merge_session):
    from mudsc.diffinit.config import make_config

    config = make_config(method="ensemble")
    at = open_app("export", session=merge_session, session_key=("test",), config=config,
                  result=merge_session.merge(config))
    assert any("upper bound" in i.value for i in at.info)
    assert "model.safetensors" not in [d.label for d in at.get("download_button")]


# ----------------------------------------------------------------------------- server

@pytest.mark.slow
def test_demo_button_loads_both_parents(demo_parents):
    import shutil

    cache = Path(os.environ["MUDSC_HOME"]) / "demo"  # pre-trained pair where demo_pair() looks: no retraining
    cache.mkdir(parents=True, exist_ok=True)
    for p in demo_parents:
        shutil.copy(p, cache / p.name)
    at = open_app()
    at.button(key="load_demo").click().run()
    wait_jobs(at, "demo")
    parents = at.session_state["parents"]
    assert [tuple(p.model.classes) for p in parents] == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    assert all(p.task_acc[",".join(map(str, p.model.classes))] > 0.9 for p in parents)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_server_health():
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ},
    )
    try:
        body = ""
        for _ in range(60):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(1)
        assert body == "ok"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# ----------------------------------------------------------------------------- load and faults on the Merge page

def _progress_texts(at: AppTest) -> list[str]:
    return [p.proto.text for p in at.get("progress")]


def test_a_merge_waits_in_line_for_the_servers_job_slot_and_says_so(merge_session):
    import threading

    from mudsc.diffinit.config import make_config
    from mudsc.studio.jobs import Job, heavy_slots

    release = threading.Event()
    other = Job("other session's landscape", lambda p, c: release.wait(60), slots=heavy_slots()).start()
    try:
        while other.status != "running":
            time.sleep(0.01)
        at = open_app(config=make_config(alpha=0.35))
        at.session_state["settings"] = small_settings(inline_wait_s=0.2)
        at.session_state["session"] = merge_session
        at.session_state["session_key"] = ("queued",)
        at.switch_page("pages/merge.py").run()
        assert not at.exception, [e.value for e in at.exception]
        assert "Merging: queued: 1st in line" in _progress_texts(at)
        assert "result" not in at.session_state
    finally:
        release.set()
    wait_jobs(at, "merge")
    assert at.session_state["result"].config.alpha == 0.35 and not _progress_texts(at)


def test_a_merge_refused_for_memory_shows_the_size_and_keeps_the_session(demo_parents):
    from mudsc.diffinit.session import MergeSession
    from mudsc.errors import ResourceError

    session = MergeSession.from_paths([str(p) for p in demo_parents], "digits", stats_images=250, eval_images=200)

    def refuse(config, progress=None, *, steps=None):
        raise ResourceError("merging needs about 31.5 GiB of memory (statistics 29.0 GiB), 7.8 GiB are free")

    session.merge = refuse
    at = open_app("merge", session=session, session_key=("refused",))
    assert any("Merging failed: merging needs about 31.5 GiB" in e.value for e in at.error), [e.value for e in at.error]
    assert at.session_state["session"] is session and "result" not in at.session_state
    at.slider(key="m_alpha").set_value(0.2).run()  # the page still answers
    assert not at.exception and any("31.5 GiB" in e.value for e in at.error)


def test_a_session_that_ends_has_its_jobs_cancelled_and_its_results_dropped(merge_session):
    from mudsc.diffinit.config import make_config
    from pages._state import HEAVY_KEYS

    at = open_app("merge", session=merge_session, session_key=("ending",), config=make_config(zip_a=0.15))
    assert at.session_state["result"] is not None
    at.button(key="sweep_alpha_run").click().run()  # a background sweep, then the browser goes away
    sweep = at.session_state["jobs"]["sweep_alpha"].job
    assert sweep.running
    st.cache_resource.clear()  # what Streamlit does to a session's resources when it disconnects
    assert sweep.wait(30).status == "cancelled"
    assert not any(k in at.session_state for k in HEAVY_KEYS)
    assert at.session_state["session"] is merge_session  # light state stays, should the browser come back


def test_alpha_neighbours_are_merged_ahead_so_a_step_finds_its_merge_ready(merge_session):
    at = open_app("merge", session=merge_session, session_key=("ahead",))
    at.session_state["settings"] = small_settings(merge_ahead=2)
    at.slider(key="m_alpha").set_value(0.65).run()
    wait_jobs(at, "ahead")
    assert at.session_state["jobs"]["ahead"].job.status == "done"
    shown = at.session_state["config"]  # the demo pair opens on its partial zip (mudsc.zoo.demo.DEMO)
    held = {round(c.alpha, 2) for c in merge_session._results if c.method == shown.method and c.cut == shown.cut
            and not c.alpha_overrides}
    assert {0.55, 0.6, 0.7, 0.75} <= held
    before = at.session_state["result"]
    at.slider(key="m_alpha").set_value(0.6).run()
    assert "merge" not in at.session_state["jobs"] or at.session_state["jobs"]["merge"].tag != \
        at.session_state["config"]  # no merge job: the result was there
    assert at.session_state["result"].config.alpha == 0.6 and at.session_state["result"] is not before
