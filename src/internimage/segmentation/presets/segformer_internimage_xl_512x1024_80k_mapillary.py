"""Official ``segformer_internimage_xl_512x1024_80k_mapillary``.

InternImage-XL + SegFormer head pre-trained on Mapillary Vistas (training + validation, mapped to the 19
Cityscapes classes), 512x1024 crop from 2048x1024 x [0.5, 1.0], lr 2e-5, layer decay 0.94, grad clip 0.1, 80k
iterations, 8 x 2 images; 330M parameters in the zoo.
The original evaluates on Cityscapes ``val`` every 8000 iterations.
"""

from . import MAPILLARY, street

PRESET = street(
    MAPILLARY,
    "segformer",
    model="internimage_xl_22k_384",
    drop_path_rate=0.4,
    layer_scale=1.0,
    ratio_range=[0.5, 1.0],
    lr=2e-5,
    layer_decay=0.94,
    clip_grad=0.1,
    iters=80000,
    eval_every=8000,
)
