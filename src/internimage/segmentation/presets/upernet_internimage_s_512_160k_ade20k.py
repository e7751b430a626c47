"""Official ``upernet_internimage_s_512_160k_ade20k``.

InternImage-S + UperNet, 512 crop, lr 6e-5, no layer decay; 50.1 / 50.9 mIoU (SS / MS).
"""

from . import upernet

PRESET = upernet(512, model="internimage_s_1k_224", drop_path_rate=0.3, layer_scale=1.0, lr=6e-5, layer_decay=1.0)
