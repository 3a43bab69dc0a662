"""The landscape figure: panels, shared colour axis, overlap outline, markers, BN mode; files written."""
import subprocess
import sys
from pathlib import Path

import numpy as np

from landscape.barrier import PathResult
from landscape.figure import landscape_figure, path_figure, write_figure
from landscape.result import LandscapeResult

ROOT = Path(__file__).resolve().parents[1]


def _result(done_all=True):
    xs, ys = np.linspace(-1, 2, 6), np.linspace(-1, 1.5, 5)
    gx, gy = np.meshgrid(xs, ys)
    r = LandscapeResult.empty(xs, ys, ["task A", "task B"], ["A", "B", "M"], ["parent", "parent", "merge"],
                              [[0, 0], [1, 0], [0.5, 0.5]], [0, 0, 0], bn_mode="preview",
                              settings={"plane": {"kind": "three_point"}})
    flat = np.arange(xs.size * ys.size) if done_all else np.arange(7)
    loss_a, loss_b = (gx ** 2 + gy ** 2).reshape(-1), ((gx - 1) ** 2 + gy ** 2).reshape(-1)
    r.update(flat, {"task_loss": np.stack([loss_a, loss_b], 1)[flat], "task_acc": np.full((len(flat), 2), 0.5),
                    "joint_loss": loss_a[flat], "joint_acc": np.full(len(flat), 0.4)})
    for i in range(3):
        r.set_model_metrics(i, {"task_loss": [0.1, 0.2], "task_acc": [0.9, 0.8], "joint_loss": 0.3, "joint_acc": 0.7})
    return r


def test_figure_has_panels_markers_overlap_and_bn_label():
    fig = landscape_figure(_result(), overlap_threshold=1.0, vmax=3.0)
    contours = [t for t in fig.data if t.type == "contour"]
    assert len(contours) == 6  # 3 panels x (loss + overlap outline)
    assert {t.coloraxis for t in contours if t.coloraxis} == {"coloraxis"}
    assert fig.layout.coloraxis.cmax == 3.0
    names = [t.name for t in fig.data if t.type == "scatter" and t.showlegend]
    assert "M (merge)" in names and "A (parent)" in names and any("below" in n for n in names)
    assert "preview (frozen BN statistics)" in fig.layout.title.text
    assert [a.text for a in fig.layout.annotations][:3] == ["task A", "task B", "mean of tasks"]
    assert fig.layout.yaxis.scaleanchor == "x" and fig.layout.yaxis2.scaleanchor == "x2"
    partial = landscape_figure(_result(done_all=False))
    assert "partial: 7/30" in partial.layout.title.text


def test_write_figure_writes_every_format(tmp_path):
    out = write_figure(_result(), tmp_path / "fig", overlap_threshold=1.0)
    for fmt in ("html", "png", "svg", "pdf"):
        assert out.paths[fmt].is_file() and out.paths[fmt].stat().st_size > 1000
    assert out.paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert out.static_engine.startswith(("kaleido", "matplotlib"))


def test_path_figure_reports_barrier():
    t = np.linspace(0, 1, 5)
    loss = np.stack([1 + np.sin(np.pi * t), 1 + t], 1)
    p = PathResult(t, t * 3, np.array([0.0, 1.0]), ["A", "B"], ["task A", "task B"], loss, loss * 0,
                   loss.mean(1), loss.mean(1) * 0, "exact")
    fig = path_figure(p)
    assert f"{p.barriers()['mean']:.3g}" in fig.layout.title.text


def test_landscape_never_imports_streamlit():
    code = "import sys, landscape, landscape.figure; assert 'streamlit' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
