"""``mudsc landscape`` end to end on the digits demo pair: planes through primed parents and merges,
npz contents, figures, refusals (collinear planes, partial merges, bad method names)."""
import contextlib
import io
import json

import numpy as np
import pytest

from landscape.result import LandscapeResult
from mudsc.cli import main
from mudsc.cli.landscape import merge_specs
from mudsc.errors import ConfigError

# Small everything: a 5-point grid, 30 images per task, two permutation methods (cheap to merge).
FAST = ["--grid", "5", "--eval-images", "30", "--calib-images", "64", "--stats-images", "250", "--reset-images", "250",
        "--path-steps", "3", "--dataset", "digits"]


def _run(capsys, demo_parents, *extra):
    rc = main(["landscape", "--models", *map(str, demo_parents), *FAST, *extra])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def three_point(demo_parents, tmp_path_factory):
    """One preview-BN three-point run (permute basis, rebasin as the third model), JSON and html figure."""
    d = tmp_path_factory.mktemp("ls_cli")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["landscape", "--models", *map(str, demo_parents), *FAST, "--methods", "permute", "rebasin",
                   "--plane", "three-point", "--bn", "preview", "--out", str(d / "tp.npz"),
                   "--figure", str(d / "tp.html"), "--json"])
    return rc, json.loads(buf.getvalue().strip().splitlines()[-1]), d


def test_three_point_summary_places_the_models(three_point):
    rc, s, _ = three_point
    assert rc == 0
    assert s["plane"] == "three_point" and s["bn"].startswith("preview")
    assert s["plane_models"] == ["parent 0' (permute)", "parent 1' (permute)", "rebasin"]
    m = {r["label"]: r for r in s["models"]}
    a, b, third = (m[lab] for lab in s["plane_models"])
    assert a["coords"] == pytest.approx([0, 0], abs=1e-6) and b["coords"][1] == pytest.approx(0, abs=1e-6)
    assert b["coords"][0] > 0 and third["coords"][1] > 0
    for r in (a, b, third):
        assert r["distance"] == pytest.approx(0, abs=1e-3 * b["coords"][0])
    # Each merge is the midpoint of its primed parents, also the rebased one (one permutation moved all three).
    for name in ("permute", "rebasin"):
        mid = (np.array(m[f"parent 0' ({name})"]["coords"]) + np.array(m[f"parent 1' ({name})"]["coords"])) / 2
        assert m[name]["coords"] == pytest.approx(list(mid), abs=1e-3 * b["coords"][0])
    assert set(s["barriers"]) == {"permute", "rebasin"} and "mean" in s["barriers"]["permute"]
    assert s["exact_primed_parents"] == {"permute": True, "rebasin": True}
    assert 0 <= s["overlap"]["share"] <= 1 and len(s["overlap"]["thresholds"]) == 2


def test_three_point_npz_and_figure(three_point):
    _, s, d = three_point
    r = LandscapeResult.load(d / "tp.npz")
    ny, nx = s["grid"]
    assert max(ny, nx) == 5 and r.task_loss.shape == (2, ny, nx) and r.task_acc.shape == (2, ny, nx)
    assert r.joint_loss.shape == (ny, nx) and r.complete and np.isfinite(r.task_loss).all()
    assert ((r.task_acc >= 0) & (r.task_acc <= 1)).all()
    assert len(r.xs) == nx and len(r.ys) == ny and np.all(np.diff(r.xs) > 0)
    coords = {row["label"]: row["coords"] for row in s["models"]}
    for i, lab in enumerate(r.model_labels):
        assert r.model_coords[i] == pytest.approx(coords[lab])
    assert r.settings["groups"]["parent 0' (rebasin)"] == "rebasin"
    html = (d / "tp.html").read_text()
    assert "plotly" in html and "rebasin" in html and s["figure"]["html"].endswith("tp.html")


@pytest.mark.slow
def test_pca_plane_exact_bn_with_png(capsys, demo_parents, tmp_path):
    rc, out, err = _run(capsys, demo_parents, "--methods", "permute", "rebasin", "--plane", "pca", "--bn", "exact",
                        "--out", str(tmp_path / "pca.npz"), "--figure", str(tmp_path / "pca.png"), "--json")
    assert rc == 0, err
    s = json.loads(out.strip().splitlines()[-1])
    assert s["plane"] == "pca" and s["bn"] == "exact" and len(s["plane_models"]) == 6
    png = tmp_path / "pca.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000
    r = LandscapeResult.load(tmp_path / "pca.npz")
    assert r.bn_mode == "exact" and r.complete
    i0, i1 = r.model_labels.index("parent 0' (permute)"), r.model_labels.index("parent 1' (permute)")
    # A permuted parent is the parent: each is far better on its own task than the other parent is.
    assert r.model_task_loss[i0, 0] < r.model_task_loss[i1, 0]
    assert r.model_task_loss[i1, 1] < r.model_task_loss[i0, 1]


def test_collinear_triple_is_refused(capsys, demo_parents, tmp_path):
    # permute ignores alpha: both merges are the same network, so the third model lies on the parents' line.
    rc, out, err = _run(capsys, demo_parents, "--methods", "permute", "--alpha", "0.3", "--alpha2", "0.7",
                        "--plane", "three-point", "--out", str(tmp_path / "c.npz"))
    assert rc == 2 and "span no plane" in err and "Traceback" not in err + out
    assert not (tmp_path / "c.npz").exists()


@pytest.mark.parametrize("methods, message", [(["zipitt"], "unknown method 'zipitt'"),
                                              (["ensemble"], "no merged weights"),
                                              (["permute@x"], "METHOD@ALPHA"),
                                              (["permute@1.5"], "alpha")])
