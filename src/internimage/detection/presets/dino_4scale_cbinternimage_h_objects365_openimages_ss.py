"""Official ``dino_4scale_cbinternimage_h_objects365_openimages_ss``: CB-DINO CB-InternImage-H, Objects365 ->
OpenImages V6 (601 classes); zoo 74.1 mAP. 100000 iterations, evaluated every 2000.

Class-aware sampling: the config sets ``data.train_dataloader.class_aware_sampler=dict(num_sample_class=1)``, but
mmdet 2.28's ``build_dataloader`` honours it only for an ``EpochBasedRunner``; under the config's ``IterBasedRunner``
it builds the usual shuffled ``InfiniteGroupBatchSampler`` instead, so the released code samples images uniformly,
and so does this preset. The sampler is implemented (:class:`~internimage.detection.samplers.ClassAwareSampler`, mmdet's
indices): set ``class_aware_sampler=1`` (``num_sample_class``) to train as the config describes.
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
