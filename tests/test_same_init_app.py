"""The Same-init page and the Parents page's family tab through AppTest, on the demo family: every method
merges, λ moves the metrics, the sweep and the CG residual chart hold data, the task-vector landscape
is computed, the export reloads and reproduces the shown accuracy, and each bad input is named."""
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest
from test_app import _fresh_caches  # noqa: F401  autouse: Streamlit caches cleared per test
from unit_helpers import small_mlp

from mudsc.data import task_label
from mudsc.methods import names
from mudsc.models import save_model
from mudsc.sameinit.taskstats import save_stats

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    from mudsc.zoo.demo_family import demo_family

    return demo_family(root=tmp_path_factory.mktemp("demo_family"))


def _settings():
    from pages._state import AppSettings

    return dataclasses.replace(AppSettings.from_env(), stats_images=200, eval_images=None, inline_wait_s=30.0)


def _session(base, tasks, stats=()):
    from mudsc.studio.same_init.family import Family, open_session

    return open_session(Family(str(base), tuple(map(str, tasks)), "digits", None, tuple(map(str, stats))),
                        stats_examples=200, reset_images=200)[0]


def _open(page: str, **state) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.session_state["settings"] = _settings()
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _wait(at: AppTest, *jobs: str) -> None:
    for name in jobs:
        if name in at.session_state["jobs"]:
            at.session_state["jobs"][name].job.wait(120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]


def _metrics(at: AppTest):
    return next(d.value for d in at.dataframe if "mean (task-aware)" in d.value.columns).set_index("model")


def _points(chart) -> int:
    fig = json.loads(chart.proto.spec)
    n = 0
    for trace in fig.get("data", []):
        for axis in ("x", "y", "z"):
            v = trace.get(axis)
            n += (1 if isinstance(v, dict) else len(v)) if v is not None else 0
    return n


def test_demo_family_loads_from_the_parents_page(family, monkeypatch, tmp_path):
    base, tasks = family
    home = tmp_path / "home"
    (home / "demo_family").mkdir(parents=True)
    for p in (base, *tasks):  # the files demo_family() looks for: no retraining
        shutil.copy(p, home / "demo_family" / p.name)
    monkeypatch.setenv("MUDSC_HOME", str(home))
    at = _open("parents")
    at.button(key="load_family_demo").click().run()
    _wait(at, "family_demo")
    session = at.session_state["same_session"]
    assert [task_label(t) for t in session.tasks] == ["0-3", "4-6", "7-9"]
    assert any("Same-init family" in s.value for s in at.success)
    rows = next(d.value for d in at.dataframe if "distance to base" in d.value.columns)
    assert list(rows["base recorded"]) == ["yes"] * 3 and (rows["distance to base"] < 0.8).all()


def test_a_shared_base_among_loaded_parents_is_offered_as_a_family(family):
    from mudsc.models.checkpoint import load_model
    from mudsc.studio.parents import Parent

    base, tasks = family  # own-head task models score only their task: the page's table shows that one
    parents = [Parent(str(p), *load_model(p), "digits", None, {",".join(map(str, load_model(p)[0].classes)): 1.0})
               for p in (base, *tasks[:2])]
    at = _open("parents", parents=parents)
    assert any("same-init family" in i.value for i in at.info)
    at.button(key="use_as_family").click().run()
    assert at.session_state["family"].base == str(base)


