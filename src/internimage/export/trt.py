"""DCNv3 as the ``mmdeploy::TRTDCNv3`` node of the original TensorRT plugin (official ``tensorrt/``).

The plugin ("TRTDCNv3" version 1, built into mmdeploy 0.13) takes three NHWC float32 inputs (input, offset, mask)
and the attributes ``kernel_h/w``, ``stride_h/w``, ``pad_h/w``, ``dilation_h/w``, ``group``, ``group_channels``,
``offset_scale_f`` (float), ``im2col_step`` and ``remove_center`` (parsed but ignored by the plugin). Inside
:func:`export_as_custom_op` the DCNv3 calls of a model stay ``internimage::dcnv3`` custom-op nodes in
``torch.export`` graphs, and :data:`TRT_TRANSLATION` turns each into one such node in the dynamo ONNX exporter.

:func:`trt_dcnv3_numpy` is a NumPy implementation of the node (through the PyTorch reference) so a TRT-flavoured
model can be checked numerically without TensorRT: :func:`ort_session_with_trt_dcnv3` runs it in onnxruntime with
an onnxruntime-extensions Python custom op.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np
import torch

from ..ops import ExportMode, export_mode
from ..ops.args import DCNv3Args
from ..ops.reference import dcnv3_reference

__all__ = [
    "TRT_ATTRIBUTES",
    "TRT_DOMAIN",
    "TRT_OP",
    "export_as_custom_op",
    "ort_session_with_trt_dcnv3",
    "trt_dcnv3_numpy",
    "trt_translation_table",
]

logger = logging.getLogger(__name__)

TRT_DOMAIN = "mmdeploy"
TRT_OP = "TRTDCNv3"
#: The original symbolic's im2col_step: the batch chunk of the CUDA kernel, which does not change the numbers.
IM2COL_STEP = 256
#: Attribute names and ONNX types of the plugin node, in the order the original symbolic writes them.
TRT_ATTRIBUTES: dict[str, type] = {
    "kernel_h": int,
    "kernel_w": int,
    "stride_h": int,
    "stride_w": int,
    "pad_h": int,
    "pad_w": int,
    "dilation_h": int,
    "dilation_w": int,
    "group": int,
    "group_channels": int,
    "offset_scale_f": float,
    "im2col_step": int,
    "remove_center": int,
}
# onnxruntime-extensions registers Python ops in this domain only; the TRT model is re-labelled into it to run.
_ORTX_DOMAIN = "ai.onnx.contrib"


def export_as_custom_op() -> contextlib.AbstractContextManager[ExportMode]:
    """Keep ``internimage::dcnv3`` as a custom-op node in graphs exported inside this block.

    Outside it, exporters trace the grid_sample reference (standard ops only). The same as
    ``internimage.ops.export_mode(dcn_custom_op=True)``.
    """
    return export_mode(dcn_custom_op=True)


def trt_translation_table() -> dict[Any, Any]:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``: DCNv3 -> ``mmdeploy::TRTDCNv3``."""
    import onnxscript

    # No schema of the plugin exists in onnx's registry; onnxscript builds the node from this one.
    trt_op = onnxscript.values.Op(onnxscript.values.Opset(TRT_DOMAIN, 1), TRT_OP, _trt_schema())

    def trt_dcnv3(
        input,
        offset,
        mask,
        kernel_h: int,
        kernel_w: int,
        stride_h: int,
        stride_w: int,
        pad_h: int,
        pad_w: int,
        dilation_h: int,
        dilation_w: int,
        group: int,
        offset_scale: float,
        remove_center: bool,
        softmax: bool,
        backend: str,
    ):
        if softmax:
            raise RuntimeError("TRTDCNv3 export got softmax=True; dcnv3() normalises the mask before the plugin node")
        channels = input.shape[3] if input.shape is not None else None
        if not isinstance(channels, int):
            raise RuntimeError("TRTDCNv3 export needs a static channel count (input dim 3)")
        return trt_op(
            input,
            offset,
            mask,
            kernel_h=int(kernel_h),
            kernel_w=int(kernel_w),
            stride_h=int(stride_h),
            stride_w=int(stride_w),
            pad_h=int(pad_h),
            pad_w=int(pad_w),
            dilation_h=int(dilation_h),
            dilation_w=int(dilation_w),
            group=int(group),
            group_channels=channels // int(group),
            offset_scale_f=float(offset_scale),
            im2col_step=IM2COL_STEP,
            remove_center=int(remove_center),
        )

    return {torch.ops.internimage.dcnv3.default: trt_dcnv3}


