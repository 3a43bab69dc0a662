"""alpha (and the cut) chosen on held-out training images, the test accuracy reported at that choice
(issue 18): the choice never reads the test split."""
import dataclasses
import json

import pytest
import torch

from mudsc.data import Split
from mudsc.diffinit.config import make_config
from mudsc.diffinit.selection import select_on_train, selection_range
from mudsc.diffinit.session import MergeSession
from mudsc.diffinit.sweep import grid, run_sweep
from mudsc.errors import ConfigError
from mudsc.models.checkpoint import load_model

STATS = 250


def _session(demo_parents, data) -> MergeSession:
    return MergeSession([load_model(p)[0] for p in demo_parents], data, stats_images=STATS)


def _select(session):
    base = make_config(method="mudsc-zip", reset_images=STATS)
    configs = grid(base, alphas=[0.0, 0.5, 1.0], cuts=["layer1", "full"])
    rows = run_sweep(session, configs)
    return select_on_train(session, configs, rows), rows


def test_the_choice_reads_training_images_only(demo_parents, digits):
    """Replacing the test split (other images, shuffled labels) changes the test accuracies but not
    the selection scores nor the choice; the selection images come after those of the statistics and
    the BatchNorm reset."""
    sel, rows = _select(_session(demo_parents, digits))
    g = torch.Generator().manual_seed(0)
    swapped = Split(torch.randn(digits.eval.x.shape, generator=g),
                    digits.eval.y[torch.randperm(len(digits.eval), generator=g)])
    sel2, rows2 = _select(_session(demo_parents, dataclasses.replace(digits, eval=swapped)))
    assert [r["joint_acc"] for r in rows] != [r["joint_acc"] for r in rows2]
    assert sel2.config == sel.config and sel2.scores == sel.scores and sel2.images == sel.images
    # the test accuracy reported is the sweep's row for the chosen config
    assert sel.test is rows[sel.index] and sel.test["cut"] == sel.config.cut
    assert sel.scores[sel.index] == max(sel.scores)
    n = len(_session(demo_parents, digits).train)
    assert sel.images.start >= STATS and sel.images.stop == n and len(sel.images) == min(1000, n - STATS)


def test_too_few_held_out_training_images_is_a_clear_error(demo_parents, digits):
    session = _session(demo_parents, digits)
    configs = [make_config(reset_images=len(session.train))]
    with pytest.raises(ConfigError, match="held-out training images"):
        selection_range(session, configs)
    assert len(selection_range(session, [make_config(reset_images=STATS)], 100)) == 100


def test_sweep_select_on_train_from_the_cli(demo_parents, tmp_path, capsys):
    from mudsc.cli import main

    out = tmp_path / "sel"
    args = ["sweep", "--pairs", ",".join(map(str, demo_parents)), ",".join(map(str, demo_parents)),
            "--dataset", "digits", "--methods", "zipit", "mudsc-zip", "ensemble", "--alphas", "0.3", "0.7",
            "--stats-images", str(STATS), "--reset-images", str(STATS), "--select-on", "train", "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.with_suffix(".json").read_text())["selected_on_train"]
    assert report["pairs"] == 2 and len(report["choices"]) == 2
    choice = report["choices"][0]
    assert choice["method"] != "ensemble" and choice["selection_images"] == 1000
    assert f"test joint {report['joint_acc']:.4f}" in printed and "selected on 1,000 held-out training" in printed
    assert main([*args, "--select-images", "5000", "--out", str(out)]) == 2
    assert "held-out training images" in capsys.readouterr().err
