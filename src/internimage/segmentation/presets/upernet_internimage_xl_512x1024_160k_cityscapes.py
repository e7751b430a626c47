"""Official ``upernet_internimage_xl_512x1024_160k_cityscapes``.

InternImage-XL + UperNet on Cityscapes fine, 512x1024 crop, lr 2e-5, layer decay 0.94, grad clip 0.1, 160k iterations,
8 x 2 images, whole-image test at 2048x1024; 83.62 / 84.28 mIoU (SS / MS), 368M parameters in the zoo.
"""

from . import CITYSCAPES, street

PRESET = street(
    CITYSCAPES,
    "upernet",
    model="internimage_xl_22k_384",
    drop_path_rate=0.4,
    layer_scale=1.0,
    lr=2e-5,
    layer_decay=0.94,
    clip_grad=0.1,
)
