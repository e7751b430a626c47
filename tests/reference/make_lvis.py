"""Record the ``lvis`` package's box evaluation of the fixture of ``lvis_fixture.py`` -> ``lvis_metrics.json``.

Run with an interpreter that has the reference (``pip install lvis``; numpy, pycocotools)::

    python tests/reference/make_lvis.py

``lvis`` 0.5.3 imports OpenCV and matplotlib for its visualiser only, and uses the removed ``np.float`` alias: both
are shimmed here (the alias is Python's float, float64 as before). Figures are written for the full file and for
the minival subset.
"""

from __future__ import annotations

import copy
import json
import sys
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
for name in ("cv2", "matplotlib", "matplotlib.pyplot", "matplotlib.patches"):
    sys.modules.setdefault(name, types.ModuleType(name))
sys.modules["matplotlib.patches"].Polygon = None
if not hasattr(np, "float"):
    np.float = float  # the reference's removed alias

from lvis import LVIS, LVISEval, LVISResults  # noqa: E402
from lvis_fixture import build_lvis, minival  # noqa: E402

KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR@300")


def run(gt: dict, dets: list[dict], tmp: Path) -> dict[str, float]:
    tmp.write_text(json.dumps(gt))
    keep = {im["id"] for im in gt["images"]}
    lvis_gt = LVIS(str(tmp))
    lvis_dt = LVISResults(lvis_gt, copy.deepcopy([d for d in dets if d["image_id"] in keep]), max_dets=300)
    ev = LVISEval(lvis_gt, lvis_dt, "bbox")
    ev.run()
    return {f"bbox_{k}": float(ev.results[k]) for k in KEYS}


def main() -> None:
    import tempfile

    data, dets = build_lvis()
    with tempfile.TemporaryDirectory() as d:
        out = {"val": run(data, dets, Path(d) / "val.json"), "minival": run(minival(data), dets, Path(d) / "mv.json")}
    (HERE / "lvis_metrics.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
