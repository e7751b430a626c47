"""Export to ONNX (standard ops), ONNX with the TensorRT DCNv3 plugin node, and ``torch.export`` (.pt2); verify.

* ``onnx``: the dynamo exporter (``torch.onnx.export(dynamo=True)``) at opset 20, where DCNv3 is traced through
  its grid_sample reference and becomes a native ``GridSample`` node; batch, height and width are dynamic.
  Runs in onnxruntime (or any ONNX runtime with opset 20).
* ``onnx-trt``: the same graph, but every DCNv3 is one ``mmdeploy::TRTDCNv3`` node with the attributes of the
  original plugin (:mod:`internimage.export.trt`), for TensorRT with that plugin loaded.
* ``pt2``: ``torch.export`` with dynamic batch/height/width, saved with ``torch.export.save``.

Height and width are exported as multiples of the model's total stride (``32 * k``): that keeps every
downsampling exact for the symbolic-shape engine (4x faster export than free sizes) and is the input contract
of InternImage anyway. The traced example is (2, C, 64, 64), so the smallest side the ``pt2`` program accepts is 64.
Every export is checked on two input sizes against the eager model (:func:`verify_export`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..ops import export_mode
from .models import ExportableModel
from .trt import TRT_ATTRIBUTES, TRT_DOMAIN, TRT_OP, ort_session_with_trt_dcnv3

__all__ = [
    "FORMATS",
    "ExportReport",
    "check_trt_nodes",
    "default_verify_shapes",
    "export",
    "load_pt2",
    "ort_session",
    "trace",
    "verify_export",
]

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "onnx-trt", "pt2")
OPSET = 20  # first opset with GridSample on N-D inputs as emitted by the dynamo exporter
_MAX_BATCH = 1024
_MAX_SIDE = 8192
# Beyond ~2 GB a protobuf cannot hold the weights; such models (InternImage-G) get an external .data file.
_EXTERNAL_DATA_BYTES = 1_800_000_000


@dataclasses.dataclass
class ExportReport:
    """What :func:`export` wrote and how well it matched the eager model.

    Attributes:
        path: The written file (``.onnx`` or ``.pt2``).
        format: ``onnx``, ``onnx-trt`` or ``pt2``.
        files: Every written file (an ONNX model over ~2 GB also has a ``.data`` file).
        export_seconds: Wall time of the export.
        errors: ``(input shape, max abs error over all outputs)`` per verified input.
        trt_nodes: Number of ``TRTDCNv3`` nodes (``onnx-trt`` only).
    """

    path: Path
    format: str
    files: list[Path]
    export_seconds: float
    errors: list[tuple[tuple[int, ...], float]] = dataclasses.field(default_factory=list)
    trt_nodes: int = 0

    @property
    def max_error(self) -> float:
        return max((e for _, e in self.errors), default=float("nan"))


def _dynamic_shapes(multiple: int) -> tuple[dict[int, object]]:
    dim = torch.export.Dim
    batch = dim("batch", min=1, max=_MAX_BATCH)
    height = dim("height_blocks", min=1, max=_MAX_SIDE // multiple)
    width = dim("width_blocks", min=1, max=_MAX_SIDE // multiple)
    return ({0: batch, 2: multiple * height, 3: multiple * width},)


def _example(model: ExportableModel) -> torch.Tensor:
    # Batch 2 and at least two strides a side: sizes of 1 would be specialised as constants by torch.export.
    side = model.example_blocks * model.size_multiple
    return torch.randn(2, model.in_chans, side, side)


def _param_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


@contextlib.contextmanager
def _staging_dir(final: Path):
    """A temporary folder beside ``final``; its files are moved next to ``final`` only on success."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(staged: Path, final: Path) -> list[Path]:
    written = []
    for f in sorted(staged.iterdir()):
        target = final.parent / f.name
        os.replace(f, target)
        written.append(target)
    return written


