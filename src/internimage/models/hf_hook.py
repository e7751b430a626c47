"""Lazy registration with transformers' Auto classes: ``import internimage`` never imports transformers.

:func:`install` (called by ``import internimage``) registers at once what transformers has already loaded and, for
the rest, puts a small finder at the front of ``sys.meta_path``. The finder only watches four transformers modules;
when one of them has run, it performs each registration whose modules are all loaded:

* ``AutoConfig`` (:func:`~internimage.models.hf_config.register_config`) once ``configuration_auto`` and
  ``configuration_utils`` are loaded, i.e. when ``AutoConfig`` is first touched;
* ``AutoModel`` / ``AutoModelForImageClassification`` (:func:`~internimage.models.hf.register`) once
  ``modeling_auto`` is loaded and ``modeling_utils`` is loaded or not being loaded (transformers imports
  ``configuration_auto`` from inside ``modeling_utils``, so registering then would read a half-made module).

It then removes itself. A registration that fails logs a warning and never breaks transformers' import. Nothing is
installed when transformers is not installed, or is older than the extra ``[hf]`` allows (``MIN_TRANSFORMERS``,
so that an older one used for other work sees no warning). transformers 5 has no plugin entry point for model
types, hence a finder; it wraps only the loader of the watched modules and delegates everything else to it.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Callable
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

__all__ = ["install"]

logger = logging.getLogger(__name__)

_CONFIG_AUTO = "transformers.models.auto.configuration_auto"
_CONFIG_UTILS = "transformers.configuration_utils"
_MODEL_AUTO = "transformers.models.auto.modeling_auto"
_MODEL_UTILS = "transformers.modeling_utils"
_WATCHED = (_CONFIG_AUTO, _CONFIG_UTILS, _MODEL_AUTO, _MODEL_UTILS)


#: The oldest transformers the extra ``[hf]`` allows (the one tested).
MIN_TRANSFORMERS = (5, 25)


def _supported() -> bool:
    """Whether the installed transformers is new enough (an older one is left alone: no warning on every use)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("transformers")
    except PackageNotFoundError:  # importable but without metadata (a source tree): try
        return True
    parts = [int(p) for p in found.split(".")[:2] if p.isdigit()]
    if tuple(parts) < MIN_TRANSFORMERS:
        logger.debug("transformers %s is older than %s: not registering InternImage", found, MIN_TRANSFORMERS)
        return False
    return True


def _loaded(name: str, just_ran: str) -> bool:
    """Whether ``name`` has been imported completely (``just_ran`` has, though importlib has not marked it yet)."""
    if name == just_ran:
        return True
    module = sys.modules.get(name)
    return module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False)


def _config_ready(just_ran: str) -> bool:
    return _loaded(_CONFIG_AUTO, just_ran) and _loaded(_CONFIG_UTILS, just_ran)


def _models_ready(just_ran: str) -> bool:
    utils_free = _MODEL_UTILS not in sys.modules or _loaded(_MODEL_UTILS, just_ran)
    return _loaded(_MODEL_AUTO, just_ran) and _loaded(_CONFIG_AUTO, just_ran) and utils_free


def _register_config() -> None:
    from .hf_config import register_config

    register_config()


def _register_models() -> None:
    from .hf import register

    register()


#: (Auto class named in warnings, whether it can run now, the registration), in order.
_STEPS: tuple[tuple[str, Callable[[str], bool], Callable[[], None]], ...] = (
    ("AutoConfig", _config_ready, _register_config),
    ("AutoModel", _models_ready, _register_models),
)


def _run_ready(pending: list[tuple[str, Callable[[str], bool], Callable[[], None]]], just_ran: str = "") -> None:
    """Run and drop every pending step that can run; a failure is logged, never raised."""
    for step in list(pending):
        name, ready, action = step
        if not ready(just_ran):
            continue
        pending.remove(step)
        try:
            action()
        except Exception as err:  # never break the user's transformers import: say why and go on
            logger.warning(
                "internimage: could not register with transformers' %s (%s: %s); "
                "internimage.models.hf.register() raises the error",
                name,
                type(err).__name__,
                err,
            )


class _RegisterAfterImport:
    """``sys.meta_path`` finder: after each watched module has run, runs the registrations that can run."""

    internimage_hf_hook = True  # marks the finder, so that a second install() adds no other

    def __init__(self) -> None:
        self.pending = list(_STEPS)

    def find_spec(self, fullname: str, path: Any = None, target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname not in _WATCHED:
            return None
        for finder in sys.meta_path:  # the spec the other finders give, with its loader wrapped
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, self)
                return spec
        return None

    def module_ran(self, name: str) -> None:
        _run_ready(self.pending, name)
        if not self.pending and self in sys.meta_path:
            sys.meta_path.remove(self)


class _Loader:
    """The real loader of a watched module, plus a call to the finder once the module has run."""

    def __init__(self, loader: Any, finder: _RegisterAfterImport) -> None:
        self._loader = loader
        self._finder = finder

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._finder.module_ran(module.__name__)

    def __getattr__(self, name: str) -> Any:  # get_source, is_package, get_resource_reader, ...: the real loader's
        if name in ("_loader", "_finder"):  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self._loader, name)


def install() -> None:
    """Register with the transformers Auto classes now where transformers has loaded them, lazily otherwise."""
    if any(getattr(finder, "internimage_hf_hook", False) for finder in sys.meta_path):
        return
    try:
        if importlib.util.find_spec("transformers") is None or not _supported():
            return
    except (ImportError, ValueError) as err:  # a broken or odd install: ``import internimage`` must not fail
        logger.debug("not registering with transformers: %s", err)
        return
    finder = _RegisterAfterImport()
    _run_ready(finder.pending)
    if finder.pending:
        sys.meta_path.insert(0, finder)
