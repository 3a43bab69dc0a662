"""SameInitSession: task models fine-tuned from one base (or different-init parents aligned once), a
data set and cached task statistics, so a new method or knob re-merges without another statistics
pass. ``mudsc merge-same`` merges through it; the app can too.

A *task model* is a :class:`~mudsc.models.heads.Classifier` fine-tuned on one class subset; all of
them share the body architecture, and their merged bodies are evaluated with each task's own head.
The BatchNorm reset recomputes running statistics on the union of the tasks' training images (the
REPAIR-style reset of ZipIt! and MuDSC; Jordan et al., ICLR 2023), which averaged statistics of
merged bodies otherwise lack.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import torch
from torch import Tensor, nn

from mudsc import __version__
from mudsc.atomic import output_dir
from mudsc.data import Dataset, absolute, batches, check_tasks, load_dataset, union_classes, union_train
from mudsc.device import default_device
from mudsc.diffinit.fuse import reset_bn_stats_
from mudsc.diffinit.session import Steps, stage_steps
from mudsc.errors import CheckpointError, ConfigError
from mudsc.evaluate import TaskMetrics, multitask_metrics, predict
from mudsc.methods import get_method
from mudsc.models.checkpoint import load_model, read_info, read_state_dict, save_model
from mudsc.models.heads import body_of, shares_output_space
from mudsc.models.plain import file_record
from mudsc.sameinit.config import MultitaskConfig, SameInitConfig
from mudsc.sameinit.hybrid import Alignment, align_parents, average_state_dict
from mudsc.sameinit.merge import SameInitReport, check_bodies, merge_same_init
from mudsc.sameinit.multitask import train_multitask
from mudsc.sameinit.taskstats import PARTS, TaskStats, compute_stats, load_stats

MANIFEST_FORMAT = "mudsc.merge-same/1"
BN_BUFFERS = ("running_mean", "running_var")
STATS_BATCH = 32  # images per statistics pass, as ``mudsc stats``: it chunks the sampled labels' draws
StateDict = dict[str, Tensor]
Config = SameInitConfig | MultitaskConfig


def bn_buffers(sd: StateDict) -> list[str]:
    """Keys of BatchNorm running statistics (averaged by merges, recomputed by the reset)."""
    return [k for k in sd if k.endswith(BN_BUFFERS)]


def with_body(model: nn.Module, body: StateDict) -> nn.Module:
    """A copy of `model` whose ``body.*`` tensors are `body`'s (its head is kept), in eval mode."""
    out = copy.deepcopy(model)
    out.load_state_dict({**out.state_dict(), **body_of(body)})
    return out.eval()


@dataclass
class SameInitResult:
    """One merge of the task models (or the multitask bound): per task a model carrying the merged
    body and that task's own head, its held-out metrics, and how it was made.

    ``method`` is the name the CLI takes (``mats``, ``permute+regmean``, ``multitask``);
    ``before_bn_reset`` is set when the BatchNorm reset ran; ``report`` is None for ``multitask``;
    ``timings`` are the seconds of the stages this merge ran (``stats`` only when it computed some).
    """

    method: str
    config: Config
    models: list[nn.Module]
    metrics: TaskMetrics
    before_bn_reset: TaskMetrics | None = None
    report: SameInitReport | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def tasks(self) -> list[list[int]]:
        return [list(m.classes) for m in self.models]

    def summary(self) -> dict[str, Any]:
        """Method, tasks and accuracies: what ``mudsc merge-same --json`` prints and the manifest's metrics."""
        out = {"method": self.method, "tasks": self.tasks, **self.metrics.as_dict()}
        if self.before_bn_reset is not None:
            out["before_bn_reset"] = self.before_bn_reset.as_dict()
        return out


