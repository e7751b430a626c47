"""Official ``upernet_internimage_l_640_160k_ade20k``.

InternImage-L + UperNet, 640 crop, lr 2e-5, layer decay 0.94, grad clip 0.1; 53.9 / 54.1 mIoU (SS / MS).
"""

from . import upernet

PRESET = upernet(
    640,
    model="internimage_l_22k_384",
    drop_path_rate=0.4,
    layer_scale=1.0,
    lr=2e-5,
    layer_decay=0.94,
    clip_grad=0.1,
)
