"""Image classification: config and presets, the engine task, inference, and the Fashion-MNIST demo.

Train (the same as ``internimage train --preset internimage_t_1k_224``)::

    from internimage.classification import ClassificationTask, load_preset
    from internimage.engine import Trainer

    cfg = load_preset("internimage_t_1k_224")
    cfg.train_data, cfg.val_data = "data/train", "data/val"
    Trainer(cfg, ClassificationTask(cfg)).fit()

Infer::

    model, info = load_classifier("runs/t/model.safetensors")
    results = predict(model, image_loader(paths, info), paths, info["classes"], topk=5)

Modules: :mod:`.config` (``ClassificationConfig``), :mod:`.presets`, :mod:`.task`, :mod:`.inference`, :mod:`.demo`.
"""

from .config import ClassificationConfig, list_presets, load_preset
from .inference import extract_features, image_loader, load_classifier, predict, save_features
from .task import (
    IMAGENET_1K,
    IMAGENET_22K,
    ClassificationTask,
    build_val_dataset,
    class_names,
    imagenet_22k_to_1k_indices,
    topk_correct,
)

__all__ = [
    "IMAGENET_1K",
    "IMAGENET_22K",
    "ClassificationConfig",
    "ClassificationTask",
    "build_val_dataset",
    "class_names",
    "extract_features",
    "image_loader",
    "imagenet_22k_to_1k_indices",
    "list_presets",
    "load_classifier",
    "load_preset",
    "predict",
    "save_features",
    "topk_correct",
]
