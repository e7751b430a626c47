"""Every checkpoint reader, key map and writer, with one :class:`LoadResult`.

Formats recognised (the official release's files), all read with ``torch.load(weights_only=True)`` or safetensors:

* official classification ``.pth``: ``{'model': sd}``; training checkpoints add ``model_ema``, optimizer, ...
* HuggingFace remote code: every key prefixed ``model.``, ``gamma1/2`` renamed ``layer_scale1/2``;
* mmdet / mmseg: ``{'state_dict': sd}`` with the backbone under ``backbone.``; detector heads are renamed to
  torchvision's layout (:mod:`.mmdet`), segmentation heads keep mmseg's names (:mod:`.mmseg`), DINO keeps the
  official names (:mod:`.dino`);
* DDP / ``torch.compile`` wrappers (``module.``, ``_orig_mod.``) and our own safetensors files.

Modules: :mod:`.core` (reading, layout detection, comparison, the classifier loader, writing), :mod:`.mmdet`,
:mod:`.mmseg`, :mod:`.dino`. The readers know models only by their state dicts and a ``weights_layout`` class
attribute, so this package sits below every model family.
"""

from .core import (
    CheckpointError,
    LoadResult,
    checkpoint_filter_fn,
    compare,
    convert_checkpoint,
    detect_format,
    load_checkpoint,
    load_fitting,
    normalize_state_dict,
    read_checkpoint,
    refusal_message,
    save_state_dict,
)
from .dino import load_dino_weights
from .mmdet import MappedState, load_detector_weights, load_mmdet_detector, map_mmdet_state_dict
from .mmseg import load_segmentation_checkpoint, map_mmseg_state_dict

__all__ = [
    "CheckpointError",
    "LoadResult",
    "MappedState",
    "checkpoint_filter_fn",
    "compare",
    "convert_checkpoint",
    "detect_format",
    "load_checkpoint",
    "load_detector_weights",
    "load_dino_weights",
    "load_fitting",
    "load_mmdet_detector",
    "load_segmentation_checkpoint",
    "map_mmdet_state_dict",
    "map_mmseg_state_dict",
    "normalize_state_dict",
    "read_checkpoint",
    "refusal_message",
    "save_state_dict",
]