class SameInitSession:
    """Task models, the base they were fine-tuned from, a data set and the statistics merges need.

    Args:
        base: the base (a model or its state dict); None with `align`.
        models: the task models (same body as `base`, heads their own).
        data: statistics and the BatchNorm reset use the training images of each task (of the union),
            evaluation the held-out images of the union of the tasks.
        align: one of :data:`mudsc.methods.ALIGNERS`: `models` are different-init parents, aligned
            once (:func:`mudsc.sameinit.hybrid.align_parents`, `align_alpha`, `align_images`); the
            session then holds the aligned copies and their average as the base.
        stats: one :class:`TaskStats` per model, used as given; default: computed per part on demand
            from `stats_examples` training images of each model's task (`fisher` labels, `seed`).
        init: a state dict to start CG from, replacing the configs' ``init``.
        reset_bn: recompute BatchNorm statistics of merged bodies on `reset_images` images.
        eval_images: held-out images to evaluate on (default: all).
    """

    def __init__(self, base: nn.Module | StateDict | None, models: Sequence[nn.Module], data: Dataset, *,
                 align: str | None = None, align_alpha: float = 0.5, align_images: int = 1000,
                 stats: Sequence[TaskStats] | None = None, init: StateDict | None = None,
                 stats_examples: int = 1000, fisher: str = "sampled", seed: int = 0, batch_size: int = 250,
                 eval_images: int | None = None, reset_bn: bool = True, reset_images: int = 1000,
                 device: torch.device | str | None = None) -> None:
        if (base is None) == (align is None):
            raise ConfigError("a same-init session needs either the base the task models were fine-tuned from, "
                              "or align= to align different-init parents (their aligned average is the base)")
        if align is not None and stats is not None:
            raise ConfigError("statistics of different-init parents do not fit their aligned copies; "
                              "let the session compute them")
        self.data = data
        self.data_dir: str | None = None  # where `data` was read from (from_paths); the manifest records it
        # the settings that, with the inputs and a config, fix a merge: ``session`` in the manifest
        self.options: dict[str, Any] = {
            "align": align, "align_alpha": float(align_alpha), "align_images": int(align_images),
            "stats_examples": int(stats_examples), "fisher": fisher, "seed": int(seed), "batch_size": int(batch_size),
            "eval_images": None if eval_images is None else int(eval_images), "reset_bn": bool(reset_bn),
            "reset_images": int(reset_images)}
        self.device = default_device(device)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.timings: dict[str, float] = {}  # stages of the session itself (align)
        self.alignment: Alignment | None = None
        if align is not None:
            t0 = time.perf_counter()
            self.alignment = align_parents(models, data, method=align, alpha=align_alpha, stats_images=align_images,
                                           batch_size=self.batch_size, seed=self.seed, device=self.device)
            self.timings["align"] = time.perf_counter() - t0
            models = self.alignment.models
            base = average_state_dict([m.state_dict() for m in models])
        self.base: StateDict = base.state_dict() if isinstance(base, nn.Module) else dict(base)
        self.models = [m.eval() for m in models]
        check_bodies(self.base, [m.state_dict() for m in self.models])
        self.tasks = [tuple(m.classes) for m in self.models]
        if len(set(self.tasks)) > 1:  # identical tasks are a model soup; partial overlap is ambiguous
            check_tasks(self.tasks)
        ev = data.eval.subset(union_classes(self.tasks))
        self.eval = ev if eval_images is None else ev.head(int(eval_images))
        self.init = init
        self.stats_examples = int(stats_examples)
        self.fisher = fisher
        self.reset_bn = bool(reset_bn)
        self.reset_images = int(reset_images)
        self.given_stats = stats is not None
        self._stats: list[TaskStats] | None = list(stats) if stats is not None else None
        self._parts: set[str] = set(PARTS) if stats is not None else set()
        self._results: dict[Config, SameInitResult] = {}
        self.inputs: dict[str, Any] = {}  # provenance of the input files (from_paths); the manifest records it
        self.infos: list[dict[str, Any]] = []  # the task models' checkpoint records (from_paths)

    @classmethod
    def from_paths(cls, models: Sequence[str | Path], *, base: str | Path | None = None, dataset: str | None = None,
                   data_dir: str | None = None, data_img_size: int | None = None,
                   stats: Sequence[str | Path] | None = None,
                   init: str | Path | None = None, specs: Sequence[dict | None] | None = None,
                   **kwargs) -> "SameInitSession":
        """A session over checkpoints written by mudsc: `stats` are ``mudsc stats`` files (one per
        model), `init` a checkpoint to start CG from, `dataset` (at `data_img_size`) by default the one the
        task models record. Checks that each task model was fine-tuned from `base` and each statistics file was
        computed for its model (where recorded), and keeps every file's sha256 for the manifest. Plain
        state dicts load with their entry of `specs` (a plain base with the first model's)."""
        specs = list(specs) if specs is not None else [None] * len(models)
        loaded = [load_model(p, spec=s) for p, s in zip(models, specs)]
        task_models, infos = [m for m, _ in loaded], [i for _, i in loaded]
        # plain state dicts keep their spec in the manifest, which then reloads them as they were loaded
        inputs: dict[str, Any] = {"models": [{**file_record(p, s), "task": list(m.classes)}
                                             for p, s, m in zip(models, specs, task_models)]}
        base_model = None
        if base is not None:
            base_spec = None if "spec" in read_info(base) else specs[0]
            base_model, _ = load_model(base, spec=base_spec)
            inputs["base"] = file_record(base, base_spec)
            for p, info in zip(models, infos):
                recorded = (info.get("base") or {}).get("sha256")
                if recorded and recorded != inputs["base"]["sha256"]:
                    raise CheckpointError(f"{p} was fine-tuned from another base than {base} (sha256 differs)")
        data = _dataset(dataset, data_dir, data_img_size, infos)
        given = _stats(stats, inputs) if stats else None
        init_sd = None
        if init is not None:
            init_sd = read_state_dict(init)[0]
            inputs["init"] = file_record(init)
        session = cls(base_model, task_models, data, stats=given, init=init_sd, **kwargs)
        session.inputs, session.infos = inputs, infos
        session.data_dir = None if data_dir is None else str(absolute(data_dir))
        return session

    # ------------------------------------------------------------------ statistics
    def missing_parts(self, parts: Collection[str]) -> tuple[str, ...]:
        """The statistics parts of `parts` not cached yet (none when statistics were given)."""
        return tuple(p for p in PARTS if p in parts and p not in self._parts)

    def statistics(self, parts: Collection[str] = PARTS, *, steps: Steps | None = None) -> list[TaskStats]:
        """One :class:`TaskStats` per task model holding at least `parts` (of ``gram``, ``grad``,
        ``fisher``). Given statistics are returned as they are; otherwise each part is computed once
        per session, from the first ``stats_examples`` training images of the model's own task in an
        order seeded by ``seed + i`` (the conventions of ``mudsc stats``). Parts not cached yet are
        computed alone, in one more pass, and joined to those already there. `steps` counts each
        model's examples as its own stage."""
        missing = [p for p in PARTS if p in parts and p not in self._parts]
        if not missing:
            return self._stats or []
        new = []
        for i, m in enumerate(self.models):
            split = self.data.train.subset(tuple(m.classes))
            g = torch.Generator().manual_seed(self.seed + i)
            new.append(compute_stats(m, batches(split, STATS_BATCH, shuffle=True, generator=g),
                                     examples=self.stats_examples, fisher=self.fisher, generator=g,
                                     device=self.device, parts=missing,
                                     progress=stage_steps(steps, f"statistics, model {i + 1} of {len(self.models)}")))
            m.cpu()  # compute_stats leaves the model on its device
        if self._stats is not None:  # the same examples and labels in every pass: the parts fit together
            new = [dataclasses.replace(old, **{p: getattr(s, p) for p in missing}, bias={**old.bias, **s.bias})
                   for old, s in zip(self._stats, new)]
        self._stats = new
        self._parts.update(missing)
        return self._stats

    # ------------------------------------------------------------------ merging
    def merge(self, config: Config, *, steps: Steps | None = None) -> SameInitResult:
        """Merge the task models as `config` says (a :class:`MultitaskConfig` trains the bound);
        cached per config. Statistics come from :meth:`statistics`, only the parts `config` reads.
        `steps` counts the work of the stages ``statistics, model I of N`` (examples), ``layers``
        (parameter tensors solved) and ``BN reset`` (images)."""
        if config not in self._results:
            self._results[config] = (self._multitask(config) if isinstance(config, MultitaskConfig)
                                     else self._merge(config, steps))
        return self._results[config]

    def method_name(self, config: Config) -> str:
        """The name of `config`'s merge in this session: ``ALIGN+FUSE`` for aligned parents."""
        if self.alignment is None:
            return config.method
        return get_method(f"{self.alignment.method}+{config.method}", "align-then-fuse").name

    def _merge(self, config: SameInitConfig, steps: Steps | None) -> SameInitResult:
        name = self.method_name(config)
        timings: dict[str, float] = {}
        stats = None
        if config.needs_stats:
            t0 = time.perf_counter()
            fresh = not set(config.stat_parts) <= self._parts
            stats = self.statistics(config.stat_parts, steps=steps)
            if fresh:
                timings["stats"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        merged, report = merge_same_init(self.base, [m.state_dict() for m in self.models], stats, config=config,
                                         init=self.init, buffers=bn_buffers(self.base), device=self.device,
                                         progress=stage_steps(steps, "layers"))
        models = [with_body(m, merged) for m in self.models]
        timings["merge"] = time.perf_counter() - t0
        before = None
        if self.reset_bn and any(k.endswith("running_var") for k in body_of(models[0].state_dict())):
            before = self.evaluate(models)
            t0 = time.perf_counter()
            self._reset_bn(models, progress=stage_steps(steps, "BN reset"))
            timings["bn_reset"] = time.perf_counter() - t0
        return SameInitResult(name, config, models, self.evaluate(models), before, report, timings)

    def _multitask(self, config: MultitaskConfig) -> SameInitResult:
        t0 = time.perf_counter()
        models = train_multitask(self.models, body_of(self.base), self.data, epochs=config.epochs, lr=config.lr,
                                 seed=config.seed, device=self.device)
        timings = {"train": time.perf_counter() - t0}
        return SameInitResult(config.method, config, models, self.evaluate(models), timings=timings)

    def _reset_bn(self, models: Sequence[nn.Module], *,
                  progress: Callable[[int, int], None] | None = None) -> None:
        """Recompute the BatchNorm statistics of the models' common body (one merged body under
        several heads) in place: once, through the first model, on ``reset_images`` training images
        of the union of the tasks; then copied into the others."""
        if self.reset_images < 1:
            raise ConfigError(f"BatchNorm reset needs at least one image, got {self.reset_images}")
        train = union_train(self.data, self.tasks, seed=self.seed).head(self.reset_images)
        reset_bn_stats_(models[0], batches(train, self.batch_size, progress=progress), device=self.device)
        models[0].cpu()
        body = body_of(models[0].state_dict())
        for m in models[1:]:
            m.load_state_dict({**m.state_dict(), **body})

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, models: Sequence[nn.Module]) -> TaskMetrics:
        """Per-task (task-aware) and joint held-out accuracy of one body under each task's head (one
        model per task of the session).

        Joint: with a shared output space the argmax over all tasks' classes of one model; otherwise
        the argmax over the per-head softmaxes (as for partial zipping, :func:`mudsc.evaluate.multitask_metrics`)."""
        if shares_output_space(models):
            logits = predict(models[0], self.eval, batch_size=self.batch_size, device=self.device)
            models[0].cpu()
            return multitask_metrics(logits, self.eval.y, tuple(models[0].output_classes), self.tasks)
        logits = []
        for m in models:
            logits.append(predict(m, self.eval, batch_size=self.batch_size, device=self.device))
            m.cpu()
        return multitask_metrics(logits, self.eval.y, [tuple(m.output_classes) for m in models], self.tasks)

    # ------------------------------------------------------------------ writing
    def manifest(self, result: SameInitResult) -> dict[str, Any]:
        """What ``manifest.json`` records of `result` (all but the outputs)."""
        inputs = dict(self.inputs)
        if isinstance(result.config, SameInitConfig) and result.config.needs_stats and not self.given_stats:
            inputs["stats"] = {"computed": {"examples": self.stats_examples, "fisher": self.fisher, "seed": self.seed,
                                            "split": "train", "parts": list(result.config.stat_parts)}}
        report = result.report
        residuals = [r.residual for r in report.layers if r.residual is not None] if report else []
        before = result.before_bn_reset
        out = {"method": result.method, "version": __version__, "dataset": self.data.describe(),
               "data_dir": self.data_dir, "session": dict(self.options),
               "config": result.config.to_dict(), "inputs": inputs, "metrics": result.summary(),
               "timings": {k: round(v, 4) for k, v in {**self.timings, **result.timings}.items()},
               "bn_reset": {"applied": before is not None, "images": self.reset_images if before else 0},
               "layers": report.to_dict()["layers"] if report else [],
               "max_residual": max(residuals) if residuals else None}
        if self.alignment is not None:
            out["alignment"] = self.alignment.to_dict()
        return out

    def save(self, result: SameInitResult, out: str | Path) -> dict[str, Any]:
        """Write ``task{i}.safetensors`` (model i: the merged body and task i's head, self-describing,
        loadable by :func:`mudsc.models.checkpoint.load_model`) and ``manifest.json`` under `out`;
        returns the manifest with the outputs listed."""
        root = output_dir(out)
        outputs = []
        for i, m in enumerate(result.models):
            path = root / f"task{i}.safetensors"
            save_model(m, path, task=list(m.classes), merge={"method": result.method, "manifest": "manifest.json",
                                                             "task_index": i})
            outputs.append({"path": path.name, "task": list(m.classes)})
        manifest = {"format": MANIFEST_FORMAT, **self.manifest(result), "outputs": outputs}
        tmp = root / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True, default=float))
        tmp.replace(root / "manifest.json")
        return manifest


