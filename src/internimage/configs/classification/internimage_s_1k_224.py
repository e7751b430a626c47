"""Official ``internimage_s_1k_224``.

InternImage-S: ImageNet-1k from scratch . lr values are per 512 images of global batch and scale linearly; the
original global batch is 4096 (e.g. 8 GPUs x 128 x accum_steps 4), i.e. lr 4e-3.
"""

PRESET = {
    "model": "internimage_s_1k_224",
    "img_size": 224,
    "drop_path_rate": 0.4,
    "train_data": "",
    "val_data": "",
    "epochs": 300,
    "warmup_epochs": 20,
    "batch_size": 128,
    "accum_steps": 1,
    "lr": 0.0005,
    "lr_base_batch": 512,
    "warmup_lr": 5e-07,
    "min_lr": 5e-06,
    "sched": "cosine",
    "optimizer": "adamw",
    "betas": [0.9, 0.999],
    "eps": 1e-08,
    "weight_decay": 0.05,
    "clip_grad": 5.0,
    "layer_decay": 1.0,
    "offset_lr_mul": 1.0,
    "label_smoothing": 0.1,
    "interpolation": "bicubic",
    "auto_augment": "rand-m9-mstd0.5-inc1",
    "color_jitter": 0.4,
    "reprob": 0.25,
    "mixup": 0.8,
    "cutmix": 1.0,
    "mixup_prob": 1.0,
    "mixup_switch_prob": 0.5,
    "ema": True,
    "ema_decay": 0.9999,
    "grad_checkpointing": False,
    "amp": "none",
    "output": "runs/internimage_s_1k_224",
}