def _trt_schema():
    import onnx

    kinds = {int: onnx.defs.OpSchema.AttrType.INT, float: onnx.defs.OpSchema.AttrType.FLOAT}
    tensor = "tensor(float)"
    return onnx.defs.OpSchema(
        TRT_OP,
        TRT_DOMAIN,
        1,
        inputs=[onnx.defs.OpSchema.FormalParameter(name, tensor) for name in ("input", "offset", "mask")],
        outputs=[onnx.defs.OpSchema.FormalParameter("output", tensor)],
        attributes=[onnx.defs.OpSchema.Attribute(name, kinds[kind], "") for name, kind in TRT_ATTRIBUTES.items()],
    )


def _args_from_attributes(attrs: dict[str, Any]) -> DCNv3Args:
    return DCNv3Args(
        int(attrs["kernel_h"]),
        int(attrs["kernel_w"]),
        int(attrs["stride_h"]),
        int(attrs["stride_w"]),
        int(attrs["pad_h"]),
        int(attrs["pad_w"]),
        int(attrs["dilation_h"]),
        int(attrs["dilation_w"]),
        int(attrs["group"]),
        float(attrs["offset_scale_f"]),
        bool(int(attrs.get("remove_center", 0))),
    )


def trt_dcnv3_numpy(input: np.ndarray, offset: np.ndarray, mask: np.ndarray, **attrs: Any) -> np.ndarray:
    """The ``TRTDCNv3`` node computed by the PyTorch reference.

    Args:
        input: (N, H, W, G*D) float32.
        offset: (N, Ho, Wo, G*P*2) float32.
        mask: (N, Ho, Wo, G*P) float32.
        **attrs: The node's attributes (see :data:`TRT_ATTRIBUTES`).

    Returns:
        (N, Ho, Wo, G*D) float32.
    """
    args = _args_from_attributes(attrs)
    if input.shape[-1] != args.group * int(attrs["group_channels"]):
        raise ValueError(f"TRTDCNv3: {input.shape[-1]} channels != group * group_channels ({attrs})")
    out = dcnv3_reference(torch.from_numpy(input), torch.from_numpy(offset), torch.from_numpy(mask), args)
    return out.numpy()


def _register_ortx_op() -> str:
    """Register the Python ``TRTDCNv3`` kernel with onnxruntime-extensions once; returns its library path."""
    try:
        from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
    except ImportError as err:
        raise RuntimeError(
            "running a TRTDCNv3 model in onnxruntime needs onnxruntime-extensions (pip install 'internimage[export]')"
        ) from err
    if not getattr(_register_ortx_op, "_done", False):
        types = {int: PyCustomOpDef.dt_int64, float: PyCustomOpDef.dt_float}

        @onnx_op(
            op_type=TRT_OP,
            inputs=[PyCustomOpDef.dt_float] * 3,
            outputs=[PyCustomOpDef.dt_float],
            attrs={name: types[kind] for name, kind in TRT_ATTRIBUTES.items()},
        )
        def _trt_dcnv3(input, offset, mask, **attrs):
            return trt_dcnv3_numpy(
                np.ascontiguousarray(input, np.float32),
                np.ascontiguousarray(offset, np.float32),
                np.ascontiguousarray(mask, np.float32),
                **attrs,
            )

        _register_ortx_op._done = True  # type: ignore[attr-defined]
    return get_library_path()


def ort_session_with_trt_dcnv3(model_path: str, providers: list[str] | None = None):
    """An onnxruntime session for a model holding ``mmdeploy::TRTDCNv3`` nodes, run by :func:`trt_dcnv3_numpy`.

    The nodes are re-labelled into onnxruntime-extensions' Python-op domain in memory; the file is not changed.
    """
    import onnx
    import onnxruntime as ort

    library = _register_ortx_op()
    model = onnx.load(model_path)
    for node in model.graph.node:
        if node.domain == TRT_DOMAIN and node.op_type == TRT_OP:
            node.domain = _ORTX_DOMAIN
    imports = [o for o in model.opset_import if o.domain not in (TRT_DOMAIN, _ORTX_DOMAIN)]
    del model.opset_import[:]
    model.opset_import.extend(imports)
    model.opset_import.append(onnx.helper.make_opsetid(_ORTX_DOMAIN, 1))
    options = ort.SessionOptions()
    options.register_custom_ops_library(library)
    return ort.InferenceSession(model.SerializeToString(), options, providers=providers or ["CPUExecutionProvider"])
