"""Merge-page figures and tables: the network drawing marks what a cut merges, sweep curves, rows."""
import pytest

from mudsc.data import task_label
from mudsc.errors import ConfigError, UnknownNameError
from mudsc.models import create_model
from mudsc.studio.merge_figures import KEPT, MERGED, network_figure, sweep_figure
from mudsc.studio.summary import cut_positions, space_rows, split_stream
from mudsc.unitgraph import trace


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


def test_network_figure_places_every_cut_once_in_input_to_output_order(graph):
    names = [c.name for c in graph.cuts]
    assert len(names) == 10 and "layer2.1" in names  # conv1, then after each of the 9 blocks
    fig = network_figure(graph, "layer2.1", costs={"layer2.1": {"params_share": 0.17, "flops_share": 0.4}},
                         tasks=3)
    xs = [s.x0 for s in fig.layout.shapes]
    assert xs == sorted(set(xs)) and len(xs) == len(names)  # once each, no two at one place
    labels = [a.text for a in fig.layout.annotations if a.text in names]
    assert labels == names  # drawn in input -> output order
    spaces = [s.name for s in graph.spaces]
    chosen = next(s for s in fig.layout.shapes if s.line.dash == "solid")
    assert chosen.x0 == cut_positions(graph)["layer2.1"] == spaces.index("body.layer2.1.conv1") + 0.5
    assert cut_positions(graph)["conv1"] == -0.5 and cut_positions(graph)["layer3"] == len(spaces) - 0.5
    # layer2.1 splits the stage's stream: its bar is merged but hatched, the blocks after it are kept
    assert split_stream(graph, graph.cut("layer2.1")) == "body.layer2"
    assert split_stream(graph, graph.cut("layer2")) is None
    patterns = list(fig.data[0].marker.pattern.shape)
    assert [spaces[i] for i, p in enumerate(patterns) if p] == ["body.layer2"]
    assert fig.data[0].marker.color[spaces.index("body.layer2.2.conv1")] == KEPT
    texts = [a.text for a in fig.layout.annotations]
    assert "◀ trunk merged" in texts and "3 heads, one per task ▶" in texts
    assert "17% of the parameters, 40% of the FLOPs shared" in fig.layout.title.text


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
    with pytest.raises(ConfigError):  # shares asked for, rows without them
        sweep_figure(cuts, x="cut", current="layer2", x_title="cut", shares=True)
    for r, share in zip(cuts, (0.1, 0.4, 1.0)):
        r.update(merged_params_share=share, merged_flops_share=share / 2)
    fig = sweep_figure(cuts, x="cut", current="layer2", x_title="cut", shares=True)
    assert [t.name for t in fig.data] == ["joint", "per-task", "parameters merged", "FLOPs merged"]
    assert list(fig.data[2].y) == [10.0, 40.0, 100.0] and fig.data[2].yaxis == "y2"
    assert fig.layout.yaxis2.overlaying == "y"


def test_space_rows_and_task_labels(graph):
    rows = space_rows(graph)
    assert [r["unit space"] for r in rows] == [s.name for s in graph.spaces]
    after = [n for r in rows if r["cut after it"] for n in r["cut after it"].split(", ")]
    assert after == [c.name for c in graph.cuts if c.name != "conv1"]  # conv1 lies before every space
    split = {r["unit space"]: r["split by cuts"] for r in rows if r["split by cuts"]}
    assert split == {"body.layer1": "conv1, layer1.0, layer1.1", "body.layer2": "layer2.0, layer2.1",
                     "body.layer3": "layer3.0, layer3.1"}
    assert (task_label((0, 1, 2, 3, 4)), task_label([7, 0, 3]), task_label((5, 6))) == ("0-4", "0,3,7", "5,6")


def test_a_deep_vit_drawing_labels_some_cuts_and_names_every_cut_on_hover():
    """Twelve blocks give 25 cuts (two per block): the drawing writes at most ten names, always the chosen
    cut's, with no regular label right next to it; every cut names itself on hover."""
    from mudsc.studio.merge_figures import MAX_CUT_LABELS, shown_labels

    vit = trace(create_model("timm:vit_tiny_patch16_224", classes=(0, 1), num_classes=10, in_chans=1, img_size=8,
                             patch_size=4, depth=12, num_heads=2, embed_dim=8))
    names = [c.name for c in vit.cuts]
    assert len(names) == 25 and "blocks.6.attn" in names
    fig = network_figure(vit, "blocks.6.attn", costs={"blocks.6.attn": {"params_share": 0.5, "flops_share": 0.5}})
    drawn = [a.text for a in fig.layout.annotations if a.text in names]
    assert "blocks.6.attn" in drawn and len(drawn) <= MAX_CUT_LABELS + 1
    at = names.index("blocks.6.attn")
    assert all(abs(names.index(n) - at) >= 3 for n in drawn if n != "blocks.6.attn")
    hover = next(t for t in fig.data if t.type == "scatter")
    assert [h.split("<br>")[0] for h in hover.hovertext] == names
    assert "50% of the parameters" in hover.hovertext[at]
    ticks = [t for t in fig.layout.xaxis.ticktext if t]
    assert len(ticks) <= 2 * MAX_CUT_LABELS + 1 < len(vit.spaces) and ticks[-1] == "head"
    assert shown_labels(["a", "b"], "b") == {"a", "b"}


def test_sweep_figure_marks_the_choice_made_on_training_images():
    rows = [{"alpha": a / 10, "joint_acc": 0.5, "per_task_acc": 0.7} for a in range(11)]
    fig = sweep_figure(rows, x="alpha", current=0.5, x_title="alpha", selected=0.7)
    dashed = [s for s in fig.layout.shapes if s.line.dash == "dash"]
    assert [s.x0 for s in dashed] == [0.7]
    assert any(a.text == "chosen on training images" for a in fig.layout.annotations)
    cuts = [{"cut": c, "joint_acc": 0.5, "per_task_acc": 0.6} for c in ("layer1", "layer2", "full")]
    fig = sweep_figure(cuts, x="cut", current="full", x_title="cut", selected="layer1")
    assert [s.x0 for s in fig.layout.shapes if s.line.dash == "dash"] == [0]
