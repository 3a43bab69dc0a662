"""MergeSession: parents, data and cached statistics, so a new alpha, cut, method or zip parameter
re-merges without another statistics pass. The app and the CLI both merge through it.
"""
from __future__ import annotations

import copy
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from torch import Tensor, nn

from mudsc.data import Dataset, Split, absolute, batches, check_tasks, union_classes, union_train
from mudsc.device import default_device
from mudsc.diffinit.config import MergeConfig
from mudsc.diffinit.fuse import fuse, head_state, reset_bn_stats_
from mudsc.diffinit.memory import check_merge_memory, merge_memory
from mudsc.diffinit.solve import Solution, solve
from mudsc.diffinit.stats import ActivationStats, activation_stats
from mudsc.distributed import Launch
from mudsc.errors import ConfigError, DataError
from mudsc.evaluate import TaskMetrics, count_flops, multitask_metrics, predict
from mudsc.models.heads import shares_output_space
from mudsc.models.multihead import Ensemble, build_multihead, multihead_state
from mudsc.unitgraph import UnitGraph, split, trace

Progress = Callable[[str, float], None]  # (stage description, fraction done): the studio's jobs
Steps = Callable[[str, int, int], None]  # (stage, done, total): the CLI's bars
RESULTS_BYTES = 1 << 30  # merges a session keeps for re-use: the most recent ones within this many bytes


def stage_steps(steps: Steps | None, stage: str) -> Callable[[int, int], None] | None:
    """The (done, total) callback of one stage of `steps`."""
    return (lambda done, total: steps(stage, done, total)) if steps else None


@dataclass
class MergeResult:
    """A merged model with everything needed to report, draw and export it."""

    config: MergeConfig
    model: nn.Module
    state_dict: dict[str, Tensor]          # what a checkpoint stores (multi-head layout when cut)
    solution: Solution | None
    spaces: list[str]                      # the spaces that were merged
    metrics: TaskMetrics
    params: int
    flops: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def multihead(self) -> bool:
        return isinstance(self.model.output_classes, list)

    def transforms(self) -> dict[str, list[list[int]]]:
        """Per merged space and parent, the merged unit that replaces each unit (the unmerge maps)."""
        if self.solution is None:
            return {}
        return {s: [u.argmax(1).tolist() for _, u in m.parts()] for s, m in self.solution.matches.items()}


def _check_parents(parents: list[nn.Module]) -> None:
    if len(parents) < 2:
        raise ConfigError(f"merging needs at least 2 parents, got {len(parents)}")
    ref = parents[0].state_dict()
    for i, p in enumerate(parents[1:], 1):
        sd = p.state_dict()
        if set(sd) != set(ref):
            diff = sorted(set(sd) ^ set(ref))
            raise ConfigError(f"parent {i} has a different architecture than parent 0 (tensors differ, e.g. {diff[:3]})")
        for k, v in ref.items():
            if v.shape != sd[k].shape:
                raise ConfigError(f"parent {i} differs from parent 0 in width or shape: {k} is "
                                  f"{tuple(sd[k].shape)} vs {tuple(v.shape)}")


def _check_input_sizes(parents: list[nn.Module], example: Tensor) -> None:
    """Parents with their own preprocessing (``--img-size``) must still see one image size: statistics
    pair their units position by position."""
    seen = [tuple(p.pre(example).shape[1:]) if hasattr(p, "pre") else tuple(example.shape[1:]) for p in parents]
    for i, shape in enumerate(seen[1:], 1):
        if shape != seen[0]:
            raise ConfigError(f"parent {i} sees {'x'.join(map(str, shape))} inputs after its preprocessing where "
                              f"parent 0 sees {'x'.join(map(str, seen[0]))}; a merge pairs units position by "
                              "position, so give every parent the same --img-size")


def _check_groups(graph: UnitGraph, others: list[UnitGraph]) -> None:
    """Equal tensor shapes can hide different head or GroupNorm group counts, or rotary embeddings in one
    parent only; those cannot merge."""
    for i, g in enumerate(others, 1):
        for a, b in zip(graph.spaces, g.spaces):
            if a.groups != b.groups:
                what = "attention heads" if a.group_tie else "groups"
                raise ConfigError(f"parent {i} has {b.groups} {what} in unit space {a.name!r} where parent 0 has "
                                  f"{a.groups}; parents must agree on head and group counts")
            if a.rigid != b.rigid:
                raise ConfigError(f"unit space {a.name!r} keeps the order inside its heads (rotary embeddings) in "
                                  f"parent {0 if a.rigid else i} but not in parent {i if a.rigid else 0}; parents "
                                  "must agree on where rotary embeddings are applied")


