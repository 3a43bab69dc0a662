"""torchrun jobs (mudsc.distributed): shares of the work, and 2 gloo ranks on localhost giving one
process's statistics, landscape grid and sweep; a rank killed mid-grid; ranks given different inputs."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mudsc.distributed import Launch, RankFailedError, digest, launch_from_env, torchrun_env
from mudsc.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
WORLD = 2


# ---------------------------------------------------------------------------- shares (no processes)
def test_one_process_changes_nothing():
    one = Launch()
    assert not one.distributed and one.main
    assert one.batch_block(10, 3) == slice(0, 10)
    assert one.share([1, 2, 3]) == [1, 2, 3] and list(one.strided("abc")) == list("abc")
    t = torch.ones(3, dtype=torch.float64)
    one.sum_([t], "nothing")
    assert t.tolist() == [1.0, 1.0, 1.0]
    assert one.gather("x", "nothing") == ["x"] and one.broadcast(5, "nothing") == 5
    one.check_same("inputs", "abc")
    with launch_from_env() as launch:  # the test runner is no torchrun worker
        assert launch == Launch()


def test_batch_blocks_are_whole_disjoint_and_cover():
    for n, bs, world in ((1000, 250, 2), (1001, 250, 3), (70, 16, 4), (7, 2, 4)):
        blocks = [Launch(r, world).batch_block(n, bs) for r in range(world)]
        assert blocks[0].start == 0 and blocks[-1].stop == n
        assert all(a.stop == b.start for a, b in zip(blocks, blocks[1:]))
        assert all(b.start % bs == 0 and b.stop > b.start for b in blocks)
    with pytest.raises(ConfigError, match="fewer than the 4 ranks"):
        Launch(0, 4).batch_block(5, 2)


def test_shares_round_trip_in_order():
    items = list(range(11))
    for world in (2, 3, 5):
        shares = [Launch(r, world).share(items) for r in range(world)]
        assert sorted(sum(shares, [])) == items
        assert Launch(0, world).unshare(shares) == items
        assert list(Launch(1, world).strided(items)) == shares[1]


def test_digest_and_env():
    assert digest({"a": 1, "b": [2]}) == digest({"b": [2], "a": 1}) != digest({"a": 2, "b": [2]})
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    assert torchrun_env(env) and not torchrun_env({k: v for k, v in env.items() if k != "RANK"})


# ---------------------------------------------------------------------------- helpers for real jobs
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "MUDSC_HOME": str(home), "MUDSC_DEVICE": "cpu"}


def _errors(proc: subprocess.CompletedProcess) -> str:
    """The mudsc error lines of a run (torchrun's own summary follows them on stderr)."""
    return "\n".join(line for line in proc.stderr.splitlines() if "mudsc: error" in line) or proc.stderr[-2000:]


def _torchrun(args: list[str], home: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 -m mudsc ARGS`` (torch.distributed.run, localhost)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORLD}",
           "-m", "mudsc", *args]
    return subprocess.run(cmd, env=_env(home), cwd=cwd, capture_output=True, text=True, timeout=600)


