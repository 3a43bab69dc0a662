"""Classification heads and the body+head classifier.

The ``shared`` head stands in for the CLIP text heads of ZipIt! (Stoica et al., 2024) and MuDSC
(Xu et al., 2024): every class has a fixed orthonormal embedding drawn from a fixed seed, and the
logits are a temperature times the cosine between the body's embedding and each class embedding.
Parents trained on different class subsets thus emit into one output space, so a fully merged
model still has one usable head.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mudsc.errors import ConfigError

BODY = "body."  # state-dict prefix of a Classifier's body; merges touch only these tensors


def body_of(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ``body.*`` tensors of a :class:`Classifier`'s state dict."""
    return {k: v for k, v in sd.items() if k.startswith(BODY)}


def class_embeddings(num_classes: int, dim: int, seed: int) -> Tensor:
    """[num_classes, dim] orthonormal rows from a seeded Gaussian (QR)."""
    if dim < num_classes:
        raise ConfigError(f"shared head: feat_dim {dim} must be at least num_classes {num_classes}")
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, num_classes, generator=g, dtype=torch.float64))
    return q.T.contiguous().float()


class SharedHead(nn.Module):
    """[b, d] -> [b, num_classes]: temperature * cos(embedding, class embedding), for all classes."""

    def __init__(self, feat_dim: int, num_classes: int, classes: tuple[int, ...], *, seed: int = 0,
                 temperature: float = 20.0, embeddings: Tensor | None = None) -> None:
        super().__init__()
        # Given embeddings (e.g. CLIP text embeddings of the class names) are compared by cosine, as CLIP does.
        embed = class_embeddings(num_classes, feat_dim, seed) if embeddings is None else F.normalize(
            embeddings.detach().float(), dim=-1)
        self.register_buffer("class_embed", embed)
        self.temperature = float(temperature)
        self.classes = tuple(classes)
        self.output_classes = tuple(range(num_classes))

    def forward(self, z: Tensor) -> Tensor:
        return self.temperature * F.normalize(z, dim=-1) @ self.class_embed.T


class OwnHead(nn.Module):
    """[b, d] -> [b, len(classes)]: an ordinary linear head over the task's classes."""

    def __init__(self, feat_dim: int, classes: tuple[int, ...]) -> None:
        super().__init__()
        self.fc = nn.Linear(feat_dim, len(classes))
        self.classes = tuple(classes)
        self.output_classes = tuple(classes)

    def forward(self, z: Tensor) -> Tensor:
        return self.fc(z)


class TaskHead(nn.Module):
    """The identity: the body is the user's whole network, its last layer already the classifier over
    its task's classes (in order)."""

    def __init__(self, classes: tuple[int, ...]) -> None:
        super().__init__()
        self.classes = tuple(classes)
        self.output_classes = tuple(classes)

    def forward(self, z: Tensor) -> Tensor:
        return z


def shares_output_space(models: Sequence[nn.Module]) -> bool:
    """Whether every model's head is the same frozen class embedding, so that one merged model (a
    single head) answers every task."""
    heads = [m.head for m in models]
    return all(isinstance(h, SharedHead) for h in heads) and all(
        torch.equal(heads[0].class_embed.cpu(), h.class_embed.cpu()) for h in heads[1:])


def make_head(kind: str, *, feat_dim: int, classes: tuple[int, ...], num_classes: int, seed: int,
              temperature: float) -> nn.Module:
    if kind == "shared":
        return SharedHead(feat_dim, num_classes, classes, seed=seed, temperature=temperature)
    if kind == "own":
        return OwnHead(feat_dim, classes)
    raise ConfigError(f"unknown head kind {kind!r}; choose 'shared' or 'own'")


class Classifier(nn.Module):
    """images -> logits over ``output_classes``: ``head(body(pre(x)))``, `pre` the parent's own
    preprocessing (:mod:`mudsc.models.preprocess`, no state-dict entries) when it has one."""

    def __init__(self, body: nn.Module, head: nn.Module, pre: nn.Module | None = None) -> None:
        super().__init__()
        if pre is not None:
            self.pre = pre
        self.body = body
        self.head = head

    @property
    def classes(self) -> tuple[int, ...]:
        """The task the model was trained on."""
        return self.head.classes

    @property
    def output_classes(self) -> tuple[int, ...]:
        """Class id of each output column."""
        return self.head.output_classes

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "pre"):
            x = self.pre(x)
        return self.head(self.body(x))
