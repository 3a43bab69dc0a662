"""Progress bars of the long commands: tqdm on stderr naming each stage, silent with ``--quiet`` or
when ``--json`` goes to a pipe, and stdout the same either way."""
from __future__ import annotations

import json
import sys

from mudsc.cli import main

MERGE_STAGES = ("statistics", "sweeps", "evaluation")
SAME_STAGES = ("statistics, model 1 of 2", "statistics, model 2 of 2", "layers", "BN reset")


def _run(capsys, argv: list[str]) -> tuple[str, str]:
    assert main(["--device", "cpu", *argv]) == 0
    out = capsys.readouterr()
    return out.out, out.err


def _no_bar(err: str, stages: tuple[str, ...]) -> bool:
    return "\r" not in err and not any(s in err for s in stages)  # tqdm redraws with carriage returns


def _untimed(text: str) -> dict:
    return {k: v for k, v in json.loads(text).items() if k != "timings"}  # timings differ run to run


def _merge(tmp_path, parents, *extra) -> list[str]:
    return ["merge", "--parents", *parents, "--dataset", "digits", "--stats-images", "250",
            "--out", str(tmp_path / "m"), *extra]


def test_merge_names_its_stages_on_stderr_and_quiet_silences_them(tiny_parents, tmp_path, capsys):
    out, err = _run(capsys, _merge(tmp_path, tiny_parents))  # capsys's stdout is no TTY, as a pipe
    assert all(f"{s}:" in err for s in MERGE_STAGES), err
    assert "250/250" in err  # the statistics bar counts images
    quiet_out, quiet_err = _run(capsys, _merge(tmp_path, tiny_parents, "--quiet"))
    assert _no_bar(quiet_err, MERGE_STAGES), quiet_err
    assert quiet_out == out and out.startswith("mudsc-zip (cut full): joint ")


def test_merge_json_into_a_pipe_has_no_bar_but_a_terminal_gets_one(tiny_parents, tmp_path, capsys, monkeypatch):
    out, err = _run(capsys, _merge(tmp_path, tiny_parents, "--json"))
    assert _no_bar(err, MERGE_STAGES), err
    quiet, _ = _run(capsys, _merge(tmp_path, tiny_parents, "--json", "--quiet"))
    assert _untimed(out) == _untimed(quiet)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # JSON read by a person: bars stay
    _, err = _run(capsys, _merge(tmp_path, tiny_parents, "--json"))
    assert all(f"{s}:" in err for s in MERGE_STAGES), err


def test_sweep_shows_one_bar_over_configurations(tiny_parents, tmp_path, capsys):
    argv = ["sweep", "--parents", *tiny_parents, "--dataset", "digits", "--stats-images", "250",
            "--methods", "zipit", "mudsc-zip", "--alphas", "0", "0.5", "--out", str(tmp_path / "s")]
    out, err = _run(capsys, argv)
    assert "configurations:" in err and "/3 " in err and "mudsc-zip alpha=0.5 cut=full" in err, err
    quiet_out, quiet_err = _run(capsys, [*argv, "--quiet"])
    assert _no_bar(quiet_err, ("configurations",)) and quiet_out == out


def test_stats_counts_examples(tiny_parents, tmp_path, capsys):
    argv = ["stats", "--model", tiny_parents[0], "--dataset", "digits", "--examples", "64",
            "--out", str(tmp_path / "st.safetensors")]
    _, err = _run(capsys, argv)
    assert "statistics:" in err and "64/64" in err, err
    _, err = _run(capsys, [*argv, "--quiet"])
    assert _no_bar(err, ("statistics",)), err
    out, err = _run(capsys, [*argv, "--json"])
    assert _no_bar(err, ("statistics",)) and json.loads(out)["count"] == 64


def test_merge_same_names_statistics_layers_and_bn_reset(same_init_family, tmp_path, capsys):
    _, base, paths = same_init_family
    argv = ["merge-same", "--base", str(base), "--models", *map(str, paths), "--method", "mats",
            "--dataset", "digits", "--stats-examples", "64", "--cg-iterations", "10", "--out", str(tmp_path / "ms")]
    out, err = _run(capsys, argv)
    assert all(f"{s}:" in err for s in SAME_STAGES), err
    quiet_out, quiet_err = _run(capsys, [*argv, "--quiet"])
    assert _no_bar(quiet_err, SAME_STAGES) and quiet_out == out
    out, err = _run(capsys, [*argv, "--json"])
    assert _no_bar(err, SAME_STAGES) and json.loads(out)["method"] == "mats"