def _one(args: list[str], home: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mudsc", *args], env=_env(home), cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def _rank_env(rank: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)


@contextlib.contextmanager
def _one_thread():
    """One thread, as each rank has: float32 kernels may round differently with more threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _spawn(fn, *args) -> list[int]:
    """Run ``fn(rank, port, *args)`` in 2 spawned processes; their exit codes."""
    import torch.multiprocessing as mp

    ctx = mp.start_processes(fn, args=(_free_port(), *args), nprocs=WORLD, join=False, start_method="spawn")
    for p in ctx.processes:
        p.join(300)
    return [p.exitcode for p in ctx.processes]


# ---------------------------------------------------------------------------- statistics
def _stats_worker(rank: int, port: int, out: str) -> None:
    _rank_env(rank, port)
    from unit_helpers import small_mlp

    from mudsc.data import batches, load_dataset
    from mudsc.diffinit.fuse import reset_bn_stats_
    from mudsc.diffinit.stats import activation_stats
    from mudsc.sameinit.taskstats import compute_stats
    from mudsc.unitgraph import trace

    with launch_from_env("cpu") as launch:
        torch.save(_engine_stats(launch, small_mlp, load_dataset("digits"), batches, reset_bn_stats_,
                                 activation_stats, compute_stats, trace), f"{out}/rank{rank}.pt")


def _engine_stats(launch, small_mlp, data, batches, reset_bn_stats_, activation_stats, compute_stats, trace):
    """Activation correlations of two parents, a task model's Gram/K-FAC/Fisher, and a BN reset."""
    parents = [small_mlp(tuple(range(10)), seed=s) for s in (0, 1)]
    act = activation_stats(parents, trace(parents[0]), data.train.x[:300], batch_size=64, device="cpu",
                           launch=launch)
    g = torch.Generator().manual_seed(3)
    task = data.train.subset((0, 1, 2, 3, 4))
    model = small_mlp((0, 1, 2, 3, 4), seed=2)
    ts = compute_stats(model, batches(task, 16, shuffle=True, generator=g), examples=150, fisher="sampled",
                       generator=g, device="cpu", launch=launch)
    bn = small_mlp(tuple(range(10)), seed=4)
    reset_bn_stats_(bn, batches(data.train.head(200), 32), device="cpu", launch=launch)
    return {"corr": act.corr, "mean": act.mean, "n_images": act.n_images, "n_samples": act.n_samples,
            "gram": ts.gram, "grad": ts.grad, "fisher": ts.fisher, "count": ts.count,
            "bn": {k: v for k, v in bn.state_dict().items() if "running" in k or "num_batches" in k}}


def _close(a: dict, b: dict, *, rtol: float) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        scale = b[k].abs().max().clamp_min(1e-30)
        assert ((a[k].double() - b[k].double()).abs().max() / scale).item() <= rtol, k


@pytest.mark.slow
def test_statistics_of_two_ranks_equal_one_process(tmp_path, digits):
    from unit_helpers import small_mlp

    from mudsc.data import batches
    from mudsc.diffinit.fuse import reset_bn_stats_
    from mudsc.diffinit.stats import activation_stats
    from mudsc.sameinit.taskstats import compute_stats
    from mudsc.unitgraph import trace

    assert _spawn(_stats_worker, str(tmp_path)) == [0, 0]
    with _one_thread():
        one = _engine_stats(None, small_mlp, digits, batches, reset_bn_stats_, activation_stats, compute_stats, trace)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for got in ranks:  # every rank holds the whole job's statistics
        assert got["count"] == one["count"] == 150 and got["n_images"] == one["n_images"] == 300
        assert got["n_samples"] == one["n_samples"]
        for part in ("gram", "grad", "fisher"):  # float64 sums of moments: equal to rounding
            _close(got[part], one[part], rtol=1e-10)
        _close(got["corr"], one["corr"], rtol=1e-6)  # returned in float32
        _close(got["mean"], one["mean"], rtol=1e-6)
        _close(got["bn"], one["bn"], rtol=1e-5)  # running averages kept in float32
    assert all(v.abs().sum() > 0 for v in one["fisher"].values())


@pytest.mark.slow
def test_stats_command_under_torchrun(tmp_path, same_init_family):
    _, _, tasks = same_init_family
    common = ["stats", "--model", str(tasks[0]), "--dataset", "digits", "--examples", "96", "--batch-size", "16",
              "--parts", "gram", "fisher", "--quiet"]
    two = _torchrun([*common, "--out", "two.safetensors"], tmp_path / "home", tmp_path)
    assert two.returncode == 0, _errors(two)
    assert two.stdout.count("two.safetensors") == 1  # rank 0 alone prints
    one = _one([*common, "--out", "one.safetensors"], tmp_path / "home", tmp_path)
    assert one.returncode == 0, _errors(one)
    from mudsc.sameinit.taskstats import load_stats

    a, b = load_stats(tmp_path / "two.safetensors"), load_stats(tmp_path / "one.safetensors")
    assert a.count == b.count == 96 and a.metadata["world_size"] == "2" and b.metadata["world_size"] == "1"
    _close(a.gram, b.gram, rtol=1e-10)
    _close(a.fisher, b.fisher, rtol=1e-10)


# ---------------------------------------------------------------------------- sweep
def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


@pytest.mark.slow
def test_sweep_under_torchrun_writes_one_process_csv(tmp_path, tiny_parents):
    common = ["sweep", "--parents", *tiny_parents, "--dataset", "digits", "--stats-images", "250",
              "--methods", "zipit", "permute", "--alphas", "0.3", "0.7", "--quiet"]
    two = _torchrun([*common, "--out", "two"], tmp_path / "home", tmp_path)
    assert two.returncode == 0, _errors(two)
    one = _one([*common, "--out", "one"], tmp_path / "home", tmp_path)
    assert one.returncode == 0, _errors(one)
    assert len(_rows(tmp_path / "one.csv")) >= 2
    assert _rows(tmp_path / "two.csv") == _rows(tmp_path / "one.csv")
    assert two.stdout.count("joint") == one.stdout.count("joint")  # printed once, by rank 0


@pytest.mark.slow
def test_merge_under_torchrun_writes_one_checkpoint_that_matches_one_process(tmp_path, tiny_parents):
    common = ["merge", "--parents", *tiny_parents, "--dataset", "digits", "--method", "mudsc-zip", "--alpha", "0.5",
              "--stats-images", "500", "--eval-images", "100", "--reset-images", "500", "--json"]  # 2 batches: one per rank
    two = _torchrun([*common, "--out", "two"], tmp_path / "home", tmp_path)
    assert two.returncode == 0, _errors(two)
    one = _one([*common, "--out", "one"], tmp_path / "home", tmp_path)
    assert one.returncode == 0, _errors(one)
    assert json.loads(two.stdout).keys() == json.loads(one.stdout).keys()  # one summary: rank 0 alone prints
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["world_size"] == WORLD and json.loads((tmp_path / "one" / "manifest.json").read_text())["world_size"] == 1
    # the sharded statistics and BN reset differ from one process at float32 rounding only
    from mudsc.models.checkpoint import load_model

    a, b = (load_model(tmp_path / d / "model.safetensors")[0].state_dict() for d in ("two", "one"))
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=k)


