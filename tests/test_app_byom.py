"""The Parents page's "Architecture + weights" tab with the user's own network: it loads, shows its
unit-space coverage, and every bad input is an error that keeps the state."""
import os
import textwrap

import pytest
import streamlit as st
import torch
from test_app import open_app, unkeyed_widgets

NET = textwrap.dedent('''
    from torch import nn


    def make_net(width=4):
        return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 5))


    class Branchy(nn.Module):
        """Control flow on a tensor's value: torch.fx cannot trace it."""

        def __init__(self):
            super().__init__()
            self.net = make_net()

        def forward(self, x):
            y = self.net(x)
            return y if y.sum() > 0 else -y
''')


@pytest.fixture
def user_files(tmp_path):
    st.cache_data.clear()
    st.cache_resource.clear()
    code = tmp_path / "models_app.py"
    code.write_text(NET)
    ns: dict = {}
    exec(NET, ns)
    sd = ns["make_net"]().state_dict()
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, good)
    wrong = tmp_path / "wrong.pt"
    torch.save({f"net.{k}": v for k, v in sd.items()}, wrong)
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": _Evil(tmp_path / "was_unpickled")}, evil)
    branchy = tmp_path / "branchy.pt"
    torch.save(ns["Branchy"]().state_dict(), branchy)
    return {"code": code, "good": good, "wrong": wrong, "evil": evil, "branchy": branchy}


class _Evil:
    """Unpickling this would run a command: a checkpoint must never be unpickled as objects."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _fill(at, arch, weights, classes="0-4", options="", **extra):
    for key, value in extra.items():
        at.text_input(key=f"plain_{key}").set_value(value)
    at.text_input(key="plain_arch").set_value(arch)
    at.text_input(key="plain_kwargs").set_value(options)
    at.text_input(key="plain_classes").set_value(classes)
    at.text_input(key="plain_path").set_value(str(weights)).run()
    at.button(key="add_plain").click().run()
    assert not at.exception, [e.value for e in at.exception]


def test_user_network_loads_and_shows_its_coverage(user_files):
    at = open_app()
    _fill(at, f"{user_files['code']}:make_net", user_files["good"])
    assert not at.error, [e.value for e in at.error]
    parents = at.session_state["parents"]
    assert len(parents) == 1 and tuple(parents[0].model.classes) == (0, 1, 2, 3, 4)
    name, share, rows = at.session_state["plain_coverage"]
    fixed = {r["tensor"] for r in rows if not r["in a unit space"]}
    assert fixed == {"body.5.bias"} and share == 5 / 6  # the classifier's bias lives in the fixed class space
    assert {r["tensor"] for r in rows} >= {"body.0.weight", "body.5.weight"}
    assert any(md.value.startswith("**Unit-space coverage") for md in at.markdown)
    assert any("runs its code" in w.value for w in at.warning)
    assert unkeyed_widgets(at) == []


@pytest.mark.parametrize("case, expect", [
    ("prefix", "tried key prefixes"),
    ("shape", "the model expects"),
    ("missing", "does not exist"),
    ("function", "has no function 'make_nett'"),
    ("classes", "malformed class subset '0-4x'"),
    ("mean", "mean 'a,b': expected numbers"),
    ("std", "give --mean and --std together"),
    ("embeddings", "class embeddings"),
    ("pickle", "never pickled objects"),
    ("untraceable", "Models torch.fx cannot trace"),
])
def test_bad_inputs_are_errors_that_keep_the_state(user_files, case, expect):
    at = open_app()
    arch, weights, options, classes, extra = f"{user_files['code']}:make_net", user_files["good"], "", "0-4", {}
    if case == "classes":
        classes = "0-4x"
    elif case == "mean":
        extra = {"mean": "a,b", "std": "0.5,0.5"}
    elif case == "std":
        extra = {"mean": "0.5"}
    elif case == "embeddings":
        extra = {"embeddings": str(user_files["good"].with_name("text_embed.npy"))}
    elif case == "pickle":
        weights = user_files["evil"]
    elif case == "prefix":
        weights = user_files["wrong"]
    elif case == "shape":
        options = "width=8"
    elif case == "missing":
        weights = user_files["good"].with_name("gone.pt")
    elif case == "untraceable":  # refused before it is added, naming the module and the README's route
        arch, weights = f"{user_files['code']}:Branchy", user_files["branchy"]
    else:
        arch = f"{user_files['code']}:make_nett"
    _fill(at, arch, weights, classes=classes, options=options, **extra)
    assert any(expect in e.value for e in at.error), [e.value for e in at.error]
    if case == "untraceable":
        assert any("Branchy" in e.value for e in at.error)
    assert not (user_files["code"].parent / "was_unpickled").exists()
    assert at.session_state["parents"] == []
    assert at.text_input(key="plain_arch").value == arch  # the form keeps what was typed


def test_uploaded_python_is_refused(user_files):
    from mudsc.errors import CheckpointError
    from mudsc.studio.parent_sources import store_upload

    at = open_app()
    at.file_uploader(key="plain_upload").upload("evil.py", b"import os\n").run()
    # the weights uploader takes checkpoints only; the engine refuses Python even if it got through
    assert any("Invalid file extension: `.py`" in str(e.value) for e in at.exception)
    with pytest.raises(CheckpointError, match="uploaded Python is never imported"):
        store_upload("evil.py", b"import os\n", root=user_files["code"].parent, max_bytes=1 << 20)


@pytest.mark.parametrize("form", ["module", "torchvision", "timm"])
def test_every_architecture_form_loads_in_the_tab(user_files, monkeypatch, form):
    """package.module:FUNCTION, torchvision:NAME and timm:NAME (the network's own last layer) as well as
    the FILE.py:FUNCTION above."""
    torch.manual_seed(0)
    if form == "module":
        monkeypatch.syspath_prepend(str(user_files["code"].parent))
        arch, weights = "models_app:make_net", user_files["good"]
    else:
        if form == "torchvision":
            import torchvision

            arch, net = "torchvision:resnet18", torchvision.models.resnet18(num_classes=5)
        else:
            import timm

            arch, net = "timm:test_resnet", timm.create_model("test_resnet", pretrained=False, num_classes=5)
        weights = user_files["code"].with_name(f"{form}.pt")
        torch.save({"model_state_dict": net.state_dict()}, weights)
    at = open_app()
    at.selectbox(key="plain_head").set_value("last layer")
    _fill(at, arch, weights)
    assert not at.error, [e.value for e in at.error]
    (parent,) = at.session_state["parents"]
    assert parent.info["spec"]["arch"] == arch and tuple(parent.model.classes) == (0, 1, 2, 3, 4)
    _, share, rows = at.session_state["plain_coverage"]
    assert share > 0.8 and len(rows) > 5 and not any("fx" in r["axes"] for r in rows)


def test_parents_seeing_different_image_sizes_cannot_be_merged(user_files):
    """One weights file read twice (two tasks, two image sizes): both are loaded, and the pair is
    refused with the reason, the parents kept."""
    at = open_app()
    arch = f"{user_files['code']}:make_net"
    _fill(at, arch, user_files["good"], classes="0-4")
    at.number_input(key="plain_img_size").set_value(12)
    _fill(at, arch, user_files["good"], classes="5-9")
    assert not at.error or all("cannot be merged" in e.value for e in at.error)
    assert [tuple(p.model.classes) for p in at.session_state["parents"]] == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    assert any("cannot be merged: parent 1 sees 1x12x12 inputs" in e.value for e in at.error), \
        [e.value for e in at.error]
