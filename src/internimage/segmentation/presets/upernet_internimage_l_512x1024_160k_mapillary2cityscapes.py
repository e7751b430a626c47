"""Official ``upernet_internimage_l_512x1024_160k_mapillary2cityscapes``.

InternImage-L + UperNet, fine-tuned on Cityscapes fine + coarse (``train_extra`` with the refined coarse labels)
from ``upernet_internimage_l_512x1024_80k_mapillary`` (pass it as ``pretrained``); 512x1024 crop, lr 2e-5,
layer decay 0.94, grad clip 0.1, 160k iterations, 8 x 2 images, evaluation every 4000; 85.94 / 86.22 mIoU (SS / MS),
256M parameters in the zoo.
"""

from . import CITYSCAPES_EXTRA, street

PRESET = street(
    CITYSCAPES_EXTRA,
    "upernet",
    model="internimage_l_22k_384",
    drop_path_rate=0.4,
    layer_scale=1.0,
    lr=2e-5,
    layer_decay=0.94,
    clip_grad=0.1,
    eval_every=4000,
)