# ---------------------------------------------------------------------------- landscape
LANDSCAPE = ["--grid", "5", "--eval-images", "30", "--calib-images", "64", "--stats-images", "500",
             "--reset-images", "250", "--path-steps", "0", "--dataset", "digits", "--methods", "permute", "rebasin",
             "--plane", "three-point", "--bn", "exact", "--json"]


@pytest.mark.slow
def test_landscape_under_torchrun_equals_one_process(tmp_path, demo_parents):
    from landscape.result import LandscapeResult

    args = ["landscape", "--models", *map(str, demo_parents), *LANDSCAPE]
    two = _torchrun([*args, "--out", "two.npz"], tmp_path / "home2", tmp_path)
    assert two.returncode == 0, _errors(two)
    one = _one([*args, "--out", "one.npz", "--no-cache"], tmp_path / "home1", tmp_path)
    assert one.returncode == 0, _errors(one)
    a, b = LandscapeResult.load(tmp_path / "two.npz"), LandscapeResult.load(tmp_path / "one.npz")
    assert a.complete and b.complete
    # The merges' BatchNorm resets pool per-rank float32 averages, so the merged weights (and the plane)
    # differ at float32 rounding; the grid evaluation itself is bit for bit (see the resume test below).
    for field in ("task_loss", "task_acc", "joint_loss", "model_task_loss", "model_coords"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-4, atol=1e-6)
    assert not list((tmp_path / "home2" / "landscape").glob("*.part*.npz"))  # parts absorbed into the entry


def _grid_worker(rank: int, port: int, cache: str, die_after: int) -> None:
    _rank_env(rank, port)
    launch_ctx = launch_from_env("cpu")
    with launch_ctx as launch:
        calls = []

        def progress(done: int, total: int) -> None:
            calls.append(done)
            if rank == 1 and len(calls) >= die_after:
                os._exit(17)  # killed mid-grid, its first chunk saved
        try:
            _small_landscape(cache, launch=launch, progress=progress)
        except RankFailedError as e:
            Path(cache, "error.txt").write_text(str(e))
            raise SystemExit(3)


def _small_landscape(cache, **kw):
    """A 7x7 exact-BN three-point plane of three seeded BatchNorm MLPs, in chunks of 4 points."""
    from unit_helpers import small_mlp

    from landscape import GridSpec, PlaneSpec, compute_landscape, make_eval_set
    from mudsc.data import load_dataset

    classes = tuple(range(10))
    models = {f"m{s}": small_mlp(classes, seed=s).state_dict() for s in range(3)}
    ev = make_eval_set(load_dataset("digits"), [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)], per_task=40, calib_size=64,
                       generator=torch.Generator().manual_seed(0))
    return compute_landscape(small_mlp(classes), models, PlaneSpec("three_point"), ev, grid=GridSpec(7),
                             chunk_size=4, cache_dir=cache, method="loop", **kw)


@pytest.mark.slow
def test_rank_killed_mid_grid_leaves_a_resumable_cache(tmp_path):
    cache = tmp_path / "cache"
    codes = _spawn(_grid_worker, str(cache), 1)
    assert codes == [3, 17]
    message = (cache / "error.txt").read_text()
    assert "rank 1 of 2 stopped before the gather of the grid points" in message and "rerun" in message
    parts = list(cache.glob("*.part*.npz"))
    assert {p.name.split(".")[1] for p in parts} == {"part0", "part1"}
    seen = []
    with _one_thread():
        resumed = _small_landscape(str(cache), progress=lambda done, total: seen.append((done, total)))
        reference = _small_landscape(str(tmp_path / "fresh"))
    # rank 0's 25 points and rank 1's first chunk of 4 came from the cache: the rest was computed
    assert seen[0] == (25 + 4 + 4, 49) and seen[-1] == (49, 49)
    assert resumed.complete and not list(cache.glob("*.part*.npz"))
    np.testing.assert_array_equal(resumed.task_loss, reference.task_loss)  # the loop: bit for bit
    np.testing.assert_array_equal(resumed.joint_acc, reference.joint_acc)