class MergeSession:
    """N >= 2 parents of one architecture, a data set and the statistics their merges need.

    Args:
        parents: models built by ``mudsc.models.create_model`` (or loaded with ``mudsc.models.load_model``).
        data: the data set; statistics and BatchNorm resets use the training images of the union of
            the parents' tasks, evaluation the held-out images of those classes.
        stats_images: images for activation statistics (default 1,000).
        eval_images: held-out images for evaluation (default: all of them).
        batch_size: images per forward pass.
        launch: a torchrun job (:class:`mudsc.distributed.Launch`): the statistics pass and the
            BatchNorm resets are sharded over its ranks (every rank merges the same configs).
    """

    def __init__(self, parents: list[nn.Module], data: Dataset, *, stats_images: int = 1000,
                 eval_images: int | None = None, batch_size: int = 250, device=None,
                 launch: Launch | None = None) -> None:
        _check_parents(parents)
        self.parents = [p.eval() for p in parents]
        self.tasks = [tuple(p.classes) for p in parents]
        if len(set(self.tasks)) > 1:  # identical tasks are a same-task merge; partial overlap is ambiguous
            check_tasks(self.tasks)
        self.data = data
        self.device = default_device(device)
        self.launch = launch
        self.batch_size = int(batch_size)
        if stats_images < self.batch_size:
            raise ConfigError(f"--stats-images {stats_images} is fewer than one batch ({self.batch_size} images); "
                              "use more images or a smaller batch size")
        self.union = union_classes(self.tasks)
        self.train = union_train(data, self.tasks)
        if len(self.train) == 0:
            raise DataError(f"{data.name} has no training images of classes {list(self.union)}")
        _check_input_sizes(self.parents, self.train.x[:1])
        self.stats_images = min(int(stats_images), len(self.train))
        ev = data.eval.subset(self.union)
        self.eval = ev if eval_images is None else ev.head(int(eval_images))
        self.graph: UnitGraph = trace(self.parents[0])
        _check_groups(self.graph, [trace(p) for p in self.parents[1:]])
        self.sds = [{k: v.detach().cpu() for k, v in p.state_dict().items()} for p in self.parents]
        self._act: dict[tuple[int | None, int], ActivationStats] = {}  # by (positions per image, seed)
        self._results: dict[MergeConfig, MergeResult] = {}
        self._in_flight: Counter[MergeConfig] = Counter()  # merges being made now, by any thread: how many
        self._in_flight_lock = threading.Lock()
        self._parent_metrics: list[dict] | None = None  # parents and eval set are fixed: computed once
        self._splits: dict[str, list[tuple[nn.Module, nn.Module]]] = {}  # each parent's (trunk, head), by cut
        self.timings: dict[str, float] = {}
        self.paths: list[str] = []          # set by from_paths; the manifest records them
        self.specs: list[dict | None] = []  # from_paths: the specs plain state dicts were loaded with
        self.data_dir: str | None = None

    @classmethod
    def from_paths(cls, paths: list[str], dataset: str, data_dir: str | None = None, *,
                   data_img_size: int | None = None, specs: list[dict | None] | None = None,
                   **kwargs) -> "MergeSession":
        """A session over checkpoints and a data set by name (loaded at `data_img_size` if given): mudsc
        checkpoints describe themselves, plain state dicts load with their entry of `specs`
        (``mudsc.models.external.plain_specs``)."""
        from mudsc.data import load_dataset
        from mudsc.models.checkpoint import load_model

        data = load_dataset(dataset, data_dir, img_size=data_img_size)
        specs = list(specs) if specs is not None else [None] * len(paths)
        models = [load_model(p, spec=s)[0] for p, s in zip(paths, specs)]
        session = cls(models, data, **kwargs)
        session.specs = specs
        session.paths = [str(p) for p in paths]
        session.data_dir = None if data_dir is None else str(absolute(data_dir))
        return session

    # ------------------------------------------------------------------ statistics
    def activation_stats(self, progress: Progress | None = None, *, steps: Steps | None = None,
                         positions: int | None = None, seed: int = 0) -> ActivationStats:
        """Activation correlations of every unit space, computed once per session and sampling (all
        positions, or `positions` per image drawn with `seed`); `steps` counts the images as stage
        ``statistics``."""
        key = (positions, seed if positions is not None else 0)  # what _stats_key gives for a config
        if key not in self._act:
            t0 = time.perf_counter()

            def cb(done: int, total: int) -> None:
                if progress:
                    progress("activation statistics", done / total)
                if steps:
                    steps("statistics", done, total)
            self._act[key] = activation_stats(self.parents, self.graph, self.train.x[: self.stats_images],
                                              batch_size=self.batch_size, device=self.device, positions=positions,
                                              seed=key[1], progress=cb if progress or steps else None,
                                              launch=self.launch)
            self.timings["stats"] = time.perf_counter() - t0
        return self._act[key]

    def stats_for(self, config: MergeConfig, progress: Progress | None = None, *,
                  steps: Steps | None = None) -> ActivationStats:
        """The activation statistics a merge with `config` reads (its sampled positions and seed): what
        a view of that merge must show, not the session's default pass."""
        return self.activation_stats(progress, steps=steps, positions=config.stats_positions, seed=config.seed)

    def spaces_for(self, cut: str) -> list[str]:
        """The spaces a merge up to `cut` solves (all of them for ``full``)."""
        if cut == "full":
            return [s.name for s in self.graph.spaces]
        return list(self.graph.cut(cut).merged_spaces)

    # ------------------------------------------------------------------ merging
    def merge(self, config: MergeConfig, progress: Progress | None = None, *,
              steps: Steps | None = None) -> MergeResult:
        """Merge the parents as `config` says; cached per config. `steps` counts the work of the
        stages ``statistics`` (images), ``sweeps``, ``BN reset`` (images) and ``evaluation`` (images)."""
        if config in self._results:
            return self._results[config]
        with self._in_flight_lock:
            self._in_flight[config] += 1
        try:
            return self._merge(config, progress, steps)
        finally:
            with self._in_flight_lock:
                self._in_flight -= Counter([config])  # drops the key at zero

    def in_flight(self, config: MergeConfig) -> bool:
        """Whether some thread is making the merge for `config` right now (a merge ahead of the slider,
        a sweep): a caller that wants it can wait for :meth:`cached` instead of making it a second time."""
        return config in self._in_flight

    def _merge(self, config: MergeConfig, progress: Progress | None, steps: Steps | None) -> MergeResult:
        timings: dict[str, float] = {}
        if config.method == "ensemble":
            model = Ensemble([copy.deepcopy(p) for p in self.parents]).eval()
            result = self._finish(config, model, {}, None, [], timings, progress, steps)
            self._remember(config, result)
            return result
        if config.cut == "full" and not shares_output_space(self.parents):
            cuts = ", ".join(c.name for c in self.graph.cuts) or "(none)"
            raise ConfigError("the parents' heads do not share an output space (own heads or different class "
                              f"embeddings), so a full merge has no usable head; merge up to a cut: {cuts}")
        for name, _ in config.alpha_overrides:
            self.graph.space(name)  # unknown override names fail loudly
        spaces = self.spaces_for(config.cut)
        uses_act = config.similarity in ("activation", "dual")
        probe = self.train.x[:1].to(next(self.parents[0].parameters()).device)
        check_merge_memory(merge_memory(self.parents, self.graph, spaces, config, image=probe,
                                        batch_size=min(self.batch_size, self.stats_images),
                                        stats_needed=uses_act and _stats_key(config) not in self._act), self.device)
        act = None
        if uses_act:
            act = self.stats_for(config, progress, steps=steps).corr
        t0 = time.perf_counter()

        def cb(sweep: int, score: float, left: int) -> None:
            # the total grows while sweeps improve: done / (done + the sweeps the stopping rule still needs)
            if progress:
                progress(f"sweep {sweep}, score {score:.4f}" if sweep else "iterative solve", sweep / (sweep + left))
            if steps:
                steps("sweeps", sweep, sweep + left)
        solution = solve(self.sds, self.graph, spaces, config, act_corr=act, device=self.device,
                         progress=cb if progress or steps else None)
        timings["match"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        merged = fuse(self.sds, self.graph, solution.matches)
        if config.cut == "full":
            model = copy.deepcopy(self.parents[0])
            model.load_state_dict(merged)
            state = merged
        else:
            heads = [head_state(sd, self.graph, config.cut, {s: m.parts()[i] for s, m in solution.matches.items()})
                     for i, sd in enumerate(self.sds)]
            model = build_multihead(self.parents, self.graph, config.cut, merged, heads, splits=self._split(config.cut))
            state = multihead_state(self.graph, config.cut, merged, heads)
        timings["fuse"] = time.perf_counter() - t0
        if config.reset_bn:
            t0 = time.perf_counter()
            if progress:
                progress("BatchNorm reset", 0.0)
            reset_bn_stats_(model, batches(self.train.head(config.reset_images), self.batch_size,
                                           progress=stage_steps(steps, "BN reset")), device=self.device,
                            launch=self.launch)
            timings["bn_reset"] = time.perf_counter() - t0
            state = _refresh(state, model, config.cut != "full")
        result = self._finish(config, model, state, solution, spaces, timings, progress, steps)
        self._remember(config, result)
        return result

    def _split(self, cut: str) -> list[tuple[nn.Module, nn.Module]]:
        """Each parent split at `cut`, traced once per session: every merge up to that cut copies them."""
        if cut not in self._splits:
            self._splits[cut] = [split(p, self.graph, cut) for p in self.parents]
        return self._splits[cut]

    def cached(self, config: MergeConfig) -> MergeResult | None:
        """The merge for `config` if this session still holds it, else None (no work either way)."""
        return self._results.get(config)

    def _remember(self, config: MergeConfig, result: MergeResult) -> None:
        """Keep `result`; forget the oldest merges beyond RESULTS_BYTES (a sweep or a scrubbed slider would
        otherwise hold every merge it ever made). The newest is always kept."""
        self._results[config] = result
        total = 0
        for c in reversed(list(self._results)):
            r = self._results.get(c)
            total += 0 if r is None else _nbytes(r)
            if total > RESULTS_BYTES and c != config:
                self._results.pop(c, None)

    def _finish(self, config, model, state, solution, spaces, timings, progress, steps) -> MergeResult:
        t0 = time.perf_counter()
        if progress:
            progress("evaluation", 0.0)
        metrics = self.evaluate(model, progress=stage_steps(steps, "evaluation"))
        timings["eval"] = time.perf_counter() - t0
        params = sum(p.numel() for p in model.parameters())
        flops = count_flops(model, self.eval.x[:1])
        return MergeResult(config, model.cpu(), state, solution, spaces, metrics, params, flops, timings)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model: nn.Module, *, split: Split | None = None,
                 progress: Callable[[int, int], None] | None = None) -> TaskMetrics:
        """Joint and per-task accuracy of a single- or multi-head model on the parents' tasks, on the
        held-out images (or `split`); `progress(done_images, total)` after each batch."""
        split = self.eval if split is None else split
        logits = predict(model, split, batch_size=self.batch_size, device=self.device, progress=progress)
        model.cpu()
        return multitask_metrics(logits, split.y, model.output_classes, self.tasks)

    def parent_metrics(self) -> list[dict]:
        """Each parent's own-task accuracy, and its joint/per-task accuracy where its head allows."""
        if self._parent_metrics is None:
            out = []
            for p, task in zip(self.parents, self.tasks):
                logits = predict(p, self.eval, batch_size=self.batch_size, device=self.device)
                p.cpu()
                shared = set(self.union) <= set(p.output_classes)
                m = multitask_metrics(logits, self.eval.y, p.output_classes, self.tasks) if shared else None
                own = multitask_metrics(logits, self.eval.y, p.output_classes, [task]).tasks[0]
                out.append({"task": list(task), "own_task_acc": own,
                            "joint_acc": m.joint if m else None, "per_task_acc": m.per_task if m else None,
                            "task_acc": list(m.tasks) if m else None})
            self._parent_metrics = out
        return copy.deepcopy(self._parent_metrics)


def _stats_key(config: MergeConfig) -> tuple[int | None, int]:
    """The statistics a merge with `config` uses, as :meth:`MergeSession.activation_stats` keys them."""
    return config.stats_positions, config.seed if config.stats_positions is not None else 0


def _nbytes(result: MergeResult) -> int:
    """Bytes a merge holds: its model's tensors and the checkpoint tensors."""
    tensors = [*result.model.state_dict().values(), *result.state_dict.values()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _refresh(state: dict[str, Tensor], model: nn.Module, multihead: bool) -> dict[str, Tensor]:
    """The checkpoint tensors with the model's reset BatchNorm statistics."""
    if not multihead:
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    live = {}
    trunk = dict(model.trunk.state_dict())
    for k in state:
        if k.startswith("trunk.") and k[6:] in trunk:
            live[k] = trunk[k[6:]]
    for i, h in enumerate(model.heads):
        hs = dict(h.state_dict())
        for k in state:
            if k.startswith(f"head{i}.") and k[len(f"head{i}."):] in hs:
                live[k] = hs[k[len(f"head{i}."):]]
    return {k: live.get(k, v).detach().cpu().clone() for k, v in state.items()}
