"""Official ``internimage_b_1k_224``.

InternImage-B: ImageNet-1k from scratch . lr values are per 512 images of global batch and scale linearly; the
original global batch is 4096 (e.g. 8 GPUs x 128 x accum_steps 4), i.e. lr 4e-3.
"""

from . import from_scratch

PRESET = from_scratch("internimage_b_1k_224", drop_path_rate=0.5)
