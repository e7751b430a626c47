"""The parts of ``benchmarks/gpu_check.py``, one module per group of sections."""
