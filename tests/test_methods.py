"""The method registry is the one source: the README's table, the configs' fields, MergeConfig's presets,
the CLI's choices and the app's method list and enabled widgets all agree with it."""
from pathlib import Path

import pytest

from mudsc.diffinit.config import MergeConfig, make_config
from mudsc.errors import ConfigError, UnknownNameError
from mudsc.methods import METHODS, diff_init_names, get_method, markdown_table, names
from mudsc.sameinit.config import SameInitConfig

REPO = Path(__file__).resolve().parents[1]


def test_readme_holds_the_generated_table():
    assert markdown_table() in (REPO / "README.md").read_text()


def test_table_has_one_row_per_method_and_one_for_the_hybrids():
    rows = markdown_table().splitlines()[2:]
    plain = [n for n in names() if METHODS[n].family != "align-then-fuse"]
    assert [r.split("`")[1] for r in rows] == plain + ["ALIGNER+FUSER"]


def test_knobs_are_fields_of_their_config():
    merge_fields = set(MergeConfig.model_fields)
    same_fields = set(SameInitConfig.model_fields)
    for n in names():
        m = METHODS[n]
        fields = merge_fields if n in diff_init_names() else same_fields
        assert set(m.knobs) <= fields, f"{n}: {set(m.knobs) - fields} are not config fields"


def test_merge_config_runs_the_diff_init_methods_with_their_presets():
    assert diff_init_names() == ("weight-avg", "rebasin", "permute", "zipit", "wzip", "mudsc-align", "mudsc-zip",
                                 "ensemble")
    for n in diff_init_names():
        c = MergeConfig(method=n)
        preset = METHODS[n].preset
        assert (c.solver, c.similarity, c.iterative) == (preset["solver"], preset["similarity"], preset["iterative"])
        assert MergeConfig.from_yaml(c.to_yaml()) == c
    with pytest.raises(ConfigError, match="merge config: method: .*'mudsc-zip' or 'ensemble'"):
        make_config(method="multitask")


def test_unknown_method_names_close_matches():
    with pytest.raises(UnknownNameError, match="did you mean zipit"):
        get_method("zipitt")
    with pytest.raises(UnknownNameError, match="choose one of weight-avg, rebasin"):
        get_method("average", "diff-init")


def test_cli_choices_are_the_registry():
    from mudsc.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    merge = sub["merge"]
    assert next(a for a in merge._actions if a.dest == "method").choices == diff_init_names()
    assert next(a for a in sub["sweep"]._actions if a.dest == "methods").choices == diff_init_names()
    text = merge.format_help()
    assert all(METHODS[n].help in text for n in diff_init_names())


def test_app_lists_the_registry_and_enables_each_methods_knobs(demo_parents):
    from streamlit.testing.v1 import AppTest

    from mudsc.diffinit.session import MergeSession
    from pages._state import AppSettings

    session = MergeSession.from_paths([str(p) for p in demo_parents], "digits", stats_images=250, eval_images=200)
    at = AppTest.from_file(str(REPO / "pages" / "merge.py"), default_timeout=120)
    # each run waits for its merge: no merge thread outlives the test
    at.session_state["settings"] = AppSettings(**{**AppSettings.from_env().__dict__, "inline_wait_s": 120.0, "merge_ahead": 0})
    at.session_state["session"] = session
    at.session_state["session_key"] = ("test_methods",)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert tuple(at.selectbox(key="m_method").options) == diff_init_names()
    for n in diff_init_names():
        at.selectbox(key="m_method").set_value(n).run()
        m = METHODS[n]
        assert any(m.help in c.value and m.paper in c.value for c in at.caption)
        for key, knob in (("m_alpha", "alpha"), ("m_zip_a", "zip_a"), ("m_zip_b", "zip_b")):
            assert at.slider(key=key).disabled == (not m.takes(knob)), (n, knob)
        assert at.radio(key="m_mix").disabled == (not m.takes("mix")), n
        assert at.select_slider(key="m_cut").disabled == (not m.takes("cut")), n
    assert not at.exception, [e.value for e in at.exception]