def test_every_method_merges_and_lambda_moves_only_task_arithmetic(family):
    session = _session(*family)
    at = _open("same_init", same_session=session)
    at.multiselect(key="si_methods").set_value(list(names("same-init"))).run()
    _wait(at, "same_stats")
    rows = _metrics(at)
    merged = [m for m in rows.index if rows.loc[m, "kind"] == "merge"]
    assert [m.split(" (")[0] for m in merged] == list(names("same-init"))
    assert (rows.loc[merged, "mean (task-aware)"] > 0.5).all()  # 3 or 4 classes a task: chance is below 0.34
    assert {"base", "fine-tuned on 0-3", "fine-tuned on 7-9"} <= set(rows.index)
    assert not at.select_slider(key="si_lam").disabled and not at.select_slider(key="si_ties_density").disabled
    at.select_slider(key="si_lam").set_value(1.0).run()
    after = _metrics(at)
    ta_before = next(m for m in merged if m.startswith("task-arithmetic"))
    ta_after = next(m for m in after.index if m.startswith("task-arithmetic"))
    assert ta_after == "task-arithmetic (λ 1)" and ta_before != ta_after
    assert after.loc[ta_after, "mean (task-aware)"] != rows.loc[ta_before, "mean (task-aware)"]
    regmean = next(m for m in merged if m.startswith("regmean"))
    assert after.loc[regmean, "mean (task-aware)"] == rows.loc[regmean, "mean (task-aware)"]


def test_only_the_chosen_methods_knobs_are_enabled_and_only_their_statistics_computed(family):
    session = _session(*family)
    at = _open("same_init", same_session=session)
    at.multiselect(key="si_methods").set_value(["task-arithmetic", "regmean"]).run()
    _wait(at, "same_stats")
    assert not at.select_slider(key="si_lam").disabled and not at.select_slider(key="si_alpha").disabled
    assert at.select_slider(key="si_iterations").disabled and at.selectbox(key="si_objective").disabled
    # the first run's default methods already took Grams and gradient factors; Fisher no chosen method reads
    assert session.missing_parts(("gram", "grad", "fisher")) == ("fisher",)


def test_sweep_and_cg_residual_chart_hold_data(family):
    session = _session(*family)
    at = _open("same_init", same_session=session)
    at.multiselect(key="si_methods").set_value(["task-arithmetic", "mats"]).run()
    _wait(at, "same_stats")
    charts = at.get("plotly_chart")
    assert len(charts) == 1 and _points(charts[0]) > 3  # the CG residual: several layers x steps
    assert not at.warning  # the computed statistics give a convergent CG
    at.selectbox(key="si_sweep_knob").set_value("iterations").run()
    at.button(key="si_sweep_run").click().run()
    _wait(at, "same_sweep")
    charts = at.get("plotly_chart")
    assert len(charts) == 2 and all(_points(c) > 0 for c in charts)
    assert at.session_state["same_sweeps"]["iterations"]["rows"][0]["method"] == "mats"


def test_task_vector_landscape_is_computed(family):
    session = _session(*family)
    at = _open("same_init", same_session=session)
    at.multiselect(key="si_methods").set_value(["task-arithmetic", "average"]).run()
    at.slider(key="si_ls_res").set_value(5)
    at.number_input(key="si_ls_eval").set_value(20)
    at.button[[b.label for b in at.button].index("Compute task-vector landscape")].click().run()
    _wait(at, "same_landscape")
    land = at.session_state["same_landscape"]
    assert land.complete and land.bn_mode == "exact" and land.task_names == ["task 0-3", "task 4-6", "task 7-9"]
    assert land.model_labels[:3] == ["base", "fine-tuned on 0-3", "fine-tuned on 4-6"]
    assert any(lab.startswith("merge: task-arithmetic") for lab in land.model_labels)
    assert torch.isfinite(torch.as_tensor(land.joint_loss)).all()
    assert "Task-vector landscape" in at.session_state["figures"]


