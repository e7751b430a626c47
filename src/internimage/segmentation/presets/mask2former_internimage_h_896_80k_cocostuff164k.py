"""Official ``mask2former_internimage_h_896_80k_cocostuff164k``.

InternImage-H + Mask2Former (1024 wide, 200 queries, 32 heads, FFN 4096), COCO-Stuff-164k (171 classes), 896 crop
from 3584x896 x [0.5, 2.0], lr 2e-5, layer decay 0.95, no grad clip, 80k iterations, 16 x 1 images, evaluation every
8000; 52.6 mIoU (SS), 1.31B parameters in the zoo.
"""

from . import mask2former_h, upernet

PRESET = upernet(
    896,
    **mask2former_h(
        True,
        dataset="cocostuff164k",
        train_split="train2017",
        val_split="val2017",
        num_classes=171,
        reduce_zero_label=False,
        lr=2e-5,
        batch_size=1,
        eval_every=8000,
    ),
)
