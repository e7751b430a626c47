"""Official ``upernet_internimage_t_512_160k_ade20k``.

InternImage-T + UperNet, 512 crop, lr 6e-5, no layer decay; 47.9 / 48.1 mIoU (SS / MS).
"""

from . import upernet

PRESET = upernet(512, model="internimage_t_1k_224", drop_path_rate=0.2, layer_scale=1.0, lr=6e-5, layer_decay=1.0)
