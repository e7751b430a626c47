"""InternImage models and checkpoint handling."""

from .checkpoint import CheckpointError, LoadResult, convert_checkpoint, load_checkpoint
from .factory import create_model, list_models, load_weights
from .internimage import ARCHS, MODEL_NAMES, MODEL_SPECS, InternImage, InternImageArch

__all__ = [
    "ARCHS",
    "MODEL_NAMES",
    "MODEL_SPECS",
    "CheckpointError",
    "InternImage",
    "InternImageArch",
    "LoadResult",
    "convert_checkpoint",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_weights",
]
