"""Official ``mask2former_internimage_h_896_80k_cocostuff2ade20k_ms``.

The ``_ss`` recipe (InternImage-H + Mask2Former 1024 wide, started from the COCO-Stuff-164k model) with the
multi-scale + flip test of the original: ratios 768/896 .. 1024/896 of 3584x896; 62.9 mIoU (MS), 1.31B parameters.
"""

from .mask2former_internimage_h_896_80k_cocostuff2ade20k_ss import PRESET as _SS

PRESET = dict(_SS, test_ratios=[768 / 896, 832 / 896, 1.0, 960 / 896, 1024 / 896], test_flip=True)
