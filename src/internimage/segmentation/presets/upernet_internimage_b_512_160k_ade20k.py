"""Official ``upernet_internimage_b_512_160k_ade20k``.

InternImage-B + UperNet, 512 crop, lr 6e-5, no layer decay; 50.8 / 51.3 mIoU (SS / MS).
"""

from . import upernet

PRESET = upernet(512, model="internimage_b_1k_224", drop_path_rate=0.4, layer_scale=1.0, lr=6e-5, layer_decay=1.0)
