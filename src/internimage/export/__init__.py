"""Deployment: ONNX (standard ops), ONNX with the TensorRT DCNv3 plugin node, ``torch.export``, benchmarks.

Example::

    from internimage.export import build_exportable, export

    model = build_exportable("classification", "internimage_t_1k_224", checkpoint="t.safetensors")
    report = export(model, "t.onnx", "onnx")  # verified on two input sizes in onnxruntime
    print(report.errors)
"""

from .core import (
    FORMATS,
    ExportReport,
    check_trt_nodes,
    default_verify_shapes,
    export,
    load_pt2,
    ort_session,
    trace,
    verify_export,
)
from .models import TASKS, ExportableModel, build_exportable, detection_postprocess
from .trt import TRT_ATTRIBUTES, TRT_DOMAIN, TRT_OP, export_as_custom_op, trt_dcnv3_numpy

__all__ = [
    "FORMATS",
    "TASKS",
    "TRT_ATTRIBUTES",
    "TRT_DOMAIN",
    "TRT_OP",
    "ExportReport",
    "ExportableModel",
    "build_exportable",
    "check_trt_nodes",
    "default_verify_shapes",
    "detection_postprocess",
    "export",
    "export_as_custom_op",
    "load_pt2",
    "ort_session",
    "trace",
    "trt_dcnv3_numpy",
    "verify_export",
]
