"""Official ``dino_4scale_cbinternimage_h_objects365_voc07``: CB-DINO CB-InternImage-H, Objects365 -> Pascal VOC
(20 classes), trained on VOC07+12 trainval, evaluated on VOC2007 test (11-point mAP); zoo 94.0 mAP. lr 5e-5,
20000 iterations, evaluated every 500.
"""

from ._objects365 import objects365_to

PRESET = objects365_to(
    "voc", 20, iters=20000, eval_every=500, lr=5e-5,
    train_ann="VOC2007/ImageSets/Main/trainval.txt,VOC2012/ImageSets/Main/trainval.txt",
    train_images="VOC2007,VOC2012",
    val_ann="VOC2007/ImageSets/Main/test.txt", val_images="VOC2007",
)  # fmt: skip
