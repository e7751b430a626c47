"""Official ``mask2former_internimage_h_480_40k_pascal_context_59``.

InternImage-H + Mask2Former (256 wide, 100 queries, 8 heads, FFN 1024 / 2048), Pascal Context 59 (zero label =
background reduced), 480 crop from 520x520 x [0.5, 2.0], test at 4096x520, lr 2e-5, layer decay 0.95, no grad clip,
40k iterations, 16 x 1 images; 69.7 / 70.3 mIoU (SS / MS), 1.07B parameters in the zoo.
"""

from . import mask2former_h, upernet

PRESET = upernet(
    480,
    **mask2former_h(
        False,
        dataset="pascal_context",
        train_split="train",
        val_split="val",
        num_classes=59,
        reduce_zero_label=True,
        img_scale=[520, 520],
        test_scale=[4096, 520],
        lr=2e-5,
        batch_size=1,
        iters=40000,
    ),
)
