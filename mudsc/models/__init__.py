"""Models: the registry (``create_model``, ``list_models``), the families it builds, heads,
self-describing checkpoints and multi-head (partially zipped) models. Imports errors and unitgraph."""
from mudsc.models import cnn, mlp, resnet  # noqa: F401  explicit family list fills the registry
from mudsc.models.checkpoint import load_model, read_state_dict, save_model, sha256_file
from mudsc.models.heads import Classifier, OwnHead, SharedHead
from mudsc.models.registry import create_body, create_model, list_models, model_from_spec, register_model

__all__ = ["Classifier", "OwnHead", "SharedHead", "create_body", "create_model", "list_models", "load_model",
           "model_from_spec", "read_state_dict", "register_model", "save_model", "sha256_file"]
