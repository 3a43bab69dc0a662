"""Per-task curvature statistics for same-init merging, in one pass over a task's examples.

For every ``nn.Linear`` and ungrouped ``nn.Conv2d`` (keyed by its weight's state-dict key):

* the input Gram ``A = E[x x^T]`` that RegMean solves with (Jin et al., ICLR 2023, Sec. 3.1),
* the output-gradient factor ``G = E[g g^T]``, ``g = dl/d(output)``, which with ``A`` forms MaTS's
  K-FAC block Fisher ``A (x) G`` (Tam et al., TMLR 2024, Sec. 4; Martens & Grosse, 2015, Sec. 3),

and for every trainable parameter the diagonal Fisher ``E[(d log p(y|x) / d theta)^2]`` from
per-example gradients (Matena & Raffel, NeurIPS 2022, Sec. 2.2).

Conventions (they fix how the solvers read the statistics):

* A convolution is a linear map on unfolded patches; every output position is one sample, as in
  K-FAC for convolutions (Grosse & Martens, 2016, Sec. 3.1). ``A`` is over ``C_in*kh*kw`` patch
  features in ``weight.reshape(out, -1)`` order.
* When a layer has a bias, ``x`` carries a trailing constant 1, so ``A`` has one more row and
  column and the solvers merge ``[W | b]`` jointly; ``TaskStats.bias`` names the folded bias.
* ``A`` and ``G`` are means over the same rows (examples x positions); ``G`` uses the per-example
  loss, so its scale does not depend on the batch size.
* ``y`` is drawn from the model's own prediction (``fisher='sampled'``, the true Fisher, one draw per
  example) or is the true label (``'empirical'``); both ``G`` and the diagonal Fisher use that ``y``.
* The model runs in ``eval()`` mode (frozen norm statistics, no dropout). Sums accumulate in float64.
* Only the parts a merge needs are computed (``parts``): the Gram alone is one forward pass, ``G``
  adds a backward pass, the diagonal Fisher per-example gradients (the bulk of the cost).
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Collection, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from mudsc.device import default_device
from mudsc.distributed import Launch
from mudsc.errors import CheckpointError, ConfigError, DataError

STATS_FORMAT = "mudsc.taskstats/1"
FISHER_KINDS = ("sampled", "empirical")
PER_EXAMPLE = ("vmap", "loop")
PARTS = ("gram", "grad", "fisher")  # TaskStats fields: input Gram, output-gradient factor, diagonal Fisher
_RESERVED = ("format", "count", "fisher", "bias")


@dataclass(frozen=True)
class TaskStats:
    """Statistics of one task, keyed by state-dict names.

    ``gram[w]`` [d_in (+1), d_in (+1)] and ``grad[w]`` [d_out, d_out] for each weight key ``w``;
    ``bias[w]`` the bias key folded into ``gram[w]``'s last row and column; ``fisher[p]`` shaped like
    parameter ``p``; ``count`` examples seen.
    """

    count: int
    fisher_kind: str
    gram: dict[str, Tensor]
    grad: dict[str, Tensor]
    fisher: dict[str, Tensor]
    bias: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


def _supported(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def conv_patches(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """[b, c, h, w] -> [b * positions, c * kh * kw]: the input patch each output position sees."""
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    # the module's own padding tuple covers int, tuple and 'same' padding alike
    x = F.pad(x, conv._reversed_padding_repeated_twice, mode=mode)
    cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def layer_inputs(module: nn.Module, x: Tensor) -> Tensor:
    """Layer input -> [rows, d_in (+1)]: one row per sample (and position), a column of ones if biased."""
    rows = conv_patches(module, x) if isinstance(module, nn.Conv2d) else x.reshape(-1, x.shape[-1])
    if module.bias is not None:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return rows


def layer_output_grads(module: nn.Module, g: Tensor) -> Tensor:
    """dl/d(output) -> [rows, d_out] in the row order of :func:`layer_inputs`."""
    if isinstance(module, nn.Conv2d):
        return g.permute(0, 2, 3, 1).reshape(-1, g.shape[1])
    return g.reshape(-1, g.shape[-1])


class _Recorder:
    """Forward hooks accumulating ``sum x x^T`` and, through a hook on the output, ``sum g g^T``."""

    def __init__(self, model: nn.Module) -> None:
        self.active = False
        self.gram: dict[str, Tensor] = {}
        self.grad: dict[str, Tensor] = {}
        self.rows: dict[str, int] = {}
        self.bias: dict[str, str] = {}
        self.handles = []
        for name, module in model.named_modules():
            if _supported(module):
                key = f"{name}.weight" if name else "weight"
                if module.bias is not None:
                    self.bias[key] = f"{name}.bias" if name else "bias"
                self.handles.append(module.register_forward_hook(self._hook(key)))

    def _hook(self, key: str):
        def forward_hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            if not self.active:
                return
            rows = layer_inputs(module, inputs[0].detach()).double()
            _add(self.gram, key, rows.T @ rows)
            self.rows[key] = self.rows.get(key, 0) + rows.shape[0]
            if output.requires_grad:
                # a tensor hook fires with dl/d(output) even when a later op works in place
                output.register_hook(lambda g: _add(self.grad, key, _outer(layer_output_grads(module, g))))
        return forward_hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _outer(rows: Tensor) -> Tensor:
    rows = rows.double()
    return rows.T @ rows


def _add(acc: dict[str, Tensor], key: str, value: Tensor) -> None:
    acc[key] = acc[key] + value if key in acc else value


@contextmanager
def _recording(model: nn.Module) -> Iterator[_Recorder]:
    rec = _Recorder(model)
    try:
        yield rec
    finally:
        rec.remove()


def label_columns(y: Tensor, output_classes: tuple[int, ...]) -> Tensor:
    """[b] class ids -> [b] column indices into the model's logits (on CPU)."""
    y = y.long().cpu()
    lookup = torch.full((max(max(output_classes), int(y.max()) if len(y) else 0) + 1,), -1, dtype=torch.long)
    lookup[torch.tensor(output_classes, dtype=torch.long)] = torch.arange(len(output_classes))
    bad = (y < 0) | (lookup[y.clamp_min(0)] < 0)
    if bad.any():
        raise DataError(f"labels {sorted(set(y[bad].tolist()))} are not among the model's output "
                        f"classes {tuple(output_classes)}")
    return lookup[y]


