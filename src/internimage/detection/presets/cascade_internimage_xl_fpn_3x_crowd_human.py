"""Official ``cascade_internimage_xl_fpn_3x_crowd_human``: InternImage-XL (22k) + FPN + Cascade R-CNN on CrowdHuman
(one class, ``person`` full-body boxes), 3x.

mmdet's R-50 Cascade R-CNN heads (Shared2FC, smooth-L1, class-agnostic regression, no masks), the 3x multi-scale +
crop AutoAugment pipeline, AdamW lr 1e-4, weight decay 1e-4, layer decay 0.94, drop path 0.4.

One deliberate departure: ``ignore_iof_thr=0.5``. The official config leaves mmdet's ``MaxIoUAssigner`` at
``ignore_iof_thr=-1``, so although its ``CrowdHumanDataset`` hands the ignore regions (crowds, mannequins, posters)
to the heads as ``gt_bboxes_ignore``, they are never used and anchors / RoIs on them train as background. We follow
the requirement that ignore regions are not negatives, with mmdet's own mechanism: at 0.5, anchors and RoIs lying
more than half inside an ignore region (IoF) are neither negatives nor positives in the RPN and all three stages.
Set ``model_kwargs["ignore_iof_thr"] = -1`` to train exactly as the official config.
"""

from . import cascade

PRESET = cascade(
    "3x", model="internimage_xl_22k_384", dataset="crowdhuman", num_classes=1,
    train_ann="annotations/annotation_train.json", train_images="Images",
    val_ann="annotations/annotation_val.json", val_images="Images",
    drop_path_rate=0.4, lr=1e-4, weight_decay=1e-4, layer_decay=0.94,
    model_kwargs=dict(
        with_mask=False, head_convs=0, head_fcs=2, head_norm=False, box_loss="smooth_l1", box_loss_weight=1.0,
        reg_class_agnostic=True,
        # Not the official -1 (which ignores the ignore regions): keep what lies mostly on one out of the negatives.
        ignore_iof_thr=0.5,
    ),
)  # fmt: skip
