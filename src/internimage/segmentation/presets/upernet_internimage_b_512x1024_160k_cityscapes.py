"""Official ``upernet_internimage_b_512x1024_160k_cityscapes``.

InternImage-B + UperNet on Cityscapes fine, 512x1024 crop, lr 6e-5, layer decay 1.0, 160k iterations,
8 x 2 images, whole-image test at 2048x1024; 83.18 / 83.97 mIoU (SS / MS), 128M parameters in the zoo.
"""

from . import CITYSCAPES, street

PRESET = street(
    CITYSCAPES,
    "upernet",
    model="internimage_b_1k_224",
    drop_path_rate=0.4,
    layer_scale=1.0,
    lr=6e-5,
    layer_decay=1.0,
)
