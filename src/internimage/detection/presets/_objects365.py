"""CB-DINO on CB-InternImage-H fine-tuned from the Objects365 detector to LVIS, OpenImages and VOC.

The official ``detection/configs/{lvis,openimages,voc}/dino_4scale_cbinternimage_h_objects365_*`` configs share the
COCO one's model (``cb_dino``, 900 queries, ``num_dn_queries=1000``, ``max_per_img=300``, drop path 0.5) and optimiser
(AdamW wd 1e-4, layer decay 0.94, sampling-offset lr x1e-3, gradient clipping at 0.1, 500 warm-up iterations, no
decay steps, batch 1 per GPU); they train at a random short side of 600-1200 (long side 2000, recipe
``dino_ss_1200``) after the flip and test at (2000, 1000). Start from the Objects365 weights
(``dino_4scale_cbinternimage_h_objects365_80classes.pth``) given as ``pretrained``.
"""

from __future__ import annotations

from typing import Any

from ._dino import objects365_to_coco

__all__ = ["objects365_to"]


def objects365_to(
    dataset: str,
    num_classes: int,
    iters: int,
    eval_every: int,
    model_kwargs: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The preset for ``dataset`` (``lvis`` / ``openimages`` / ``voc``) with its schedule and files.

    ``model_kwargs`` are added to the shared head arguments (``num_dn_queries``, ``max_per_img``) rather than
    replacing them.
    """
    preset = objects365_to_coco("internimage_h_jointto22k_384", arch="cb_dino")
    preset["model_kwargs"] = {**preset["model_kwargs"], **(model_kwargs or {})}
    preset.update(
        dataset=dataset,
        num_classes=num_classes,
        recipe="dino_ss_1200",
        iters=iters,
        eval_every=eval_every,
        clip_grad=0.1,
    )
    preset.update(fields)
    return preset
