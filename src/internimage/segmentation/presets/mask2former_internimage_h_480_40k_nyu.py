"""Official ``mask2former_internimage_h_480_40k_nyu``.

InternImage-H + Mask2Former (256 wide, 100 queries, 8 heads, FFN 1024 / 2048), NYU Depth v2 (40 classes, zero label
reduced), 480 crop from 2048x512 x [0.5, 2.0], test at 640x480, lr 2e-5, layer decay 0.95, no grad clip, 40k
iterations, 16 x 1 images; 67.1 / 68.1 mIoU (SS / MS), 1.07B parameters in the zoo.
"""

from . import mask2former_h, upernet

PRESET = upernet(
    480,
    **mask2former_h(
        False,
        dataset="nyu",
        train_split="train",
        val_split="test",
        num_classes=40,
        reduce_zero_label=True,
        img_scale=[2048, 512],
        test_scale=[640, 480],
        lr=2e-5,
        batch_size=1,
        iters=40000,
    ),
)