def _per_example_sq_grads(model: nn.Module, params: dict[str, Tensor], x: Tensor, y: Tensor, *,
                          per_example: str, chunk_size: int | None) -> dict[str, Tensor]:
    """Sum over the batch of squared per-example gradients of ``-log p(y|x)``."""
    if per_example == "vmap":
        buffers = dict(model.named_buffers())

        def loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
            return F.cross_entropy(functional_call(model, (p, buffers), (xi[None],)), yi[None])

        grads = vmap(grad(loss), in_dims=(None, 0, 0), chunk_size=chunk_size)(params, x, y)
        return {k: (g.double() ** 2).sum(0) for k, g in grads.items()}
    out = {k: torch.zeros_like(p, dtype=torch.float64) for k, p in params.items()}
    names = list(params)
    for i in range(len(x)):
        loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        gs = torch.autograd.grad(loss, [params[k] for k in names], allow_unused=True)
        for k, g in zip(names, gs):
            if g is not None:
                out[k] += g.double() ** 2
    return out


def compute_stats(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *, examples: int = 1000,
                  fisher: str = "sampled", per_example: str = "vmap", chunk_size: int | None = None,
                  generator: torch.Generator | None = None, device: torch.device | str | None = None,
                  parts: Collection[str] = PARTS, progress: Callable[[int, int], None] | None = None,
                  launch: Launch | None = None) -> TaskStats:
    """Gram, K-FAC factor and diagonal Fisher of `model` over the first `examples` of `batches`.

    Args:
        model: a classifier with ``output_classes`` (class id of each logit column).
        batches: (images, class ids) pairs, e.g. :func:`mudsc.data.batches` of the task's split.
        examples: how many examples to use (fewer if `batches` runs out).
        fisher: ``sampled`` (labels drawn from the model's prediction) or ``empirical`` (true labels).
        per_example: ``vmap`` (torch.func) or ``loop`` (one backward per example) for the Fisher.
        chunk_size: vmap chunk size, to cap memory.
        generator: draws the sampled labels (CPU generator).
        device: where to compute; default :func:`mudsc.device.default_device`.
        parts: which of ``gram``, ``grad``, ``fisher`` to compute; the others stay empty.
        progress: ``progress(done_examples, examples)`` before the first batch (0) and after each.
        launch: a torchrun job (:class:`mudsc.distributed.Launch`): batch ``i`` is rank ``i mod world``'s;
            the others only advance `generator` past its label draws, and the float64 sums are
            summed over the ranks before the means, so every rank returns one process's statistics.
    """
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise ConfigError(f"statistics parts must be some of {', '.join(PARTS)}, got {sorted(parts)}")
    if fisher not in FISHER_KINDS:
        raise ConfigError(f"unknown Fisher kind {fisher!r}; choose one of {', '.join(FISHER_KINDS)}")
    if per_example not in PER_EXAMPLE:
        raise ConfigError(f"unknown per-example mode {per_example!r}; choose one of {', '.join(PER_EXAMPLE)}")
    if examples <= 0:
        raise ConfigError(f"statistics need a positive number of examples, got {examples}")
    output_classes = getattr(model, "output_classes", None)
    if output_classes is None:
        raise ConfigError("statistics need a classifier with output_classes (a mudsc.models.Classifier)")
    dev = default_device() if device is None else torch.device(device)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    was_training = model.training
    model.eval().to(dev)
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    sq = {k: torch.zeros_like(p, dtype=torch.float64) for k, p in params.items()}
    seen = own = 0
    if progress is not None:
        progress(0, examples)
    try:
        with _recording(model) as rec:
            for i, (x, y) in enumerate(batches):
                take = min(len(x), examples - seen)
                if take <= 0:
                    break
                if launch is not None and not launch.owns(i):
                    _skip_draws(gen, take, len(output_classes), fisher)
                    seen += take
                    continue
                x = x[:take].to(dev)
                target = label_columns(y[:take], tuple(output_classes)).to(dev)
                rec.active = "gram" in parts or "grad" in parts
                with torch.set_grad_enabled("grad" in parts):  # no backward, no output-gradient hook
                    logits = model(x)
                if fisher == "sampled":
                    probs = logits.detach().double().softmax(-1).cpu()
                    target = torch.multinomial(probs, 1, generator=gen)[:, 0].to(dev)
                if "grad" in parts:
                    # summed loss: each row of dl/d(output) is its own example's gradient
                    loss = F.cross_entropy(logits, target, reduction="sum")
                    torch.autograd.grad(loss, list(params.values()), allow_unused=True)
                rec.active = False
                if "fisher" in parts:
                    detached = {k: p.detach() for k, p in params.items()} if per_example == "vmap" else params
                    for k, v in _per_example_sq_grads(model, detached, x, target, per_example=per_example,
                                                      chunk_size=chunk_size).items():
                        sq[k] += v
                seen += take
                own += 1
                if progress is not None:
                    progress(seen, examples)
    finally:
        model.train(was_training)
    if launch is not None and launch.distributed:
        _sum_over_ranks(launch, rec, sq, parts, own)
    if seen == 0:
        raise DataError("statistics: the data yielded no examples")
    return TaskStats(
        count=seen, fisher_kind=fisher,
        gram={k: (v / rec.rows[k]).cpu() for k, v in rec.gram.items()} if "gram" in parts else {},
        grad={k: (v / rec.rows[k]).cpu() for k, v in rec.grad.items()},
        fisher={k: (v / seen).cpu() for k, v in sq.items()} if "fisher" in parts else {},
        bias={k: b for k, b in rec.bias.items() if k in rec.gram},
    )