def trace(model: ExportableModel, keep_dcn_op: bool = False) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model.module`` with dynamic batch, height and width (multiples of the stride).

    Args:
        model: From :func:`~internimage.export.models.build_exportable`.
        keep_dcn_op: Keep DCNv3 as ``internimage::dcnv3`` nodes (for ``onnx-trt``) instead of tracing the
            grid_sample reference (``onnx`` and ``pt2``).

    Returns:
        The program; one program serves both ``onnx`` and ``pt2`` (see :func:`export`'s ``program``).
    """
    with torch.no_grad(), export_mode(dcn_custom_op=keep_dcn_op), model.trace_context():
        return torch.export.export(
            model.module, (_example(model),), dynamic_shapes=_dynamic_shapes(model.size_multiple)
        )


def _export_onnx(model: ExportableModel, path: Path, program: torch.export.ExportedProgram, trt: bool) -> list[Path]:
    kwargs = dict(
        dynamo=True,
        input_names=[model.input_name],
        output_names=list(model.output_names),
        opset_version=OPSET,
        verbose=False,
    )
    if trt:
        from .trt import trt_translation_table

        kwargs["custom_translation_table"] = trt_translation_table()
    onnx_program = torch.onnx.export(program, **kwargs)
    if onnx_program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    external = _param_bytes(model.module) > _EXTERNAL_DATA_BYTES
    with _staging_dir(path) as staged:
        onnx_program.save(str(staged / path.name), external_data=external)
        return _publish(staged, path)


def _export_pt2(path: Path, program: torch.export.ExportedProgram) -> list[Path]:
    with _staging_dir(path) as staged:
        torch.export.save(program, str(staged / path.name))
        return _publish(staged, path)


def export(
    model: ExportableModel,
    path: str | os.PathLike,
    format: str = "onnx",
    verify_shapes: Sequence[Sequence[int]] | None = None,
    program: torch.export.ExportedProgram | None = None,
) -> ExportReport:
    """Export ``model`` to ``path`` and verify it against the eager model.

    Args:
        model: From :func:`~internimage.export.models.build_exportable`.
        path: Output file (``.onnx`` or ``.pt2``); the folder is created.
        format: ``onnx``, ``onnx-trt`` or ``pt2``.
        verify_shapes: Input shapes (N, C, H, W) to check; default :func:`default_verify_shapes`. Empty: no check.
        program: A :func:`trace` of ``model`` to reuse (``keep_dcn_op=True`` for ``onnx-trt``, else False), so
            ``onnx`` and ``pt2`` of one model cost one trace.

    Returns:
        An :class:`ExportReport` (errors per verified shape).

    Raises:
        ValueError: unknown format or a verify shape that is not a multiple of the stride.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    path = Path(path)
    start = time.perf_counter()
    trt = format == "onnx-trt"
    if program is None:
        program = trace(model, keep_dcn_op=trt)
    files = _export_pt2(path, program) if format == "pt2" else _export_onnx(model, path, program, trt)
    report = ExportReport(path, format, files, time.perf_counter() - start)
    logger.info("exported %s (%s) in %.1f s", path, format, report.export_seconds)
    if format == "onnx-trt":
        report.trt_nodes = len(check_trt_nodes(path))
    shapes = default_verify_shapes(model) if verify_shapes is None else verify_shapes
    if shapes:
        report.errors = verify_export(model, path, format, shapes)
    return report


def default_verify_shapes(model: ExportableModel, size: int = 224) -> list[tuple[int, int, int, int]]:
    """Two different inputs: (2, C, s, s) and (1, C, s + m, s + 2m), s = ``size`` rounded to the stride m."""
    m = model.size_multiple
    s = max(model.min_side, round(size / m) * m)
    return [(2, model.in_chans, s, s), (1, model.in_chans, s + m, s + 2 * m)]


def ort_session(
    path: str | os.PathLike, format: str = "onnx", providers: list[str] | None = None, threads: int | None = None
):
    """An onnxruntime session for an exported file (``onnx-trt`` runs its plugin nodes through the reference)."""
    import onnxruntime as ort

    if format == "onnx-trt":
        return ort_session_with_trt_dcnv3(str(path), providers)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the dynamo graph's unused-initializer notes are not the user's concern
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def load_pt2(path: str | os.PathLike) -> torch.nn.Module:
    """The module of a ``.pt2`` file written by :func:`export`."""
    return torch.export.load(str(path)).module()


def _as_list(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def verify_export(
    model: ExportableModel, path: str | os.PathLike, format: str, shapes: Sequence[Sequence[int]], seed: int = 0
) -> list[tuple[tuple[int, ...], float]]:
    """Run the exported file and the eager model on random inputs of each shape; max abs error per shape.

    ONNX files run in onnxruntime (``onnx-trt`` with its DCNv3 nodes computed by the reference through an
    onnxruntime-extensions Python op); ``.pt2`` files are loaded with ``torch.export.load``.

    Raises:
        ValueError: a shape whose H or W is not a multiple of the stride, or whose channels do not fit.
        RuntimeError: output count or shape differs from the eager model's.
    """
    m = model.size_multiple
    for shape in shapes:
        bad_side = min(shape[2:], default=0) < model.min_side or shape[2] % m or shape[3] % m
        if len(shape) != 4 or shape[1] != model.in_chans or bad_side:
            raise ValueError(
                f"verify shape {tuple(shape)} must be (N, {model.in_chans}, H, W) with H, W multiples of {m}, "
                f"at least {model.min_side}"
            )
    run = _runner(path, format)
    gen = torch.Generator().manual_seed(seed)
    errors = []
    for shape in shapes:
        x = torch.randn(*shape, generator=gen)
        got = run(x)
        with torch.no_grad():
            expected = _as_list(model.module(x) if model.eager_given is None else model.eager_given(x, list(got)))
        if len(got) != len(expected):
            raise RuntimeError(f"{path}: {len(got)} outputs, the eager model has {len(expected)}")
        err = 0.0
        for name, e, g in zip(model.output_names, expected, got):
            g = torch.as_tensor(np.asarray(g))
            if tuple(g.shape) != tuple(e.shape):
                raise RuntimeError(f"{path}: output {name} has shape {tuple(g.shape)} != eager {tuple(e.shape)}")
            err = max(err, float((g.float() - e.float()).abs().max()) if e.numel() else 0.0)
        errors.append((tuple(shape), err))
        logger.info("%s on %s: max abs error %.3g", Path(path).name, tuple(shape), err)
    return errors


def _runner(path: str | os.PathLike, format: str):
    if format == "pt2":
        module = load_pt2(path)

        def run_pt2(x: torch.Tensor) -> list[torch.Tensor]:
            with torch.no_grad():
                return _as_list(module(x))

        return run_pt2
    session = ort_session(path, format)
    input_name = session.get_inputs()[0].name

    def run_ort(x: torch.Tensor) -> list[np.ndarray]:
        return session.run(None, {input_name: x.numpy()})

    return run_ort


def check_trt_nodes(path: str | os.PathLike) -> list[dict[str, object]]:
    """Check the ``TRTDCNv3`` nodes of an ``onnx-trt`` file against the plugin's contract; return their attributes.

    Each node must be in domain ``mmdeploy`` (opset import version 1), have exactly the plugin's attributes with
    their types, three rank-4 float inputs (input, offset, mask) whose channels agree with ``group``,
    ``group_channels`` and the kernel, and one output.

    Raises:
        RuntimeError: no such node, or a node that breaks the contract.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    model = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for v in (*model.graph.value_info, *model.graph.input, *model.graph.output):
        t = v.type.tensor_type
        shapes[v.name] = (t.elem_type, [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim])
    if not any(o.domain == TRT_DOMAIN and o.version == 1 for o in model.opset_import):
        raise RuntimeError(f"{path}: no opset import of domain {TRT_DOMAIN!r} version 1")
    kinds = {int: onnx.AttributeProto.INT, float: onnx.AttributeProto.FLOAT}
    found = []
    for node in model.graph.node:
        if node.op_type != TRT_OP:
            continue
        where = f"{path}: node {node.name}"
        if node.domain != TRT_DOMAIN or len(node.input) != 3 or len(node.output) != 1:
            raise RuntimeError(f"{where}: domain {node.domain!r}, {len(node.input)} inputs, {len(node.output)} outputs")
        attrs = {a.name: a for a in node.attribute}
        if set(attrs) != set(TRT_ATTRIBUTES):
            raise RuntimeError(f"{where}: attributes {sorted(attrs)} != {sorted(TRT_ATTRIBUTES)}")
        for name, kind in TRT_ATTRIBUTES.items():
            if attrs[name].type != kinds[kind]:
                raise RuntimeError(f"{where}: attribute {name} is not {kind.__name__}")
        values = {name: onnx.helper.get_attribute_value(a) for name, a in attrs.items()}
        _check_trt_shapes(where, values, [shapes.get(i) for i in node.input])
        found.append(values)
    if not found:
        raise RuntimeError(f"{path}: no {TRT_DOMAIN}::{TRT_OP} node")
    return found


def _check_trt_shapes(where: str, attrs: dict[str, object], inputs: list) -> None:
    import onnx

    points = int(attrs["kernel_h"]) * int(attrs["kernel_w"]) - int(attrs["remove_center"])
    group = int(attrs["group"])
    want_channels = (group * int(attrs["group_channels"]), group * points * 2, group * points)
    for label, info, channels in zip(("input", "offset", "mask"), inputs, want_channels):
        if info is None:
            raise RuntimeError(f"{where}: no shape for {label}")
        elem, dims = info
        if elem != onnx.TensorProto.FLOAT or len(dims) != 4 or dims[3] != channels:
            raise RuntimeError(
                f"{where}: {label} is {onnx.TensorProto.DataType.Name(elem)} {dims}, want NHWC float32 "
                f"with {channels} channels"
            )
