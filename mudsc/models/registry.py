"""Model registry in the spirit of timm: ``create_model(name, ...)`` is the one way to build a model.

Every model is a :class:`~mudsc.models.heads.Classifier`: a body that maps images to an embedding
and a head (``shared`` frozen class embeddings, or an ``own`` linear layer). ``timm:NAME`` builds any
timm model as the body.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable

from torch import nn

from mudsc.errors import ConfigError, UnknownNameError
from mudsc.models.heads import Classifier, make_head

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """File a body builder under its function name; a duplicate name is an error."""
    if fn.__name__ in _BUILDERS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _BUILDERS[fn.__name__] = fn
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    """Registered architecture names (``timm:NAME`` is accepted too), optionally filtered by glob."""
    import fnmatch

    names = sorted(_BUILDERS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def create_body(arch: str, *, in_chans: int, img_size: int, feat_dim: int, **kwargs: Any) -> nn.Module:
    """The body of architecture `arch`: images [b, in_chans, s, s] -> embeddings [b, feat_dim]."""
    if arch.startswith("timm:"):
        from mudsc.models.timm_body import timm_body

        return timm_body(arch[5:], in_chans=in_chans, img_size=img_size, feat_dim=feat_dim, **kwargs)
    if arch not in _BUILDERS:
        close = difflib.get_close_matches(arch, list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UnknownNameError(
            f"unknown architecture {arch!r}{hint}; choose one of {', '.join(list_models())} or timm:NAME"
        )
    try:
        return _BUILDERS[arch](in_chans=in_chans, img_size=img_size, feat_dim=feat_dim, **kwargs)
    except TypeError as e:
        raise ConfigError(f"architecture {arch!r}: {e}") from None


def create_model(arch: str, *, classes: tuple[int, ...], num_classes: int, head: str = "shared",
                 in_chans: int = 1, img_size: int = 28, feat_dim: int = 64,
                 head_seed: int = 0, temperature: float = 20.0, preprocess: dict | None = None,
                 **kwargs: Any) -> Classifier:
    """A classifier of architecture `arch` for the task `classes` out of `num_classes`.

    Args:
        arch: registered name (see :func:`list_models`) or ``timm:NAME``.
        classes: the task's class ids.
        num_classes: classes in the data set (the shared head's output size).
        head: ``shared`` (frozen orthonormal class embeddings, cosine logits) or ``own`` (linear).
        feat_dim: width of the body's output embedding.
        head_seed: seed of the shared class embedding; parents must agree on it to share outputs.
        preprocess: options of the model's own input preprocessing (:func:`~mudsc.models.preprocess.preprocess_spec`),
            e.g. resizing the data set's images to `img_size`.
        kwargs: architecture options (``width``, ``depth``, ``norm``, timm overrides...).
    """
    from mudsc.models.preprocess import Preprocess

    body = create_body(arch, in_chans=in_chans, img_size=img_size, feat_dim=feat_dim, **kwargs)
    model = Classifier(body, make_head(head, feat_dim=feat_dim, classes=tuple(classes),
                                       num_classes=num_classes, seed=head_seed, temperature=temperature),
                       Preprocess(preprocess) if preprocess else None)
    # What rebuilds this exact model; checkpoint.py stores it in the file's metadata.
    model.spec = {
        "arch": arch, "kwargs": dict(kwargs), "head": head, "classes": [int(c) for c in classes],
        "num_classes": int(num_classes), "in_chans": int(in_chans), "img_size": int(img_size),
        "feat_dim": int(feat_dim), "head_seed": int(head_seed), "temperature": float(temperature),
    }
    if preprocess:
        model.spec["preprocess"] = dict(preprocess)
    return model


def model_from_spec(spec: dict) -> Classifier:
    """Rebuild a model from the ``spec`` that :func:`create_model` (or, for the user's own
    architectures, :func:`mudsc.models.external.external_spec`) attached to it."""
    if spec.get("source") == "external":
        from mudsc.models.external import build_external

        return build_external(spec)
    keys = ("arch", "classes", "num_classes")
    missing = [k for k in keys if k not in spec]
    if missing:
        raise ConfigError(f"model spec lacks {missing}")
    opts = {k: spec[k] for k in ("head", "in_chans", "img_size", "feat_dim", "head_seed", "temperature", "preprocess")
            if k in spec}
    return create_model(spec["arch"], classes=tuple(spec["classes"]), num_classes=spec["num_classes"],
                        **opts, **spec.get("kwargs", {}))
