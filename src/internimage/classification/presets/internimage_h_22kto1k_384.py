"""Official ``internimage_h_22kto1k_384``.

InternImage-H: ImageNet-22k -> 1k fine-tuning (configs/ version with layer decay 0.9 and DCN_LR_MUL 0.1; the paper
used configs/without_lr_decay: set layer_decay=1.0). Start from the 22k weights with init_checkpoint=... (the
21841-class head is dropped). lr is per 512 images of global batch (original: 512).
"""

from . import finetune_22k

PRESET = finetune_22k("internimage_h_22kto1k_384", img_size=384, drop_path_rate=0.2)