def test_bad_methods_are_refused(capsys, demo_parents, tmp_path, methods, message):
    rc, out, err = _run(capsys, demo_parents, "--methods", *methods, "--out", str(tmp_path / "x.npz"))
    assert rc == 2 and message in err and "Traceback" not in err


def test_partial_merge_and_single_merge_planes_are_refused(capsys, demo_parents, tmp_path):
    rc, _, err = _run(capsys, demo_parents, "--methods", "permute", "rebasin", "--cut", "layer1",
                      "--out", str(tmp_path / "x.npz"))
    assert rc == 2 and "per-task heads" in err
    for plane in ("three-point", "pca"):
        rc, _, err = _run(capsys, demo_parents, "--methods", "permute", "--plane", plane,
                          "--out", str(tmp_path / "x.npz"))
        assert rc == 2 and "needs a second merge" in err
    rc, _, err = _run(capsys, demo_parents, "--methods", "permute", "--out", str(tmp_path / "x.txt"))
    assert rc == 2 and ".npz" in err


def test_grid_too_large_and_mismatched_parents_are_refused(capsys, demo_parents, tmp_path):
    rc, out, err = _run(capsys, demo_parents, "--methods", "permute", "rebasin", "--grid", "200000",
                        "--out", str(tmp_path / "big.npz"))
    assert rc == 2 and "grid needs about" in err and "GiB" in err and "lower the grid resolution" in err
    assert "Traceback" not in err + out and not (tmp_path / "big.npz").exists()

    from mudsc.models import model_from_spec
    from mudsc.models.checkpoint import load_model, save_model

    _, meta = load_model(demo_parents[1])
    wider = dict(meta["spec"], kwargs={**meta["spec"]["kwargs"], "width": 2})
    wide = save_model(model_from_spec(wider), tmp_path / "wide.safetensors")
    rc = main(["landscape", "--models", str(demo_parents[0]), str(wide), *FAST, "--methods", "permute", "rebasin",
               "--out", str(tmp_path / "w.npz")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "parent 1 differs from parent 0 in width or shape" in err, err


def test_merge_specs():
    assert merge_specs(["mudsc-zip"], alpha=0.5, alpha2=0.9) == [("mudsc-zip", 0.5), ("mudsc-zip", 0.9)]
    assert merge_specs(["zipit", "mudsc-zip@0.2", "wzip"], alpha=0.5, alpha2=None) == [
        ("zipit", 0.5), ("mudsc-zip", 0.2), ("wzip", 0.5)]
    assert merge_specs(["zipit", "mudsc-zip"], alpha=0.5, alpha2=0.7)[1] == ("mudsc-zip", 0.7)
    with pytest.raises(ConfigError, match="both set"):
        merge_specs(["zipit", "mudsc-zip@0.2"], alpha=0.5, alpha2=0.7)


def _grouped_result():
    xs, ys = np.linspace(-1, 2, 7), np.linspace(-1, 1.5, 6)
    gx, gy = np.meshgrid(xs, ys)
    labels = ["A' (m0)", "B' (m0)", "m0", "A' (m1)", "B' (m1)", "m1"]
    r = LandscapeResult.empty(xs, ys, ["task A", "task B"], labels, ["parent", "parent", "merge"] * 2,
                              [[0, 0], [1, 0], [0.5, 0], [0, 1], [1, 1], [0.5, 1]], [0, 0, 0, 0.5, 0, 0.25],
                              bn_mode="exact", settings={"plane": {"kind": "pca"}})
    flat = np.arange(xs.size * ys.size)
    la, lb = (gx ** 2 + gy ** 2).reshape(-1), ((gx - 1) ** 2 + gy ** 2).reshape(-1)
    r.update(flat, {"task_loss": np.stack([la, lb], 1), "task_acc": np.full((len(flat), 2), 0.5),
                    "joint_loss": la, "joint_acc": np.full(len(flat), 0.4)})
    groups = {lab: ("m0" if i < 3 else "m1") for i, lab in enumerate(labels)}
    segments = [("A' (m0)", "m0"), ("m0", "B' (m0)"), ("A' (m1)", "m1"), ("m1", "B' (m1)")]
    return r, groups, segments


def test_grouped_figure_colours_legend_segments_and_offplane_note():
    from landscape.figure import landscape_figure, offplane_note

    r, groups, segments = _grouped_result()
    fig = landscape_figure(r, overlap_threshold=0.5, vmax=2.41, groups=groups, segments=segments)
    legend = [t.name for t in fig.data if t.showlegend]
    assert legend[:5] == ["m0", "m1", "parent 0'", "parent 1'", "merge"] and "below 0.5" in legend[5]
    models = {t.name: t for t in fig.data if t.type == "scatter" and t.mode == "markers" and not t.showlegend}
    assert models["A' (m1) (parent)"].marker.color == models["m1 (merge)"].marker.color != models["m0 (merge)"].marker.color
    assert models["A' (m0) (parent)"].marker.symbol != models["B' (m0) (parent)"].marker.symbol
    lines = [t for t in fig.data if t.type == "scatter" and t.mode == "lines" and not t.showlegend]
    assert len(lines) == 4 * 3  # every segment on every panel
    # Round colour levels: the top band ends at or just above vmax, shared by every panel.
    assert 2.41 <= fig.layout.coloraxis.cmax <= 2.6
    (size,) = {t.contours.size for t in fig.data if t.type == "contour" and t.coloraxis}
    bands = fig.layout.coloraxis.cmax / size
    assert size in (0.1, 0.2, 0.25, 0.5) and bands == pytest.approx(round(bands)) and 6 <= round(bands) <= 12
    note = offplane_note(r)
    assert "A' (m1) 0.5" in note and "m1 0.25" in note and "m0 " not in note
    assert "A' (m1)" in fig.layout.title.subtitle.text
