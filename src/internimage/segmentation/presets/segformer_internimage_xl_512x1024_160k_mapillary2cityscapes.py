"""Official ``segformer_internimage_xl_512x1024_160k_mapillary2cityscapes``.

InternImage-XL + SegFormer head, fine-tuned on Cityscapes fine + coarse (``train_extra`` with the refined coarse labels)
from ``segformer_internimage_xl_512x1024_80k_mapillary`` (pass it as ``pretrained``); 512x1024 crop, lr 2e-5,
layer decay 0.94, grad clip 0.1, 160k iterations, 8 x 2 images, evaluation every 4000; 85.41 / 85.93 mIoU (SS / MS),
330M parameters in the zoo.
"""

from . import CITYSCAPES_EXTRA, street

PRESET = street(
    CITYSCAPES_EXTRA,
    "segformer",
    model="internimage_xl_22k_384",
    drop_path_rate=0.4,
    layer_scale=1.0,
    lr=2e-5,
    layer_decay=0.94,
    clip_grad=0.1,
    eval_every=4000,
)
