"""Official ``mask2former_internimage_h_896x896_80k_mapillary``.

InternImage-H + Mask2Former (256 wide, 100 queries, 8 heads, FFN 1024 / 2048), Mapillary Vistas mapped to the 19
Cityscapes classes, 896x896 crop from 2048x1024 x [0.5, 2.0], lr 2e-5, layer decay 0.95, grad clip 0.1, 80k
iterations, 16 x 2 images, sliding-window test (896 crops, stride 512; the original evaluates on Cityscapes ``val``).
"""

from . import MAPILLARY, mask2former_h, street

PRESET = street(
    MAPILLARY,
    crop=(896, 896),
    **mask2former_h(False, num_classes=19, lr=2e-5, clip_grad=0.1, test_mode="slide", test_stride=[512, 512]),
)