# ---------------------------------------------------------------------------- mismatched inputs
def _mismatch_worker(rank: int, port: int, root: str) -> None:
    _rank_env(rank, port)
    from mudsc.cli import main

    os.chdir(Path(root, f"node{rank}"))  # the same command line, but each "node" holds another file
    raise SystemExit(main(["stats", "--model", "task.safetensors", "--dataset", "digits", "--examples", "32",
                           "--batch-size", "16", "--parts", "gram", "--quiet", "--out", "s.safetensors"]))


@pytest.mark.slow
def test_ranks_given_different_inputs_are_refused(tmp_path, same_init_family, capfd):
    import shutil

    _, _, tasks = same_init_family
    for rank, src in enumerate(tasks):
        (tmp_path / f"node{rank}").mkdir()
        shutil.copy(src, tmp_path / f"node{rank}" / "task.safetensors")
    assert _spawn(_mismatch_worker, str(tmp_path)) == [2, 2]
    err = capfd.readouterr().err
    assert "the ranks were given different checkpoints and data: rank(s) 1 differ from rank 0" in err
    assert not list(tmp_path.glob("node*/s.safetensors"))


# ---------------------------------------------------------------------------- the studio's torchrun jobs
def test_sweep_and_landscape_jobs_parse_back_and_land(tiny_parents, tmp_path, monkeypatch):
    import json
    import shlex

    from landscape.result import LandscapeResult
    from mudsc.cli import build_parser
    from mudsc.cli.command_lines import landscape_job, sweep_job, torchrun_command
    from mudsc.cli.merge import _config
    from mudsc.diffinit.config import make_config
    from mudsc.diffinit.session import MergeSession
    from mudsc.studio.torchrun import landed_landscape, landed_plan, landed_sweep

    monkeypatch.setenv("MUDSC_HOME", str(tmp_path))
    session = MergeSession.from_paths(tiny_parents, "digits", stats_images=250)
    config = make_config(method="mudsc-zip", alpha=0.3, zip_a=0.4)
    job = sweep_job(session, config, alphas=[0.0, 0.5], nproc=3)
    argv = shlex.split(job.command)
    assert argv[:4] == ["torchrun", "--nproc-per-node=3", "-m", "mudsc"]
    args = build_parser().parse_args(argv[4:])
    assert args.alphas == [0.0, 0.5] and args.methods == ["mudsc-zip"] and args.parents == tiny_parents
    assert _config(args).model_copy(update={"alpha": 0.3}) == config  # every knob but the swept one
    assert args.out + ".json" == str(job.result) and landed_sweep(job.result) is None
    job.result.parent.mkdir(parents=True)
    job.result.write_text(json.dumps({"pairs": [tiny_parents], "rows": [{"method": "mudsc-zip", "alpha": 0.0}]}))
    assert landed_sweep(job.result) == [{"method": "mudsc-zip", "alpha": 0.0}]

    ls = landscape_job(session, config, others=["zipit"], plane="pca", resolution=41, bn="exact", per_task=100,
                       nproc=2)
    args = build_parser().parse_args(shlex.split(ls.command)[4:])
    assert (args.methods, args.plane, args.grid, args.alpha, args.out) == (["mudsc-zip", "zipit"], "pca", 41, 0.3,
                                                                           str(ls.result))
    assert landed_landscape(ls.result) is None
    res = LandscapeResult.empty([0.0, 1.0], [0.0, 1.0], ["t0"], ["m"], ["merge"], [[0.0, 0.0]], [0.0], bn_mode="exact",
                                settings={"groups": {"m": "m"}, "segments": [["m", "m"]]})
    res.save(ls.result)
    assert landed_landscape(ls.result) is None  # not whole yet
    res.update(np.arange(4), {"task_loss": np.ones((4, 1)), "task_acc": np.ones((4, 1)), "joint_loss": np.ones(4),
                              "joint_acc": np.ones(4)})
    res.save(ls.result)
    landed = landed_landscape(ls.result)
    assert landed is not None and landed_plan(landed).groups == {"m": "m"}
    with pytest.raises(ValueError, match="expected a mudsc command"):
        torchrun_command("python x.py", nproc=2)
