"""Paper exports: LaTeX/CSV tables, the reproducing command lines, figure files."""
import csv
import io
import shlex
import zipfile

import plotly.graph_objects as go
import pytest

from mudsc.cli.command_lines import manifest_command, merge_command
from mudsc.diffinit.config import make_config
from mudsc.errors import ConfigError
from mudsc.studio.figure_export import (
    figure_files,
    figure_html,
    file_stem,
    static_export_works,
    static_image,
    zip_bytes,
)
from mudsc.studio.tables import latex_escape, to_csv, to_latex

ROWS = [{"model": "merged (mudsc-zip, alpha 0.5)", "joint": 0.6312, "task 0-4": 0.9, "params": 275696},
        {"model": "parent_0 & co", "joint": 0.4722, "task 0-4": None, "params": 275696},
        {"model": "ensemble", "joint": 0.9472, "task 0-4": 0.99, "params": 551392}]


def test_latex_table_escapes_formats_and_bolds_the_best():
    tex = to_latex(ROWS, percent=["joint", "task 0-4"], bold_max=["joint"], caption="Accuracy (%) & cost",
                   label="tab:m")
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(body) == 3
    assert all(line.count(" & ") == 3 and line.endswith(r"\\") for line in body)
    assert r"parent\_0 \& co" in body[1] and "--" in body[1]       # escaped text, missing cell
    assert r"\textbf{94.7}" in body[2] and "63.1" in body[0]        # percentages, best joint in bold
    assert "275{,}696" in body[0]                                   # integers with thin separators
    assert r"\begin{tabular}{lrrr}" in tex and r"\caption{Accuracy (\%) \& cost}" in tex
    assert r"joint (\%)" in tex


def test_latex_rejects_unknown_columns_and_empty_tables():
    with pytest.raises(ConfigError, match="not in the table"):
        to_latex(ROWS, percent=["accuracy"])
    with pytest.raises(ConfigError):
        to_latex([])


def test_latex_escape_covers_every_special_character():
    assert latex_escape(r"a_b%c$d#e&f{g}h~i^j\k") == \
        r"a\_b\%c\$d\#e\&f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k"


def test_csv_round_trips_values():
    text = to_csv(ROWS + [{"model": "extra", "lists": [1, 2]}])
    back = list(csv.DictReader(io.StringIO(text)))
    assert [r["model"] for r in back] == [r["model"] for r in ROWS] + ["extra"]
    assert float(back[0]["joint"]) == ROWS[0]["joint"] and back[1]["task 0-4"] == "" and back[3]["lists"] == "1 2"


@pytest.mark.parametrize("fields", [
    {},
    {"method": "zipit", "cut": "layer2", "zip_a": 0.3, "zip_b": 0.75},
    {"alpha": 0.123456789, "alpha_overrides": {"body.layer1": 0.2, "body.layer3": 1.0}, "mix": "standardized"},
    {"method": "rebasin", "groups": False, "reset_bn": False, "seed": 3, "max_sweeps": 7},
    {"method": "zipit", "stats_positions": 16, "seed": 2, "reset_images": 300, "weight_metric": "cosine"},
])
def test_merge_command_parses_back_to_the_same_config(fields):
    from mudsc.cli import build_parser
    from mudsc.cli.merge import _config

    config = make_config(**fields)
    cmd = merge_command(config, parents=["/a b/p0.safetensors", "p1.safetensors"], dataset="mnist",
                        data_dir="/data/mnist", data_img_size=24, stats_images=500, eval_images=200, out="out dir")
    argv = shlex.split(cmd)
    assert argv[:2] == ["mudsc", "merge"]
    args = build_parser().parse_args(argv[1:])
    assert _config(args) == config
    assert args.parents == ["/a b/p0.safetensors", "p1.safetensors"] and args.out == "out dir"
    assert (args.dataset, args.data_dir, args.data_img_size, args.stats_images, args.eval_images) == (
        "mnist", "/data/mnist", 24, 500, 200)


def test_every_config_field_has_a_command_line_spelling():
    from mudsc.cli.command_lines import _SWITCHES, _VALUE_OPTIONS
    from mudsc.diffinit.config import MergeConfig

    spelled = set(_VALUE_OPTIONS) | set(_SWITCHES) | {"alpha_overrides"}  # --alpha-for, one per space
    assert set(MergeConfig.model_fields) == spelled  # a new field needs its option, or exports lose it


def test_merge_command_leaves_out_defaults():
    cmd = merge_command(make_config(), parents=["a", "b"], dataset="digits")
    assert cmd == "mudsc merge --parents a b --dataset digits --method mudsc-zip --out merged"
    assert manifest_command() == "mudsc merge --manifest manifest.json --out merged"


def test_figure_html_is_self_contained():
    html = figure_html(go.Figure(go.Scatter(x=[0, 1], y=[1, 0])))
    assert b"<html>" in html[:100] and b"<script src=" not in html  # no CDN: plotly.js is inlined
    assert len(html) > 1_000_000


def test_static_image_rejects_unknown_formats():
    with pytest.raises(ConfigError, match="unknown image format"):
        static_image(go.Figure(), "gif")


def test_file_stems_and_zip():
    assert file_stem("Similarity matrices — body.layer1.0.conv1") == "similarity_matrices_body_layer1_0_conv1"
    assert file_stem("///") == "figure"
    data = zip_bytes({"a/b.txt": "text", "c.bin": b"\x00\x01"})
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert sorted(z.namelist()) == ["a/b.txt", "c.bin"] and z.read("c.bin") == b"\x00\x01"


def test_figure_files_share_one_plotly_js_and_render_static_formats():
    figs = {"Loss landscape": go.Figure(go.Heatmap(z=[[1, 2], [3, 4]])), "Alpha sweep": go.Figure(go.Scatter(y=[1, 2]))}
    html_only = figure_files(figs, static_formats=())
    assert sorted(html_only) == ["figures/alpha_sweep.html", "figures/loss_landscape.html", "figures/plotly.min.js"]
    page = html_only["figures/loss_landscape.html"]
    assert b'src="plotly.min.js"' in page and len(page) < 100_000  # not inlined: the js is shared
    assert len(html_only["figures/plotly.min.js"]) > 1_000_000
    assert figure_files({}) == {}
    if not static_export_works():
        pytest.skip("no Chromium for kaleido")
    files = figure_files(figs)
    assert files["figures/loss_landscape.pdf"][:4] == b"%PDF" and files["figures/alpha_sweep.png"][:4] == b"\x89PNG"
