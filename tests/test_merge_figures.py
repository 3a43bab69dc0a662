"""Merge-page figures and tables: the network drawing marks what a cut merges, sweep curves, rows."""
import pytest

from mudsc.errors import ConfigError, UnknownNameError
from mudsc.unitgraph import trace
from mudsc.studio.merge_figures import KEPT, MERGED, network_figure, sweep_figure
from mudsc.models import create_model
from mudsc.data import task_label
from mudsc.studio.summary import space_rows


@pytest.fixture(scope="module")
def graph():
    return trace(create_model("resnet20", classes=(0, 1), num_classes=10, in_chans=1, img_size=8, width=1))


def test_network_figure_colours_the_merged_spaces(graph):
    for cut in graph.cuts:
        fig = network_figure(graph, cut.name)
        assert list(fig.data[0].marker.color).count(MERGED) == len(cut.merged_spaces)
        assert fig.data[1].marker.color == KEPT  # the head stays per task
    fig = network_figure(graph, "full")
    assert list(fig.data[0].marker.color) == [MERGED] * len(graph.spaces) and fig.data[1].marker.color == MERGED
    with pytest.raises(UnknownNameError):
        network_figure(graph, "layer9")


def test_network_figure_draws_every_cut_and_highlights_the_chosen(graph):
    fig = network_figure(graph, graph.cuts[0].name)
    assert len(fig.layout.shapes) == len(graph.cuts)
    solid = [s for s in fig.layout.shapes if s.line.dash == "solid"]
    assert len(solid) == 1


def test_sweep_figure_marks_the_current_setting():
    rows = [{"alpha": a / 10, "joint_acc": 0.5 + a / 100, "per_task_acc": 0.7} for a in range(11)]
    fig = sweep_figure(rows, x="alpha", current=0.35, x_title="alpha", references={"ensemble": 0.95})
    assert [t.name for t in fig.data] == ["joint", "per-task"]
    assert max(fig.data[0].y) == pytest.approx(60.0)
    assert any(s.x0 == 0.35 for s in fig.layout.shapes)
    cuts = [{"cut": c, "joint_acc": 0.5, "per_task_acc": 0.6} for c in ("layer1", "layer2", "full")]
    fig = sweep_figure(cuts, x="cut", current="layer2", x_title="cut")
    assert list(fig.layout.xaxis.categoryarray) == ["layer1", "layer2", "full"]
    assert any(s.x0 == 1 for s in fig.layout.shapes)
    with pytest.raises(ConfigError):
        sweep_figure([{"alpha": 0}], x="alpha", current=0, x_title="alpha")


def test_space_rows_and_task_labels(graph):
    rows = space_rows(graph)
    assert [r["unit space"] for r in rows] == [s.name for s in graph.spaces]
    assert sorted(r["cut after it"] for r in rows if r["cut after it"]) == sorted(c.name for c in graph.cuts)
    assert (task_label((0, 1, 2, 3, 4)), task_label([7, 0, 3]), task_label((5, 6))) == ("0-4", "0,3,7", "5,6")
