"""Official ``internimage_h_22ktoinat18_384`` (``classification/configs/inaturalist2018``).

InternImage-H fine-tuned on iNaturalist 2018 (8142 classes) at 384 from the joint 22k weights
(``init_checkpoint=internimage_h_jointto22k_384.pth``; its 21841-class head is dropped and the new head starts at
random, ``RAND_INIT_FT_HEAD``): 100 epochs, no warm-up, lr 2e-5 per 512 images with no layer decay and no DCN lr
multiplier, warm-up / min lr 0, no EMA, label smoothing 0.3, drop path 0.6, no Mixup / CutMix / random erasing,
gradient checkpointing. Data: ``--train-data <root>/train2018.json --val-data <root>/val2018.json`` (the iNaturalist
2018 release; image paths in the json are relative to its folder, or to ``--set data_root=...``).

The model is the original's ``intern_image_meta_former``: InternImage-H plus two small MLP branches (width 64) over
the photo's date (4 values) and location (3 values) whose logits are added to the image logits
(``model_kwargs.meta_dim=64``). Their inputs come from the release's ``train2018_locations.json`` /
``val2018_locations.json`` (``--set train_meta=... val_meta=...``); without them the branches see zeros, as the
original does for a photo without date or place.
"""

from . import finetune_22k

PRESET = finetune_22k("internimage_h_jointto22k_384", img_size=384, drop_path_rate=0.6)
PRESET.update(
    model_kwargs={"meta_dim": 64},
    num_classes=8142,
    epochs=100,
    warmup_epochs=0,
    lr=2e-5,
    warmup_lr=0.0,
    min_lr=0.0,
    layer_decay=1.0,
    offset_lr_mul=1.0,
    ema=False,
    label_smoothing=0.3,
    output="runs/internimage_h_22ktoinat18_384",
)