def test_export_reloads_and_reproduces_the_shown_accuracy(family):
    from mudsc.cli import main
    from mudsc.models.checkpoint import load_model

    session = _session(*family)
    at = _open("same_init", same_session=session)
    at.multiselect(key="si_methods").set_value(["mats"]).run()
    _wait(at, "same_stats")
    shown = _metrics(at).iloc[0]
    out = at.session_state["same_export"]
    manifest = json.loads((out / "manifest.json").read_text())
    models = [load_model(out / o["path"])[0] for o in manifest["outputs"]]
    got = session.evaluate(models)
    assert got.per_task == pytest.approx(shown["mean (task-aware)"], abs=1e-12)
    assert list(got.tasks) == pytest.approx([shown[f"task {task_label(t)}"] for t in session.tasks], abs=1e-12)
    again = out.parent / "again"
    assert main(["--device", "cpu", "merge-same", "--manifest", str(out / "manifest.json"), "--out", str(again),
                 "--quiet"]) == 0
    for o in manifest["outputs"]:
        assert (again / o["path"]).read_bytes() == (out / o["path"]).read_bytes()
    at.switch_page("pages/export.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("merge-same --manifest manifest.json" in c.value for c in at.code)
    assert any("Same-init metrics" in m.value for m in at.markdown)


def test_task_models_of_another_base_or_architecture_are_named_and_nothing_is_lost(family, tmp_path):
    from mudsc.zoo.finetune import finetune_parent

    base, tasks = family
    session = _session(base, tasks)
    at = _open("parents", same_session=session)
    other = tmp_path / "other_base.safetensors"  # same architecture, another initialisation
    from mudsc.models.checkpoint import load_model

    spec = load_model(base)[1]["spec"]
    torch.manual_seed(5)
    from mudsc.models import create_model

    save_model(create_model(spec["arch"], classes=tuple(range(10)), num_classes=10, head="own", in_chans=1,
                            img_size=8, feat_dim=spec["feat_dim"], **spec["kwargs"]), other)
    wide = tmp_path / "wide.safetensors"
    save_model(small_mlp(tuple(range(4)), width=40), wide)
    stranger = tmp_path / "stranger.safetensors"  # fine-tuned from `other`, recorded as such
    finetune_parent(other, dataset="digits", classes="0-3", seed=0, out=stranger, epochs=1, device="cpu")
    cases = [(str(base), [tasks[0], stranger], "stranger.safetensors was not fine-tuned from"),
             (str(other), list(tasks), "was not fine-tuned from other_base.safetensors"),
             (str(base), [tasks[0], wide], "wide.safetensors does not share the base's architecture")]
    for b, ts, message in cases:
        at.text_input(key="fam_base").set_value(b)
        at.text_area(key="fam_tasks").set_value("\n".join(map(str, ts))).run()
        at.button(key="fam_use").click().run()
        assert not at.exception
        assert any(message in e.value for e in at.error), (message, [e.value for e in at.error])
        assert at.session_state["same_session"] is session  # the loaded family stays


def _stats_files(session, root, *, parts, edit=None):
    paths = []
    for i, s in enumerate(session.statistics(parts)):
        if edit is not None:
            s = edit(s)
        paths.append(root / f"stats{i}.safetensors")
        save_stats(s, paths[-1])
    return paths


def test_statistics_files_lacking_a_part_are_named(family, tmp_path):
    base, tasks = family
    gram_only = _stats_files(_session(base, tasks), tmp_path, parts=("gram",))
    session = _session(base, tasks, stats=gram_only)
    at = _open("same_init", same_session=session)
    at.multiselect(key="si_methods").set_value(["regmean", "mats"]).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any("mats cannot merge" in e and "hold no output-gradient factor" in e for e in errors), errors
    assert any(m.startswith("regmean") for m in _metrics(at).index)  # RegMean has its Grams: still merged


def test_diverging_cg_is_a_warning(family, tmp_path):
    base, tasks = family

    def indefinite(s):  # a Gram with negative eigenvalues, as a corrupt statistics file could hold
        return dataclasses.replace(s, gram={k: g - 0.5 * torch.linalg.eigvalsh(g)[-1] * torch.eye(len(g), dtype=g.dtype)
                                            for k, g in s.gram.items()})

    bad = _stats_files(_session(base, tasks), tmp_path, parts=("gram", "grad", "fisher"), edit=indefinite)
    at = _open("same_init", same_session=_session(base, tasks, stats=bad))
    at.multiselect(key="si_methods").set_value(["mats"]).run()
    assert not at.exception
    assert any("CG diverged" in w.value for w in at.warning), [w.value for w in at.warning]
