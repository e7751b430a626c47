"""Official ``dino_4scale_cbinternimage_h_objects365_lvis_val_ss``: CB-DINO CB-InternImage-H, Objects365 -> LVIS v1
(1203 classes), evaluated on val; zoo 62.3 box AP. 80000 iterations, evaluated every 500.

Not reproduced: the config's federated loss (``fed_loss_cfg``: 50 sampled classes, frequency weight power 0.5).
"""

from ._objects365 import objects365_to

PRESET = objects365_to(
    "lvis", 1203, iters=80000, eval_every=500,
    train_ann="annotations/lvis_v1_train.json", train_images="",
    val_ann="annotations/lvis_v1_val.json", val_images="",
)  # fmt: skip
