"""Full-size DINO-4scale InternImage-T: onnxruntime vs PyTorch, raw and with the two-stage top-k held equal.

The detector is the one ``internimage export --task detection --arch dino internimage_t_1k_224`` exports (the
``dino_4scale_internimage_t_1x_coco_layer_wise_lr`` model: InternImage-T, 80 classes, ``layer_scale=1.0``), with
random weights from ``--seed`` (nothing is downloaded), exported by the same functions
(:func:`internimage.export.build_exportable`, :func:`internimage.export.export`). A copy of the ONNX file gets
two more graph outputs, the input and the indices of the query-selection ``TopK`` (k = 900 encoder tokens), so the
selection can be compared with PyTorch's.

Per input size the table gives:

* raw: max abs error of scores, labels, boxes (pixels) between onnxruntime and the eager model, as they come and
  after matching the 100 detections one to one (same label, then nearest box and score); the worst matched box
  traced to its query (its rank in the selection) and whether the runtimes selected different tokens at that rank;
  "unexplained": matched boxes off by more than 0.01 px whose query rank is not such a rank;
* the 900 selected tokens: equal as sets, equal in order, how many ranks differ, the largest PyTorch score gap
  between two tokens the runtimes order differently, the max abs error of the encoder scores the top-k ranks,
  the gap between the 900th and the 901st score, and for scale PyTorch against itself (1 thread vs
  ``--threads``): its encoder score difference and whether its own top-k order holds;
* forced: the same errors when PyTorch is given onnxruntime's 900 indices (so both decoders see the same
  queries), plus the boxes' error relative to the image side, and the forced errors after matching the 100
  detections one to one (label, then box and score), in case the final top-100 also swaps near-ties.

DINO pairs the i-th selected token with the i-th learned content query, so swapping two near-tied tokens changes
the detections themselves, not only their order: raw errors then say nothing about the export.

Usage::

    python benchmarks/dino_onnx_parity.py --sizes 320x480 384x384 [800x1344] --threads 2 [--onnx dino_t.onnx]

``--onnx`` reuses a file this script wrote with the same ``--seed`` (the export takes ~5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from internimage.detection.models.dino.matching import hungarian_assign
from internimage.export import build_exportable, export


def _with_topk_outputs(src: Path, dst: Path, k: int, final_k: int) -> None:
    """Copy ``src`` adding graph outputs: the input and indices of the ``TopK`` whose K is ``k`` (query selection),
    then the indices of the one whose K is ``final_k`` (the detections' query x class indices)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)

    def topk_node(kk: int):  # noqa: ANN202
        found = [
            n
            for n in model.graph.node
            if n.op_type == "TopK" and n.input[1] in consts and int(np.asarray(consts[n.input[1]]).ravel()[0]) == kk
        ]
        if len(found) != 1:
            raise RuntimeError(f"{src}: {len(found)} TopK nodes with K = {kk}, expected one")
        return found[0]

    selection, final = topk_node(k), topk_node(final_k)
    for name in (selection.input[0], selection.output[1], final.output[1]):
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    onnx.save(model, str(dst))


@contextlib.contextmanager
def _query_selection(k: int, record: dict, forced: torch.Tensor | None = None):
    """Record the scores and indices of ``torch.topk(., k)`` (the query selection); with ``forced``, return those."""
    real = torch.topk

    def topk(x, kk, dim=-1, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        out = real(x, kk, dim, *args, **kwargs)
        if kk != k:
            return out
        record["scores"], record["indices"] = x.detach().clone(), out.indices.clone()
        if forced is None:
            return out
        return torch.return_types.topk((torch.gather(x, dim, forced), forced))

    torch.topk = topk
    try:
        yield
    finally:
        torch.topk = real


def _errors(expected, got) -> list[float]:
    return [float((torch.as_tensor(np.asarray(g)).to(e.dtype) - e).abs().max()) for e, g in zip(expected, got)]


def _match(expected, got, i: int):
    """One-to-one matching of the detections of image ``i`` (same label first, then box and score).

    Returns:
        ``(PyTorch indices, onnxruntime indices, [score, label, box] errors of the pairs)``.
    """
    es, el, eb = (t[i].double() for t in expected)
    gs, gl, gb = (torch.as_tensor(np.asarray(t[i])).double() for t in got)
    cost = 1e6 * (el[:, None] != gl[None]) + (eb[:, None] - gb[None]).abs().sum(-1) + (es[:, None] - gs[None]).abs()
    qi, gi = hungarian_assign(cost)
    return qi, gi, [(es[qi] - gs[gi]).abs(), (el[qi] - gl[gi]).abs(), (eb[qi] - gb[gi]).abs().amax(-1)]


def _matched_errors(expected, got) -> list[float]:
    """Max errors over the matched detections of every image."""
    worst = [0.0, 0.0, 0.0]
    for i in range(expected[0].shape[0]):
        errs = _match(expected, got, i)[2]
        worst = [max(w, float(e.max())) for w, e in zip(worst, errs)]
    return worst


def _worst_raw(expected, got, final_idx, differ: list[set[int]], num_classes: int) -> tuple[float, int, bool, int]:
    """The raw detections matched one to one: the largest box error, the selection rank of its query (onnxruntime's
    side), whether the runtimes rank different tokens there, and how many matched boxes differ by > 0.01 px whose
    query is not at such a rank."""
    worst, rank, unexplained = -1.0, -1, 0
    swapped = False
    for i in range(expected[0].shape[0]):
        qi, gi, errs = _match(expected, got, i)
        queries = torch.div(final_idx[i, gi], num_classes, rounding_mode="floor")
        unexplained += int(((errs[2] > 0.01) & ~torch.tensor([int(q) in differ[i] for q in queries])).sum())
        j = int(errs[2].argmax())
        if float(errs[2][j]) > worst:
            worst, rank = float(errs[2][j]), int(queries[j])
            swapped = rank in differ[i]
    return worst, rank, swapped, unexplained


def _selection(pt_scores, pt_idx, ort_scores, ort_idx) -> dict[str, object]:
    """Compare the two runtimes' top-k of one image."""
    differ = (pt_idx != ort_idx).nonzero().flatten()
    gaps = [abs(float(pt_scores[pt_idx[p]] - pt_scores[ort_idx[p]])) for p in differ.tolist()]
    ranked = pt_scores.sort(descending=True).values
    k = len(pt_idx)
    return {
        "set": set(pt_idx.tolist()) == set(ort_idx.tolist()),
        "order": len(differ) == 0,
        "ranks_differ": len(differ),
        "differ": set(differ.tolist()),
        "swap_gap": max(gaps, default=0.0),
        "enc_err": float((pt_scores - ort_scores).abs().max()),
        "boundary_gap": float(ranked[k - 1] - ranked[k]) if len(ranked) > k else float("inf"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="internimage_t_1k_224", help="backbone (DINO-T: internimage_t_1k_224)")
    parser.add_argument("--sizes", nargs="+", default=["320x480", "384x384"], help="HxW, multiples of 32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="weights and inputs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--onnx", type=Path, default=None, help="reuse this export (same --seed) instead of exporting")
    parser.add_argument("--out", type=Path, default=None, help="where to write the export (default: a temp folder)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    torch.manual_seed(args.seed)
    model = build_exportable("detection", args.model, None, 80, "dino")  # what `internimage export` builds
    detector = model.full_model
    k = detector.bbox_head.num_queries
    tmp = tempfile.TemporaryDirectory()
    out = args.out or Path(tmp.name)
    path = args.onnx
    if path is None:
        path = out / "dino.onnx"
        start = time.perf_counter()
        export(model, path, "onnx", verify_shapes=[])  # the export path of the CLI, without its own check
        print(f"exported {path} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    debug = out / "dino_topk_outputs.onnx"
    _with_topk_outputs(path, debug, k, detector.bbox_head.max_per_img)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(debug), options, providers=["CPUExecutionProvider"])

    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    for size in args.sizes:
        h, w = (int(v) for v in size.lower().split("x"))
        x = torch.randn(args.batch, 3, h, w, generator=gen)
        record: dict = {}
        with torch.no_grad(), _query_selection(k, record):
            expected = model.module(x)
        got = session.run(None, {model.input_name: x.numpy()})
        single: dict = {}  # PyTorch against itself: one thread instead of --threads
        torch.set_num_threads(1)
        with torch.no_grad(), _query_selection(k, single):
            model.module(x)
        torch.set_num_threads(args.threads)
        n = len(model.output_names)  # the added outputs follow the export's own
        ort_scores, ort_idx = torch.as_tensor(got[n]), torch.as_tensor(got[n + 1]).long()
        with torch.no_grad(), _query_selection(k, {}, forced=ort_idx):
            forced = model.module(x)
        sel = [_selection(record["scores"][i], record["indices"][i], ort_scores[i], ort_idx[i]) for i in range(len(x))]
        forced_err = _errors(forced, got[:3])
        final_idx = torch.as_tensor(got[n + 2]).long()
        worst = _worst_raw(expected, got[:3], final_idx, [s["differ"] for s in sel], detector.num_classes)
        rows.append(
            {
                "size": f"{h}x{w}",
                "raw": _errors(expected, got[:3]),
                "self_err": float((single["scores"] - record["scores"]).abs().max()),
                "self_order": bool((single["indices"] == record["indices"]).all()),
                "set": all(s["set"] for s in sel),
                "order": all(s["order"] for s in sel),
                "ranks_differ": sum(s["ranks_differ"] for s in sel),
                "swap_gap": max(s["swap_gap"] for s in sel),
                "enc_err": max(s["enc_err"] for s in sel),
                "boundary_gap": min(s["boundary_gap"] for s in sel),
                "forced": forced_err,
                "forced_rel_box": forced_err[2] / max(h, w),
                "forced_matched": _matched_errors(forced, got[:3]),
                "raw_matched": _matched_errors(expected, got[:3]),
                "worst": worst,
            }
        )

    print(f"DINO-4scale {args.model}, random init (seed {args.seed}), batch {args.batch}, {k} selected queries")
    print("Errors are max abs, onnxruntime vs PyTorch eager; boxes in pixels of the input.\n")
    print("Query selection (top-k over the encoder tokens' max class logit):\n")
    print(
        "| HxW | same set | same order | ranks differing | largest gap of a swapped pair | encoder score error "
        "| 900th - 901st score | PyTorch 1 thread vs N: score diff, same order |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']} | {r['set']} | {r['order']} | {r['ranks_differ']} | {r['swap_gap']:.1e} "
            f"| {r['enc_err']:.1e} | {r['boundary_gap']:.1e} | {r['self_err']:.1e}, {r['self_order']} |"
        )
    print("\nDetections (scores / labels / boxes):\n")
    print(
        "| HxW | raw | raw, matched as sets | worst matched raw box: query rank (swapped?) | unexplained > 0.01 px "
        "| PyTorch given ORT's top-k | same, boxes / image side | same, matched as sets |"
    )
    print("|---|---|---|---|---|---|---|---|")

    def three(e):  # noqa: ANN001, ANN202
        return f"{e[0]:.1e} / {e[1]:.0f} / {e[2]:.1e}"

    for r in rows:
        w = r["worst"]
        print(
            f"| {r['size']} | {three(r['raw'])} | {three(r['raw_matched'])} | {w[0]:.1e} px: {w[1]} ({w[2]}) "
            f"| {w[3]} | {three(r['forced'])} | {r['forced_rel_box']:.1e} | {three(r['forced_matched'])} |"
        )
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