def _skip_draws(gen: torch.Generator, rows: int, classes: int, fisher: str) -> None:
    """Advance `gen` past the label draws of a batch another rank takes: the same multinomial call on
    a tensor of the same shape and dtype consumes the same random numbers."""
    if fisher == "sampled":
        torch.multinomial(torch.ones(rows, classes, dtype=torch.float64), 1, generator=gen)


def _sum_over_ranks(launch: Launch, rec: _Recorder, sq: dict[str, Tensor], parts: Collection[str],
                    own: int) -> None:
    """Sum every rank's float64 moment sums and row counts in place (one all_reduce each)."""
    if launch.sum_counts([own > 0], "the count of ranks with examples")[0] < launch.world:
        raise ConfigError(f"statistics: some of the {launch.world} ranks got no batch; use more examples, a smaller "
                          "batch or fewer ranks")
    grams, grads = sorted(rec.gram), sorted(rec.grad)
    rec.rows.update(zip(grams, launch.sum_counts([rec.rows[k] for k in grams], "the sum of the row counts")))
    sums = [rec.gram[k] for k in grams] + [rec.grad[k] for k in grads] + ([sq[k] for k in sorted(sq)]
                                                                           if "fisher" in parts else [])
    launch.sum_(sums, "the sum of the statistics")


def save_stats(stats: TaskStats, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write `stats` (float64) to a safetensors file; `metadata` (str -> str) goes into its header."""
    from safetensors.torch import save_file

    extra = {**stats.metadata, **(metadata or {})}
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ConfigError(f"save_stats: metadata keys {clash} are reserved")
    tensors = {f"gram/{k}": v for k, v in stats.gram.items()}
    tensors |= {f"grad/{k}": v for k, v in stats.grad.items()}
    tensors |= {f"fisher/{k}": v for k, v in stats.fisher.items()}
    header = {str(k): str(v) for k, v in extra.items()}
    header |= {"format": STATS_FORMAT, "count": str(stats.count), "fisher": stats.fisher_kind,
               "bias": json.dumps(stats.bias, sort_keys=True)}
    save_file({k: v.contiguous().to(torch.float64) for k, v in tensors.items()}, os.fspath(path), header)


def load_stats(path: str | os.PathLike) -> TaskStats:
    """Read statistics written by :func:`save_stats`."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise CheckpointError(f"statistics file {os.fspath(path)!r} does not exist") from None
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"cannot read statistics file {os.fspath(path)!r}: {e}") from None
    if header.get("format") != STATS_FORMAT:
        raise CheckpointError(f"{os.fspath(path)!r} is not a mudsc statistics file (format {header.get('format')!r})")
    parts: dict[str, dict[str, Tensor]] = {"gram": {}, "grad": {}, "fisher": {}}
    for name, t in tensors.items():
        kind, _, key = name.partition("/")
        if kind not in parts:
            raise CheckpointError(f"{os.fspath(path)!r}: unexpected tensor {name!r}")
        parts[kind][key] = t
    return TaskStats(count=int(header["count"]), fisher_kind=header["fisher"], gram=parts["gram"],
                     grad=parts["grad"], fisher=parts["fisher"], bias=json.loads(header["bias"]),
                     metadata={k: v for k, v in header.items() if k not in _RESERVED})
