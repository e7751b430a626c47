"""Official ``upernet_internimage_g_896_160k_ade20k``.

InternImage-G + UperNet, 896 crop, lr 2e-5, layer decay 0.95, grad clip 0.1, 16 x 1 images, gradient checkpointing
(``with_cp=True``); no checkpoint or zoo figure released.
"""

from . import upernet

PRESET = upernet(
    896,
    model="internimage_g_jointto22k_384",
    drop_path_rate=0.5,
    layer_scale=None,
    lr=2e-5,
    layer_decay=0.95,
    clip_grad=0.1,
    batch_size=1,
    grad_checkpointing=True,
)