def _dataset(name: str | None, data_dir: str | None, img_size: int | None,
             infos: Sequence[dict[str, Any]]) -> Dataset:
    """The data set `name` at `img_size` (default: the one the task models record, at their size),
    checked against their image geometry."""
    if not name:
        recorded = infos[0].get("dataset") or {}
        name, img_size = recorded.get("name"), img_size or recorded.get("resized_to")
    if not name:
        raise ConfigError("give --dataset (the task models do not record theirs)")
    data = load_dataset(name, data_dir, img_size=img_size)
    for info in infos:
        spec = info["spec"]
        if (spec["in_chans"], spec["img_size"]) != (data.in_chans, data.img_size):
            raise CheckpointError(f"a task model takes {spec['in_chans']}x{spec['img_size']}px images, "
                                  f"{data.name} has {data.in_chans}x{data.img_size}px")
    return data


def _stats(paths: Sequence[str | Path], inputs: dict[str, Any]) -> list[TaskStats]:
    """``mudsc stats`` files, one per model (``inputs['models']``), each checked to be its model's."""
    if len(paths) != len(inputs["models"]):
        raise ConfigError(f"--stats gives {len(paths)} files for {len(inputs['models'])} models; give one per model")
    stats = [load_stats(p) for p in paths]
    inputs["stats"] = [file_record(p) for p in paths]
    for s, f, m in zip(stats, inputs["stats"], inputs["models"]):
        recorded = s.metadata.get("model_sha256")
        if recorded and recorded != m["sha256"]:
            raise CheckpointError(f"statistics {f['path']} were computed for another model than {m['path']}")
    return stats
