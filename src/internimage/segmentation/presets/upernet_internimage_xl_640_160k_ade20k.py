"""Official ``upernet_internimage_xl_640_160k_ade20k``.

InternImage-XL + UperNet, 640 crop, lr 2e-5, layer decay 0.94, grad clip 0.1; 55.0 / 55.3 mIoU (SS / MS).
"""

from . import upernet

PRESET = upernet(
    640,
    model="internimage_xl_22k_384",
    drop_path_rate=0.4,
    layer_scale=1.0,
    lr=2e-5,
    layer_decay=0.94,
    clip_grad=0.1,
)
