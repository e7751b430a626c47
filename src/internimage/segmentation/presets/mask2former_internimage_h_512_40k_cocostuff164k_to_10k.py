"""Official ``mask2former_internimage_h_512_40k_cocostuff164k_to_10k``.

InternImage-H + Mask2Former (1024 wide, 200 queries, 32 heads, FFN 4096), COCO-Stuff-10k (171 classes, zero label
reduced), fine-tuned from ``mask2former_internimage_h_896_80k_cocostuff164k`` (pass it as ``pretrained``); 512 crop
from 2048x512 x [0.5, 2.0], lr 1e-5, layer decay 0.95, no grad clip, 40k iterations, 16 x 1 images; 59.2 / 59.6 mIoU
(SS / MS), 1.28B parameters in the zoo.
"""

from . import mask2former_h, upernet

PRESET = upernet(
    512,
    **mask2former_h(
        True,
        dataset="cocostuff10k",
        train_split="train2014",
        val_split="test2014",
        num_classes=171,
        reduce_zero_label=True,
        lr=1e-5,
        batch_size=1,
        iters=40000,
    ),
)
