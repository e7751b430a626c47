"""Official ``upernet_internimage_t_512x1024_160k_cityscapes``.

InternImage-T + UperNet on Cityscapes fine, 512x1024 crop, lr 6e-5, layer decay 1.0, 160k iterations,
8 x 2 images, whole-image test at 2048x1024; 82.58 / 83.40 mIoU (SS / MS), 59M parameters in the zoo.
"""

from . import CITYSCAPES, street

PRESET = street(
    CITYSCAPES,
    "upernet",
    model="internimage_t_1k_224",
    drop_path_rate=0.2,
    layer_scale=1.0,
    lr=6e-5,
    layer_decay=1.0,
)
