"""Official ``mask2former_internimage_h_1024x1024_80k_mapillary2cityscapes``.

InternImage-H + Mask2Former (256 wide, 100 queries, 8 heads, FFN 1024 / 2048), 19 classes, fine-tuned on Cityscapes
fine + coarse from ``mask2former_internimage_h_896x896_80k_mapillary`` (pass it as ``pretrained``); 1024x1024 crop,
lr 1e-5, layer decay 0.95, grad clip 0.1, 80k iterations, 8 x 2 images, sliding-window test (1024 crops, stride 512).
"""

from . import CITYSCAPES_EXTRA, mask2former_h, street

PRESET = street(
    CITYSCAPES_EXTRA,
    crop=(1024, 1024),
    **mask2former_h(False, num_classes=19, lr=1e-5, clip_grad=0.1, test_mode="slide", test_stride=[512, 512]),
)
