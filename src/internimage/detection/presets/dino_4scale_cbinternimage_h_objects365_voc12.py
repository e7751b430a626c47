"""Official ``dino_4scale_cbinternimage_h_objects365_voc12``: CB-DINO CB-InternImage-H, Objects365 -> Pascal VOC
(20 classes), trained on VOC07+12 trainval; zoo 97.2 mAP on VOC2012 test (area mAP; the test server scores it:
evaluation here runs on a VOC2012 split with annotations). lr 5e-5, 20000 iterations, evaluated every 500.
"""

from ._objects365 import objects365_to

PRESET = objects365_to(
    "voc", 20, iters=20000, eval_every=500, lr=5e-5,
    train_ann="VOC2007/ImageSets/Main/trainval.txt,VOC2012/ImageSets/Main/trainval.txt",
    train_images="VOC2007,VOC2012",
    val_ann="VOC2012/ImageSets/Main/val.txt", val_images="VOC2012",
)  # fmt: skip
