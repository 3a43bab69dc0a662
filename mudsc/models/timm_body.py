"""Any timm model as a body: ``timm:NAME`` with keyword overrides, never downloading weights."""
from __future__ import annotations

from typing import Any

from torch import nn

from mudsc.errors import ConfigError, UnknownNameError


def timm_body(name: str, *, in_chans: int, img_size: int, feat_dim: int, **kwargs: Any) -> nn.Module:
    """timm model `name` with its classifier sized to `feat_dim`; `kwargs` go to ``timm.create_model``."""
    import timm

    if not timm.list_models(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join('timm:' + c for c in close)}?)" if close else ""
        raise UnknownNameError(f"unknown timm model {name!r}{hint}")
    kw = dict(kwargs)
    kw.setdefault("in_chans", in_chans)
    kw.setdefault("img_size", img_size)
    try:
        return timm.create_model(name, pretrained=False, num_classes=feat_dim, **kw)
    except TypeError:
        # Convolutional timm models take no img_size; transformers need it.
        kw.pop("img_size", None)
        try:
            return timm.create_model(name, pretrained=False, num_classes=feat_dim, **kw)
        except (TypeError, ValueError, AssertionError) as e:
            raise ConfigError(f"timm:{name}: {e}") from None
    except (ValueError, AssertionError, RuntimeError) as e:
        raise ConfigError(f"timm:{name}: {e}") from None
