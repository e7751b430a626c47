"""Building the package's C++ CPU kernels: one rule for all of them.

The rule: **one source file per op** in ``csrc/`` (``dcnv3_cpu.cpp``, ``ms_deform_attn_cpu.cpp``), each compiled
into its own extension by a :class:`CppKernel`. Each file registers its ops with the dispatcher under the
``internimage_cpu`` namespace (the first with ``TORCH_LIBRARY``, the others with ``TORCH_LIBRARY_FRAGMENT``), so
no pybind and no Python module is built. Separate extensions keep an edit of one kernel from rebuilding the other,
and a kernel that fails to build from disabling the other.

A kernel is compiled on first use with :func:`torch.utils.cpp_extension.load` (needs a C++ compiler and
``ninja``) and cached in torch's extension directory under a name that hashes the source, the flags, the torch
version, the CPU flags and the source and torch locations, so an edit, an upgrade or a different machine sharing
the cache rebuilds instead of loading a stale or illegal binary, and two installations do not rebuild over each
other. Nothing is built at import time. If the build fails,
:meth:`CppKernel.available` warns once and returns ``False``, and callers fall back to the reference.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import warnings
from pathlib import Path

import torch

__all__ = ["CFLAGS", "CppKernel", "LDFLAGS"]

CSRC = Path(__file__).with_name("csrc")
# -fopenmp makes at::parallel_for use torch's OpenMP pool (the library resolves to the libgomp torch loaded).
CFLAGS = ("-O3", "-march=native", "-fopenmp")
LDFLAGS = ("-fopenmp",)


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return ""


def _is_built(cpp_extension, name: str) -> bool:
    """Whether ``name`` is already compiled in torch's extension cache (then ``load`` only loads it)."""
    # torch adds a python/CUDA-version folder below the cache root unless TORCH_EXTENSIONS_DIR is set; its helper
    # for that path is private, so without it the build counts as not cached (the message is only a log line).
    build_directory = getattr(cpp_extension, "_get_build_directory", None)
    if build_directory is None:
        return False
    return Path(build_directory(name, verbose=False), f"{name}.so").is_file()


class CppKernel:
    """One C++ source file of ``csrc/``, built into its own extension on first use.

    Args:
        source: File name in ``csrc/``, e.g. ``"dcnv3_cpu.cpp"``; its stem names the extension.
        title: What log lines and warnings call it, e.g. ``"DCNv3 CPU kernel"``.
        logger: Where the build is logged (the owning module's logger).
    """

    def __init__(self, source: str, title: str, logger: logging.Logger) -> None:
        self.source = CSRC / source
        self.title = title
        self.logger = logger
        self._lock = threading.Lock()
        self._loaded: list[bool] = []  # empty until the first call of available(), then [result]

    def extension_name(self) -> str:
        """Name of the compiled extension: a hash of everything that changes the binary."""
        digest = hashlib.sha256()
        for part in (self.source.read_bytes(), " ".join(CFLAGS + LDFLAGS).encode(), torch.__version__.encode()):
            digest.update(part)
        # torch rebuilds a cached extension whose build command changed: two installations (another checkout or
        # venv: other source and include paths) sharing one cache would rebuild over each other on every run.
        digest.update(f"{self.source.resolve()}|{Path(torch.__file__).resolve().parent}".encode())
        # -march=native binaries are only valid on CPUs with the same features.
        digest.update(_cpu_flags().encode())
        return f"internimage_{self.source.stem}_{digest.hexdigest()[:16]}"

    def build(self) -> None:
        """Compile (unless cached) and load the extension; raises if impossible."""
        # Importing cpp_extension logs a CUDA_HOME warning on CPU-only machines; it is irrelevant to this build.
        cpp_logger = logging.getLogger("torch.utils.cpp_extension")
        level = cpp_logger.level
        cpp_logger.setLevel(logging.ERROR)
        try:
            from torch.utils import cpp_extension
        finally:
            cpp_logger.setLevel(level)

        cpp_extension.verify_ninja_availability()
        name = self.extension_name()
        # Said only when it compiles (once per source, flags, torch and CPU): a cached build just loads.
        if _is_built(cpp_extension, name):
            self.logger.debug("loading the %s %s", self.title, name)
        else:
            self.logger.info("building the %s %s (once, about a minute)", self.title, name)
        cpp_extension.load(
            name=name,
            sources=[str(self.source)],
            extra_cflags=list(CFLAGS),
            extra_ldflags=list(LDFLAGS),
            is_python_module=False,
            verbose=False,
        )

    def available(self) -> bool:
        """Build (first call only) and load the kernel; ``False`` with one warning if that is impossible here."""
        if self._loaded:
            return self._loaded[0]
        with self._lock:
            if not self._loaded:
                try:
                    self.build()
                    ok = True
                except Exception as err:  # noqa: BLE001 - any build failure means "use the reference"
                    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                    warnings.warn(
                        f"internimage: cannot build the fused {self.title} ({reason}); using the reference backend",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                    ok = False
                self._loaded.append(ok)
        return self._loaded[0]
