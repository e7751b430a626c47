"""A real-image detection folder in COCO format from the annotated tree-crown images bundled with ``deepforest``.

deepforest (MIT) ships aerial RGB images with Pascal-VOC box annotations of tree crowns in ``deepforest/data``.
This script reads them straight from the wheel (no install, no network once the wheel is here) and writes
``OUT/images/*.png`` and ``OUT/annotations/trees.json`` (one category, ``tree``): 3 images, 377 boxes.

Usage::

    pip download --no-deps deepforest==2.1.0 -d /tmp/df
    python benchmarks/deepforest_coco.py /tmp/df/deepforest-2.1.0-py3-none-any.whl trees/
    internimage train --task detection --preset dino_4scale_internimage_t_1x_coco_layer_wise_lr --data-root trees \\
        --output runs/trees --num-classes 1 --device cpu --set train_ann=annotations/trees.json train_images=images \\
        val_ann=annotations/trees.json val_images=images scale_factor=0.5 batch_size=1 epochs=20 warmup_iters=10 \\
        log_every=3 eval_every=0 workers=0 classes=[tree]
"""

from __future__ import annotations

import argparse
import io
import json
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from PIL import Image

from internimage.io import atomic_write

IMAGES = ("OSBS_029", "SOAP_061", "2019_YELL_2_541000_4977000_image_crop")


def _boxes(xml: bytes) -> list[list[float]]:
    """``[x, y, w, h]`` of every VOC object."""
    out = []
    for obj in ET.fromstring(xml).iter("object"):
        box = obj.find("bndbox")
        x0, y0, x1, y1 = (float(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        out.append([x0, y0, x1 - x0, y1 - y0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("wheel", type=Path, help="deepforest-*.whl")
    parser.add_argument("output", type=Path, help="COCO folder to write")
    args = parser.parse_args()
    images, annotations = [], []
    with zipfile.ZipFile(args.wheel) as wheel:
        for image_id, name in enumerate(IMAGES, 1):
            data = wheel.read(f"deepforest/data/{name}.png")
            atomic_write(args.output / "images" / f"{name}.png", data)
            width, height = Image.open(io.BytesIO(data)).size
            images.append({"id": image_id, "file_name": f"{name}.png", "width": width, "height": height})
            for box in _boxes(wheel.read(f"deepforest/data/{name}.xml")):
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "bbox": box,
                     "area": box[2] * box[3], "iscrowd": 0}
                )  # fmt: skip
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "tree"}]}
    atomic_write(args.output / "annotations" / "trees.json", json.dumps(coco))
    print(f"{len(images)} images, {len(annotations)} boxes -> {args.output}")


if __name__ == "__main__":
    main()
