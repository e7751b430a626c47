"""Official ``dino_4scale_cbinternimage_h_objects365_openimages_ss``: CB-DINO CB-InternImage-H, Objects365 ->
OpenImages V6 (601 classes); zoo 74.1 mAP. 100000 iterations, evaluated every 2000.

Not reproduced: the config's class-aware sampler (``class_aware_sampler=dict(num_sample_class=1)``).
"""

from ._objects365 import objects365_to

PRESET = objects365_to(
    "openimages", 601, iters=100000, eval_every=2000,
    train_ann="annotations/oidv6-train-annotations-bbox.csv", train_images="OpenImages/train",
    val_ann="annotations/validation-annotations-bbox.csv", val_images="OpenImages/validation",
    label_file="annotations/class-descriptions-boxable.csv",
    hierarchy_file="annotations/bbox_labels_600_hierarchy.json",
    val_image_labels="annotations/validation-annotations-human-imagelabels-boxable.csv",
)  # fmt: skip
