"""Official ``mask2former_internimage_h_896_80k_cocostuff2ade20k_ss``.

InternImage-H + Mask2Former (1024 wide, 200 queries, 32 heads, 6 + 9 layers), 896 crop, lr 1e-5, layer decay 0.95,
grad clip 0.1, 80k iterations, 16 x 1 images; started from the COCO-Stuff-164k model; 62.6 / 62.9 mIoU (SS / MS).
"""

from . import upernet

PRESET = upernet(
    896,
    head="mask2former",
    model="internimage_h_jointto22k_384",
    drop_path_rate=0.5,
    layer_scale=None,
    decode_channels=1024,
    num_queries=200,
    attn_heads=32,
    ffn_channels=4096,
    enc_layers=6,
    dec_layers=9,
    aux_channels=0,
    lr=1e-5,
    layer_decay=0.95,
    clip_grad=0.1,
    batch_size=1,
    iters=80000,
    eval_every=2000,
)
