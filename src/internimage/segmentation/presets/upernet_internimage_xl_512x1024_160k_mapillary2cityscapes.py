"""Official ``upernet_internimage_xl_512x1024_160k_mapillary2cityscapes``.

InternImage-XL + UperNet, fine-tuned on Cityscapes fine + coarse (``train_extra`` with the refined coarse labels)
from ``upernet_internimage_xl_512x1024_80k_mapillary`` (pass it as ``pretrained``); 512x1024 crop, lr 2e-5,
layer decay 0.94, grad clip 0.1, 160k iterations, 8 x 2 images, evaluation every 4000; 86.20 / 86.42 mIoU (SS / MS),
368M parameters in the zoo.
The official config's ``load_from`` names the SegFormer Mapillary checkpoint (an upstream slip): start from
``upernet_internimage_xl_512x1024_80k_mapillary``.
"""

from . import CITYSCAPES_EXTRA, street

PRESET = street(
    CITYSCAPES_EXTRA,
    "upernet",
    model="internimage_xl_22k_384",
    drop_path_rate=0.4,
    layer_scale=1.0,
    lr=2e-5,
    layer_decay=0.94,
    clip_grad=0.1,
    eval_every=4000,
)
