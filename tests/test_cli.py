"""The CLI end to end: exit codes, JSON, and one-line errors without tracebacks."""
import json
import subprocess
import sys

import pytest

from mudsc.cli import main


def run(*args):
    p = subprocess.run([sys.executable, "-m", "mudsc.cli", *args], capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def test_train_then_eval_json(tmp_path, capsys):
    out = tmp_path / "p.safetensors"
    assert main(["zoo", "train", "--dataset", "digits", "--arch", "mlp", "--width", "32", "--classes", "0-4",
                 "--seed", "0", "--epochs", "10", "--batch-size", "32", "--out", str(out), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["accuracy"] > 0.8 and rec["task"] == [0, 1, 2, 3, 4]
    assert main(["eval", "--model", str(out), "--dataset", "digits", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["accuracy"] == pytest.approx(rec["accuracy"]) and ev["n"] > 100
    assert main(["eval", "--model", str(out), "--dataset", "digits", "--classes", "5-9", "--json"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1


def test_training_is_deterministic(tmp_path):
    from mudsc.models.checkpoint import read_state_dict

    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.safetensors")
        assert main(["zoo", "train", "--dataset", "digits", "--arch", "cnn", "--width", "1", "--classes", "odd",
                     "--seed", "4", "--epochs", "1", "--out", str(paths[-1])]) == 0
    a, b = (read_state_dict(p)[0] for p in paths)
    assert all((a[k] == b[k]).all() for k in a)


@pytest.mark.parametrize("args,message", [
    (["eval", "--model", "missing.safetensors", "--dataset", "digits"], "does not exist"),
    (["zoo", "train", "--dataset", "digits", "--arch", "resnet2", "--classes", "0-4", "--out", "x.safetensors"],
     "did you mean resnet20"),
    (["zoo", "train", "--dataset", "digits", "--arch", "mlp", "--classes", "3-1", "--out", "x.safetensors"],
     "runs backwards"),
    (["zoo", "train", "--dataset", "digits", "--arch", "mlp", "--classes", "", "--out", "x.safetensors"], "empty"),
    (["zoo", "train", "--dataset", "mnist", "--data-dir", "/nonexistent", "--arch", "mlp", "--classes", "0-4",
      "--out", "x.safetensors"], "does not exist"),
    (["--device", "tpu", "eval", "--model", "missing.safetensors", "--dataset", "digits"], "unknown device 'tpu'"),
    (["--device", "cuda:7", "eval", "--model", "missing.safetensors", "--dataset", "digits"], "device 'cuda:7'"),
    (["merge", "--parents", "a.safetensors", "b.safetensors", "--dataset", "digits", "--batch-size", "0",
      "--out", "o"], "--batch-size: must be at least 1"),
    # options are checked before the parents and the data load
    (["merge", "--parents", "a.safetensors", "b.safetensors", "--dataset", "digits", "--method", "mudsc-zip",
      "--alpha", "1.5", "--out", "o"], "alpha"),
])
def test_errors_exit_2_without_traceback(tmp_path, args, message):
    code, _, err = run(*args)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()[-1]) > 10


def test_unwritable_outputs_are_refused_before_the_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "out"  # a folder cannot be made under a file
    for args in (["merge", "--parents", "a.safetensors", "b.safetensors", "--dataset", "digits", "--out", str(out)],
                 ["sweep", "--parents", "a.safetensors", "b.safetensors", "--dataset", "digits", "--out", str(out)],
                 ["merge-same", "--models", "a.safetensors", "--base", "b.safetensors", "--method", "ties",
                  "--dataset", "digits", "--out", str(out)],
                 ["stats", "--model", "a.safetensors", "--dataset", "digits", "--out", str(out / "s.safetensors")],
                 ["zoo", "train", "--dataset", "digits", "--arch", "mlp", "--classes", "0-4",
                  "--out", str(out / "p.safetensors")]):
        code, _, err = run(*args)
        assert code == 2 and "cannot make the folder" in err and "Traceback" not in err, (args, err)


def test_corrupt_checkpoint_cli(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00garbage")
    code, _, err = run("eval", "--model", str(bad), "--dataset", "digits")
    assert code == 2 and "not a valid safetensors" in err and "Traceback" not in err
