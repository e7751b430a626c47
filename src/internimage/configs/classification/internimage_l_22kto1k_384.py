"""Official ``internimage_l_22kto1k_384``.

InternImage-L: ImageNet-22k -> 1k fine-tuning (configs/ version with layer decay 0.9 and DCN_LR_MUL 0.1; the paper
used configs/without_lr_decay: set layer_decay=1.0). Start from the 22k weights with init_checkpoint=... (the
21841-class head is dropped). lr is per 512 images of global batch (original: 512).
"""

PRESET = {
    "model": "internimage_l_22kto1k_384",
    "img_size": 384,
    "drop_path_rate": 0.1,
    "train_data": "",
    "val_data": "",
    "epochs": 20,
    "warmup_epochs": 2,
    "batch_size": 64,
    "accum_steps": 1,
    "lr": 2e-05,
    "lr_base_batch": 512,
    "warmup_lr": 5e-07,
    "min_lr": 5e-06,
    "sched": "cosine",
    "optimizer": "adamw",
    "betas": [0.9, 0.999],
    "eps": 1e-08,
    "weight_decay": 0.05,
    "clip_grad": 5.0,
    "layer_decay": 0.9,
    "offset_lr_mul": 0.1,
    "label_smoothing": 0.3,
    "interpolation": "bicubic",
    "auto_augment": "rand-m9-mstd0.5-inc1",
    "color_jitter": 0.4,
    "reprob": 0.0,
    "mixup": 0.0,
    "cutmix": 0.0,
    "mixup_prob": 1.0,
    "mixup_switch_prob": 0.5,
    "ema": True,
    "ema_decay": 0.9999,
    "grad_checkpointing": True,
    "amp": "none",
    "output": "runs/internimage_l_22kto1k_384",
}
